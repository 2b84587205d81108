"""Reflection amplification, over real UDP: our node answers an address that has not
proven itself with at most 3x the bytes of its query; once the address answers our
ping, its retry gets everything (as a stock dhtnode client would retry)."""

from __future__ import annotations

import asyncio
import socket
import time

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.values import new_value
from tests.harness.dht import our_node

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]

KEY = InfoHash.from_key("amplified")


def exchange(port: int, answer_pings: bool) -> tuple[int, int, list[dict]]:
    """Send one get from 127.0.0.5; (bytes sent, bytes received in 1.5 s, messages)."""
    me = InfoHash.random()
    get = msgpack.packb({"y": "q", "q": "get", "t": 7, "a": {"id": me, "h": KEY, "w": [2, 10]}},
                        use_bin_type=True)
    got: list[dict] = []
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.5", 0))
        sock.settimeout(0.1)
        sock.sendto(get, ("127.0.0.1", port))
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            received += len(data)
            msg = msgpack.unpackb(data, raw=False, strict_map_key=False)
            got.append(msg)
            if answer_pings and msg.get("y") == "q" and msg.get("q") == "ping":
                sock.sendto(msgpack.packb({"y": "r", "t": msg["t"], "r": {"id": me}},
                                          use_bin_type=True), ("127.0.0.1", port))
                sock.sendto(get, ("127.0.0.1", port))          # the retry
    return len(get), received, got


async def test_unproven_source_gets_at_most_three_times_its_query():
    node = await our_node(None)
    try:
        for i in range(20):
            node.engine.storage.store(KEY, new_value(bytes([i]) * 1000), node._now())
        sent, received, got = await asyncio.to_thread(exchange, node.port, False)
        assert 0 < received <= 3 * sent, (sent, received)
        assert {m.get("q") for m in got if m.get("y") == "q"} == {"ping"}   # the challenge
        sent, received, got = await asyncio.to_thread(exchange, node.port, True)
        replies = [m for m in got if m.get("y") == "r" and m.get("t") == 7]
        frags = [m for m in got if m.get("y") == "p" and m.get("t") == 7]
        assert replies and len(replies[-1]["r"]["values"]) == 20 and frags
        assert node.engine.stats["reply_withheld_unproven"] >= 1
    finally:
        await node.stop()
