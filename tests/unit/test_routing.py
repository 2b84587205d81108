"""Routing table: bucket splitting, caching, node liveness and XOR ordering."""

from __future__ import annotations

import random

import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.routing import (
    MAX_FAILURES,
    NODE_EXPIRE_TIME,
    NODE_GOOD_TIME,
    K,
    Node,
    RoutingTable,
)

TOP = 1 << 159  # ids >= TOP share no prefix bit with ME
ME = InfoHash(bytes(20))
ADDR = ("203.0.113.1", 4222)
T0 = 1000.0


def h(n: int) -> InfoHash:
    return InfoHash(n.to_bytes(20, "big"))


def addr(i: int) -> tuple[str, int]:
    return (f"203.0.113.{i % 250 + 1}", 4000 + i)


def expire(node: Node) -> None:
    for _ in range(MAX_FAILURES):
        node.failed()


def full_far_table() -> tuple[RoutingTable, list[InfoHash]]:
    """ME=0, two buckets: [0, TOP) empty-ish and a full far bucket [TOP, 2**160)."""
    table = RoutingTable(ME, rng=random.Random(1))
    far = [h(TOP + i) for i in range(1, K + 1)]
    for i, nid in enumerate(far):
        assert table.update(nid, addr(i), T0, confirm=2) is not None
    table.update(h(1), addr(99), T0, confirm=2)  # forces the split: the only bucket is mine
    assert [b.lower for b in table.buckets] == [0, TOP]
    return table, far


def test_insert_up_to_k_in_one_bucket():
    table = RoutingTable(ME)
    ids = [h(TOP + i) for i in range(K)]
    for i, nid in enumerate(ids):
        node = table.update(nid, addr(i), T0, confirm=0)
        assert node is not None and node.id == nid and node.addr == addr(i)
    assert len(table) == K
    assert len(table.buckets) == 1
    assert {n.id for n in table.buckets[0].nodes} == set(ids)
    assert all(table.find(nid) is not None for nid in ids)
    assert table.find(h(TOP + K)) is None


def test_split_when_full_and_containing_my_id():
    table = RoutingTable(ME)
    low = [h(i) for i in range(1, 5)]
    high = [h(TOP + i) for i in range(1, 5)]
    for i, nid in enumerate(low + high):
        table.update(nid, addr(i), T0, confirm=1)
    newcomer = h(TOP + 100)
    node = table.update(newcomer, addr(50), T0 + 1, confirm=2)
    assert node is not None
    assert [b.lower for b in table.buckets] == [0, TOP]
    assert {n.id for n in table.buckets[0].nodes} == set(low)
    assert {n.id for n in table.buckets[1].nodes} == set(high) | {newcomer}
    assert table.bucket_of(newcomer) is table.buckets[1]
    assert table.bucket_of(ME) is table.buckets[0]
    assert len(table) == K + 1


def test_repeated_split_towards_my_id():
    """Nine ids all in [2**158, 2**159): needs two splits, then the last one is far -> cached."""
    table = RoutingTable(ME)
    ids = [h((1 << 158) + i) for i in range(K + 1)]
    results = [table.update(nid, addr(i), T0, confirm=2) for i, nid in enumerate(ids)]
    assert all(r is not None for r in results[:K])
    assert results[K] is None
    assert [b.lower for b in table.buckets] == [0, 1 << 158, TOP]
    mid = table.buckets[1]
    assert len(mid.nodes) == K and mid.cached is not None and mid.cached.id == ids[K]
    assert table.buckets[0].nodes == [] and table.buckets[2].nodes == []


def test_far_bucket_does_not_split_caches_and_promotes_on_remove():
    table, far = full_far_table()
    extra = h(TOP + 1000)
    assert table.update(extra, addr(70), T0, confirm=2) is None
    far_bucket = table.buckets[1]
    assert len(table.buckets) == 2
    assert far_bucket.cached is not None and far_bucket.cached.id == extra
    assert table.find(extra) is None
    assert extra not in {n.id for n in table.closest(extra, count=50)}

    table.remove(far[3])
    assert table.find(far[3]) is None
    promoted = table.find(extra)
    assert promoted is not None and promoted.addr == addr(70)
    assert far_bucket.cached is None
    assert len(far_bucket.nodes) == K


def test_cached_candidate_newest_first_hand_wins():
    table, _ = full_far_table()
    far_bucket = table.buckets[1]
    table.update(h(TOP + 500), addr(1), T0, confirm=0)
    assert far_bucket.cached.id == h(TOP + 500)
    table.update(h(TOP + 501), addr(2), T0, confirm=1)
    assert far_bucket.cached.id == h(TOP + 501)
    table.update(h(TOP + 502), addr(3), T0, confirm=0)  # gossip does not evict a first-hand one
    assert far_bucket.cached.id == h(TOP + 501)


def test_expired_node_replaced_by_newcomer():
    table, far = full_far_table()
    victim = table.find(far[2])
    expire(victim)
    assert victim.is_expired
    newcomer = h(TOP + 777)
    node = table.update(newcomer, addr(77), T0 + 5, confirm=0)
    assert node is not None
    assert table.find(far[2]) is None
    assert table.find(newcomer) is node
    assert len(table.buckets[1].nodes) == K
    assert table.buckets[1].time == T0 + 5


def test_expire_drops_expired_and_promotes_cached():
    table, far = full_far_table()
    table.update(h(TOP + 900), addr(9), T0, confirm=2)
    expire(table.find(far[0]))
    dropped = table.expire()
    assert [n.id for n in dropped] == [far[0]]
    assert table.find(far[0]) is None
    assert table.find(h(TOP + 900)) is not None


def test_closest_matches_brute_force_and_excludes_expired():
    rng = random.Random(42)
    me = InfoHash(rng.randbytes(20))
    table = RoutingTable(me, rng=random.Random(7))
    for i in range(500):
        table.update(InfoHash(rng.randbytes(20)), addr(i), T0, confirm=rng.choice((0, 1, 2)))
    everyone = table.nodes()
    assert len(everyone) == len(table) > 50
    assert len(table.buckets) > 5
    for node in rng.sample(everyone, 20):
        expire(node)
    alive = [n for n in everyone if not n.is_expired]

    targets = [me, InfoHash(rng.randbytes(20))] + [n.id for n in rng.sample(alive, 3)]
    targets += [InfoHash(rng.randbytes(20)) for _ in range(20)]
    for target in targets:
        for count in (1, K, 50, 1000):
            got = table.closest(target, count)
            want = sorted(alive, key=lambda n: n.id.distance(target))[:count]
            assert [n.id for n in got] == [n.id for n in want]
            assert not any(n.is_expired for n in got)

    now = T0 + 10
    good = [n for n in alive if n.is_good(now)]
    assert 0 < len(good) < len(alive)
    for target in targets:
        got = table.closest(target, K, now=now, good_only=True)
        want = sorted(good, key=lambda n: n.id.distance(target))[:K]
        assert [n.id for n in got] == [n.id for n in want]


def test_closest_good_only_needs_now():
    table = RoutingTable(ME)
    with pytest.raises(ValueError):
        table.closest(ME, good_only=True)


def test_good_dubious_transitions():
    table = RoutingTable(ME)
    nid = h(TOP + 1)
    node = table.update(nid, ADDR, T0, confirm=0)
    assert not node.is_good(T0) and not node.is_expired
    assert table.dubious(T0) == [node] and table.good_count(T0) == 0

    table.update(nid, ADDR, T0, confirm=1)  # a query is not a reply
    assert not node.is_good(T0)

    table.update(nid, ADDR, T0 + 1, confirm=2)
    assert node.is_good(T0 + 1)
    assert table.good_count(T0 + 1) == 1 and table.dubious(T0 + 1) == []

    # Silence past NODE_EXPIRE_TIME makes it dubious again.
    assert node.is_good(T0 + 1 + NODE_EXPIRE_TIME)
    assert not node.is_good(T0 + 1 + NODE_EXPIRE_TIME + 0.1)
    assert table.dubious(T0 + 1 + NODE_EXPIRE_TIME + 0.1) == [node]

    # Hearing a query keeps it good while the last reply is within NODE_GOOD_TIME.
    later = T0 + 1 + NODE_GOOD_TIME - 10
    node.heard(later, reply=False)
    assert node.is_good(later)
    node.heard(later + 20, reply=False)
    assert not node.is_good(later + 20)

    # Three unanswered requests in a row: expired, neither good nor dubious.
    node.heard(later + 30, reply=True)
    node.failed()
    node.failed()
    assert node.is_good(later + 30) and not node.is_expired
    node.failed()
    assert node.is_expired and not node.is_good(later + 30)
    assert table.dubious(later + 30) == [] and table.good_count(later + 30) == 0
    assert table.closest(nid) == []

    # A reply resurrects it.
    table.update(nid, ADDR, later + 40, confirm=2)
    assert node.failures == 0 and node.is_good(later + 40)


def test_update_moved_address():
    table = RoutingTable(ME)
    nid = h(TOP + 5)
    node = table.update(nid, ("203.0.113.1", 1000), T0, confirm=2)
    same = table.update(nid, ("198.51.100.9", 2000), T0 + 1, confirm=0)
    assert same is node and node.addr == ("203.0.113.1", 1000)  # gossip cannot move it
    assert node.time == T0
    table.update(nid, ("198.51.100.9", 2000), T0 + 2, confirm=1)
    assert node.addr == ("203.0.113.1", 1000) and node.time == T0   # a spoofable query: no
    later = T0 + NODE_EXPIRE_TIME + 1                                # no longer good ...
    moved = table.update(nid, ("198.51.100.9", 2000), later, confirm=1)
    assert moved is node and node.addr == ("198.51.100.9", 2000)     # ... then it may move
    assert node.time == later and node.reply_time == T0
    table.update(nid, ("198.51.100.10", 3000), later + 1, confirm=2)   # a reply always moves it
    assert node.addr == ("198.51.100.10", 3000)
    assert len(table) == 1


def test_my_id_never_inserted():
    me = InfoHash.get("me")
    table = RoutingTable(me)
    for confirm in (0, 1, 2):
        assert table.update(me, ADDR, T0, confirm=confirm) is None
    assert len(table) == 0 and table.find(me) is None


def test_bucket_time_tracks_inserts_and_replies():
    table = RoutingTable(ME)
    nid = h(TOP + 1)
    table.update(nid, ADDR, T0, confirm=0)
    assert table.buckets[0].time == T0
    table.update(nid, ADDR, T0 + 50, confirm=1)
    assert table.buckets[0].time == T0
    table.update(nid, ADDR, T0 + 60, confirm=2)
    assert table.buckets[0].time == T0 + 60


def test_stale_buckets_ids_inside_range():
    rng = random.Random(3)
    table = RoutingTable(ME, rng=random.Random(11))
    for i in range(200):
        table.update(InfoHash(rng.randbytes(20)), addr(i), T0, confirm=2)
    assert len(table.buckets) > 4
    assert table.stale_buckets(T0 + NODE_EXPIRE_TIME) == []

    fresh = table.buckets[-1]
    fresh_node = fresh.nodes[0]
    table.update(fresh_node.id, fresh_node.addr, T0 + 500, confirm=2)
    dead = table.buckets[-2]
    for node in dead.nodes:
        expire(node)

    now = T0 + NODE_EXPIRE_TIME + 1
    stale = table.stale_buckets(now)
    expected = [b for b in table.buckets if b.nodes and b is not fresh and b is not dead]
    assert len(stale) == len(expected)
    for (target, node), bucket in zip(stale, expected, strict=True):
        assert isinstance(target, InfoHash)
        assert bucket.lower <= target.int < bucket.upper
        assert node in bucket.nodes and not node.is_expired
    assert all(t.int != b.lower for (t, _), b in zip(stale, expected, strict=True))  # random
    assert table.stale_buckets(now, age=10 * NODE_EXPIRE_TIME) == []
