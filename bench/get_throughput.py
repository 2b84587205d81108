#!/usr/bin/env python3
"""`get` throughput of one server node: Debian's `dhtnode -U` vs `sipdht node -U`.

Each run starts a fresh server (loopback, rate limits off), stores one ~40-byte value at
a key with a raw get (for the token) + put, then a raw msgpack UDP client built on
sipdht.dht.messages.encode_query/decode keeps a window of N `get` queries for that key
outstanding for a fixed time, matching replies by tid. Reported per server: replies/s,
RTT p50/p95, the server's CPU (utime+stime from /proc/PID/stat) per 1000 replies and its
utilisation, its RSS (VmRSS at the end, VmHWM), and the client's own CPU utilisation:
a client near 100 % of one core is the bottleneck, not the server.

The two servers run alternately (never at the same time), in swapped order on every
other run; the final table shows the medians over the runs and the ratio sipdht/dhtnode.

    .venv/bin/python bench/get_throughput.py [--runs 5] [--duration 5] [--window 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (  # noqa: E402
    Tids,
    add_summary_option,
    fmt_ratio,
    machine_cpu_seconds,
    median,
    percentile,
    request,
    start_dhtnode,
    start_sipdht_node,
    summary_row,
    table,
    warm_bytecode_cache,
    workdir,
    write_sipdht_config,
    write_summary,
)

from sipdht.dht.infohash import InfoHash  # noqa: E402
from sipdht.dht.messages import decode, encode_query  # noqa: E402
from sipdht.dht.values import new_value, pack  # noqa: E402

KEY = InfoHash.from_key("bench:get-throughput")
DATA = b"sip:alice@example.org;expires=3600;q=0.9"   # 40 bytes
SERVERS = ("dhtnode", "sipdht")


def preload(port: int) -> None:
    """Store DATA at KEY on the server: get (token) + put, then check a get returns it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        my_id, tids = os.urandom(20), Tids()
        reply = request(sock, tids, "get", {"id": my_id, "h": KEY})
        if reply.kind != "r" or not reply.token:
            raise RuntimeError(f"get for a token: unexpected reply {reply}")
        value = new_value(DATA, utype="text/plain")
        reply = request(sock, tids, "put", {"id": my_id, "h": KEY, "values": [pack(value)],
                                             "token": reply.token})
        if reply.kind != "r" or reply.vid != value.id:
            raise RuntimeError(f"put: unexpected reply {reply}")
        for _ in range(20):   # the store may lag the reply by a loop iteration
            reply = request(sock, tids, "get", {"id": os.urandom(20), "h": KEY})
            if any(v.data == DATA for v in reply.values):
                return
            time.sleep(0.05)
        raise RuntimeError("the preloaded value is not returned by get")
    finally:
        sock.close()


def blast(port: int, window: int, duration: float, warmup: float, proc) -> dict:
    """Keep `window` gets outstanding for warmup+duration seconds; measure the last `duration`."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.05)
        args = {"id": os.urandom(20), "h": KEY}
        tids = Tids()
        outstanding: dict[int, float] = {}
        clock = time.perf_counter
        recv, send, enc, dec = sock.recv, sock.send, encode_query, decode
        rtts: list[float] = []
        replies = lost = stray = errors = no_value = 0

        def send_one() -> None:
            tid = tids.next()
            outstanding[tid] = clock()
            send(enc("get", tid, args))

        t_begin = clock()
        t_start = t_begin + warmup
        t_end = t_start + duration
        measuring = False
        for _ in range(window):
            send_one()
        last_sweep = t_begin
        while True:
            now = clock()
            if not measuring and now >= t_start:
                measuring = True
                srv_cpu0, cli0, all0 = proc.cpu_seconds(), os.times(), machine_cpu_seconds()
                t_start = now
            if now >= t_end:
                break
            if now - last_sweep > 0.25:          # requests lost: give their slot back
                last_sweep = now
                for tid in [t for t, ts in outstanding.items() if now - ts > 1.0]:
                    del outstanding[tid]
                    lost += measuring
                    send_one()
            try:
                data = recv(65536)
            except TimeoutError:
                continue
            t = clock()
            msg = dec(data)
            ts = outstanding.pop(msg.tid, None)
            if ts is None:
                stray += 1
                continue
            if measuring:
                replies += 1
                rtts.append(t - ts)
                if msg.kind != "r":
                    errors += 1
                elif not msg.values:
                    no_value += 1
            send_one()
        wall = clock() - t_start
        srv_cpu = proc.cpu_seconds() - srv_cpu0
        cli1 = os.times()
        cli_cpu = (cli1.user - cli0.user) + (cli1.system - cli0.system)
        other = machine_cpu_seconds() - all0 - srv_cpu - cli_cpu
        return {
            "replies_s": replies / wall, "replies": replies, "wall": wall,
            "p50_ms": percentile(rtts, 50) * 1e3, "p95_ms": percentile(rtts, 95) * 1e3,
            "srv_cpu_s": srv_cpu, "srv_util": srv_cpu / wall,
            "cpu_per_1k": srv_cpu / replies * 1000 if replies else float("nan"),
            "cli_util": cli_cpu / wall, "other_util": max(0.0, other / wall),
            "rss_mb": proc.rss_mb(), "hwm_mb": proc.hwm_mb(),
            "lost": lost, "stray": stray, "errors": errors, "no_value": no_value,
        }
    finally:
        sock.close()


def one_run(kind: str, tmp: Path, config: Path, run: int, args: argparse.Namespace) -> dict:
    name = f"{kind}-run{run}"
    if kind == "dhtnode":
        proc = start_dhtnode(tmp, name, no_rate_limit=True)
    else:
        proc = start_sipdht_node(tmp, config, name, no_rate_limit=True)
    try:
        proc.wait_ready(30)
        rss_idle = proc.rss_mb()
        preload(proc.port)
        res = blast(proc.port, args.window, args.duration, args.warmup, proc)
        res["rss_idle_mb"] = rss_idle
        return res
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per server (default 5)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first (default 0.5)")
    ap.add_argument("--window", type=int, default=8, help="outstanding requests (default 8)")
    add_summary_option(ap)
    args = ap.parse_args()
    if not (1 <= args.runs <= 100 and 0.1 <= args.duration <= 120 and 1 <= args.window <= 1024
            and 0 <= args.warmup <= 30):
        ap.error("out of range: runs 1-100, duration 0.1-120, window 1-1024, warmup 0-30")

    print(f"get throughput: 1 client, window {args.window}, {args.duration:g} s per run "
          f"(+{args.warmup:g} s warm-up), {args.runs} runs per server, {os.cpu_count()} CPUs")
    results: dict[str, list[dict]] = {k: [] for k in SERVERS}
    with workdir("bench-get-tp-") as d:
        tmp = Path(d)
        config = write_sipdht_config(tmp)
        warm_bytecode_cache(tmp, config)
        for run in range(args.runs):
            order = SERVERS if run % 2 == 0 else SERVERS[::-1]
            for kind in order:
                r = one_run(kind, tmp, config, run, args)
                results[kind].append(r)
                print(f"run {run + 1} {kind:8s} {r['replies_s']:9.0f} replies/s  "
                      f"rtt p50 {r['p50_ms']:.3f} ms p95 {r['p95_ms']:.3f} ms  "
                      f"server cpu {r['srv_util'] * 100:5.1f}% ({r['cpu_per_1k'] * 1e3:.1f} ms/1k)  "
                      f"client cpu {r['cli_util'] * 100:5.1f}%  other load {r['other_util'] * 100:4.0f}%  rss {r['rss_mb']:.1f} MB "
                      f"(idle {r['rss_idle_mb']:.1f}, peak {r['hwm_mb']:.1f})  "
                      f"lost {r['lost']} err {r['errors']} no-value {r['no_value']} stray {r['stray']}",
                      flush=True)

    def med(kind: str, field: str) -> float:
        return median([r[field] for r in results[kind]])

    rows = [[f"metric (median of {args.runs} runs)", "dhtnode", "sipdht", "sipdht/dhtnode"]]
    for label, field, fmt in (
            ("replies/s", "replies_s", "{:.0f}"),
            ("RTT p50 (ms)", "p50_ms", "{:.3f}"),
            ("RTT p95 (ms)", "p95_ms", "{:.3f}"),
            ("server CPU s per 1000 replies", "cpu_per_1k", "{:.4f}"),
            ("server CPU utilisation (1 core = 100%)", "srv_util", "{:.0%}"),
            ("client CPU utilisation (1 core = 100%)", "cli_util", "{:.0%}"),
            ("other processes' CPU during the run", "other_util", "{:.0%}"),
            ("server RSS at end (MB)", "rss_mb", "{:.1f}"),
            ("server RSS idle, before load (MB)", "rss_idle_mb", "{:.1f}"),
            ("server peak RSS, VmHWM (MB)", "hwm_mb", "{:.1f}")):
        a, b = med("dhtnode", field), med("sipdht", field)
        same = field in ("cli_util", "other_util")     # context, not a property of the server
        rows.append([label, fmt.format(a), fmt.format(b), "-" if same else fmt_ratio(b, a)])
    print()
    print(table(rows))
    for kind in SERVERS:
        srv, cli = med(kind, "srv_util"), med(kind, "cli_util")
        if srv < 0.9:
            print(f"\nnote: {kind} was not saturated ({srv:.0%} of a core; the client used {cli:.0%}): "
                  f"its replies/s is bounded by the client (its CPU, and window {args.window} / RTT), "
                  f"not by the server. Compare CPU s per 1000 replies for the servers' cost.")
    write_summary(args.summary, [
        summary_row("get_throughput", label, unit, med("sipdht", field) * k,
                    med("dhtnode", field) * k, "dhtnode")
        for label, field, unit, k in (
            ("server CPU per get reply", "cpu_per_1k", "us", 1e3),
            (f"replies/s, 1 client, window {args.window}", "replies_s", "1/s", 1),
            ("RTT p50 at that load", "p50_ms", "ms", 1),
            ("RSS of one idle node", "rss_idle_mb", "MB", 1))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
