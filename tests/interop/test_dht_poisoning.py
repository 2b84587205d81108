"""A key stuffed with 1,000 or 3,000 junk values, on real dhtnode and on our nodes (loopback).

The junk comes from 40 loopback addresses (127.0.0.2-41), 25 or 75 values each, so that
no per-IP cap hides it: every storer really holds the 0.7 / 2 MB. Our put must still be
stored and our get must still return the genuine value.
"""

from __future__ import annotations

import asyncio
import socket
import time

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.values import Value, new_value, pack
from tests.harness.dht import our_node
from tests.harness.dhtnode import Dhtnode

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]

JUNK_IPS = [f"127.0.0.{i}" for i in range(2, 42)]
KEY = InfoHash.from_key("poisoned-inbox")


def _token(sock: socket.socket, port: int, me: bytes) -> bytes | None:
    sock.sendto(msgpack.packb({"y": "q", "q": "find", "t": 1, "a": {"id": me, "target": KEY}},
                              use_bin_type=True), ("127.0.0.1", port))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            reply = msgpack.unpackb(sock.recv(65536), raw=False, strict_map_key=False)
        except TimeoutError:
            return None
        if reply.get("y") == "r" and reply.get("t") == 1:
            return reply["r"].get("token")
    return None


def poison(port: int, per_ip: int) -> int:
    """Put PER_IP junk values from each junk IP; returns how many puts were sent."""
    sent = 0
    for n, ip in enumerate(JUNK_IPS):
        me = InfoHash.random()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, 0))
            sock.settimeout(1.0)
            token = _token(sock, port, me)
            assert token, f"no token from 127.0.0.1:{port} for {ip}"
            for i in range(per_ip):
                junk = Value(id=1_000_000 + n * 1000 + i, data=bytes([i]) * 680)
                put = {"y": "q", "q": "put", "t": 100 + i,
                       "a": {"id": me, "h": KEY, "token": token, "values": [pack(junk)]}}
                sock.sendto(msgpack.packb(put, use_bin_type=True), ("127.0.0.1", port))
                sent += 1
        time.sleep(0.02)
    return sent


def describe(node) -> str:
    e = node.engine
    lines = [str(dict(e.stats))]
    for fam, searches in e.searches.by_family.items():
        for key, search in searches.items():
            lines.append(f"search {fam} {key.hex()[:8]}: " + ", ".join(
                f"{sn.node.addr[1]} tok={sn.token is not None} failed={sn.failed} "
                f"slow={sn.slow} acked={list(sn.acked)}" for sn in search.nodes))
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("per_ip", [25, 75])
async def test_poisoned_key_still_takes_a_put_and_gives_the_genuine_value(dhtnode_bin, per_ip):
    d0 = Dhtnode().start()
    ours = []
    try:
        ours = [await our_node(d0) for _ in range(3)]
        storer, putter, getter = ours
        await asyncio.sleep(2.0)
        for port in [d0.port] + [n.port for n in ours]:
            assert await asyncio.to_thread(poison, port, per_ip) == len(JUNK_IPS) * per_ip
        await asyncio.sleep(1.0)
        for node in ours:
            assert len(node.engine.storage.get(KEY)) >= 0.99 * len(JUNK_IPS) * per_ip
        genuine = new_value(b"sip:alice@198.51.100.7", utype="text/plain")
        stored = await asyncio.wait_for(putter.put(KEY, genuine), 60)
        assert stored >= 2, f"put stored on {stored} nodes: {describe(putter)}"
        values = await asyncio.wait_for(getter.get(KEY), 120)
        assert genuine.id in {v.id for v in values}
        assert getter.engine.reassembler.dropped == 0
    finally:
        for node in ours:
            await node.stop()
        d0.stop()
