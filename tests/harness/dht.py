"""Our DHT node on loopback beside real `dhtnode` peers (tests/harness/dhtnode.py).

Shared by the interop tests: each starts its own nodes, bootstrapped on a dhtnode or on one
of ours, and waits for dhtnode's output without blocking the event loop.
"""

from __future__ import annotations

import asyncio
import re

from sipdht.dht.node import DhtNode, NodeConfig
from tests.harness.dhtnode import Dhtnode


async def our_node(bootstrap: Dhtnode | DhtNode | None = None, **kw) -> DhtNode:
    """A started node on 127.0.0.1 (IPv4 only); joined when given a bootstrap."""
    boot = []
    if isinstance(bootstrap, Dhtnode):
        boot = [bootstrap.address]
    elif isinstance(bootstrap, DhtNode):
        boot = [("127.0.0.1", bootstrap.port)]
    node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=boot, **kw))
    await node.start()
    if boot:
        assert await node.wait_connected(10), "our node could not join"
    return node


async def wait_line(d: Dhtnode, pattern: str, since: int, timeout: float = 20.0) -> re.Match:
    """dhtnode's first output line matching ``pattern`` after line ``since`` (in a thread:
    the node under test keeps running meanwhile)."""
    return await asyncio.to_thread(d.wait_for, pattern, timeout, since)
