"""An exception raised while handling a remote datagram is counted and logged rate-limited.

Found in review: each one reached asyncio's handler, which logged a full traceback per
datagram (200 puts = 517 KB of log). A bug that remote input can reach must not let a
peer fill the disk: one line at most per interval, no traceback, and a counter.
Real UDP on loopback; the "bug" is a store policy whose signature check raises.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import encode_query
from sipdht.dht.node import DhtNode, NodeConfig
from sipdht.dht.storage import EditPolicy
from sipdht.dht.values import Value, pack

PEER = InfoHash(b"\x11" * 20)
KEY = InfoHash.get("k")


def broken_verify(value: Value) -> bool:
    raise RuntimeError("verifier bug")


async def flood_puts(port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    loop = asyncio.get_running_loop()
    try:
        sock.sendto(encode_query("get", 1, {"id": PEER, "h": KEY}), ("127.0.0.1", port))
        for _ in range(5):                      # the node may ping us first
            reply = msgpack.unpackb(await loop.run_in_executor(None, sock.recv, 65536),
                                    raw=False)
            if reply.get("y") == "r" and reply.get("t") == 1:
                break
        token = reply["r"]["token"]
        for i in range(count):
            value = Value(id=i + 1, data=b"x", owner=b"k", seq=1, signature=b"s")
            sock.sendto(encode_query("put", i + 2, {"id": PEER, "h": KEY, "token": token,
                                                    "values": [pack(value)]}),
                        ("127.0.0.1", port))
            if i % 50 == 49:
                await asyncio.sleep(0.05)      # let the node read (its socket buffer is finite)
    finally:
        sock.close()


async def test_exceptions_from_remote_input_are_counted_not_flooded(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False,
                                  policy=EditPolicy(verify=broken_verify)))
        await node.start()
        try:
            await flood_puts(node.port, 200)
            for _ in range(50):                 # bounded wait for the node to read them all
                if node.stats().get("receive_errors", 0) >= 200:
                    break
                await asyncio.sleep(0.05)
            errors, alive = node.stats().get("receive_errors", 0), node.engine is not None
        finally:
            await node.stop()
    assert errors == 200 and alive
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(noisy) <= 2, [r.getMessage()[:80] for r in noisy]
    assert not any(r.exc_info for r in caplog.records)
    assert sum(len(r.getMessage()) for r in caplog.records) < 2000
    assert any("RuntimeError" in r.getMessage() for r in noisy)
