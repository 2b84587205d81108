#!/usr/bin/env python3
"""Warm clients end to end on a healthy 32-node loopback network: OpenDHT's own python client
on 32 `dhtnode` processes vs sipdht's client on 32 `sipdht node` processes, in the same run.

Each run starts both networks (node 0 first, the others bootstrapping from it; default rate
limits), lets them settle, and starts one long-lived client per network in its own process
(bench/_dht_client.py): `opendht.DhtRunner` under /usr/bin/python3 (python3-opendht) for
the dhtnode network, sipdht's `DhtNode` under this python for ours, each bootstrapped from
its network's node 0. Each client then, on its own network:

1. puts --keys values (not timed), then warms up with --warmup gets;
2. times --keys x --reps gets of those keys (the two clients take turns key by key, so they
   share machine conditions); a get succeeds when the value put comes back;
3. times --puts puts of fresh values at fresh keys: a put is over when the client reports it
   acknowledged by the storers (OpenDHT's done callback; sipdht's `put()` returning).

Times are taken inside each client around the library call. Reported: p50/p95 per run and
the medians over --runs, with ratios sipdht/OpenDHT.

    .venv/bin/python bench/warm_ops.py [--runs 3] [--keys 20] [--reps 5] [--puts 50]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _clients import (  # noqa: E402
    NETS,
    PEER_IMPL,
    Client,
    load_note,
    med,
    opendht_missing,
    ratio_rows,
    run_all,
    start_network,
    stats,
)
from _common import (  # noqa: E402
    add_summary_option,
    stop_all,
    summary_row,
    table,
    write_summary,
)


def one_run(run: int, args: argparse.Namespace, tmp: Path, config: Path, nonce: str) -> dict:
    procs: dict[str, list] = {}
    clients: dict[str, Client] = {}
    out: dict[str, dict] = {k: {"get": [], "put": [], "get_fail": 0, "put_fail": 0} for k in NETS}
    try:
        for kind in NETS:
            procs[kind] = start_network(kind, args.nodes, tmp, config)
        time.sleep(args.settle)
        for kind in NETS:
            clients[kind] = Client(PEER_IMPL[kind], procs[kind][0].port, tmp / f"client-{kind}.log")
        for kind in NETS:
            clients[kind].ready()
        keys = [(f"warm-{nonce}-{run}-{i}", f"v{nonce}r{run}k{i}") for i in range(args.keys)]
        for kind in NETS:
            for key, value in keys:
                clients[kind].call(op="put", key=key, value=value)
            for i in range(args.warmup):
                key, value = keys[i % len(keys)]
                clients[kind].call(op="get", key=key, expect=value)
        i = 0
        for _ in range(args.reps):
            for key, value in keys:
                for kind in (NETS if i % 2 == 0 else NETS[::-1]):
                    r = clients[kind].call(op="get", key=key, expect=value)
                    if r["ok"]:
                        out[kind]["get"].append(r["ms"])
                    else:
                        out[kind]["get_fail"] += 1
                i += 1
        for j in range(args.puts):
            for kind in (NETS if j % 2 == 0 else NETS[::-1]):
                r = clients[kind].call(op="put", key=f"warm-put-{nonce}-{run}-{j}",
                                       value=f"p{nonce}r{run}j{j}")
                if r["ok"]:
                    out[kind]["put"].append(r["ms"])
                else:
                    out[kind]["put_fail"] += 1
    finally:
        for c in clients.values():
            c.stop()
        stop_all([p for ps in procs.values() for p in ps])
    res = {k: {"get": stats(out[k]["get"]), "put": stats(out[k]["put"]),
               "get_fail": out[k]["get_fail"], "put_fail": out[k]["put_fail"]} for k in NETS}
    for k in NETS:
        g, p = res[k]["get"], res[k]["put"]
        print(f"run {run + 1} {k:8s} ({PEER_IMPL[k]} client): get p50 {g['p50']:.2f} ms p95 "
              f"{g['p95']:.2f} ms ({g['n']} ok, {res[k]['get_fail']} failed) | put p50 "
              f"{p['p50']:.2f} ms p95 {p['p95']:.2f} ms ({p['n']} ok, {res[k]['put_fail']} "
              f"failed)", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs, each with fresh networks (default 3)")
    ap.add_argument("--nodes", type=int, default=32, help="processes per network (default 32)")
    ap.add_argument("--keys", type=int, default=20, help="keys put then read (default 20)")
    ap.add_argument("--reps", type=int, default=5, help="timed gets per key (default 5)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed gets first (default 20)")
    ap.add_argument("--puts", type=int, default=50, help="timed puts of fresh values (default 50)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start (default 5)")
    add_summary_option(ap)
    args = ap.parse_args()
    if not (1 <= args.runs <= 20 and 2 <= args.nodes <= 64 and 1 <= args.keys <= 200
            and 1 <= args.reps <= 50 and 0 <= args.warmup <= 1000 and 0 <= args.puts <= 1000
            and 0 <= args.settle <= 300):
        ap.error("out of range: runs 1-20, nodes 2-64, keys 1-200, reps 1-50, warmup 0-1000, "
                 "puts 0-1000, settle 0-300")
    if why := opendht_missing():
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    nonce = f"{random.getrandbits(32):08x}"
    print(f"warm clients: {args.nodes} dhtnode + {args.nodes} sipdht processes per run, "
          f"{args.keys} keys x {args.reps} gets and {args.puts} puts per client per run, "
          f"{args.runs} runs, {load_note()}", flush=True)
    runs = run_all("bench-warm-", args.runs, lambda run, tmp, config: one_run(run, args, tmp, config, nonce))
    rows = [[f"median of {args.runs} runs (ms)", "OpenDHT client, dhtnode net",
             "sipdht client, sipdht net", "sipdht/OpenDHT"]]
    rows += ratio_rows(runs, ("get", "put"), lambda op, q: f"{op} {q}")
    print()
    print(table(rows))
    fails = {k: (sum(r[k]["get_fail"] for r in runs), sum(r[k]["put_fail"] for r in runs))
             for k in NETS}
    print(f"failed gets / puts over all runs: OpenDHT {fails['dhtnode']}, sipdht {fails['sipdht']}; "
          f"goals: get p50 <= 1.5x, put p50 <= 2x; {load_note()} at the end")
    n = args.nodes
    write_summary(args.summary, [
        summary_row("warm_ops", f"warm client {op} {q}, {n}-node network", "ms",
                    med(runs, "sipdht", op, q), med(runs, "dhtnode", op, q), "OpenDHT client")
        for op in ("get", "put") for q in ("p50", "p95")])
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
