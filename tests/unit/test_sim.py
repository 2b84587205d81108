"""Many DhtEngines on the simulated network: lookups, puts, listens, loss and churn.

Everything runs in simulated time (sipdht.dht.sim), so a few hundred nodes and
minutes of protocol fit in seconds of wall time, and a seed replays a run.
"""

from __future__ import annotations

import ipaddress
import random

import pytest

from sipdht.dht.events import GetDone, PutDone
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import decode
from sipdht.dht.requests import FIRST_TIMEOUT
from sipdht.dht.sim import SimNetwork, SimTimeout, build, summarize
from sipdht.dht.values import Value, new_value

SIM_NET = ipaddress.ip_network("10.200.0.0/16")


def key_and_value(rng: random.Random, tag: str) -> tuple[InfoHash, Value]:
    key = InfoHash(rng.randbytes(20))
    return key, new_value(tag.encode(), vid=rng.getrandbits(63) or 1)


def found(values: list[Value], value: Value) -> bool:
    return any(v.id == value.id and v.data == value.data for v in values)


def others(sim: SimNetwork, exclude, count: int) -> list:
    pool = [n for n in sim.nodes if n.alive and n not in exclude]
    return sim.rng.sample(pool, count)


def describe_failures(results, value: Value) -> list[str]:
    return [f"{r.node}: done={r.done} found={found(r.values, value)} latency={r.latency}"
            for r in results if not (r.ok and found(r.values, value))]


# --- the simulator itself -----------------------------------------------------------------


def test_addresses_stay_in_the_sim_subnet_and_are_unique():
    sim = SimNetwork(seed=1)
    nodes = [sim.add_node() for _ in range(600)]
    addrs = {n.addr for n in nodes}
    assert len(addrs) == 600
    for ip, port in addrs:
        assert ipaddress.ip_address(ip) in SIM_NET and port == 4222
        assert not ip.endswith(".0") and not ip.endswith(".255")
    assert all(n.engine.limits.enabled is False for n in nodes)
    assert all(n.engine.families == (4,) for n in nodes)


def test_same_seed_replays_the_same_run():
    def run(seed: int) -> tuple:
        sim = build(30, seed)
        key, value = key_and_value(sim.rng, "v")
        stored = sim.put(sim.nodes[3], key, value).stored
        return sim.now, dict(sim.stats), stored, [n.id for n in sim.nodes]

    assert run(7) == run(7)
    assert run(7)[3] != run(8)[3]


def test_seed_replays_whatever_the_random_module_does():
    """Every engine draws from the sim's seeded generators, never from the `random`
    module: reseeding or drawing from it between (and during) two runs changes nothing."""
    def run(noise: int) -> tuple:
        random.seed(noise)
        sim = build(30, 9)
        random.seed(noise + 1)
        sim.call_at(sim.now + 50, lambda: random.seed(noise + 2))
        key, value = key_and_value(sim.rng, "v")
        stored = sim.put(sim.nodes[3], key, value).stored
        sim.run(400)                        # maintenance and token rotation timers fire
        values, done = sim.get(sim.nodes[7], key)
        tids = sorted(tid for n in sim.nodes for tid in n.engine.requests.pending)
        return sim.now, dict(sim.stats), stored, done, tids, dict(sim.engine_stats())

    assert run(1) == run(12345)


def test_idle_network_costs_few_steps():
    """Lazy timer re-arming: an idle engine wakes up for its own timers only."""
    sim = build(20, seed=2)
    steps = sim.stats["steps"]
    sim.run(600)
    # Housekeeping every 2 s is 300 wake-ups per node in 600 s; maintenance (pings and
    # their replies and timeouts) adds a few hundred in all, not one per datagram sent.
    assert 20 * 300 <= sim.stats["steps"] - steps < 20 * 400
    assert sim.now == pytest.approx(sim.converged_at + 5 + 600)


def test_total_loss_fails_the_get_instead_of_hanging():
    sim = build(20, seed=3)
    sim.loss = 1.0
    key, _ = key_and_value(sim.rng, "lost")
    values, done = sim.get(sim.nodes[5], key, timeout=60)
    assert isinstance(done, GetDone) and not done.ok and values == []
    assert sim.stats["lost"] > 0


def test_down_node_neither_sends_nor_receives():
    sim = build(10, seed=4)
    node = sim.nodes[4]
    node.down()
    received, sent = node.engine.stats["received"], sim.stats["dropped_down"]
    sim.run(700)                                # past NODE_EXPIRE_TIME: everyone pings around
    assert node.engine.stats["received"] == received      # nothing delivered to it
    assert sim.stats["dropped_down"] > sent               # its own pings and others' were dropped
    assert not node.connected                             # it saw every peer time out
    node.up()
    assert sim.run_until_idle(lambda: node.connected, timeout=600), "did not rejoin"
    key, value = key_and_value(sim.rng, "back")
    assert sim.put(sim.nodes[0], key, value).stored > 0
    values, done = sim.get(node, key)
    assert done.ok and found(values, value)


def test_concurrent_puts_all_fail_together_when_every_peer_is_gone():
    """Three puts of one key whose search dies: each gets its PutDone(stored=0) at once."""
    sim = build(10, seed=21)
    node = sim.nodes[3]
    for other in sim.nodes:
        if other is not node:
            other.down()
    key = InfoHash(sim.rng.randbytes(20))
    results = sim.put_all([(node, key, new_value(b"%d" % i, vid=i + 1)) for i in range(3)],
                          timeout=60)
    assert all(r.done is not None and r.done.stored == 0 for r in results), results
    latencies = [r.latency for r in results]     # simulated seconds, not wall clock
    assert max(latencies) - min(latencies) < 1.0, f"PutDone latencies {latencies}"


def test_get_times_out_with_sim_timeout():
    sim = build(5, seed=5)
    sim.loss = 1.0
    key, _ = key_and_value(sim.rng, "slow")
    with pytest.raises(SimTimeout):
        sim.get(sim.nodes[1], key, timeout=0.1)


def test_summarize():
    s = summarize([3, 1, 2, 10])
    assert (s["count"], s["min"], s["median"], s["max"]) == (4, 1, 2.5, 10)
    assert s["p95"] == 10


# --- the DHT on it ------------------------------------------------------------------------


def test_put_is_found_from_20_other_nodes():
    sim = build(50, seed=10)
    assert sim.converged_at is not None
    putter = sim.rng.choice(sim.nodes)
    key, value = key_and_value(sim.rng, "fifty")
    done = sim.put(putter, key, value)
    assert isinstance(done, PutDone) and done.stored >= 4
    results = sim.get_all([(n, key) for n in others(sim, [putter], 20)])
    assert not describe_failures(results, value)


@pytest.mark.slow
def test_500_nodes_every_get_finds_every_value():
    sim = build(500, seed=11)
    lonely = [n for n in sim.nodes if not n.connected or n.good_count() < 8]
    values = [key_and_value(sim.rng, f"value {i}") for i in range(20)]
    putters = sim.rng.sample(sim.nodes, len(values))
    puts = sim.put_all([(p, k, v) for p, (k, v) in zip(putters, values, strict=True)])
    assert all(r.done is not None and r.done.stored >= 4 for r in puts), puts
    requests, expected = [], []
    for putter, (key, value) in zip(putters, values, strict=True):
        for node in others(sim, [putter], 10):
            requests.append((node, key))
            expected.append(value)
    results = sim.get_all(requests)
    failures = [line for r, v in zip(results, expected, strict=True)
                for line in describe_failures([r], v)]
    hops = summarize(r.done.hops for r in results if r.done is not None)
    latency = summarize(r.latency for r in results if r.latency is not None)
    print(f"\n500 nodes, {len(results)} gets: hops median {hops['median']} p95 {hops['p95']} "
          f"max {hops['max']}; latency median {latency['median']:.3f}s max {latency['max']:.3f}s; "
          f"{len(failures)} failed; converged at {sim.converged_at}; {dict(sim.stats)}")
    assert not failures, f"{len(failures)}/{len(results)} gets failed:\n" + "\n".join(failures[:20])
    assert hops["median"] <= 6
    assert not lonely, f"not converged: {len(lonely)} nodes know < 8 good nodes: {lonely[:10]}"


@pytest.mark.parametrize("seed", range(6))
def test_every_node_finds_k_good_nodes(seed):
    """No node is left behind: each knows K good nodes once the network has settled."""
    sim = build(200, seed=seed)
    lonely = [(n, n.good_count()) for n in sim.nodes if not n.connected or n.good_count() < 8]
    assert not lonely, f"{len(lonely)} nodes know < 8 good nodes after {sim.now:.0f}s: {lonely[:5]}"
    assert sim.converged_at is not None


def test_puts_land_on_the_closest_nodes():
    """Kademlia's promise, checked with the global view only a simulation has: the nodes a
    put stores at are the key's closest live nodes, not merely close ones."""
    sim = build(200, seed=15)
    for i in range(5):
        putter = sim.rng.choice(sim.nodes)
        key, value = key_and_value(sim.rng, f"placed {i}")
        assert sim.put(putter, key, value).stored >= 4
        closest = sorted((n for n in sim.nodes if n is not putter),
                         key=lambda n: n.id.int ^ key.int)[:8]
        ranks = sorted(rank for rank, n in enumerate(sorted(sim.nodes, key=lambda n: n.id.int ^ key.int))
                       if n is not putter and n.engine.storage.get(key, now=sim.now))
        holding = sum(1 for n in closest if n.engine.storage.get(key, now=sim.now))
        assert holding >= 6, f"put {i}: only {holding} of the 8 closest hold it; holder ranks {ranks}"


def test_gets_succeed_with_latency_and_loss():
    sim = build(100, seed=12, latency=(0.02, 0.2), loss=0.05)
    assert sim.converged_at is not None
    pairs = [key_and_value(sim.rng, f"lossy {i}") for i in range(3)]
    putters = sim.rng.sample(sim.nodes, len(pairs))
    for putter, (key, value) in zip(putters, pairs, strict=True):
        assert sim.put(putter, key, value, timeout=60).stored >= 4
    failures = []
    for putter, (key, value) in zip(putters, pairs, strict=True):
        results = sim.get_all([(n, key) for n in others(sim, [putter], 10)], timeout=60)
        failures += describe_failures(results, value)
    assert sim.stats["lost"] > 0
    assert not failures, "\n".join(failures)


def test_listener_receives_a_value_put_later_elsewhere():
    sim = build(60, seed=13)
    listener, putter = sim.rng.sample(sim.nodes, 2)
    key, value = key_and_value(sim.rng, "pushed")
    op = sim.listen(listener, key)
    sim.run(5)                                  # subscriptions in place
    assert listener.listened[op] == []
    assert sim.put(putter, key, value).stored > 0

    def got_it() -> bool:
        return any(e.kind == "add" and found(e.values, value) for e in listener.listened[op])

    assert sim.run_until_idle(got_it, timeout=30), listener.listened[op]
    # A second value under the same key comes through the same subscription.
    _, second = key_and_value(sim.rng, "pushed again")
    sim.put(sim.rng.choice(sim.nodes), key, second)
    assert sim.run_until_idle(
        lambda: any(found(e.values, second) for e in listener.listened[op]), timeout=30)


def test_values_survive_churn_and_new_ones_are_found():
    sim = build(150, seed=14)
    before = [key_and_value(sim.rng, f"before churn {i}") for i in range(5)]
    early_putters = sim.rng.sample(sim.nodes, len(before))
    for putter, (key, value) in zip(early_putters, before, strict=True):
        assert sim.put(putter, key, value).stored >= 4
    crashed = sim.churn(0.2, exclude=early_putters)
    assert len(crashed) == 29 and all(not n.alive for n in crashed)
    sim.run(60)                                 # let the survivors notice
    failures = []
    for i in range(5):
        putter = sim.rng.choice(sim.alive_nodes())
        key, value = key_and_value(sim.rng, f"after churn {i}")
        assert sim.put(putter, key, value, timeout=60).stored >= 4
        results = sim.get_all([(n, key) for n in others(sim, [putter], 10)], timeout=60)
        failures += describe_failures(results, value)
    assert not failures, "values put after the churn:\n" + "\n".join(failures)
    # 8 replicas each: losing a fifth of the nodes must not lose values stored before.
    for putter, (key, value) in zip(early_putters, before, strict=True):
        results = sim.get_all([(n, key) for n in others(sim, [putter], 10)], timeout=60)
        failures += describe_failures(results, value)
    assert not failures, "values put before the churn:\n" + "\n".join(failures)
    assert sim.stats["dropped_down"] > 0


def test_searches_do_not_wait_again_on_a_node_that_timed_out():
    """Searches share what they learnt: an address that let a request expire is skipped
    by the next searches for a while, instead of being asked (and waited on) again."""
    sim = build(150, seed=16)
    node = sim.nodes[0]
    crashed = {n.addr for n in sim.churn(0.3, exclude=[node])}
    asked: dict = {}
    pump = node.engine.datagrams_to_send

    def counting(now: float) -> list:
        out = pump(now)
        for data, addr in out:
            if addr in crashed and b"\xa1y\xa1q" in data:
                asked.setdefault(addr, []).append((now, decode(data).tid))
        return out

    node.engine.datagrams_to_send = counting           # type: ignore[method-assign]
    latencies = []
    for _ in range(30):
        key = InfoHash(sim.rng.randbytes(20))
        start = sim.now
        sim.get(node, key, timeout=60)
        latencies.append(sim.now - start)
    # a request is up to 3 datagrams with one tid; a new request sent once the address has
    # been silent for FIRST_TIMEOUT (when every search is told) and within a minute is a
    # re-wait (one sent before that, by a search that started meanwhile, knew nothing yet)
    rewaited = {}
    for a, sends in asked.items():
        started = {tid: t for t, tid in reversed(sends)}       # each request's first send
        known = sends[0][0] + FIRST_TIMEOUT
        if any(known < t < known + 60 for t in started.values()):
            rewaited[a] = sends
    print(f"\nget latency after 30% churn: first 10 {summarize(latencies[:10])['median']:.3f}s, "
          f"last 20 {summarize(latencies[10:])['median']:.3f}s; dead addresses asked "
          f"{len(asked)}, asked again {len(rewaited)}")
    assert not rewaited, f"{len(rewaited)} dead addresses asked again: {list(rewaited.items())[:3]}"
