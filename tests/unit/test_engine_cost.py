"""What the get/find serving shortcuts of issue 11 may and may not change, sans-IO.

- A packed node list is reused for the same target for NODES_CACHE_TIME, never longer.
- Values are packed once and sent inline as they are: the bytes on the wire are exactly
  msgpack's packing of the same reply.
"""

from __future__ import annotations

import os
import random

import msgpack
import pytest

from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import decode, encode_query, encode_reply
from sipdht.dht.serving import MAX_NODES_CACHE, NODES_CACHE_TIME
from sipdht.dht.values import Value, pack, packb

T0 = 1000.0
ME = InfoHash(b"\x55" * 20)
PEER = InfoHash(b"\x11" * 20)
TARGET = InfoHash(b"\x70" * 20)
A = ("203.0.113.10", 4222)


def find_nodes(e: DhtEngine, now: float, tid: int) -> list[bytes]:
    e.receive_datagram(encode_query("find", tid, {"id": PEER, "target": TARGET}), A, now)
    for data, _ in e.datagrams_to_send(now):
        msg = decode(data)
        if msg.kind == "r" and msg.tid == tid:
            return [bytes(nid) for nid, _ in msg.n4]
    raise AssertionError("no reply")


def good_node(e: DhtEngine, nid: InfoHash, port: int, now: float) -> None:
    node = e.tables[4].update(nid, ("198.51.100.7", port), now, 2)     # it replied to us
    assert node is not None and node.is_good(now)


def test_a_node_list_is_at_most_nodes_cache_time_old() -> None:
    e = DhtEngine(ME, now=T0, rate_limit=False)
    e.proofs.prove(A[0], T0)
    good_node(e, InfoHash(b"\x01" * 20), 1001, T0)
    assert find_nodes(e, T0, 1) == [b"\x01" * 20]
    closer = InfoHash(b"\x71" * 20)
    good_node(e, closer, 1002, T0 + 0.1)
    later = T0 + NODES_CACHE_TIME / 2
    assert find_nodes(e, later, 2) == [b"\x01" * 20]            # the same list, reused
    after = T0 + NODES_CACHE_TIME + 0.01
    assert find_nodes(e, after, 3) == [bytes(closer), b"\x01" * 20]


def test_another_target_or_family_is_not_served_from_the_cache() -> None:
    e = DhtEngine(ME, now=T0, rate_limit=False)
    e.proofs.prove(A[0], T0)
    assert find_nodes(e, T0, 1) == []
    good_node(e, InfoHash(b"\x72" * 20), 1003, T0)
    e.receive_datagram(encode_query("find", 2, {"id": PEER, "target": InfoHash(b"\x73" * 20)}),
                       A, T0)
    replies = [decode(d) for d, _ in e.datagrams_to_send(T0)]
    assert [len(m.n4) for m in replies if m.kind == "r" and m.tid == 2] == [1]
    e.receive_datagram(encode_query("find", 3, {"id": PEER, "target": TARGET, "w": [2, 10]}),
                       A, T0)
    replies = [decode(d) for d, _ in e.datagrams_to_send(T0)]
    assert [len(m.n4) for m in replies if m.kind == "r" and m.tid == 3] == [1]


@pytest.mark.parametrize("count", [1, 3, 15, 16, 17, 49])
def test_inline_values_are_the_bytes_msgpack_makes(count: int) -> None:
    rng = random.Random(count)
    values = [Value(id=rng.getrandbits(64) or 1, data=os.urandom(rng.randrange(40)),
                    utype=rng.choice(["", "text/plain"]), priority=rng.choice([0, 3]))
              for _ in range(count)]
    body = {"id": bytes(ME), "sa": bytes([203, 0, 113, 10]), "n4": os.urandom(26),
            "token": os.urandom(32)}
    for network, client in ((0, False), (7, True), (2**32 - 1, False)):
        spliced = encode_reply(9, body, network, client, [packb(v) for v in values])
        plain = msgpack.packb({"r": {**body, "values": [pack(v) for v in values]}, "t": 9,
                               "y": "r", "v": "sd1", **({"n": network} if network else {}),
                               **({"s": True} if client else {})}, use_bin_type=True)
        assert spliced == plain
        assert decode(spliced).values == values


def test_a_value_is_packed_once_and_equal_values_stay_equal() -> None:
    v = Value(id=5, data=b"x")
    first = packb(v)
    assert packb(v) is first
    w = Value(id=5, data=b"x")
    assert w == v and hash(w) == hash(v)
    assert packb(v.with_id(6)) != first           # a changed copy is packed anew


def test_the_node_list_cache_holds_one_window_at_most() -> None:
    """A simulation runs thousands of engines: what they cache must not pile up."""

    e = DhtEngine(ME, now=T0, rate_limit=False)
    e.proofs.prove(A[0], T0)
    for i in range(MAX_NODES_CACHE + 50):
        target = InfoHash(i.to_bytes(20, "big"))
        e.receive_datagram(encode_query("find", i + 1, {"id": PEER, "target": target}), A, T0)
    assert len(e.serving.nodes_cache) == MAX_NODES_CACHE
    find_nodes(e, T0 + NODES_CACHE_TIME, 10_000)
    assert len(e.serving.nodes_cache) == 1
