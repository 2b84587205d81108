#!/usr/bin/env python3
"""Gets right after a quarter of the network died: 32 `dhtnode` processes with OpenDHT's python
client vs 32 `sipdht node` processes with sipdht's client, in the same run.

Each run starts both networks (node 0 first, the others bootstrapping from it), lets them
settle, starts one warm client per network (bench/_dht_client.py, bootstrapped from node 0),
puts --keys values with it and reads each back once (the warm-up). Then it SIGKILLs --kill
of the nodes of each network by PID (never node 0, the clients' bootstrap; the same ranks in
both networks) and at once starts the timed gets, key by key, alternating the networks:
one get from the warm client, and one from a fresh client (a new node in the same client
process that bootstraps from node 0, joins untimed, does one timed get and stops). Nobody
has noticed the deaths yet: the survivors still list the dead nodes as good.

Reported per network: p50/p95 of the warm and the fresh gets (successful gets), failures,
and the ratios sipdht/dhtnode; medians over --runs.

    .venv/bin/python bench/kill_nodes.py [--runs 3] [--keys 20] [--reps 2] [--kill 8]
"""

from __future__ import annotations

import argparse
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

KINDS = ("warm", "fresh")


def one_run(run: int, args: argparse.Namespace, tmp: Path, config: Path, rng: random.Random,
            nonce: str) -> dict:
    procs: dict[str, list] = {}
    clients: dict[str, Client] = {}
    lat: dict[str, dict[str, list[float]]] = {k: {w: [] for w in KINDS} for k in NETS}
    fail: dict[str, dict[str, int]] = {k: {w: 0 for w in KINDS} for k in NETS}
    try:
        for kind in NETS:
            procs[kind] = start_network(kind, args.nodes, tmp, config)
        time.sleep(args.settle)
        for kind in NETS:
            clients[kind] = Client(PEER_IMPL[kind], procs[kind][0].port, tmp / f"client-{kind}.log")
        for kind in NETS:
            clients[kind].ready()
        keys = [(f"kill-{nonce}-{run}-{i}", f"v{nonce}r{run}k{i}") for i in range(args.keys)]
        put_ok = {}
        for kind in NETS:
            put_ok[kind] = sum(clients[kind].call(op="put", key=k, value=v)["ok"] for k, v in keys)
            for key, value in keys:
                clients[kind].call(op="get", key=key, expect=value)
        victims = rng.sample(range(1, args.nodes), args.kill)
        for kind in NETS:
            for i in victims:
                procs[kind][i].popen.kill()         # SIGKILL by PID
        t_kill = time.monotonic()
        n = 0
        for _ in range(args.reps):
            for key, value in keys:
                for kind in (NETS if n % 2 == 0 else NETS[::-1]):
                    c, boot = clients[kind], procs[kind][0].port
                    for what in KINDS:
                        cmd = ({"op": "get"} if what == "warm"
                               else {"op": "fresh_get", "port": boot})
                        r = c.call(timeout=60, key=key, expect=value, **cmd)
                        if r["ok"]:
                            lat[kind][what].append(r["ms"])
                        else:
                            fail[kind][what] += 1
                n += 1
        span = time.monotonic() - t_kill
    finally:
        for c in clients.values():
            c.stop()
        stop_all([p for ps in procs.values() for p in ps])
    res: dict = {k: {w: stats(lat[k][w]) for w in KINDS} for k in NETS}
    for k in NETS:
        res[k]["fail"] = fail[k]
        res[k]["put_ok"] = put_ok[k]
        print(f"run {run + 1} {k:8s} ({PEER_IMPL[k]} client): puts ok {put_ok[k]}/{args.keys}; "
              + " | ".join(f"{w} get p50 {res[k][w]['p50']:.2f} ms p95 {res[k][w]['p95']:.2f} ms "
                           f"max {max(lat[k][w], default=float('nan')):.1f} ms "
                           f"({res[k][w]['n']} ok, {fail[k][w]} failed)" for w in KINDS),
              flush=True)
    print(f"run {run + 1}: killed ranks {sorted(victims)} in both networks; the timed gets "
          f"took {span:.1f} s after the kill", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs, each with fresh networks (default 3)")
    ap.add_argument("--nodes", type=int, default=32, help="processes per network (default 32)")
    ap.add_argument("--kill", type=int, default=8, help="nodes SIGKILLed per network (default 8)")
    ap.add_argument("--keys", type=int, default=20, help="keys put before the kill (default 20)")
    ap.add_argument("--reps", type=int, default=2, help="timed gets per key and kind (default 2)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after start (default 5)")
    ap.add_argument("--seed", type=int, default=None)
    add_summary_option(ap)
    args = ap.parse_args()
    if not (1 <= args.runs <= 20 and 4 <= args.nodes <= 64 and 1 <= args.kill < args.nodes - 1
            and 1 <= args.keys <= 200 and 1 <= args.reps <= 20 and 0 <= args.settle <= 300):
        ap.error("out of range: runs 1-20, nodes 4-64, kill 1-(nodes-2), keys 1-200, reps 1-20, "
                 "settle 0-300")
    if why := opendht_missing():
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.getrandbits(32)
    rng = random.Random(seed)
    nonce = f"{seed:08x}"
    print(f"gets after killing {args.kill} of {args.nodes} nodes: dhtnode network + OpenDHT client "
          f"vs sipdht network + sipdht client, {args.keys} keys x {args.reps} warm and fresh gets "
          f"per network per run, {args.runs} runs, seed {seed}, {load_note()}", flush=True)
    runs = run_all("bench-kill-", args.runs,
                   lambda run, tmp, config: one_run(run, args, tmp, config, rng, nonce))
    rows = [[f"median of {args.runs} runs (ms)", "dhtnode net, OpenDHT client",
             "sipdht net, sipdht client", "sipdht/dhtnode"]]
    rows += ratio_rows(runs, KINDS, lambda what, q: f"{what} client get {q}")
    print()
    print(table(rows))
    fails = {k: {w: sum(r[k]["fail"][w] for r in runs) for w in KINDS} for k in NETS}
    print(f"failed gets over all runs: dhtnode {fails['dhtnode']}, sipdht {fails['sipdht']}; "
          f"goals: p95 <= dhtnode's, p50 <= 1.5x dhtnode's; {load_note()} at the end")
    where = f"after killing {args.kill} of {args.nodes} nodes"
    write_summary(args.summary, [
        summary_row("kill_nodes", f"{what} client get {q}, {where}", "ms",
                    med(runs, "sipdht", what, q), med(runs, "dhtnode", what, q), "dhtnode + OpenDHT client")
        for what in KINDS for q in ("p50", "p95")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
