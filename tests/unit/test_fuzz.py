"""Robustness: random and mutated datagrams into one DhtEngine.

Nothing may escape receive_datagram / handle_timer / datagrams_to_send, every datagram
is counted, and what the engine holds (requests, partial messages, storage, routing
table, Python heap) stays under fixed bounds.

The bulk (> 100,000 datagrams) is a plain seeded random loop over mutated valid
messages; the Hypothesis tests add shrinkable random bytes, wrong-typed maps and
mutations, with derandomize=True so every run is the same.
"""

from __future__ import annotations

import gc
import random
import traceback
import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipdht.dht.engine import DhtEngine
from sipdht.dht.fragments import MAX_PARTIAL_BYTES, MAX_PARTIALS, MTU, Reassembler
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import (
    QUERIES,
    decode,
    encode_error,
    encode_fragment,
    encode_legacy_update,
    encode_query,
    encode_reply,
    pack_nodes,
)
from sipdht.dht.routing import K
from sipdht.dht.values import Value, pack, packb

T0 = 1000.0
ME = InfoHash(b"\x5a" * 20)
KEYS = [InfoHash.get(f"key{i}") for i in range(4)]
PEERS = [(InfoHash(bytes([i + 1]) * 20), (f"198.51.100.{i + 1}", 4000 + i)) for i in range(12)]
PEERS += [(InfoHash(bytes([0x80 + i]) * 20), (f"2001:db8::{i + 1}", 4222)) for i in range(4)]

# fixed bounds on what one engine may hold
MAX_TABLE_NODES = 2 * 161 * K
MAX_STORAGE = 4 * 1024 * 1024
MAX_HEAP_GROWTH = 24 * 1024 * 1024
MAX_SETTLED_HEAP = 4 * 1024 * 1024

SETTINGS = settings(deadline=None, derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


def new_engine() -> DhtEngine:
    return DhtEngine(ME, now=T0)


# --- seed corpus: valid messages of every kind ------------------------------------------------


def seed_messages(e: DhtEngine, rng: random.Random, pending: list[tuple[int, tuple]]) -> list[
        tuple[bytes, tuple[str, int]]]:
    """Valid datagrams (with real tokens and, for replies, the engine's pending tids)."""
    out: list[tuple[bytes, tuple[str, int]]] = []

    def tid() -> int:
        return rng.randrange(1, 2**32)

    def value() -> Value:
        size = rng.choice([0, 5, 40, 300, 900, 2500])
        return Value(id=rng.randrange(1, 2**64), type=rng.choice([0, 1, 5, 9]),
                     data=rng.randbytes(size), utype=rng.choice(["", "text/plain"]),
                     seq=rng.randrange(3), owner=rng.choice([None, b"K" * 30]),
                     signature=b"S" * 16)

    for pid, addr in PEERS:
        key = rng.choice(KEYS)
        tok = e.tokens.make(addr)
        vals = [value() for _ in range(rng.randrange(1, 3))]
        inline = [pack(v) for v in vals if len(packb(v)) < 250]
        fam_nodes = [(bytes([rng.randrange(256)]) * 20, (f"203.0.113.{rng.randrange(1, 250)}",
                                                         rng.randrange(1, 65536)))
                     for _ in range(rng.randrange(4))]
        out += [
            (encode_query("ping", tid(), {"id": pid}), addr),
            (encode_query("find", tid(), {"id": pid, "target": key, "w": [2, 10]}), addr),
            (encode_query("get", tid(), {"id": pid, "h": key}), addr),
            (encode_query("get", tid(), {"id": pid, "h": key,
                                         "q": {"s": [1, 4], "w": [{"f": 2, "v": 0}]}}), addr),
            (encode_query("put", tid(), {"id": pid, "h": key, "token": tok, "values": inline
                                         or [pack(Value(id=1, data=b"x"))]}), addr),
            (encode_query("listen", tid(), {"id": pid, "h": key, "token": tok,
                                            "sid": rng.randrange(1, 9), "ve": rng.randrange(2)}),
             addr),
            (encode_query("refresh", tid(), {"id": pid, "h": key, "token": tok,
                                             "vid": rng.choice([1, vals[0].id])}), addr),
            (encode_query("update", tid(), {"id": pid, "sid": rng.randrange(2**32),
                                            "re": [1, 2], "token": tok}), addr),
            (encode_legacy_update(rng.randrange(2**32), {"id": pid, "exp": [1]}), addr),
            (encode_reply(tid(), {"id": pid, "sa": b"\x7f\x00\x00\x01", "token": tok}), addr),
            (encode_error(tid(), rng.choice([203, 401, 404]), "err", pid), addr),
        ]
        # a fragmented put: header then its fragments (in order)
        big = Value(id=rng.randrange(1, 2**64), data=rng.randbytes(rng.randrange(700, 4000)))
        blob, t = packb(big), tid()
        out.append((encode_query("put", t, {"id": pid, "h": key, "token": tok,
                                            "values": [len(blob)]}), addr))
        out += [(encode_fragment(t, 0, o, blob[o:o + MTU]), addr) for o in range(0, len(blob), MTU)]
        if fam_nodes:
            out.append((encode_reply(tid(), {"id": pid, "n4": pack_nodes(fam_nodes, 4)}), addr))
    # replies and errors to the engine's own requests, so the matching paths run too
    for rtid, raddr in pending:
        pid = next((p for p, a in PEERS if a == raddr), PEERS[0][0])
        nodes = [(p, a) for p, a in rng.sample(PEERS[:12], 3)]
        body = {"id": pid, "sa": b"\xc6\x33\x64\x01", "token": bytes(32), "n4": pack_nodes(nodes, 4)}
        if rng.random() < 0.5:
            body["values"] = [pack(Value(id=rng.randrange(1, 2**64), data=b"v"))]
        out.append((encode_reply(rtid, body), raddr))
        out.append((encode_error(rtid, rng.choice([401, 404, 203]), "x", pid), raddr))
    return out


# --- mutations ---------------------------------------------------------------------------------

WRONG: list[Any] = [None, True, False, -1, 0, 1, 2**32, 2**64 - 1, -(2**63), 1.5, "", "str",
                    "ping", b"", b"\x00" * 19, b"\x01" * 20, b"\x02" * 21, b"\x03" * 32,
                    b"\x04" * 26, b"\x05" * 38, [], [1, 2], [b"x"], {}, {"a": 1},
                    {0: {"o": 0, "d": b"x"}}, {"s": [], "w": []}, [70000], [65568] * 3]


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def structural_mutation(data: bytes, rng: random.Random) -> bytes:
    """Decode, replace or delete one nested field with a wrongly typed value, re-encode."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return data
    paths = [p for p in _paths(obj) if p]
    if not paths:
        return data
    path = rng.choice(paths)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(WRONG)
    return msgpack.packb(obj, use_bin_type=True)


def mutate(data: bytes, rng: random.Random, other: bytes) -> bytes:
    r = rng.random()
    b = bytearray(data)
    if r < 0.10:
        return data                                            # valid, keeps flows going
    if r < 0.30:
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif r < 0.40:
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif r < 0.50:
        b = b[:rng.randrange(len(b))]
    elif r < 0.57:
        i = rng.randrange(len(b) + 1)
        b[i:i] = rng.randbytes(rng.randrange(1, 16))
    elif r < 0.62:
        i = rng.randrange(len(b))
        del b[i:i + rng.randrange(1, 16)]
    elif r < 0.67:
        b = b[:rng.randrange(len(b))] + other[rng.randrange(len(other)):]
    elif r < 0.90:
        return structural_mutation(data, rng)
    else:
        return rng.randbytes(rng.randrange(0, 80))
    return bytes(b)


# --- the bulk run (plain seeded loop) --------------------------------------------------------

BULK_DATAGRAMS = 100_000
TRACE_FROM = 40_000


@dataclass
class BulkResult:
    fed: int = 0
    escaped: list[tuple[str, str, bytes]] = field(default_factory=list)  # (where, error, datagram)
    stats: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    partials: int = 0
    partial_bytes: int = 0
    storage: int = 0
    table_nodes: int = 0
    heap_growth: int = 0
    settled_requests: int = 0
    settled_partials: int = 0
    settled_partial_bytes: int = 0
    settled_storage: int = 0
    settled_heap: int = 0
    top: list[str] = field(default_factory=list)


def _guard(result: BulkResult, where: str, fn, *args, data: bytes = b"") -> Any:
    try:
        return fn(*args)
    except Exception as exc:   # recorded, then asserted on by the tests below
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        result.escaped.append((where, f"{type(exc).__name__}: {exc} at {frame.filename}:"
                                      f"{frame.lineno} in {frame.name}", data))
        return None


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.fixture(scope="module")
def bulk() -> BulkResult:
    rng = random.Random(20260806)
    e = new_engine()
    res = BulkResult()
    now = T0
    # the engine also runs operations of its own, so replies and updates can match
    for pid, addr in PEERS[:6]:
        e.add_known_node(pid, addr, now)
    e.listen(KEYS[0], now)
    e.listen(KEYS[1], now)
    try:
        seeds: list[tuple[bytes, tuple[str, int]]] = []
        for i in range(BULK_DATAGRAMS):
            if i % 1000 == 0:
                pending = [(r.tid, r.addr) for r in list(e.requests.pending.values())[:20]]
                seeds = seed_messages(e, rng, pending)
                if i % 10_000 == 0:
                    _guard(res, "get", e.get, rng.choice(KEYS), now)
                    _guard(res, "put", e.put, rng.choice(KEYS),
                           Value(id=rng.randrange(1, 2**64), data=rng.randbytes(900)), now)
            if i == TRACE_FROM:
                # after warm-up (caches, first values, listeners): what the engine keeps
                # from here on is what tracemalloc still sees at the end
                gc.collect()
                tracemalloc.start()
            data, addr = rng.choice(seeds)
            if rng.random() < 0.05:            # sometimes from an unknown source
                addr = (f"203.0.113.{rng.randrange(1, 255)}", rng.randrange(1, 65536))
            data = mutate(data, rng, rng.choice(seeds)[0])
            # mostly ~1 ms apart, sometimes bursts at the same instant (rate limits)
            now += rng.choice([0.0, 0.0005, 0.001, 0.002])
            res.fed += 1
            _guard(res, "receive_datagram", e.receive_datagram, data, addr, now, data=data)
            if i % 50 == 0:
                _guard(res, "handle_timer", e.handle_timer, now)
                _guard(res, "datagrams_to_send", e.datagrams_to_send, now)
                while e.next_event() is not None:
                    pass
        _guard(res, "handle_timer", e.handle_timer, now)
        _guard(res, "datagrams_to_send", e.datagrams_to_send, now)
        res.stats = dict(e.stats)
        res.requests = len(e.requests.pending)
        res.partials = len(e.reassembler.partials)
        res.partial_bytes = e.reassembler.total
        res.storage = e.storage.total_size
        res.table_nodes = sum(len(t) for t in e.tables.values())
        res.heap_growth = _heap()
        # let everything in flight time out
        for _ in range(60):
            now += 0.5
            _guard(res, "handle_timer", e.handle_timer, now)
            _guard(res, "datagrams_to_send", e.datagrams_to_send, now)
        res.settled_requests = len(e.requests.pending)
        res.settled_partials = len(e.reassembler.partials)
        res.settled_partial_bytes = e.reassembler.total
        # 11 minutes later values (10 min types) and unrefreshed listeners are gone too
        for _ in range(330):
            now += 2.0
            _guard(res, "handle_timer", e.handle_timer, now)
            _guard(res, "datagrams_to_send", e.datagrams_to_send, now)
        res.settled_storage = e.storage.total_size
        res.settled_heap = _heap()
        snap = tracemalloc.take_snapshot()
        res.top = [str(s) for s in snap.statistics("lineno")[:8]]
    finally:
        tracemalloc.stop()
    return res


@pytest.mark.slow
def test_bulk_every_datagram_counted(bulk: BulkResult) -> None:
    assert bulk.fed == BULK_DATAGRAMS
    assert bulk.stats["received"] == bulk.fed
    # the run really exercised the engine, not only the decoder
    assert bulk.stats["dropped_malformed"] > 10_000
    for key in ("query_ping", "query_find", "query_get", "query_put", "query_listen",
                "query_refresh", "query_update", "store_new", "error_sent_401", "sent"):
        assert bulk.stats.get(key, 0) > 0, key
    assert bulk.stats.get("dropped_bad_id", 0) + bulk.stats.get("dropped_network", 0) > 0


@pytest.mark.slow
def test_bulk_no_exception_escapes(bulk: BulkResult) -> None:
    assert bulk.escaped == []


@pytest.mark.slow
def test_bulk_memory_bounded(bulk: BulkResult) -> None:
    assert bulk.requests <= 4000
    assert bulk.partials <= MAX_PARTIALS
    assert bulk.partial_bytes <= MAX_PARTIAL_BYTES
    assert bulk.storage <= MAX_STORAGE
    assert bulk.table_nodes <= MAX_TABLE_NODES
    assert bulk.heap_growth <= MAX_HEAP_GROWTH, "\n".join(bulk.top)
    assert len(bulk.stats) <= 1000
    # once the clock moves on, everything in flight is gone
    assert bulk.settled_partials == 0 and bulk.settled_partial_bytes == 0
    assert bulk.settled_requests <= 64
    # eleven minutes later: values, listeners and partials are gone, and so is their memory
    assert bulk.settled_storage <= 256 * 1024
    assert bulk.settled_heap <= MAX_SETTLED_HEAP, "\n".join(bulk.top)


# --- Hypothesis: random bytes ------------------------------------------------------------------

ADDRS = [a for _, a in PEERS]


def feed_all(e: DhtEngine, datagrams: list[bytes], addrs: list[int], now: float = T0) -> None:
    before = e.stats["received"]
    for i, data in enumerate(datagrams):
        e.receive_datagram(data, ADDRS[addrs[i % len(addrs)] % len(ADDRS)], now + i * 0.01)
    e.handle_timer(now + len(datagrams) * 0.01)
    e.datagrams_to_send(now + len(datagrams) * 0.01)
    assert e.stats["received"] - before == len(datagrams)
    check_bounds(e)


def check_bounds(e: DhtEngine) -> None:
    assert len(e.reassembler.partials) <= MAX_PARTIALS
    assert 0 <= e.reassembler.total <= MAX_PARTIAL_BYTES
    assert e.storage.total_size <= MAX_STORAGE
    assert sum(len(t) for t in e.tables.values()) <= MAX_TABLE_NODES
    assert len(e.requests.pending) <= 4000


addr_idx = st.lists(st.integers(0, 255), min_size=1, max_size=8)


@settings(SETTINGS, max_examples=150)
@given(st.lists(st.binary(max_size=120), min_size=40, max_size=80), addr_idx)
def test_random_bytes(datagrams: list[bytes], addrs: list[int]) -> None:
    e = new_engine()
    feed_all(e, datagrams, addrs)
    not_a_map = sum(1 for d in datagrams if not d or not (0x80 <= d[0] <= 0x8F or d[0] in (0xDE, 0xDF)))
    assert e.stats["dropped_malformed"] >= not_a_map


# --- Hypothesis: maps with the right keys and wrong types --------------------------------------

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=6), st.binary(max_size=40),
    st.sampled_from([b"\x01" * 20, b"\x02" * 32, b"\x03" * 26, b"\x04" * 38, b"\x7f\0\0\1"]),
)
NESTED_KEYS = st.sampled_from(["o", "d", "f", "v", "s", "w", "id", "body", "dat", 0, 1, 2])


@st.composite
def _anyval(draw, depth: int = 2) -> Any:
    """A leaf, or a small array / map of them (cheaper to draw than st.recursive)."""
    shape = draw(st.integers(0, 9))
    if depth == 0 or shape < 7:
        return draw(leaf)
    n = draw(st.integers(0, 3))
    if shape < 8:
        return [draw(_anyval(depth - 1)) for _ in range(n)]
    return {draw(NESTED_KEYS): draw(_anyval(depth - 1)) for _ in range(n)}


anyval = _anyval()
ARG_KEYS = ["id", "h", "target", "q", "token", "vid", "sid", "n4", "n6", "c", "sa", "values",
            "fileds", "w", "ve", "re", "exp"]
PEER_ID = st.sampled_from([bytes(p) for p, _ in PEERS])


@st.composite
def body(draw) -> dict:
    args = {k: draw(anyval) for k in draw(st.lists(st.sampled_from(ARG_KEYS), max_size=5))}
    if draw(st.booleans()):
        args["id"] = draw(PEER_ID)
    return args


@st.composite
def wrong_typed_message(draw) -> bytes:
    kind = draw(st.sampled_from(["q", "r", "e", "p", "u"]))
    obj: dict[Any, Any] = {"t": draw(st.one_of(st.integers(0, 2**32 - 1), anyval))}
    if kind == "q":
        obj["y"] = draw(st.one_of(st.just("q"), anyval))
        obj["q"] = draw(st.one_of(st.sampled_from(sorted(QUERIES)), st.text(max_size=8), anyval))
        obj["a"] = draw(st.one_of(body(), anyval))
    elif kind == "r":
        obj["y"] = "r"
        obj["r"] = draw(st.one_of(body(), anyval))
    elif kind == "e":
        obj["y"] = "e"
        obj["e"] = draw(st.one_of(st.tuples(st.integers(0, 999), st.text(max_size=5)).map(list),
                                  anyval))
        obj["r"] = draw(st.one_of(body(), anyval))
    elif kind == "p":
        obj["y"] = "p"
        obj["p"] = draw(st.one_of(
            st.dictionaries(st.integers(0, 3), st.fixed_dictionaries(
                {"o": st.one_of(st.integers(0, 70000), anyval),
                 "d": st.one_of(st.binary(max_size=64), anyval)}), max_size=3),
            anyval))
    else:
        obj["y"] = "r"
        obj["u"] = draw(st.one_of(body(), anyval))
    if draw(st.booleans()):
        obj["n"] = draw(st.one_of(st.just(0), anyval))
    if draw(st.booleans()):
        obj["s"] = draw(anyval)
    if draw(st.booleans()):
        obj["v"] = draw(anyval)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.slow
@settings(SETTINGS, max_examples=200)
@given(st.lists(wrong_typed_message(), min_size=10, max_size=30), addr_idx)
def test_wrong_typed_maps(datagrams: list[bytes], addrs: list[int]) -> None:
    e = new_engine()
    feed_all(e, datagrams, addrs)
    for data, _dst in e.datagrams_to_send(T0 + 10):
        decode(data)                   # whatever it answers is valid OpenDHT


@settings(SETTINGS, max_examples=100)
@given(anyval)
def test_query_name_of_any_type(name: Any) -> None:
    e = new_engine()
    data = msgpack.packb({"a": {"id": bytes(PEERS[0][0])}, "q": name, "t": 1, "y": "q"},
                         use_bin_type=True)
    e.receive_datagram(data, ADDRS[0], T0)
    assert e.stats["received"] == 1


# --- Hypothesis: mutations of valid messages ---------------------------------------------------


@settings(SETTINGS, max_examples=200)
@given(st.integers(0, 2**32 - 1), st.integers(40, 120), addr_idx)
def test_mutated_valid_messages(seed: int, count: int, addrs: list[int]) -> None:
    rng = random.Random(seed)
    e = new_engine()
    seeds = seed_messages(e, rng, [])
    datagrams = []
    for _ in range(count):
        data, _addr = rng.choice(seeds)
        datagrams.append(mutate(data, rng, rng.choice(seeds)[0]))
    feed_all(e, datagrams, addrs)
    for data, _dst in e.datagrams_to_send(T0 + 10):
        decode(data)


# --- Hypothesis: the reassembler under arbitrary header / fragment sequences -------------------

frag_event = st.one_of(
    st.tuples(st.just("h"), st.integers(1, 6),
              st.lists(st.integers(0, 5000), min_size=1, max_size=3)),
    st.tuples(st.just("f"), st.integers(1, 6),
              st.tuples(st.integers(0, 3), st.integers(0, 6000), st.binary(max_size=1500))),
    st.tuples(st.just("t"), st.floats(0, 4), st.just(None)),
)


@settings(SETTINGS, max_examples=200)
@given(st.lists(frag_event, max_size=60))
def test_reassembler_accounting(events: list) -> None:
    """total always equals the bytes the partials hold; expiry empties everything."""
    e = new_engine()
    r: Reassembler = e.reassembler
    now = T0
    fed = 0
    for what, tid, arg in events:
        if what == "t":
            now += tid
            e.handle_timer(now)
            continue
        if what == "h":
            data = encode_reply(tid, {"id": PEERS[1][0], "values": arg})
        else:
            idx, off, chunk = arg
            data = encode_fragment(tid, idx, off, chunk)
        e.receive_datagram(data, ADDRS[0], now)
        fed += 1
        assert r.total == sum(p.size for p in r.partials.values())
        assert len(r.partials) <= 6
    assert e.stats["received"] == fed
    e.handle_timer(now + 11)
    assert r.partials == {} and r.total == 0
