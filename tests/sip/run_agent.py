"""`python -m tests.sip.run_agent --config INI`: an agent with its SIP gateway, composed the
way `sipdht run` is to compose it (see the gateway's wiring note), for the namespace tests
until `sipdht run` starts the gateway itself. Logs to stdout; stops on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from sipdht.agent import Agent
from sipdht.cli import load_or_create_identity
from sipdht.commands.dht import node_config
from sipdht.config import load_config
from sipdht.sip.gateway import Gateway


async def main(ini: str) -> int:
    config = load_config(ini)
    ident = load_or_create_identity(config)
    args = argparse.Namespace(port=None, bootstrap=None, network=None)
    agent = Agent(config, ident, node_config(args, config, client=False), serve=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await agent.start(join_timeout=10.0)
    gateway = Gateway(config.sip, config.contacts, agent.pool, agent.account, config.sip.domain)
    agent.pool.subscribe(lambda link, incoming: print(
        f"link {'from' if incoming else 'to'} {link.peer} path {link.path}", flush=True))
    await gateway.start()
    print(gateway.softphone_settings(), flush=True)
    print(f"gateway ready on {gateway.host}:{gateway.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        await agent.stop()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(name)s %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    sys.exit(asyncio.run(main(ap.parse_args().config)))
