"""Command line: `sipdht init / id / run / ...`.

Exit codes: 0 ok, 1 the operation failed, 2 usage or configuration error. User
errors print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__, signals
from .config import Config, ConfigError, load_config

if TYPE_CHECKING:
    import asyncio

    from . import identity

log = logging.getLogger("sipdht")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
USER_CONFIG = Path("~/.config/sipdht/sipdht.ini")


class UsageError(Exception):
    """Bad arguments; exit code 2."""


class OperationFailed(Exception):
    """The command ran but did not achieve its goal; exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


Command = Callable[[argparse.Namespace, Config], int]
COMMANDS: dict[str, tuple[str, Command, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str, setup: Callable[[argparse.ArgumentParser], None] = lambda p: None):
    def register(fn: Command) -> Command:
        COMMANDS[name] = (help_text, fn, setup)
        return fn

    return register


def _common_options(config_default, verbose_default) -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=config_default,
                        help=f"INI file (default: {USER_CONFIG} if it exists, else built-in defaults)")
    common.add_argument("-v", "--verbose", action="store_true", default=verbose_default,
                        help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sipdht", description="Call anyone by a cryptographic identity over an "
                     "OpenDHT-compatible DHT.", parents=[_common_options(None, False)])
    # Subcommands repeat the options without defaults, so either position works.
    common = _common_options(argparse.SUPPRESS, argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"sipdht {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (help_text, _fn, setup) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        setup(p)
    return parser


def _config_path(args: argparse.Namespace) -> Path | None:
    if args.config:
        return Path(args.config)
    default = USER_CONFIG.expanduser()
    return default if default.exists() else None


def _private_log(path: Path) -> Path:
    """Logs name accounts and peers' addresses: a new log file is created 0600, never through
    a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    return path


def setup_logging(config: Config, verbose: bool) -> None:
    level = logging.DEBUG if verbose else getattr(logging, config.log.level.upper())
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if config.log.file:
        handlers.append(logging.FileHandler(_private_log(config.log.file)))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:   # aioice logs every candidate pair at INFO
        logging.getLogger("aioice").setLevel(logging.WARNING)


def load_identity(config: Config, location: str | Path | None = None) -> identity.Identity:
    from . import identity  # not at the top: a plain DHT node needs no crypto

    passphrase = identity.passphrase_from_env(config.identity.passphrase_env)
    return identity.load(location or config.identity_path, passphrase)


def load_or_create_identity(config: Config) -> identity.Identity:
    from . import identity

    key_path, _ = identity.identity_files(config.identity_path)
    if key_path.exists():
        return load_identity(config)
    log.info("no identity at %s: creating one (%d-bit RSA)", key_path, config.identity.key_bits)
    ident = identity.generate(config.identity.key_bits)
    identity.save(ident, config.identity_path,
                  identity.passphrase_from_env(config.identity.passphrase_env))
    return ident


@contextlib.contextmanager
def stop_on_signals():
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


async def until_stopped(stop: asyncio.Event, starting) -> bool:
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


def run_async(coro) -> int:
    """Run a coroutine; Ctrl-C ends it cleanly."""
    import asyncio

    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        return EXIT_OK


def _command_name(argv: list[str] | None) -> str | None:
    """The subcommand argv names, found before the full parser is built so that only its
    module need be imported (a plain `sipdht node` then loads no crypto)."""
    pre = argparse.ArgumentParser(add_help=False, parents=[_common_options(None, False)])
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command


def _failure_types() -> tuple[type[BaseException], ...]:
    """Errors reported in one line with exit 1; IdentityError only if identity was loaded
    (it cannot have been raised otherwise)."""
    identity = sys.modules.get(f"{__package__}.identity")
    return (OperationFailed, OSError) + ((identity.IdentityError,) if identity else ())


LONG_RUNNING = ("run", "node")     # they stop cleanly on a signal, even one during start-up


def _asyncio_without_tls() -> None:
    """Load asyncio with `ssl` hidden, for `sipdht node`: asyncio imports ssl for TLS, which
    a DHT node never uses, and ssl maps libssl and libcrypto (5 MB, a fifth of an idle
    node). Afterwards `import ssl` works again; only asyncio's own TLS stays off."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # makes `import ssl` fail
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def main(argv: list[str] | None = None) -> int:
    from . import commands

    signals.catch()
    name = _command_name(argv)
    try:
        if name not in LONG_RUNNING:
            signals.release()
        if name == "node":
            _asyncio_without_tls()
        commands.load_for(name)
    except KeyboardInterrupt:
        return EXIT_OK
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        config = load_config(_config_path(args))
        setup_logging(config, args.verbose)
        return COMMANDS[args.command][1](args, config)
    except (ConfigError, UsageError) as exc:
        print(f"sipdht: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:
        if not isinstance(exc, _failure_types()):
            raise
        print(f"sipdht: {exc}", file=sys.stderr)
        return EXIT_FAILED

