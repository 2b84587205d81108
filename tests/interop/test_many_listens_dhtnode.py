"""10,000 listens of one node of ours (a gateway watching its contacts' records) on a
loopback network of our nodes and a real `dhtnode` (issue 11).

Before the fix the gateway's event loop blocked for minutes (every new search past 4,096
scanned the whole search table) and its 40,000 first finds went out in one burst that the
storers' sockets dropped: no listen was acknowledged. Every process the test starts is
stopped by its PID; all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.node import DhtNode, Listen, NodeConfig
from sipdht.dht.search import LISTEN_NODES
from sipdht.dht.storage import EditPolicy
from sipdht.dht.values import Value
from tests.harness.dhtnode import Dhtnode
from tests.harness.nodegroup import NodeGroup

pytestmark = pytest.mark.interop

N_LISTENS = 10_000
N_STORERS = 8
SAMPLE = range(0, N_LISTENS, 25)          # 400 keys get a value from our putter
FROM_DHTNODE = (3, 4_321, 9_999)          # and these a value put by dhtnode itself
# The storers run in a child process (tests/harness/nodegroup.py), the listener and the putter
# here: with all ten nodes in one process, one core carried ~2,000 listen requests a second
# both ways, and on a slower machine (2x) its socket buffers overflowed and listens expired
# (values missed on 5-21 of 403 keys). On a machine loaded far past its cores, requests time
# out, the storers are then skipped for 120 s (UNREACHABLE_TIME) and the listens recover after
# that, hence the generous limits.
ACK_LIMIT = 200.0


async def start(boot: tuple[str, int] | None, **kw) -> DhtNode:
    # All of them share 127.0.0.1: the storers take more than 256 listeners from that IP.
    node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[boot] if boot else [],
                              rate_limit=False, max_listeners_per_ip=N_LISTENS * LISTEN_NODES,
                              policy=EditPolicy(), **kw))
    await node.start()
    assert await node.wait_connected(10), "a node could not join"
    return node


def drain(listens: list[Listen], got: dict[int, list[bytes]]) -> None:
    for i, listen in enumerate(listens):
        while not listen.queue.empty():
            event = listen.queue.get_nowait()
            if event is not None and event.kind == "add":
                got.setdefault(i, []).extend(v.data for v in event.values)


async def until(pred, limit: float) -> bool:
    """pred() checked every half second, for at most `limit` seconds."""
    end = time.monotonic() + limit
    while not pred():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.5)
    return True


async def scenario(d: Dhtnode) -> None:
    storers = NodeGroup(N_STORERS, d.address, max_listeners_per_ip=N_LISTENS * LISTEN_NODES)
    await asyncio.to_thread(storers.start)
    here = ("127.0.0.1", storers.ports[0])
    gateway = putter = None
    try:
        gateway = await start(here)
        putter = await start(here, client_only=True)
        assert await until(lambda: all(
            len(n.engine.good_nodes(n.engine.now)) >= N_STORERS for n in (gateway, putter)), 30)
        keys = [InfoHash.from_key(f"contact-{i}") for i in range(N_LISTENS)]
        began = time.monotonic()
        listens = [gateway.listen(k) for k in keys]
        engine = gateway.engine
        acknowledged = await until(lambda: all(
            engine.listening_nodes(x.op) >= LISTEN_NODES for x in listens), ACK_LIMIT)
        assert acknowledged, sum(engine.listening_nodes(x.op) >= LISTEN_NODES for x in listens)
        print(f"{N_LISTENS} listens acknowledged in {time.monotonic() - began:.1f} s")
        held = await asyncio.to_thread(storers.listeners)
        on_dhtnode = sum(1 for fam in engine.searches.by_family.values() for s in fam.values()
                         for sn in s.nodes if sn.node.addr == d.address
                         and sn.listen_sid is not None and sn.listen_time > 0)
        assert on_dhtnode > 0                  # dhtnode holds and acknowledged some of them
        assert held + on_dhtnode >= LISTEN_NODES * N_LISTENS

        got: dict[int, list[bytes]] = {}
        gate = asyncio.Semaphore(16)      # contacts going online, not one 3,200-update burst

        async def put(i: int) -> int:
            async with gate:
                return await putter.put(keys[i], Value(id=i + 1, data=b"online %d" % i))
        assert all(n >= 1 for n in await asyncio.gather(*(put(i) for i in SAMPLE)))
        for i in FROM_DHTNODE:
            mark = d.cmd(f"p contact-{i} from-dhtnode-{i}")
            await asyncio.to_thread(d.wait_for, "Put: success", 20, mark)
        expected = {i: [b"online %d" % i] for i in SAMPLE}
        for i in FROM_DHTNODE:
            expected.setdefault(i, []).append(b"from-dhtnode-%d" % i)

        def delivered() -> bool:
            drain(listens, got)
            return {i: sorted(v) for i, v in got.items()} == {
                i: sorted(v) for i, v in expected.items()}
        # An update lost on the way (a full socket buffer under load) is pushed again when
        # the gateway next refreshes that listen (every 20 s): within 60 s, all are in.
        if not await until(delivered, 60):
            missing = sorted(set(expected) - {i for i in got if sorted(got[i]) == sorted(
                expected[i])})
            pytest.fail(f"{len(missing)} of {len(expected)} keys missing values: "
                        + ", ".join(f"{i} (listening on {engine.listening_nodes(listens[i].op)})"
                                    for i in missing[:10]))
    finally:
        for node in (gateway, putter):
            if node is not None:
                await node.stop()
        await asyncio.to_thread(storers.stop)


@pytest.mark.slow
@pytest.mark.async_timeout(420)
async def test_ten_thousand_listens_acknowledged_and_delivered(dhtnode_bin) -> None:
    d = Dhtnode(no_rate_limit=True).start()
    try:
        await scenario(d)
    finally:
        d.stop()
