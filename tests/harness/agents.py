"""In-process agents on loopback with a real `dhtnode` as their DHT.

ICE uses host candidates on 127.0.0.1 only; NAT traversal is the namespace tests' job
(tests/netns). Shared by the interop tests and the SIP tests that call through two agents.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from sipdht.agent import Agent
from sipdht.config import Config
from sipdht.dht.node import NodeConfig
from tests.harness.dhtnode import Dhtnode


def make_agent(d: Dhtnode, ident, serve: bool, deny=(), home: Path | None = None,
               sip: bool = False, configure=None) -> Agent:
    """An agent (not started) bootstrapped on ``d``; ``configure(cfg)`` may adjust its config."""
    cfg = Config()
    cfg.sip.listen = ("127.0.0.1", 0)
    cfg.identity.path = (home or Path(tempfile.gettempdir())) / f"id-{ident.account_id[:8]}"
    cfg.ice.host_addresses = ["127.0.0.1"]
    cfg.ice.timeout = 5
    cfg.policy.deny = list(deny)
    if configure is not None:
        configure(cfg)
    node = NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[d.address])
    return Agent(cfg, ident, node, serve=serve, sip=sip)


async def started(*agents: Agent) -> None:
    for a in agents:
        assert await a.start()
    await asyncio.sleep(0.5)          # contact records and certificates on the DHT
