#!/usr/bin/env python3
"""The DHT at scale, simulated: 10,000 DhtEngines in one process, healthy and with 25 % down.

Builds --nodes engines (sipdht.dht.sim; by default `join="direct"`: every routing table
filled from the global view, as a converged network's; `--join protocol` lets them join
by pings and searches instead) and prints:

* build: wall time, and bytes per engine = growth of the process's RSS during the build / n
  (`--tracemalloc` adds the bytes Python allocated, / n, and the lines that allocated most;
  tracing makes the build ~2x slower and its own bookkeeping inflates the RSS growth, so
  neither the wall time nor the RSS figure is then comparable);
* --keys values put from random nodes;
* healthy: --gets concurrent gets (spread over the keys, each from a node that has not
  searched yet): found, lookup hops, simulated latency median / p95;
* churn: --churn of the nodes taken down at once (nobody has noticed yet), then as many
  gets again from other live nodes that have not searched yet: the same figures, and the
  ratio of the latencies churn / healthy (issue 11's goal: median <= 2x).

    .venv/bin/python bench/sim_scale.py                       # 10,000 nodes, ~1-2 min
    .venv/bin/python bench/sim_scale.py --quick               # the same with fewer gets
    .venv/bin/python bench/sim_scale.py --nodes 2000 --join protocol

Exit status 1 when a get did not find its value. Latencies are simulated seconds (one-way
latency 5-50 ms per datagram); wall times depend on the machine's load, printed with them.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import resource
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import add_summary_option, summary_row, write_summary  # noqa: E402
from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.sim import GetResult, SimNetwork, SimNode, build, summarize  # noqa: E402
from sipdht.dht.values import Value, new_value  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10_000, help="network size (default 10000)")
    p.add_argument("--gets", type=int, default=1000, help="gets per phase (default 1000)")
    p.add_argument("--keys", type=int, default=50, help="values put; gets spread over them")
    p.add_argument("--churn", type=float, default=0.25, help="fraction taken down (default 0.25)")
    p.add_argument("--join", choices=("direct", "protocol"), default="direct",
                   help="how the network is built (default direct)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0, help="sim seconds per phase")
    p.add_argument("--quick", action="store_true", help="--gets 300 --keys 30 (for bench/all.py)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also count Python's allocations during the build (slower build)")
    p.add_argument("--profile", action="store_true", help="print the hottest functions")
    add_summary_option(p)
    args = p.parse_args(argv)
    if args.quick:
        args.gets, args.keys = 300, 30
    return args


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt(stats: dict[str, float], unit: str = "", digits: int = 2) -> str:
    if not stats["count"]:
        return "n/a"
    return " ".join(f"{k} {stats[k]:.{digits}f}{unit}" for k in ("median", "p95", "max"))


def timed_build(args: argparse.Namespace) -> tuple[SimNetwork, float, int, int | None]:
    """The network, build wall time, RSS growth, and traced bytes (None unless asked)."""
    if args.tracemalloc:
        tracemalloc.start()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    sim = build(args.nodes, args.seed, join=args.join)
    wall = time.perf_counter() - t0
    rss = rss_bytes() - rss0
    traced = None
    if args.tracemalloc:
        traced = tracemalloc.get_traced_memory()[0]
        top = tracemalloc.take_snapshot().statistics("lineno")[:8]
        tracemalloc.stop()
        for st in top:
            frame = st.traceback[0]
            print(f"  traced {st.size / args.nodes:7.0f} B/engine "
                  f"{st.count / args.nodes:5.1f} objects/engine  "
                  f"{Path(frame.filename).name}:{frame.lineno}")
    return sim, wall, rss, traced


class Requesters:
    """Nodes that have not searched yet, drawn without replacement."""

    def __init__(self, sim: SimNetwork, exclude: list[SimNode]) -> None:
        skip = {n.index for n in exclude}
        self.pool = [n for n in sim.nodes if n.index not in skip]
        sim.rng.shuffle(self.pool)

    def take(self) -> SimNode:
        while self.pool:
            node = self.pool.pop()
            if node.alive:
                return node
        raise RuntimeError("no fresh live node left: fewer --gets or more --nodes")


def phase(sim: SimNetwork, fresh: Requesters, pairs: list[tuple[InfoHash, Value]],
          gets: int, timeout: float) -> tuple[list[GetResult], list[bool], float]:
    requests = [(fresh.take(), pairs[i % len(pairs)][0]) for i in range(gets)]
    t0 = time.perf_counter()
    results = sim.get_all(requests, timeout=timeout)
    wall = time.perf_counter() - t0
    found = [r.ok and any(v.id == pairs[i % len(pairs)][1].id for v in r.values)
             for i, r in enumerate(results)]
    return results, found, wall


def report(name: str, results: list[GetResult], found: list[bool], wall: float,
           sim_seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    hops = summarize(r.done.hops for r in results if r.done is not None)
    latency = summarize(r.latency for r in results if r.latency is not None)
    n = len(results)
    print(f"{name}: {n} gets, found {sum(found)} ({sum(found) / max(n, 1):.1%}), timed out "
          f"{sum(r.done is None for r in results)}; hops {fmt(hops, digits=0)}; "
          f"latency {fmt(latency, ' s', 3)} (simulated); {wall:.1f} s wall for "
          f"{sim_seconds:.1f} s simulated, load {load()}")
    return hops, latency


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    print(f"sim_scale: {args.nodes} nodes ({args.join} join), seed {args.seed}, "
          f"{os.cpu_count()} CPUs, load average {load()}")
    sim, t_build, rss, traced = timed_build(args)
    per_engine = rss / args.nodes
    sizes = summarize(len(n.engine.tables[4]) for n in sim.nodes)
    print(f"build: {t_build:.1f} s wall, {sim.now:.0f} s simulated; {per_engine / 1024:.1f} KB "
          f"per engine (RSS growth {rss / 2**20:.0f} MB / {args.nodes})"
          + ("" if traced is None else f", {traced / args.nodes / 1024:.1f} KB traced")
          + f"; routing table median {sizes['median']:.0f} nodes; load {load()}")

    rng = sim.rng
    pairs = [(InfoHash(rng.randbytes(20)), new_value(f"scale {i}".encode(),
                                                     vid=rng.getrandbits(63) or 1))
             for i in range(args.keys)]
    putters = rng.sample(sim.nodes, len(pairs))
    t0 = time.perf_counter()
    puts = sim.put_all([(p, k, v) for p, (k, v) in zip(putters, pairs, strict=True)],
                       timeout=args.timeout)
    stored = summarize(r.done.stored for r in puts if r.done is not None)
    print(f"puts: {len(puts)}, stored on median {stored['median']:.0f} nodes (min "
          f"{stored['min']:.0f}); {time.perf_counter() - t0:.1f} s wall")

    fresh = Requesters(sim, putters)
    t_sim = sim.now
    healthy, found_h, wall_h = phase(sim, fresh, pairs, args.gets, args.timeout)
    hops_h, lat_h = report("healthy", healthy, found_h, wall_h, sim.now - t_sim)

    down = sim.churn(args.churn)
    print(f"churn: {len(down)} of {args.nodes} nodes down at once")
    t_sim = sim.now
    churned, found_c, wall_c = phase(sim, fresh, pairs, args.gets, args.timeout)
    hops_c, lat_c = report("churn", churned, found_c, wall_c, sim.now - t_sim)

    ratio_med = lat_c["median"] / lat_h["median"] if lat_h["count"] else float("nan")
    ratio_p95 = lat_c["p95"] / lat_h["p95"] if lat_h["count"] else float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"latency churn/healthy: median {ratio_med:.2f} (goal <= 2), p95 {ratio_p95:.2f}")
    print(f"total {time.perf_counter() - t_start:.1f} s wall, peak RSS {peak:.0f} MB, "
          f"{sim.stats['steps']} sim steps, load {load()}")

    b, nn, pct = "sim_scale", f"{args.nodes:,}", f"{args.churn:.0%}"
    write_summary(args.summary, [
        summary_row(b, f"build time, {nn} simulated nodes ({args.join} join)", "s", t_build),
        summary_row(b, f"bytes per engine, {nn} simulated nodes (RSS growth / n)", "KB",
                    per_engine / 1024),
        summary_row(b, f"gets found, {nn} simulated nodes, {pct} down", "%",
                    100 * sum(found_c) / max(len(found_c), 1)),
        summary_row(b, f"lookup hops median, {nn} simulated nodes, {pct} down", "hops",
                    hops_c["median"], hops_h["median"], "healthy"),
        summary_row(b, f"get latency median, {nn} simulated nodes, {pct} down (simulated)", "s",
                    lat_c["median"], lat_h["median"], "healthy"),
        summary_row(b, f"get latency p95, {nn} simulated nodes, {pct} down (simulated)", "s",
                    lat_c["p95"], lat_h["p95"], "healthy")])
    return 0 if all(found_h) and all(found_c) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.profile:
        return run(args)
    profiler = cProfile.Profile()
    code = profiler.runcall(run, args)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return code


if __name__ == "__main__":
    sys.exit(main())
