#!/usr/bin/env python3
"""Run every benchmark in bench/ and print one table: each of our figures beside the peer's
figure from the same run (dhtnode for the DHT, bare aioice for link set-up, Kamailio / SIPp
direct for SIP call set-up, a plain Python forwarder for RTP) and the ratio ours/peer.

Each benchmark runs as its own subprocess (one after the other, never two at once) with
`--summary FILE`; its normal output goes to a log file. A benchmark is stopped by its PID
(its process group: SIGTERM, then SIGKILL after 15 s) when it exceeds its time limit.
Benchmarks that need root (network namespaces) run only as root; missing peers are reported
with the command that installs them.

    make bench                                  # = .venv/bin/python bench/all.py --quick
    .venv/bin/python bench/all.py               # the scripts' own defaults (~20 min)
    .venv/bin/python bench/all.py --quick --only get_latency,sim_hops --logs /tmp/bench-logs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Bench:
    """One script: its arguments for --quick, its time limits and what it needs."""
    name: str
    quick: list[str]
    limit_quick: float          # seconds
    limit_full: float
    root: bool = False          # needs network namespaces
    tools: dict[str, str] = field(default_factory=dict)     # binary -> how to install it


DHTNODE_HINT = "apt-get install dhtnode"
BENCHES = [
    Bench("get_throughput", ["--runs", "3", "--duration", "5"], 240, 600,
          tools={"dhtnode": DHTNODE_HINT}),
    Bench("get_latency", ["--runs", "2"], 420, 900,
          tools={"dhtnode": DHTNODE_HINT}),
    Bench("warm_ops", ["--runs", "1", "--keys", "10", "--reps", "5", "--puts", "30"], 150, 600,
          tools={"dhtnode": DHTNODE_HINT}),
    Bench("kill_nodes", ["--runs", "1", "--keys", "10", "--reps", "2"], 180, 900,
          tools={"dhtnode": DHTNODE_HINT}),
    Bench("sim_hops", [], 300, 600),
    Bench("sim_churn", [], 300, 600),
    Bench("sim_scale", ["--quick"], 300, 900),
    Bench("ping_setup", ["--runs", "10"], 480, 2400,
          root=True, tools={"dhtnode": DHTNODE_HINT, "turnserver": "apt-get install coturn"}),
    Bench("call_setup", ["--calls", "30", "--runs", "1", "--cold", "10", "--first", "10"], 600, 1200,
          root=True, tools={"sipp": "apt-get install sip-tester",
                            "kamailio": "apt-get install kamailio"}),
    Bench("listens", ["--listens", "5000", "--remote", "20000", "--idle", "20", "--sample", "200"],
          240, 600, tools={"dhtnode": DHTNODE_HINT}),
    Bench("rtp_relay", ["--seconds", "5", "--blast", "3", "--concurrency", "1,10,50",
                        "--rates", "5000,20000,40000"], 420, 900,
          tools={"dhtnode": DHTNODE_HINT}),
]


@dataclass
class Outcome:
    bench: Bench
    status: str                 # ok, failed, skipped
    why: str = ""
    seconds: float = 0.0
    rows: list[dict] = field(default_factory=list)


def which(tool: str) -> bool:
    return bool(shutil.which(tool)) or any(os.access(f"{d}/{tool}", os.X_OK)
                                           for d in ("/usr/sbin", "/sbin", "/usr/bin"))


def skip_reason(b: Bench) -> str | None:
    if b.root and os.geteuid() != 0:
        return "not root: needs network namespaces (run `make bench` as root)"
    missing = [hint for tool, hint in b.tools.items() if not which(tool)]
    if missing:
        tools = [t for t, h in b.tools.items() if h in missing]
        return f"{', '.join(tools)} not installed: {'; '.join(dict.fromkeys(missing))}"
    return None


def stop_group(p: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the benchmark's process group (its PID), SIGKILL after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            pass


def tail(path: Path, n: int = 3) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def run_one(b: Bench, quick: bool, logs: Path, extra: list[str]) -> Outcome:
    reason = skip_reason(b)
    if reason:
        return Outcome(b, "skipped", reason)
    summary = logs / f"{b.name}.json"
    out, err = logs / f"{b.name}.out", logs / f"{b.name}.err"
    argv = [sys.executable, str(HERE / f"{b.name}.py"), *(b.quick if quick else []), *extra,
            "--summary", str(summary)]
    limit = b.limit_quick if quick else b.limit_full
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    print(f"[{time.strftime('%H:%M:%S')}] {b.name}: {' '.join(argv[2:])} (limit {limit:.0f} s)",
          flush=True)
    t0 = time.monotonic()
    with open(out, "w") as fo, open(err, "w") as fe:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, cwd=ROOT,
                             env=env, start_new_session=True)
        try:
            rc = p.wait(limit)
        except subprocess.TimeoutExpired:
            rc = None
        except KeyboardInterrupt:
            stop_group(p)
            raise
        finally:
            stop_group(p)
    secs = time.monotonic() - t0
    rows = json.loads(summary.read_text()) if summary.exists() else []
    if rc is None:
        return Outcome(b, "failed", f"stopped after the {limit:.0f} s limit", secs, rows)
    if rc == 2 and "cannot run:" in err.read_text(errors="replace"):
        return Outcome(b, "skipped", tail(err, 1).removeprefix("cannot run: "), secs)
    if rc != 0 or not rows:
        why = f"exit {rc}" + ("" if rows else ", no summary") + f": {tail(err) or tail(out)}"
        return Outcome(b, "failed", why, secs, rows)
    return Outcome(b, "ok", "", secs, rows)


def num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    a = abs(x)
    s = f"{x:,.0f}" if a >= 100 else f"{x:.1f}" if a >= 10 else f"{x:.2f}" if a >= 0.1 \
        else f"{x:.3f}"
    unit = {"us": "µs", "1/s": "/s"}.get(unit, unit)
    return f"{s} {unit}".rstrip() if unit not in ("", "%") else s + unit


def one_table(outcomes: list[Outcome]) -> str:
    from bench._common import table  # after ROOT is on sys.path
    rows = [["bench", "figure", "peer", "ours", "peer's figure", "ours/peer"]]
    for o in outcomes:
        for r in o.rows:
            rows.append([r["bench"], r["figure"], r["peer_name"] or "-", num(r["ours"], r["unit"]),
                         num(r["peer"], r["unit"]),
                         "-" if r["ratio"] is None else f"{r['ratio']:.2f}"])
    return table(rows, left=3)


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def commit() -> str:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30)
        return r.stdout.strip()
    return git("rev-parse", "--short", "HEAD") + (" (+ local changes)" if git(
        "status", "--porcelain", "--untracked-files=no") else "")


def main(argv: list[str] | None = None) -> int:
    names = [b.name for b in BENCHES]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions (~10-15 min on 2 cores); default: each script's own")
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(names)}")
    ap.add_argument("--logs", metavar="DIR", help="keep each benchmark's output and summary here")
    ap.add_argument("--json", metavar="PATH", help="also write all rows and outcomes as JSON")
    args = ap.parse_args(argv)
    chosen = BENCHES
    if args.only:
        want = [w.strip() for w in args.only.split(",") if w.strip()]
        if bad := [w for w in want if w not in names]:
            ap.error(f"unknown benchmark(s) {bad}; choose from {names}")
        chosen = [b for b in BENCHES if b.name in want]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    started = datetime.now(UTC)
    load0 = uptime()
    print(f"# bench/all.py {'--quick' if args.quick else '(defaults)'}: {len(chosen)} benchmarks, "
          f"one after the other; logs in {args.logs or 'a temporary directory'}", flush=True)
    outcomes: list[Outcome] = []
    tmp = None if args.logs else tempfile.TemporaryDirectory(prefix="sipdht-bench-all-")
    logs = Path(args.logs) if args.logs else Path(tmp.name)    # type: ignore[union-attr]
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for b in chosen:
            o = run_one(b, args.quick, logs, [])
            outcomes.append(o)
            print(f"[{time.strftime('%H:%M:%S')}] {b.name}: {o.status} in {o.seconds:.0f} s"
                  + (f" ({o.why})" if o.why else ""), flush=True)
    except KeyboardInterrupt:
        print("interrupted: the table below has the benchmarks finished so far", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    total = (datetime.now(UTC) - started).total_seconds()
    print(f"\n## One table ({started:%Y-%m-%d %H:%M} UTC, commit {commit()}, "
          f"{'--quick' if args.quick else 'defaults'}, {os.cpu_count()} CPUs, load average "
          f"{load0} at the start, {uptime()} at the end, {total / 60:.0f} min)\n")
    print(one_table(outcomes))
    bad = [o for o in outcomes if o.status != "ok"]
    if bad:
        print()
    for o in bad:
        print(f"{o.bench.name}: {o.status}: {o.why}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            [{"bench": o.bench.name, "status": o.status, "why": o.why, "seconds": o.seconds,
              "rows": o.rows} for o in outcomes], indent=1) + "\n")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
