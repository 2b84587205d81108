"""`sipdht run`: the long-running agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from ..cli import EXIT_OK, command, load_or_create_identity, run_async
from ..config import Config

log = logging.getLogger("sipdht.agent")


async def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@command("run", "run the agent until Ctrl-C / SIGTERM (creates the identity on first start)")
def cmd_run(args: argparse.Namespace, config: Config) -> int:
    ident = load_or_create_identity(config)
    log.info("account %s (config %s)", ident.account_id, config.source or "built-in defaults")
    log.warning("not implemented yet: DHT node, locator, SIP gateway; "
                "this agent only holds the identity")

    async def main() -> int:
        await wait_for_signal()
        log.info("stopping")
        return EXIT_OK

    return run_async(main())
