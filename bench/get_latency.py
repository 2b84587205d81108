#!/usr/bin/env python3
"""`get` latency across a 32-node network: Debian's `dhtnode` processes vs `sipdht node` processes.

Every run starts two fresh networks side by side on 127.0.0.1 with the same layout: node 0
first, the other N-1 bootstrapping from it (default rate limits on both). After a settle
time it puts K fresh values into each network with the SAME client for both: a one-shot
`sipdht put -b 127.0.0.1:<random member> KEY VALUE` per value (`--dhtnode-put stdin`
instead has a settled dhtnode member put with its stdin command `p KEY VALUE`: a different
path, for comparison only). Then it times gets with the SAME in-process client for both
networks: for each
get, a fresh sipdht DhtNode (client-only, IPv4, ephemeral port) bootstraps from a random
node of the network under test and waits until connected (the join, timed separately);
only `await node.get(InfoHash.from_key(key))` is timed. Gets alternate between the two
networks key by key so they share machine conditions. A get succeeds when the value put at
that key comes back. Finally every node is asked directly which values it holds, to show
where the puts landed (replicas on the 8 nodes XOR-closest to the key). Both networks are
stopped at the end of each run.

Reported per network: get latency p50/p95 (successful gets), success rate, join time, put
placement, CPU and RSS of the 32 processes, and the ratios sipdht/dhtnode; medians over
--runs.

    .venv/bin/python bench/get_latency.py [--runs 3] [--nodes 32] [--keys 20] [--reps 5]
    .venv/bin/python bench/get_latency.py --dhtnode-put stdin   # dhtnode members put (asymmetric)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    SIPDHT,
    Proc,
    Tids,
    add_summary_option,
    fmt_ratio,
    loadavg,
    machine_cpu_seconds,
    median,
    percentile,
    request,
    sipdht_env,
    start_dhtnode,
    start_sipdht_node,
    stop_all,
    summary_row,
    table,
    warm_bytecode_cache,
    workdir,
    write_sipdht_config,
    write_summary,
)

from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.node import DhtNode, NodeConfig  # noqa: E402

NETS = ("dhtnode", "sipdht")


class Network:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.procs: list[Proc] = []

    def alive(self) -> int:
        return sum(p.popen.poll() is None for p in self.procs)

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                total += p.cpu_seconds()
            except OSError:
                pass
        return total

    def rss_mb(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                total += p.rss_mb()
            except OSError:
                pass
        return total

    def random_port(self, rng: random.Random) -> int:
        return rng.choice([p.port for p in self.procs if p.popen.poll() is None])


def start_network(net: Network, n: int, tmp: Path, config: Path) -> None:
    def start(i: int, boot: int | None) -> Proc:
        name = f"{net.kind}-{i:02d}"
        if net.kind == "dhtnode":
            return start_dhtnode(tmp, name, bootstrap=boot)
        return start_sipdht_node(tmp, config, name, bootstrap=boot)

    first = start(0, None)
    net.procs.append(first)
    first.wait_ready(30)
    for i in range(1, n):
        net.procs.append(start(i, first.port))
    for p in net.procs[1:]:
        p.wait_ready(60)


# --- puts ---------------------------------------------------------------------------------


def put_dhtnode(net: Network, items: list[tuple[str, str]], rng: random.Random,
                timeout: float) -> int:
    ok = 0
    for key, value in items:
        node = rng.choice(net.procs)
        mark = node.mark()
        node.send_line(f"p {key} {value}")
        try:
            m = node.wait_for(r"Put: (success|failure)", timeout, since=mark)
            ok += m.group(1) == "success"
        except TimeoutError:
            pass
    return ok


def put_sipdht(net: Network, items: list[tuple[str, str]], rng: random.Random, config: Path,
               timeout: float, parallel: int) -> int:
    """One `sipdht put` process per value, at most `parallel` at a time."""
    todo = list(items)
    running: list[tuple[subprocess.Popen, float]] = []
    ok = 0
    hard_deadline = time.monotonic() + timeout * (len(items) + 1)
    try:
        while (todo or running) and time.monotonic() < hard_deadline:
            while todo and len(running) < parallel:
                key, value = todo.pop()
                argv = [SIPDHT, "--config", str(config), "put", "-b",
                        f"127.0.0.1:{net.random_port(rng)}", "--timeout", f"{timeout:g}", key, value]
                running.append((subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL,
                                                 env=sipdht_env(config)), time.monotonic()))
            time.sleep(0.02)
            still = []
            for p, t0 in running:
                rc = p.poll()
                if rc is None and time.monotonic() - t0 > timeout + 10:
                    p.kill()
                    p.wait(5)
                    continue
                if rc is None:
                    still.append((p, t0))
                else:
                    ok += rc == 0
            running = still
    finally:
        for p, _ in running:
            p.terminate()
        for p, _ in running:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    return ok


# --- gets ---------------------------------------------------------------------------------


async def timed_get(port: int, key: str, expected: bytes, join_timeout: float,
                    get_timeout: float) -> dict:
    """A fresh client node: join via 127.0.0.1:port, then time only the get."""
    node = DhtNode(NodeConfig(port=0, bind4="127.0.0.1", ipv6=False, client_only=True,
                              rate_limit=False, bootstrap=[("127.0.0.1", port)]))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await node.start()
    try:
        if not await node.wait_connected(join_timeout):
            return {"joined": False, "ok": False, "join": loop.time() - t0, "lat": None}
        t1 = loop.time()
        try:
            values = await asyncio.wait_for(node.get(InfoHash.from_key(key)), get_timeout)
            timed_out = False
        except TimeoutError:
            values, timed_out = [], True
        t2 = loop.time()
        ok = any(v.data == expected for v in values)
        return {"joined": True, "ok": ok, "join": t1 - t0, "lat": t2 - t1,
                "timeout": timed_out, "nvalues": len(values)}
    finally:
        await node.stop()


async def time_gets(nets: dict[str, Network], items: list[tuple[str, str]], reps: int,
                    rng: random.Random, args: argparse.Namespace) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {k: [] for k in nets}
    i = 0
    for _ in range(reps):
        for key, value in items:
            order = NETS if i % 2 == 0 else NETS[::-1]
            i += 1
            for kind in order:
                port = nets[kind].random_port(rng)
                r = await timed_get(port, key, value.encode(), args.join_timeout, args.get_timeout)
                r["key"] = key
                out[kind].append(r)
    return out


def summarize(res: list[dict]) -> dict:
    lat = [r["lat"] * 1e3 for r in res if r["ok"]]
    return {
        "n": len(res), "ok": sum(r["ok"] for r in res),
        "success": sum(r["ok"] for r in res) / len(res) if res else float("nan"),
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95),
        "max_ms": max(lat) if lat else float("nan"),
        "join_p50_ms": percentile([r["join"] * 1e3 for r in res if r["joined"]], 50),
        "not_joined": sum(not r["joined"] for r in res),
        "timeouts": sum(bool(r.get("timeout")) for r in res),
    }


def placement(net: Network, items: list[tuple[str, str]], closest: int = 8) -> list[dict]:
    """Ask every node of the network directly which of them hold each value.

    One socket and one node id for the whole scan (with the client flag), so the scan adds
    at most one stray entry to each node's routing table. Returns per key: the XOR-distance
    ranks of the holders among the network's nodes (rank 0 = the node closest to the key).
    """
    nodes = [(int(p.node_id, 16), p.port) for p in net.procs if p.popen.poll() is None]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    my_id, tids = os.urandom(20), Tids()
    out = []
    try:
        for key, value in items:
            h = InfoHash.from_key(key)
            target = int.from_bytes(h, "big")
            ranked = sorted(nodes, key=lambda n: n[0] ^ target)
            holders, silent = [], 0
            for rank, (_, port) in enumerate(ranked):
                sock.connect(("127.0.0.1", port))
                try:
                    msg = request(sock, tids, "get", {"id": my_id, "h": h}, 0.5, tries=2)
                except (TimeoutError, OSError):
                    silent += 1
                    continue
                if any(v.data == value.encode() for v in msg.values):
                    holders.append(rank)
            out.append({"key": key, "holders": holders, "silent": silent,
                        "in_closest": sum(r < closest for r in holders)})
    finally:
        sock.close()
    return out


def scan_logs(net: Network) -> dict[str, int]:
    counts = {"traceback": 0, "error": 0, "warning": 0}
    for p in net.procs:
        text = p.text()
        counts["traceback"] += text.count("Traceback")
        counts["error"] += len(re.findall(r" (ERROR|CRITICAL) ", text))
        counts["warning"] += len(re.findall(r" WARNING ", text))
    return counts


def one_run(run: int, args: argparse.Namespace, rng: random.Random, nonce: str, tmp: Path,
            config: Path) -> dict[str, dict]:
    """Start both networks, settle, put, time the gets, scan placement, stop both."""
    nets = {k: Network(k) for k in NETS}
    out: dict[str, dict] = {k: {} for k in NETS}
    try:
        for kind in NETS:
            t0 = time.monotonic()
            start_network(nets[kind], args.nodes, tmp / f"run{run}", config)
            out[kind]["startup_s"] = time.monotonic() - t0
        cpu0 = {k: nets[k].cpu_seconds() for k in NETS}
        all0, t_settle = machine_cpu_seconds(), time.monotonic()
        time.sleep(args.settle)
        wall = time.monotonic() - t_settle
        settle_cpu = {k: nets[k].cpu_seconds() - cpu0[k] for k in NETS}
        other = max(0.0, machine_cpu_seconds() - all0 - sum(settle_cpu.values())) / wall
        for k in NETS:
            out[k]["idle_cpu"] = settle_cpu[k] / wall
            out[k]["rss_mb"] = nets[k].rss_mb()

        items = [(f"bench-lat-{nonce}-{run}-{i}", f"v{nonce}r{run}k{i}") for i in range(args.keys)]
        for k in NETS:
            t0 = time.monotonic()
            if k == "dhtnode" and args.dhtnode_put == "stdin":
                out[k]["put_ok"] = put_dhtnode(nets[k], items, rng, args.put_timeout)
            else:
                out[k]["put_ok"] = put_sipdht(nets[k], items, rng, config, args.put_timeout,
                                              args.put_parallel)
            out[k]["put_s"] = time.monotonic() - t0

        cpu0 = {k: nets[k].cpu_seconds() for k in NETS}
        t0, all0 = time.monotonic(), machine_cpu_seconds()
        res = asyncio.run(time_gets(nets, items, args.reps, rng, args))
        t_get = time.monotonic() - t0
        busy = (machine_cpu_seconds() - all0) / t_get
        for k in NETS:
            out[k].update(summarize(res[k]))
            out[k]["cpu_get"] = nets[k].cpu_seconds() - cpu0[k]
            out[k]["failed"] = [r["key"] for r in res[k] if not r["ok"]]
            place = placement(nets[k], items)
            out[k]["replicas"] = mean([len(p["holders"]) for p in place])
            out[k]["in_closest"] = mean([p["in_closest"] for p in place])
            out[k]["none_closest"] = sum(p["in_closest"] == 0 for p in place)
            out[k]["place"] = {p["key"]: p for p in place}
            out[k]["alive"] = nets[k].alive()
            out[k]["logs"] = scan_logs(nets[k])
        for k in NETS:
            s = out[k]
            print(f"run {run + 1} {k:8s} up in {s['startup_s']:.1f} s, idle CPU {s['idle_cpu']:.1%}, "
                  f"RSS {s['rss_mb']:.0f} MB | puts ok {s['put_ok']}/{len(items)} | gets ok "
                  f"{s['ok']}/{s['n']} ({s['success']:.0%}), latency p50 {s['p50_ms']:.1f} ms "
                  f"p95 {s['p95_ms']:.1f} ms max {s['max_ms']:.1f} ms, join p50 "
                  f"{s['join_p50_ms']:.1f} ms, timeouts {s['timeouts']}, not joined "
                  f"{s['not_joined']} | network CPU in gets {s['cpu_get']:.2f} s | replicas "
                  f"{s['replicas']:.2f}, in 8 closest {s['in_closest']:.2f}, on none of the 8 "
                  f"closest {s['none_closest']} | alive {s['alive']}/{args.nodes}", flush=True)
            for key in dict.fromkeys(s["failed"]):
                p = s["place"][key]
                print(f"    failed get(s) for {key}: {s['failed'].count(key)}; the value is held by "
                      f"the nodes of XOR rank {p['holders']} (0 = closest; {p['silent']} silent)",
                      flush=True)
        print(f"run {run + 1}: other processes {other:.0%} of a core while settling; puts "
              f"dhtnode net {out['dhtnode']['put_s']:.1f} s, sipdht net {out['sipdht']['put_s']:.1f} s; gets {t_get:.1f} s with the machine {busy:.0%} of a core busy "
              f"(all processes)", flush=True)
        return out
    finally:
        stop_all(nets["dhtnode"].procs + nets["sipdht"].procs)


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3,
                    help="runs, each with two fresh networks and fresh keys (default 3)")
    ap.add_argument("--nodes", type=int, default=32, help="processes per network (default 32)")
    ap.add_argument("--keys", type=int, default=20, help="values put per run and network (default 20)")
    ap.add_argument("--reps", type=int, default=5, help="gets per key per run (default 5)")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds after start (default 10)")
    ap.add_argument("--put-timeout", type=float, default=20.0, help="per put (default 20)")
    ap.add_argument("--put-parallel", type=int, default=4,
                    help="concurrent `sipdht put` processes (default 4)")
    ap.add_argument("--dhtnode-put", choices=("sipdht", "stdin"), default="sipdht",
                    help="how values get into the dhtnode network: the same one-shot `sipdht put` "
                         "client as the sipdht network (default), or `p` on a settled member's "
                         "stdin (a different path: for comparison only)")
    ap.add_argument("--join-timeout", type=float, default=5.0, help="client join (default 5)")
    ap.add_argument("--get-timeout", type=float, default=10.0, help="per get (default 10)")
    ap.add_argument("--seed", type=int, default=None, help="random seed for node/key choice")
    add_summary_option(ap)
    args = ap.parse_args()
    if not (1 <= args.runs <= 20 and 2 <= args.nodes <= 64 and 1 <= args.keys <= 200
            and 1 <= args.reps <= 20 and 0 <= args.settle <= 300 and 1 <= args.put_parallel <= 16
            and 0 < args.put_timeout <= 120 and 0 < args.join_timeout <= 60
            and 0 < args.get_timeout <= 120):
        ap.error("out of range: runs 1-20, nodes 2-64, keys 1-200, reps 1-20, settle 0-300, "
                 "put-parallel 1-16, timeouts up to 60-120 s")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    nonce = f"{seed:08x}"

    print(f"get latency: {args.nodes} dhtnode + {args.nodes} sipdht processes per run, {args.keys} "
          f"keys x {args.reps} gets per network per run, {args.runs} runs, settle {args.settle:g} s, "
          f"dhtnode puts via {args.dhtnode_put}, seed {seed}, {os.cpu_count()} CPUs, "
          f"load average {loadavg():.2f}", flush=True)
    runs: list[dict[str, dict]] = []
    with workdir("bench-get-lat-") as d:
        tmp = Path(d)
        config = write_sipdht_config(tmp)
        warm_bytecode_cache(tmp, config)
        for run in range(args.runs):
            (tmp / f"run{run}").mkdir()
            runs.append(one_run(run, args, rng, nonce, tmp, config))

    def med(kind: str, field: str) -> float:
        return median([r[kind][field] for r in runs])

    rows = [[f"metric (median of {args.runs} runs)", "dhtnode net", "sipdht net", "sipdht/dhtnode"]]
    for label, field, fmt in (
            ("get latency p50 (ms)", "p50_ms", "{:.1f}"),
            ("get latency p95 (ms)", "p95_ms", "{:.1f}"),
            ("get success rate", "success", "{:.1%}"),
            ("client join p50 (ms, not in the latency)", "join_p50_ms", "{:.1f}"),
            (f"puts reported stored (of {args.keys})", "put_ok", "{:.0f}"),
            (f"time for the {args.keys} puts (s)", "put_s", "{:.1f}"),
            ("replicas per value, any node", "replicas", "{:.2f}"),
            ("replicas on the 8 XOR-closest nodes", "in_closest", "{:.2f}"),
            (f"values on none of the 8 closest (of {args.keys})", "none_closest", "{:.0f}"),
            ("network CPU s during the gets", "cpu_get", "{:.2f}"),
            ("network CPU while idle (% of a core)", "idle_cpu", "{:.1%}"),
            (f"network RSS total, {args.nodes} processes (MB)", "rss_mb", "{:.0f}"),
            ("network start-up time (s)", "startup_s", "{:.1f}")):
        a, b = med("dhtnode", field), med("sipdht", field)
        rows.append([label, fmt.format(a), fmt.format(b), fmt_ratio(b, a)])
    print()
    print(table(rows))
    total = {k: sum(r[k]["n"] for r in runs) for k in NETS}
    ok = {k: sum(r[k]["ok"] for r in runs) for k in NETS}
    print(f"\nall runs: gets ok dhtnode {ok['dhtnode']}/{total['dhtnode']}, sipdht "
          f"{ok['sipdht']}/{total['sipdht']}")
    logs = {k: {c: sum(r[k]["logs"][c] for r in runs) for c in ("traceback", "error", "warning")}
            for k in NETS}
    print(f"sipdht node logs: {logs['sipdht']['traceback']} tracebacks, {logs['sipdht']['error']} "
          f"errors, {logs['sipdht']['warning']} warnings")
    n = args.nodes
    write_summary(args.summary, [
        summary_row("get_latency", label, unit, med("sipdht", field) * k, med("dhtnode", field) * k,
                    "dhtnode")
        for label, field, unit, k in (
            (f"get p50, {n}-node network, fresh client", "p50_ms", "ms", 1),
            (f"get p95, {n}-node network, fresh client", "p95_ms", "ms", 1),
            ("get success", "success", "%", 100),
            ("replicas on the 8 XOR-closest nodes", "in_closest", "", 1),
            (f"CPU of {n} nodes during the gets", "cpu_get", "s", 1),
            (f"RSS of {n} nodes", "rss_mb", "MB", 1),
            (f"start-up of {n} nodes", "startup_s", "s", 1))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
