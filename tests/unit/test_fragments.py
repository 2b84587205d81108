"""Attacks on fragment reassembly found in review, each reproduced before it was fixed.

- 256 partial messages for the whole node, no per-source cap, and fragments handled before
  the rate limiter: spoofed 1-byte fragments (~130 kB/s) stopped every fragmented put;
- fragments arriving before their header were charged only their bytes: datagrams of
  thousands of 1-byte chunks grew the node from 40 to 850 MB in 10 s;
- overlapping chunks were counted twice, completing a value that still had a gap.
"""

from __future__ import annotations

import gc
import tracemalloc

import msgpack
import pytest

from sipdht.dht.engine import DhtEngine
from sipdht.dht.fragments import MAX_PARTIAL_BYTES, MAX_PARTIALS_PER_IP, MTU
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import encode_fragment, encode_query, encode_reply
from sipdht.dht.ratelimit import MAX_PER_IP
from sipdht.dht.values import Value, packb

T0 = 1000.0
ME = InfoHash(b"\x55" * 20)
PEER = InfoHash(b"\x11" * 20)
H = InfoHash.get("sip:alice@example.org")
A = ("203.0.113.10", 4222)           # the honest putter
ATTACKER = ("198.51.100.66", 4222)


def engine() -> DhtEngine:
    return DhtEngine(ME, now=T0)


def token_for(e: DhtEngine, addr=A, now: float = T0) -> bytes:
    e.receive_datagram(encode_query("get", 900, {"id": PEER, "h": H}), addr, now)
    for data, dst in e.datagrams_to_send(now):
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if dst == addr and obj.get("y") == "r" and obj["t"] == 900:
            return obj["r"]["token"]
    raise AssertionError("no token")


def fragmented_put(e: DhtEngine, value: Value, now: float, tid: int = 44) -> None:
    blob = packb(value)
    tok = token_for(e, A, now)
    e.receive_datagram(encode_query("put", tid, {"id": PEER, "h": H, "token": tok,
                                                  "values": [len(blob)]}), A, now)
    for o in range(0, len(blob), MTU):
        e.receive_datagram(encode_fragment(tid, 0, o, blob[o:o + MTU]), A, now)


BIG = Value(id=5, data=b"\xab" * 3000)


def test_spoofed_fragments_from_one_ip_do_not_block_puts() -> None:
    e = engine()
    for tid in range(3000):
        e.receive_datagram(encode_fragment(tid + 1, 0, 0, b"x"), ATTACKER, T0 + tid / 1000)
    fragmented_put(e, BIG, T0 + 3)
    assert e.storage.get(H) == [BIG]


def test_spoofed_fragments_from_many_ips_do_not_block_puts() -> None:
    e = engine()
    for n in range(5000):
        src = (f"198.51.{100 + n // 250}.{n % 250 + 1}", 4222)
        e.receive_datagram(encode_fragment(n + 1, 0, 0, b"x"), src, T0 + n / 5000)
    fragmented_put(e, BIG, T0 + 1)
    assert e.storage.get(H) == [BIG]


def test_fragments_pass_the_rate_limiter_first() -> None:
    e = engine()
    for tid in range(3000):
        e.receive_datagram(encode_fragment(tid + 1, 0, 0, b"x"), ATTACKER, T0)
    assert e.stats["dropped_rate_limit"] >= 3000 - MAX_PER_IP
    assert len(e.reassembler.partials) <= MAX_PARTIALS_PER_IP


def test_fragmented_query_is_charged_one_request() -> None:
    """A put whose fragments came first is not charged again when its header arrives."""
    e = engine()
    tok = token_for(e)
    blob = packb(BIG)
    for i in range(MAX_PER_IP - 2):          # the get above was one; leave room for one
        e.receive_datagram(encode_query("ping", i + 1, {"id": PEER}), A, T0)
    e.datagrams_to_send(T0)
    e.receive_datagram(encode_fragment(44, 0, 0, blob[:MTU]), A, T0)
    for o in range(MTU, len(blob), MTU):
        e.receive_datagram(encode_fragment(44, 0, o, blob[o:o + MTU]), A, T0)
    e.receive_datagram(encode_query("put", 44, {"id": PEER, "h": H, "token": tok,
                                                "values": [len(blob)]}), A, T0)
    assert e.storage.get(H) == [BIG]


def test_unexpected_fragmented_reply_opens_no_partial() -> None:
    e = engine()
    for tid in range(100):
        e.receive_datagram(encode_reply(tid + 1, {"id": PEER, "values": [2000]}), ATTACKER, T0)
    assert e.reassembler.partials == {}
    assert e.stats["unmatched_reply"] == 100


def test_early_chunks_are_charged_their_memory() -> None:
    """160,000 one-byte chunks before any header: datagrams of 4,000 chunks once (now
    malformed, see below), 10,000 datagrams of the most chunks one may carry here."""
    from sipdht.dht.messages import MAX_PARTS_PER_DATAGRAM as PARTS

    datagrams = [msgpack.packb({"p": {i: {"o": 0, "d": b"x"} for i in range(PARTS)},
                                "t": tid + 1, "y": "p"}, use_bin_type=True)
                 for tid in range(160_000 // PARTS)]
    e = engine()
    gc.collect()
    tracemalloc.start()
    try:
        for n, data in enumerate(datagrams):
            e.receive_datagram(data, (f"10.200.{n // 250}.{n % 250 + 1}", 4222), T0)
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.reassembler.total <= MAX_PARTIAL_BYTES
    # what is held stays within what was charged (uncharged, 160,000 chunks held ~40 MB)
    assert grown < MAX_PARTIAL_BYTES * 5 // 4, f"{grown} bytes held for early fragments"


def test_overlapping_chunks_do_not_complete_a_value_with_a_gap() -> None:
    e = engine()
    blob = packb(BIG)
    tok = token_for(e)
    e.receive_datagram(encode_query("put", 44, {"id": PEER, "h": H, "token": tok,
                                                "values": [len(blob)]}), A, T0)
    half = len(blob) // 2 + 10
    e.receive_datagram(encode_fragment(44, 0, 0, blob[:half]), A, T0)
    e.receive_datagram(encode_fragment(44, 0, 5, b"\0" * half), A, T0)   # overlaps: ignored
    assert e.storage.get(H) == []
    e.receive_datagram(encode_fragment(44, 0, half, blob[half:]), A, T0)
    assert e.storage.get(H) == [BIG]


def test_datagram_of_thousands_of_chunks_is_dropped_before_any_work() -> None:
    """Found in review: decoding one 45 kB datagram of 4,000 `p` chunks cost ~8.7 ms, before
    the rate limiter. OpenDHT sends one chunk per datagram, so more than MAX_PARTS_PER_DATAGRAM
    is malformed: dropped and counted, no partial opened. One chunk, as OpenDHT sends, and
    up to the cap still pass."""
    from sipdht.dht.messages import MAX_PARTS_PER_DATAGRAM, MalformedMessage, decode

    flood = msgpack.packb({"p": {i: {"o": 0, "d": b"x"} for i in range(4000)}, "t": 7,
                           "y": "p"}, use_bin_type=True)
    e = engine()
    e.receive_datagram(flood, ATTACKER, T0)
    assert e.stats["dropped_malformed"] == 1
    assert e.reassembler.partials == {}
    over = {i: {"o": 0, "d": b"x"} for i in range(MAX_PARTS_PER_DATAGRAM + 1)}
    with pytest.raises(MalformedMessage):
        decode(msgpack.packb({"p": over, "t": 7, "y": "p"}, use_bin_type=True))
    at_cap = {i: {"o": 0, "d": b"x"} for i in range(MAX_PARTS_PER_DATAGRAM)}
    m = decode(msgpack.packb({"p": at_cap, "t": 7, "y": "p"}, use_bin_type=True))
    assert len(m.fragments) == MAX_PARTS_PER_DATAGRAM
    e.receive_datagram(encode_fragment(8, 0, 0, b"abc"), A, T0)     # OpenDHT's form
    assert e.stats["dropped_malformed"] == 1 and e.reassembler.partials
