"""What every subcommand shares: the registry, the exit codes and the run helpers.

Here rather than in `sipdht.cli` so that the command modules depend only downwards:
`cli` parses and dispatches, importing this; nothing here imports `cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import signals
from ..config import Config

if TYPE_CHECKING:
    import asyncio

    from .. import identity

log = logging.getLogger("sipdht")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments; exit code 2."""


class OperationFailed(Exception):
    """The command ran but did not achieve its goal; exit code 1."""


Command = Callable[[argparse.Namespace, Config], int]
Setup = Callable[[argparse.ArgumentParser], None]
COMMANDS: dict[str, tuple[str, Command, Setup]] = {}


def command(name: str, help_text: str, setup: Setup = lambda p: None) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = (help_text, fn, setup)
        return fn

    return register


def load_identity(config: Config, location: str | Path | None = None) -> identity.Identity:
    from .. import identity  # not at the top: a plain DHT node needs no crypto

    passphrase = identity.passphrase_from_env(config.identity.passphrase_env)
    return identity.load(location or config.identity_path, passphrase)


def load_or_create_identity(config: Config) -> identity.Identity:
    from .. import identity

    key_path, _ = identity.identity_files(config.identity_path)
    if key_path.exists():
        return load_identity(config)
    log.info("no identity at %s: creating one (%d-bit RSA)", key_path, config.identity.key_bits)
    ident = identity.generate(config.identity.key_bits)
    identity.save(ident, config.identity_path,
                  identity.passphrase_from_env(config.identity.passphrase_env))
    return ident


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An Event set by SIGINT or SIGTERM; installed before start-up so no signal is lost
    and a second Ctrl-C does not interrupt a clean shutdown."""
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if signals.early:           # it came while the modules were still loading
        stop.set()
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def until_stopped(stop: asyncio.Event, starting: Coroutine[Any, Any, Any]) -> bool:
    """Run a start-up coroutine unless a stop signal comes first; True if it completed."""
    import asyncio

    start = asyncio.ensure_future(starting)
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({start, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if start.done():
        waiter.cancel()
        start.result()
        return True
    start.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await start
    return False


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine; Ctrl-C ends it cleanly."""
    import asyncio

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return EXIT_OK
