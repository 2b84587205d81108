"""The asyncio adapter's socket handling (node.py), on real loopback sockets.

Since issue 11 the node reads its socket itself (a burst is drained in one wake-up) and
sends with one `sendto`; what the asyncio transport did for it must still hold: a send the
kernel refuses for now (EAGAIN) waits in order in a bounded backlog, anything over the bound
is dropped and counted, and send errors are counted, never raised.
"""

from __future__ import annotations

import asyncio
import os
import socket

from sipdht.dht import node as node_mod
from sipdht.dht.messages import decode, encode_query
from sipdht.dht.node import DhtNode, NodeConfig


class Refusing:
    """A real UDP socket whose sendto refuses (EAGAIN) the next `busy` datagrams."""

    def __init__(self, sock: socket.socket, busy: int) -> None:
        self.sock, self.busy = sock, busy

    def sendto(self, data: bytes, addr) -> int:
        if self.busy > 0:
            self.busy -= 1
            raise BlockingIOError
        return self.sock.sendto(data, addr)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


async def started() -> DhtNode:
    node = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, rate_limit=False))
    await node.start()
    return node


def client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def replies(sock: socket.socket, want: int, timeout: float = 5.0) -> list[int]:
    """tids of the replies received, until `want` of them or the timeout."""
    loop = asyncio.get_running_loop()
    got: list[int] = []
    deadline = loop.time() + timeout
    while len(got) < want and loop.time() < deadline:
        try:
            msg = decode(sock.recv(65536))
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        if msg.kind == "r":
            got.append(msg.tid)
    return got


async def test_a_burst_is_answered_in_order_when_the_socket_refuses_for_a_while() -> None:
    node = await started()
    endpoint = node._endpoints[4]
    endpoint.sock = Refusing(endpoint.sock, busy=3)          # type: ignore[assignment]
    sock = client()
    try:
        me = os.urandom(20)
        for tid in range(1, 51):
            sock.sendto(encode_query("ping", tid, {"id": me}, client=True),
                        ("127.0.0.1", node.port))
        tids, dropped = await replies(sock, 50), node.stats().get("send_dropped_backlog", 0)
    finally:
        sock.close()
        await node.stop()
    assert tids == list(range(1, 51)) and dropped == 0


async def test_the_backlog_is_bounded_and_what_it_drops_is_counted(monkeypatch) -> None:
    monkeypatch.setattr(node_mod, "MAX_BACKLOG", 10)
    node = await started()
    endpoint = node._endpoints[4]
    refusing = Refusing(endpoint.sock, busy=10**9)            # never writable ...
    endpoint.sock = refusing                                  # type: ignore[assignment]
    sock = client()
    try:
        me = os.urandom(20)
        for tid in range(1, 31):
            sock.sendto(encode_query("ping", tid, {"id": me}, client=True),
                        ("127.0.0.1", node.port))
        for _ in range(100):                                  # bounded wait: all read
            if node.stats().get("received", 0) >= 30:
                break
            await asyncio.sleep(0.01)
        dropped = node.stats().get("send_dropped_backlog", 0)
        refusing.busy = 0                                     # ... until now
        tids = await replies(sock, 10)
    finally:
        sock.close()
        await node.stop()
    assert dropped == 20 and tids == list(range(1, 11))


async def test_a_send_error_is_counted_not_raised() -> None:
    node = await started()
    sock = client()
    try:
        node.engine.ctx.send(b"x", ("127.0.0.1", 0))     # port 0: EINVAL from the kernel
        node._after()
        sock.sendto(encode_query("ping", 7, {"id": os.urandom(20)}, client=True),
                    ("127.0.0.1", node.port))
        errors, tids = node.stats().get("socket_errors", 0), await replies(sock, 1)
    finally:
        sock.close()
        await node.stop()
    assert errors == 1 and tids == [7]
