"""Our DHT node against real OpenDHT `dhtnode` processes on loopback."""

from __future__ import annotations

import asyncio
import socket

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.node import DhtNode, NodeConfig
from sipdht.dht.values import new_value
from tests.harness.dht import our_node, wait_line
from tests.harness.dhtnode import Dhtnode

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]


@pytest.fixture
def dhtnodes(dhtnode_bin):
    started: list[Dhtnode] = []

    def start(count: int = 1, **kw) -> list[Dhtnode]:
        for _ in range(count):
            boot = f"127.0.0.1:{started[0].port}" if started else None
            started.append(Dhtnode(bootstrap=boot, **kw).start())
        return started

    yield start
    for d in started:
        d.stop()


async def collect(listen, count: int, timeout: float) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []

    async def run():
        async for kind, value in listen:
            got.append((kind, value.data))
            if len(got) >= count:
                return
    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pass
    return got


async def test_our_put_found_by_dhtnode_get_and_listen(dhtnodes):
    d0, d1, d2 = dhtnodes(3)
    node = await our_node(d0)
    try:
        mark = d2.cmd("l ourkey")
        await asyncio.sleep(1.0)
        stored = await node.put(InfoHash.from_key("ourkey"), new_value(b"from-sipdht", utype="text/plain"))
        assert stored >= 1
        await wait_line(d2, r'data\(text/plain\):"from-sipdht"', mark)     # listen
        for d in (d0, d1):
            m = d.cmd("g ourkey")
            await wait_line(d, r'data\(text/plain\):"from-sipdht"', m)
    finally:
        await node.stop()


async def test_dhtnode_put_found_by_our_get_and_listen(dhtnodes):
    d0, d1 = dhtnodes(2)
    node = await our_node(d1)
    try:
        listen = node.listen(InfoHash.from_key("theirkey"))
        await asyncio.sleep(1.0)
        m = d0.cmd("p theirkey from-dhtnode")
        await wait_line(d0, "Put: success", m)
        got = await collect(listen, 1, 10)
        assert ("add", b"from-dhtnode") in got
        values = await node.get(InfoHash.from_key("theirkey"))
        assert [v.data for v in values] == [b"from-dhtnode"]
        assert values[0].utype == "text/plain"
        listen.cancel()
    finally:
        await node.stop()


@pytest.mark.slow
async def test_refresh_and_expiry_notifications_from_dhtnode(dhtnodes):
    """A short-lived (type 5, 60 s) value stored only on dhtnode: our listener sees it
    added, refreshed by the permanent-put loop, then expired once the put stops."""
    (d0,) = dhtnodes(1)
    putter = await our_node(d0, client_only=True)
    listener = await our_node(d0, client_only=True)
    key = InfoHash.from_key("shortlived")
    try:
        listen = listener.listen(key)
        await asyncio.sleep(1.0)
        value = new_value(b"ice-ish", type=5)
        op = putter.engine.put(key, value, putter._now(), permanent=True)
        putter._after()
        got = await collect(listen, 2, 75)     # add, then refresh (~40 s)
        assert got[:2] == [("add", b"ice-ish"), ("refresh", b"ice-ish")], got
        putter.cancel_put(op)
        got = await collect(listen, 1, 90)     # dhtnode expires it 60 s after the refresh
        assert got == [("expire", b"ice-ish")], got
        assert putter.engine.stats["query_put"] == 0  # nobody stored on the client nodes
    finally:
        await putter.stop()
        await listener.stop()


async def test_mixed_network_every_value_found_everywhere(dhtnodes):
    ds = dhtnodes(4)
    ours = [await our_node(ds[i % 4]) for i in range(4)]
    try:
        await asyncio.sleep(2.0)
        for i, d in enumerate(ds):
            m = d.cmd(f"p mixed-d{i} value-d{i}")
            await wait_line(d, "Put: success", m)
        for i, node in enumerate(ours):
            assert await node.put(InfoHash.from_key(f"mixed-s{i}"), new_value(f"value-s{i}".encode(), utype="text/plain")) >= 1
        keys = [f"d{i}" for i in range(4)] + [f"s{i}" for i in range(4)]
        for node in ours:
            for k in keys:
                values = await node.get(InfoHash.from_key(f"mixed-{k}"))
                assert f"value-{k}".encode() in [v.data for v in values], (node.id, k)
        for d in ds:
            for k in keys:
                m = d.cmd(f"g mixed-{k}")
                await wait_line(d, f'"value-{k}"', m)
    finally:
        for node in ours:
            await node.stop()


async def test_big_values_use_fragments_both_ways(dhtnodes):
    d0, d1 = dhtnodes(2)
    node = await our_node(d0)
    big_ours = ("S" * 1500 + "-end").encode()
    big_theirs = "D" * 1800 + "-end"
    try:
        assert await node.put(InfoHash.from_key("bigkey1"), new_value(big_ours, utype="text/plain")) >= 1
        m = d1.cmd("g bigkey1")
        await wait_line(d1, 'S{1500}-end"', m)
        m = d1.cmd(f"p bigkey2 {big_theirs}")
        await wait_line(d1, "Put: success", m)
        values = await node.get(InfoHash.from_key("bigkey2"))
        assert [v.data for v in values] == [big_theirs.encode()]
        assert node.engine.reassembler.dropped == 0
    finally:
        await node.stop()


@pytest.mark.slow
async def test_wrong_network_id_is_ignored(dhtnode_bin):
    node = await our_node(None)
    other = Dhtnode(network=16, bootstrap=f"127.0.0.1:{node.port}").start()
    try:
        for _ in range(50):
            if node.engine.stats["dropped_network"]:
                break
            await asyncio.sleep(0.1)
        assert node.engine.stats["dropped_network"] >= 1   # its pings reached us, ignored
        assert len(node.engine.tables[4]) == 0
        node.bootstrap(other.address)                       # and ours are ignored by it
        assert not await node.wait_connected(3)
    finally:
        other.stop()
        await node.stop()


def raw_request(port: int, msg: dict, timeout: float = 1.0) -> dict | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(msgpack.packb(msg, use_bin_type=True), ("127.0.0.1", port))
        for _ in range(10):     # skip the node's own queries (it pings newcomers)
            try:
                reply = msgpack.unpackb(s.recv(65536), raw=False, strict_map_key=False)
            except TimeoutError:
                return None
            if reply.get("y") != "q" and reply.get("t") == msg["t"]:
                return reply
        return None


async def test_raw_queries_bad_token_unknown_query_network():
    node = await our_node(None)
    me = InfoHash.random()
    key = InfoHash.from_key("raw")
    put = {"y": "q", "q": "put", "t": 7,
           "a": {"id": me, "h": key, "token": b"\0" * 32, "values": [{"id": 5, "dat": {"body": {"type": 0, "data": b"x"}}}]}}
    try:
        reply = await asyncio.to_thread(raw_request, node.port, put)
        assert reply is not None and reply["e"][0] == 401
        assert node.engine.storage.value_count == 0
        bogus = {"y": "q", "q": "bogus", "t": 8, "a": {"id": me}}
        assert await asyncio.to_thread(raw_request, node.port, bogus) is None
        ping_other_net = {"y": "q", "q": "ping", "t": 9, "n": 16, "a": {"id": me}}
        assert await asyncio.to_thread(raw_request, node.port, ping_other_net) is None
        ping = {"y": "q", "q": "ping", "t": 10, "a": {"id": me}}
        reply = await asyncio.to_thread(raw_request, node.port, ping)
        assert reply["t"] == 10 and reply["r"]["sa"] == bytes([127, 0, 0, 1])
        assert node.engine.stats["dropped_malformed"] >= 1
        assert node.engine.stats["dropped_network"] >= 1
    finally:
        await node.stop()


@pytest.mark.slow
async def test_ipv6_only_node_with_dhtnode(dhtnode_bin):
    d0 = Dhtnode().start()
    d1 = Dhtnode(bootstrap=f"[::1]:{d0.port}").start()
    node = DhtNode(NodeConfig(bind6="::1", ipv4=False, bootstrap=[("::1", d0.port)]))
    try:
        await node.start()
        assert await node.wait_connected(10)
        assert await node.put(InfoHash.from_key("v6key"), new_value(b"over-ipv6", utype="text/plain")) >= 1
        m = d1.cmd("g v6key")
        await wait_line(d1, '"over-ipv6"', m)
        m = d1.cmd("p v6key2 from-d1")
        await wait_line(d1, "Put: success", m)
        assert [v.data for v in await node.get(InfoHash.from_key("v6key2"))] == [b"from-d1"]
        stats = node.stats()
        assert stats["good6"] >= 1 and stats["nodes4"] == 0
    finally:
        await node.stop()
        d1.stop()
        d0.stop()


async def test_state_file_rejoins_without_bootstrap(dhtnodes, tmp_path):
    d0, d1 = dhtnodes(2)
    state = tmp_path / "nodes.state"
    first = await our_node(d0, state_file=state)
    await asyncio.sleep(1.0)
    await first.stop()                     # saves the good nodes it knows
    saved = state.read_text()
    assert str(d0.port) in saved
    again = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, state_file=state))
    try:
        await again.start()                # no bootstrap: only the saved nodes
        assert await again.wait_connected(5)
        assert await again.put(InfoHash.from_key("rejoined"), new_value(b"back")) >= 1
    finally:
        await again.stop()
