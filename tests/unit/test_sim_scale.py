"""The simulation at scale: networks built from the global view, and what an engine costs.

Memory is measured with tracemalloc (bytes Python allocated), never with wall-clock time:
a 10,000-engine network must fit in memory, so an engine and its routing table have a
size budget (issue 11: <= 25 KB per engine at 10,000 engines).
"""

from __future__ import annotations

import random
import tracemalloc

import pytest

from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.routing import K
from sipdht.dht.sim import build, fill_tables, summarize
from sipdht.dht.values import Value, new_value


def traced(fn):
    """(fn's result, bytes it left allocated)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        result = fn()
        return result, tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def key_and_value(rng: random.Random, tag: str) -> tuple[InfoHash, Value]:
    return InfoHash(rng.randbytes(20)), new_value(tag.encode(), vid=rng.getrandbits(63) or 1)


def test_direct_build_sends_nothing_and_gives_converged_tables():
    sim = build(300, seed=3, join="direct")
    assert sim.stats["sent"] == 0                  # no join traffic at all
    for node in sim.nodes:
        table = node.engine.tables[4]
        known = {n.id for n in table.nodes()}
        assert node.engine.id not in known
        closest = sorted((o for o in sim.nodes if o is not node),
                         key=lambda o: o.id.int ^ node.id.int)[:K]
        assert {o.id for o in closest} <= known, f"{node} misses some of its {K} closest"
        assert table.good_count(sim.now) >= 5 * K    # a full bucket per level of 300 nodes
        assert node.connected


def test_direct_build_replays_from_its_seed():
    def tables(seed: int) -> list[list[tuple[bytes, tuple[str, int]]]]:
        sim = build(150, seed=seed, join="direct")
        return [[(bytes(e.id), e.addr) for e in n.engine.tables[4].nodes()] for n in sim.nodes]

    assert tables(8) == tables(8)
    assert tables(8) != tables(9)


def test_tables_share_the_nodes_id_and_address_objects():
    """One id and one address object per simulated node, whichever table holds it, also
    for nodes learnt from datagrams (the decoded copies are not kept)."""
    sim = build(40, seed=4)                            # joined by the protocol
    by_addr = {n.addr: n for n in sim.nodes}
    entries = [e for n in sim.nodes for e in n.engine.tables[4].nodes()]
    assert len(entries) > 40 * K
    for entry in entries:
        owner = by_addr[entry.addr]
        assert entry.id is owner.engine.id and entry.addr is owner.addr


def test_fill_tables_uses_live_nodes_only():
    sim = build(200, seed=5, join="direct")
    down = {n.addr for n in sim.churn(0.5)}
    late = sim.add_node()
    fill_tables(sim, [late])
    addrs = {n.addr for n in late.engine.tables[4].nodes()}
    assert len(addrs) >= 3 * K and not addrs & down


def test_build_refuses_an_unknown_join():
    with pytest.raises(ValueError):
        build(3, join="gossip")


def test_1000_engines_find_every_value_with_a_quarter_down():
    sim = build(1000, seed=6, join="direct")
    pairs = [key_and_value(sim.rng, f"scale {i}") for i in range(10)]
    putters = sim.rng.sample(sim.nodes, len(pairs))
    puts = sim.put_all([(p, k, v) for p, (k, v) in zip(putters, pairs, strict=True)])
    assert all(r.done is not None and r.done.stored >= K for r in puts), puts
    down = sim.churn(0.25)
    assert len(down) == 250
    fresh = [n for n in sim.nodes if n.alive and n not in putters]
    requesters = sim.rng.sample(fresh, 10 * len(pairs))
    requests = [(node, pairs[i % len(pairs)][0]) for i, node in enumerate(requesters)]
    results = sim.get_all(requests, timeout=60)
    missed = [f"{r.node}: done={r.done}" for i, r in enumerate(results)
              if not (r.ok and any(v.id == pairs[i % len(pairs)][1].id for v in r.values))]
    assert not missed, f"{len(missed)}/{len(results)} gets missed their value: {missed[:5]}"
    hops = summarize(r.done.hops for r in results if r.done is not None)
    assert hops["median"] <= 5


def test_a_fresh_engine_costs_a_few_kilobytes():
    """4.5 KB (plus 2.5 KB for a generator of its own, which a simulation shares). Before:
    6.9 KB, of which the instance dict was 1.6 KB (more attributes than CPython's
    shared-key dicts hold) and an empty deque 0.6 KB."""
    rng = random.Random(1)
    engines, size = traced(lambda: [DhtEngine(families=(4,), rate_limit=False, rng=rng)
                                    for _ in range(300)])
    per_engine = size / len(engines)
    assert per_engine < 6 * 1024, f"{per_engine:.0f} bytes per fresh engine"


def test_a_built_network_costs_under_16_kb_per_engine():
    """Engine, routing table (~63 nodes at 1,000) and simulator record together: 12.4 KB.
    With an id and an address object of their own in every table entry: 25 KB (before:
    38 KB per engine, 1,000 nodes joined by the protocol)."""
    sim, size = traced(lambda: build(1000, seed=7, join="direct", settle=0))
    per_engine = size / len(sim.nodes)
    assert per_engine < 16 * 1024, f"{per_engine:.0f} bytes per engine"
