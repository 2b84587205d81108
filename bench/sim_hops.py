#!/usr/bin/env python3
"""Lookup hop counts, success rate and latency of DhtEngine on a simulated network.

Builds a network of --nodes engines (sipdht.dht.sim), puts --keys values from random
nodes, then runs --gets gets (spread over those keys, each from a random node other
than the putter) concurrently, and prints hop counts (median, p95, max), how many
gets found their value, simulated get latency and the wall time of each phase.

Baseline for the hop counts: for each get, the fewest hops ANY lookup could need on the same
routing tables at the moment the gets start (a breadth-first search that asks every node it
knows at once, each answering with the K nodes it would really return, no loss); printed as
the ratio sipdht/ideal. The textbook Kademlia estimate log2(N)/b, with b = log2(K) bits
gained per hop, is printed beside it for scale.

    .venv/bin/python bench/sim_hops.py --nodes 500 --gets 200 --seed 1
    .venv/bin/python bench/sim_hops.py --nodes 2000 --loss 0.05 --latency 0.02 0.2

Exit status 1 when some get did not find its value. Simulated time only: no sockets.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import add_summary_option, summary_row, write_summary  # noqa: E402
from sipdht.dht.addresses import family_of  # noqa: E402
from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.routing import K  # noqa: E402
from sipdht.dht.sim import SimNetwork, SimNode, build, summarize  # noqa: E402
from sipdht.dht.values import new_value  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=500, help="network size (default 500)")
    p.add_argument("--gets", type=int, default=200, help="gets to run (default 200)")
    p.add_argument("--keys", type=int, default=20, help="values put, gets spread over them")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency", type=float, nargs=2, default=(0.005, 0.05),
                   metavar=("MIN", "MAX"), help="one-way latency range, seconds")
    p.add_argument("--loss", type=float, default=0.0, help="datagram loss probability")
    p.add_argument("--churn", type=float, default=0.0,
                   help="fraction of nodes taken down after the puts (default 0)")
    p.add_argument("--peers", type=int, default=2, help="bootstrap peers per joining node")
    p.add_argument("--timeout", type=float, default=60.0, help="sim seconds per phase")
    p.add_argument("--profile", action="store_true", help="print the hottest functions")
    add_summary_option(p)
    return p.parse_args(argv)


def fmt(stats: dict[str, float], unit: str = "", digits: int = 2) -> str:
    if not stats["count"]:
        return "n/a"
    return " ".join(f"{k} {stats[k]:.{digits}f}{unit}" for k in ("median", "p95", "max"))


class IdealLookup:
    """Fewest lookup hops possible on a snapshot of the network's routing tables, counted as
    the engine counts them: 1 = the K closest nodes were all in the requester's own table."""

    def __init__(self, sim: SimNetwork) -> None:
        self.sim = sim
        self.by_addr = {n.addr: n for n in sim.nodes}
        self._replies: dict[tuple[int, bytes], list[SimNode]] = {}

    def _table(self, node: SimNode):
        return node.engine.tables[family_of(node.addr)]

    def _reply(self, node: SimNode, target: InfoHash) -> list[SimNode]:
        """The nodes `node` would return to a find/get for target (as the engine answers)."""
        key = (node.index, bytes(target))
        if key not in self._replies:
            found = self._table(node).closest(target, K, self.sim.now, good_only=True)
            self._replies[key] = [self.by_addr[n.addr] for n in found if n.addr in self.by_addr]
        return self._replies[key]

    def hops(self, start: SimNode, target: InfoHash) -> float:
        alive = [n for n in self.sim.nodes if n.alive and n is not start]
        t = int.from_bytes(target, "big")
        goal = {n.index for n in sorted(alive, key=lambda n: int.from_bytes(n.id, "big") ^ t)[:K]}
        depth = {self.by_addr[n.addr].index: 0 for n in self._table(start).nodes()
                 if n.addr in self.by_addr}
        frontier, d = list(depth), 0
        while frontier and not goal <= depth.keys():
            nxt = []
            for index in frontier:
                node = self.sim.nodes[index]
                if not node.alive:
                    continue
                for peer in self._reply(node, target):
                    if peer.index not in depth and peer is not start:
                        depth[peer.index] = d + 1
                        nxt.append(peer.index)
            frontier, d = nxt, d + 1
        if not goal <= depth.keys():
            return math.inf
        return 1 + max(depth[i] for i in goal)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    sim = build(args.nodes, args.seed, latency=tuple(args.latency), loss=args.loss,
                peers=args.peers)
    t_build = time.perf_counter() - t0
    lonely = sum(1 for n in sim.nodes if not n.connected or n.good_count() < 8)
    print(f"network: {args.nodes} nodes, seed {args.seed}, latency {args.latency[0]}-"
          f"{args.latency[1]} s, loss {args.loss:.0%}")
    print(f"build:   {t_build:.2f} s wall, {sim.now:.0f} s simulated, converged at "
          f"{'never' if sim.converged_at is None else f'{sim.converged_at:.0f} s'}"
          f", {lonely} nodes with < 8 good nodes")

    rng = sim.rng
    t1 = time.perf_counter()
    pairs = [(InfoHash(rng.randbytes(20)), new_value(f"bench {i}".encode(),
                                                     vid=rng.getrandbits(63) or 1))
             for i in range(args.keys)]
    putters = [rng.choice(sim.nodes) for _ in pairs]
    puts = sim.put_all([(p, k, v) for p, (k, v) in zip(putters, pairs, strict=True)],
                       timeout=args.timeout)
    stored = summarize(r.done.stored for r in puts if r.done is not None)
    put_latency = summarize(r.latency for r in puts if r.latency is not None)
    t_put = time.perf_counter() - t1
    print(f"puts:    {len(puts)}, {sum(r.done is not None for r in puts)} done, stored on "
          f"median {stored['median']:.0f} nodes; latency {fmt(put_latency, ' s', 3)}; "
          f"{t_put:.2f} s wall")

    if args.churn:
        crashed = sim.churn(args.churn, exclude=putters)
        sim.run(30)
        print(f"churn:   {len(crashed)} nodes down, then 30 s simulated")

    requests, expected = [], []
    for i in range(args.gets):
        j = i % len(pairs)
        node = rng.choice([n for n in sim.nodes if n is not putters[j] and n.alive])
        requests.append((node, pairs[j][0]))
        expected.append(pairs[j][1])
    ideal_lookup = IdealLookup(sim)     # the tables as the gets find them
    ideal = [ideal_lookup.hops(node, key) for node, key in requests]
    t2 = time.perf_counter()
    results = sim.get_all(requests, timeout=args.timeout)
    t_get = time.perf_counter() - t2

    found = [r.ok and any(v.id == want.id for v in r.values)
             for r, want in zip(results, expected, strict=True)]
    hops = summarize(r.done.hops for r in results if r.done is not None)
    latency = summarize(r.latency for r in results if r.latency is not None)
    n = len(results)
    print(f"gets:    {n}, found {sum(found)} ({sum(found) / max(n, 1):.1%}), GetDone.ok "
          f"{sum(r.ok for r in results)}, timed out {sum(r.done is None for r in results)}; "
          f"{t_get:.2f} s wall")
    print(f"hops:    {fmt(hops, digits=1)} mean {hops['mean']:.2f}")
    best = summarize(h for h in ideal if h != math.inf)
    pairs_done = [(r.done.hops, h) for r, h in zip(results, ideal, strict=True)
                  if r.done is not None and h != math.inf]
    ratio = (sum(a for a, _ in pairs_done) / sum(b for _, b in pairs_done)) if pairs_done else math.nan
    print(f"ideal:   {fmt(best, digits=1)} mean {best['mean']:.2f} (fewest hops on the same "
          f"tables; {sum(h == math.inf for h in ideal)} unreachable); sipdht/ideal {ratio:.2f}")
    print(f"         Kademlia estimate log2(N)/log2(K) = {math.log2(args.nodes) / math.log2(K):.2f}")
    print(f"latency: {fmt(latency, ' s', 3)} (simulated)")
    totals = sim.engine_stats()
    print(f"network: {dict(sim.stats)}; requests expired {totals['requests_expired']}")
    print(f"wall:    {time.perf_counter() - t0:.2f} s total")
    b, nn = "sim_hops", args.nodes
    write_summary(args.summary, [
        summary_row(b, f"lookup hops mean, {nn} simulated nodes", "hops", hops["mean"],
                    best["mean"], "ideal"),
        summary_row(b, f"lookup hops median, {nn} simulated nodes", "hops", hops["median"],
                    best["median"], "ideal"),
        summary_row(b, f"gets found, {nn} simulated nodes", "%", 100 * sum(found) / max(len(found), 1)),
        summary_row(b, f"get latency median, {nn} simulated nodes (simulated)", "s",
                    latency["median"]),
        summary_row(b, f"build time, {nn} simulated nodes", "s", t_build)])
    return 0 if all(found) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.profile:
        return run(args)
    profiler = cProfile.Profile()
    code = profiler.runcall(run, args)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    return code


if __name__ == "__main__":
    sys.exit(main())
