#!/usr/bin/env python3
"""Get latency right after churn, on a simulated network of DhtEngines.

Builds --nodes engines (sipdht.dht.sim), takes --churn of them down at once (nobody has
noticed yet), then one node runs --gets gets one after the other for fresh keys and the
simulated latency of each is printed: the first gets meet the dead nodes, the later ones
show whether searches remember what timed out (the engine's shared unreachable-address
memory) instead of waiting on the same dead nodes again. Medians over --seeds.

    .venv/bin/python bench/sim_churn.py --nodes 150 --churn 0.3 --gets 30 --seeds 16 17 18

Simulated time only: no sockets, no wall-clock figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import add_summary_option, summary_row, write_summary  # noqa: E402
from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.sim import build  # noqa: E402


def run(nodes: int, churn: float, gets: int, seed: int) -> list[float]:
    sim = build(nodes, seed=seed)
    node = sim.nodes[0]
    sim.churn(churn, exclude=[node])
    latencies = []
    for _ in range(gets):
        start = sim.now
        sim.get(node, InfoHash(sim.rng.randbytes(20)), timeout=60)
        latencies.append(sim.now - start)
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=150)
    ap.add_argument("--churn", type=float, default=0.3)
    ap.add_argument("--gets", type=int, default=30)
    ap.add_argument("--first", type=int, default=10, help="gets counted as 'first'")
    ap.add_argument("--seeds", type=int, nargs="+", default=[16, 17, 18])
    add_summary_option(ap)
    args = ap.parse_args()
    print(f"{args.nodes} nodes, {args.churn:.0%} down at once, {args.gets} gets from one node")
    print("| seed | first gets p50 (s) | later gets p50 (s) | max (s) |")
    print("|-----:|-------------------:|-------------------:|--------:|")
    firsts, laters = [], []
    for seed in args.seeds:
        lat = run(args.nodes, args.churn, args.gets, seed)
        first, later = lat[:args.first], lat[args.first:]
        print(f"| {seed} | {statistics.median(first):.3f} | "
              f"{statistics.median(later) if later else float('nan'):.3f} | {max(lat):.3f} |")
        firsts.append(statistics.median(first))
        laters += [statistics.median(later)] if later else []
    where = f"{args.nodes} simulated nodes, {args.churn:.0%} down (simulated, median over seeds)"
    write_summary(args.summary, [
        summary_row("sim_churn", f"first {args.first} gets p50, {where}", "s",
                    statistics.median(firsts)),
        summary_row("sim_churn", f"later gets p50, {where}", "s",
                    statistics.median(laters) if laters else None)])


if __name__ == "__main__":
    main()
