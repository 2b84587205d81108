"""`sipdht run`: the long-running agent."""

from __future__ import annotations

import argparse
import asyncio
import logging

from ..cli import EXIT_OK, command, load_or_create_identity, run_async, wait_for_signal
from ..config import Config
from ..dht.infohash import InfoHash
from ..dht.node import DhtNode
from ..dht.secure import SecureDht
from .dht import log_stats, node_config, serve_node

log = logging.getLogger("sipdht.agent")


async def publish_certificate(node: DhtNode, secure: SecureDht) -> None:
    """Once on the network, keep our certificate on the DHT so peers can encrypt to us."""
    while not await node.wait_connected(60):
        log.info("waiting for DHT nodes before publishing the certificate")
    stored = await secure.publish_certificate()
    log.info("certificate of %s published on %d node(s)", secure.account_id, stored)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.set_defaults(port=None, bootstrap=None, network=None)


@command("run", "run the agent until Ctrl-C / SIGTERM (creates the identity on first start)",
         _run_args)
def cmd_run(args: argparse.Namespace, config: Config) -> int:
    ident = load_or_create_identity(config)
    log.info("account %s (config %s)", ident.account_id, config.source or "built-in defaults")

    async def main() -> int:
        cfg = node_config(args, config, client=False)
        cfg.node_id = InfoHash(ident.node_id)
        node = await serve_node(cfg)
        if not cfg.bootstrap:
            log.warning("no [dht] bootstrap configured: this node waits for others to contact it")
        log.warning("not implemented yet: locator, call signalling, SIP gateway; "
                    "this agent runs the DHT node and publishes the account certificate")
        secure = SecureDht(node, ident)
        tasks = [asyncio.create_task(log_stats(node, config.log.stats_interval)),
                 asyncio.create_task(publish_certificate(node, secure))]
        try:
            await wait_for_signal()
        finally:
            for task in tasks:
                task.cancel()
            await node.stop()
            log.info("stopped")
        return EXIT_OK

    return run_async(main())
