#!/usr/bin/env python3
"""Link setup time through NATs: `sipdht ping` vs a bare aioice pair, in the netns topology.

One topology (tests/harness/netlab.py): coturn and the `dhtnode` bootstrap in ns pub
(198.51.100.1), alice behind router natA, bob behind natB. Identities alice and bob are RSA
2048-bit (faster than the default; the key size only changes signing/verifying time).

For each NAT pair "A/B" (alice's router mode / bob's router mode):

0. from the second pair on, dhtnode is restarted (empty storage, no stale listeners or routing
   entries; ``--shared-dht`` keeps one node for the whole run: see bench/README.md for why the
   pings then start failing once an inbox key holds more than 64 values);
1. both routers are switched (Topology.set_nat, which flushes their conntrack);
2. bob's agent starts (`sipdht run --config bob.ini` in ns bob) and the script waits for
   "contact record of ... published on N node(s)";
3. ``--runs`` times, alternating so both share machine conditions:
   * `sipdht ping --config alice.ini --count N BOB` in ns alice, a fresh process each time; its
     one-line breakdown (lookup, gather, signalling, ICE, RTT, path) is parsed, and its wall time
     (process start to exit, python start-up and DHT join included) is measured here;
   * a bare aioice pair: this same file run as ``_ice_peer controlling`` in ns alice and
     ``_ice_peer controlled`` in ns bob, the same STUN/TURN server and TURN users as the agents,
     candidates exchanged as JSON lines through pipes by this process. The controlling side
     reports its gather time, its ``connect()`` time, the median RTT of N echo round trips and
     the first RTT (which waits until the controlled side's ``connect()`` has returned); the
     controlled side reports its own ``connect()`` time;
4. bob's agent is stopped.

Per pair it prints success counts, median/p95 of each step, total setup
(lookup+gather+signalling+ICE), the path types, the bare aioice gather/connect/total
(gather+connect), and the ratios sipdht/bare. Traffic stays inside the script's namespaces;
every process is stopped by PID; the topology is torn down in ``finally`` (Ctrl-C / SIGTERM too).

    .venv/bin/python -m bench.ping_setup [--runs 20] [--count 3]
        [--pairs cone/cone,fullcone/fullcone,symmetric/symmetric,cone/symmetric] [-v]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = Path(__file__).resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    add_summary_option,
    median,
    percentile,
    summary_row,
    write_summary,
)

PEER_CMD = "_ice_peer"


# --- the bare aioice peer (runs inside a namespace; only aioice + stdlib) -----------------------


def _cand(c) -> dict:
    return {"type": c.type, "addr": f"{c.host}:{c.port}"}


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


async def _ice_peer(a: argparse.Namespace) -> int:
    import aioice

    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    res: dict = {"result": a.role, "ok": False}
    conn = aioice.Connection(
        ice_controlling=a.role == "controlling", stun_server=(a.server, a.port),
        turn_server=(a.server, a.port), turn_username=a.user, turn_password=a.password,
        use_ipv6=False)
    try:
        t0 = time.monotonic()
        await asyncio.wait_for(conn.gather_candidates(), a.timeout)
        gather_ms = (time.monotonic() - t0) * 1000
        _emit({"ufrag": conn.local_username, "pwd": conn.local_password,
               "candidates": [c.to_sdp() for c in conn.local_candidates],
               "gather_ms": round(gather_ms, 3)})
        res["gather_ms"] = round(gather_ms, 3)
        line = await asyncio.wait_for(stdin.readline(), a.timeout)
        if not line:
            raise ConnectionError("no remote description on stdin")
        remote = json.loads(line)
        t1 = time.monotonic()
        conn.remote_username, conn.remote_password = remote["ufrag"], remote["pwd"]
        for sdp in remote["candidates"][:64]:
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
        await conn.add_remote_candidate(None)
        await asyncio.wait_for(conn.connect(), a.timeout)
        res["ice_ms"] = round((time.monotonic() - t1) * 1000, 3)
        pair = conn._nominated.get(1)      # aioice has no public getter for the selected pair
        if pair is not None:
            res["path"] = [pair.local_candidate.type, pair.remote_candidate.type]
            res["local"], res["remote"] = _cand(pair.local_candidate), _cand(pair.remote_candidate)
        if a.role == "controlling":
            rtts = []
            for i in range(max(1, a.count)):
                ts = time.monotonic()
                await conn.send(b"ping%d" % i)
                data = await asyncio.wait_for(conn.recv(), 3)
                if data != b"pong%d" % i:
                    raise ConnectionError(f"bad echo {data!r}")
                rtts.append((time.monotonic() - ts) * 1000)
            await conn.send(b"bye")
            res["rtt_ms"] = [round(r, 3) for r in rtts]
        else:
            for _ in range(max(1, a.count) + 1):           # bounded: count pings + bye
                data = await asyncio.wait_for(conn.recv(), 5)
                if data == b"bye":
                    break
                await conn.send(data.replace(b"ping", b"pong"))
        res["ok"] = True
    except Exception as exc:                                # noqa: BLE001 - reported to parent
        res["error"] = f"{type(exc).__name__}: {exc}"[:300]
    _emit(res)
    await asyncio.sleep(0.05)              # let the last datagram leave
    try:
        await asyncio.wait_for(conn.close(), 3)
    except Exception:                                       # noqa: BLE001
        pass
    return 0 if res["ok"] else 1


def ice_peer_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"ping_setup.py {PEER_CMD}")
    p.add_argument("role", choices=["controlling", "controlled"])
    p.add_argument("--server", required=True)
    p.add_argument("--port", type=int, default=3478)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--timeout", type=float, default=20)
    return asyncio.run(_ice_peer(p.parse_args(argv)))


# --- statistics / formatting --------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "-"


def fmt(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([line(rows[0]), sep] + [line(r) for r in rows[1:]])


def path_type(types: list[str] | tuple[str, str]) -> str:
    """As sipdht.v1.ice.path_type: relay if either side is relayed, srflx/prflx -> srflx, else host."""
    if "relay" in types:
        return "relay"
    if "srflx" in types or "prflx" in types:
        return "srflx"
    return "host"


# --- the benchmark ------------------------------------------------------------------------------

PING_RE = re.compile(
    r"link to (\S+): lookup (\d+) ms, gather (\d+) ms, signalling (\d+) ms, ICE (\d+) ms, "
    r"first RTT (?:[\d.]+|nan) ms, RTT ([\d.]+|nan) ms \(median of (\d+)\), path (\w+)")
STEPS = ("lookup", "gather", "signalling", "ice")


def write_config(directory: Path, who: str, nl) -> Path:
    """The same agent INI as tests/netns/test_calls_nat.py (2048-bit identity)."""
    return nl.agent_config(directory, who)


def sipdht_argv(nl) -> list[str]:
    script = ROOT / ".venv" / "bin" / "sipdht"
    return [str(script)] if script.exists() else [nl.PYTHON, "-m", "sipdht"]


def last_reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("sipdht:"):
            return ln
    return lines[-1][:200] if lines else "(no stderr)"


def run_ping(topo, nl, argv: list[str], ini: Path, bob_id: str, count: int,
             timeout: float) -> dict:
    t0 = time.monotonic()
    try:
        r = topo.run("alice", [*argv, "ping", "--config", str(ini), "--count", str(count), bob_id],
                     timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"process killed after {timeout:g} s",
                "wall_ms": (time.monotonic() - t0) * 1000}
    wall = (time.monotonic() - t0) * 1000
    m = PING_RE.search(r.stdout)
    if r.returncode != 0 or not m:
        return {"ok": False, "wall_ms": wall,
                "error": f"exit {r.returncode}: {last_reason(r.stderr)}"}
    return {"ok": True, "wall_ms": wall, "lookup": float(m.group(2)), "gather": float(m.group(3)),
            "signalling": float(m.group(4)), "ice": float(m.group(5)),
            "rtt": float(m.group(6)), "path": m.group(8)}


def run_bare(topo, nl, count: int, timeout: float) -> dict:
    """One bare aioice connection alice(controlling) -> bob(controlled); parent relays SDP lines."""
    t0 = time.monotonic()
    procs: dict = {}
    try:
        for who, role in (("alice", "controlling"), ("bob", "controlled")):
            procs[who] = topo.spawn(who, [
                nl.PYTHON, str(SELF), PEER_CMD, role, "--server", nl.PUB_IP,
                "--port", str(nl.TURN_PORT), "--user", who, "--password", nl.TURN_USERS[who],
                "--count", str(count), "--timeout", str(timeout)],
                watch=True, stdin=subprocess.PIPE)
        desc = {who: nl.output(p).wait_for(r'^\{"ufrag"', timeout + 10).string
                for who, p in procs.items()}
        for who, other in (("alice", "bob"), ("bob", "alice")):
            procs[who].stdin.write(desc[other] + "\n")
            procs[who].stdin.flush()
        res = {who: json.loads(nl.output(p).wait_for(r'^\{"result"', timeout + 15).string)
               for who, p in procs.items()}
    except (TimeoutError, EOFError, BrokenPipeError, json.JSONDecodeError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                "wall_ms": (time.monotonic() - t0) * 1000}
    finally:
        for p in procs.values():
            try:
                p.wait(5)                       # each exits by itself after closing its ICE
            except subprocess.TimeoutExpired:
                pass
            nl.stop_process(p)                  # by PID; no-op signal if already gone
    wall = (time.monotonic() - t0) * 1000
    a, b = res["alice"], res["bob"]
    if not (a.get("ok") and b.get("ok")):
        err = a.get("error") or b.get("error") or "failed"
        return {"ok": False, "wall_ms": wall,
                "error": f"{'alice' if not a.get('ok') else 'bob'}: {err}"}
    return {"ok": True, "wall_ms": wall, "gather": a["gather_ms"],
            "gather_bob": b["gather_ms"], "ice": a["ice_ms"], "ice_bob": b["ice_ms"],
            "rtt": median(a["rtt_ms"]), "rtt_first": a["rtt_ms"][0],
            "path": path_type(a.get("path", [])),
            "pair": f"{a.get('path', ['?', '?'])[0]}->{a.get('path', ['?', '?'])[1]}"}


def summarise(pair: str, pings: list[dict], bares: list[dict], runs: int, count: int,
              bob_start_s: float, elapsed_s: float) -> tuple[str, dict]:
    ok_p = [r for r in pings if r["ok"]]
    ok_b = [r for r in bares if r["ok"]]
    for r in ok_p:
        r["total"] = sum(r[k] for k in STEPS)
    for r in ok_b:
        r["total"] = r["gather"] + r["ice"]

    def col(rows: list[dict], key: str) -> list[float]:
        return [r[key] for r in rows if r.get(key) == r.get(key)]

    def mp(rows: list[dict], key: str) -> tuple[float, float]:
        c = col(rows, key)
        return median(c), percentile(c, 95)

    out = [f"## {pair}  (alice behind {pair.split('/')[0]}, bob behind {pair.split('/')[1]})",
           f"bob's agent up (contact record published) in {bob_start_s:.1f} s; "
           f"{runs} runs took {elapsed_s:.0f} s",
           f"sipdht ping: {len(ok_p)}/{len(pings)} ok; paths: "
           + (", ".join(f"{k} {v}" for k, v in Counter(r["path"] for r in ok_p).most_common())
              or "-"),
           f"bare aioice: {len(ok_b)}/{len(bares)} ok; paths: "
           + (", ".join(f"{k} {v}" for k, v in Counter(r["path"] for r in ok_b).most_common())
              or "-")
           + "; selected pairs (alice->bob): "
           + (", ".join(f"{k} {v}" for k, v in Counter(r["pair"] for r in ok_b).most_common())
              or "-")]
    for name, rows in (("sipdht ping", pings), ("bare aioice", bares)):
        fails = Counter(r["error"] for r in rows if not r["ok"])
        for err, n in fails.most_common():
            out.append(f"  {name} failure x{n}: {err}")
    rows = [["ms (successful runs)", "median", "p95"]]
    for label, key in (("sipdht lookup", "lookup"), ("sipdht gather", "gather"),
                       ("sipdht signalling", "signalling"), ("sipdht ICE", "ice"),
                       ("sipdht total setup (lookup+gather+sig+ICE)", "total"),
                       (f"sipdht RTT (median of {count})", "rtt")):
        m, p = mp(ok_p, key)
        rows.append([label, fmt(m, 2 if key == "rtt" else 0), fmt(p, 2 if key == "rtt" else 0)])
    m, p = mp(ok_p, "wall_ms")
    rows.append(["sipdht ping process wall time", fmt(m, 0), fmt(p, 0)])
    m, p = mp(pings, "wall_ms")
    rows.append(["  (all runs, failed included)", fmt(m, 0), fmt(p, 0)])
    for r in ok_p:
        r["overhead"] = r["wall_ms"] - r["total"]
    m, p = mp(ok_p, "overhead")
    rows.append(["  wall - total setup (start-up, join, pings, stop)", fmt(m, 0), fmt(p, 0)])
    for label, key, d in (("bare gather (alice)", "gather", 1), ("bare gather (bob)", "gather_bob", 1),
                          ("bare ICE connect() (alice, controlling)", "ice", 1),
                          ("bare ICE connect() (bob, controlled)", "ice_bob", 1),
                          ("bare total (gather+connect)", "total", 1),
                          (f"bare RTT (median of {count})", "rtt", 2),
                          ("bare first RTT (waits for bob's connect())", "rtt_first", 2),
                          ("bare pair wall time (2 processes)", "wall_ms", 0)):
        m, p = mp(ok_b, key)
        rows.append([label, fmt(m, d), fmt(p, d)])
    pi, bi = mp(ok_p, "ice"), mp(ok_b, "ice")
    pt, bt = mp(ok_p, "total"), mp(ok_b, "total")
    pg, bg = mp(ok_p, "gather"), mp(ok_b, "gather")
    rows.append(["ratio ICE sipdht/bare", ratio(pi[0], bi[0]), ratio(pi[1], bi[1])])
    rows.append(["ratio gather sipdht/bare", ratio(pg[0], bg[0]), ratio(pg[1], bg[1])])
    rows.append(["ratio total sipdht/bare (gather+connect)", ratio(pt[0], bt[0]),
                 ratio(pt[1], bt[1])])
    out.append(table(rows))
    for name, rs in (("sipdht ICE", ok_p), ("bare ICE", ok_b)):
        by = {}
        for r in rs:
            by.setdefault(r["path"], []).append(r["ice"])
        out.append(f"{name} by path: " + ("; ".join(
            f"{k} n={len(v)} median {median(v):.0f} ms p95 {percentile(v, 95):.0f} ms"
            for k, v in sorted(by.items())) or "-"))
    if median(col(ok_p, "lookup")) > 1000 or median(col(ok_p, "signalling")) > 1000:
        out.append("note: lookup/signalling >1 s: each waits for a DHT request to expire "
                   "(0.5 s + ~1.1 s + ~2.4 s retries) -- see bench/README.md")
    summary = {"pair": pair, "ok_p": f"{len(ok_p)}/{len(pings)}", "ok_b": f"{len(ok_b)}/{len(bares)}",
               "lookup": mp(ok_p, "lookup")[0], "gather": pg[0], "sig": mp(ok_p, "signalling")[0],
               "ice": pi[0], "total": pt[0], "wall": mp(ok_p, "wall_ms")[0], "bare_ice": bi[0],
               "bare_total": bt[0], "r_ice": ratio(pi[0], bi[0]), "r_total": ratio(pt[0], bt[0]),
               "paths": "/".join(sorted(Counter(r["path"] for r in ok_p))) or "-",
               "bare_paths": "/".join(sorted(Counter(r["path"] for r in ok_b))) or "-"}
    return "\n".join(out), summary


def summary_rows(summaries: list[dict]) -> list[dict]:
    """Per NAT pair: link set-up total and ICE against bare aioice, and the success counts."""
    rows = []
    for s in summaries:
        ok_p, n_p = (int(x) for x in s["ok_p"].split("/"))
        ok_b, n_b = (int(x) for x in s["ok_b"].split("/"))
        rows += [summary_row("ping_setup", f"link set-up total, {s['pair']} NATs", "ms", s["total"],
                             s["bare_total"], "bare aioice"),
                 summary_row("ping_setup", f"ICE, {s['pair']} NATs", "ms", s["ice"], s["bare_ice"],
                             "bare aioice"),
                 summary_row("ping_setup", f"set-ups ok, {s['pair']} NATs", "%",
                             100 * ok_p / max(n_p, 1), 100 * ok_b / max(n_b, 1), "bare aioice")]
    return rows


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="pings and bare connects per NAT pair")
    ap.add_argument("--pairs", default="cone/cone,fullcone/fullcone,symmetric/symmetric,cone/symmetric",
                    help="comma-separated ALICE_NAT/BOB_NAT (modes: cone fullcone symmetric random)")
    ap.add_argument("--count", type=int, default=3, help="link pings per sipdht ping / bare pair")
    ap.add_argument("--timeout", type=float, default=60,
                    help="kill a ping process / bare pair after this many seconds (default 60)")
    ap.add_argument("--shared-dht", action="store_true",
                    help="keep one dhtnode for all pairs (default: a fresh one per pair; with one "
                    "shared node, signalling values pile up and pings fail, see bench/README.md)")
    ap.add_argument("-v", "--verbose", action="store_true", help="one stderr line per run")
    add_summary_option(ap)
    args = ap.parse_args(argv)

    from tests.harness import netlab as nl

    pairs = []
    for item in args.pairs.split(","):
        a, _, b = item.strip().partition("/")
        if a not in nl.NAT_MODES or b not in nl.NAT_MODES:
            ap.error(f"bad NAT pair {item!r}: modes are {', '.join(nl.NAT_MODES)}")
        pairs.append((a, b))
    if not 1 <= args.runs <= 1000 or not 1 <= args.count <= 100:
        ap.error("--runs must be 1..1000 and --count 1..100")
    reason = nl.netns_unavailable_reason()
    for tool in ("turnserver", "dhtnode"):
        if not shutil.which(tool):
            reason = reason or f"{tool} is not installed"
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="sipdht-ping-bench-"))
    topo = nl.Topology()
    sip = sipdht_argv(nl)
    reports: list[str] = []
    summaries: list[dict] = []
    bob = coturn = None
    try:
        topo.up("cone", "cone")
        coturn = nl.Coturn(topo)
        dht = nl.start_dhtnode(topo, nl.DHT_PORT)
        ini = {w: write_config(tmp, w, nl) for w in ("alice", "bob")}
        ids = {}
        t0 = time.monotonic()
        for who in ("alice", "bob"):
            r = subprocess.run([*sip, "init", "--config", str(ini[who])], capture_output=True,
                               text=True, timeout=60, stdin=subprocess.DEVNULL)
            if r.returncode:
                raise RuntimeError(f"sipdht init ({who}) failed: {r.stderr.strip()}")
            ids[who] = r.stdout.strip().splitlines()[-1]
        id_s = time.monotonic() - t0
        print(f"# sipdht ping setup vs bare aioice through NATs: {args.runs} runs per pair, "
              f"--count {args.count}, {os.cpu_count()} CPUs, load average {loadavg()}")
        print(f"identities: RSA 2048-bit (not the default key size; chosen for speed), "
              f"both created in {id_s:.1f} s; alice {ids['alice'][:12]}…, bob {ids['bob'][:12]}…")
        print(f"topology {topo.prefix}* up in {topo.timings['up']:.1f} s; coturn "
              f"{nl.PUB_IP}:{nl.TURN_PORT} (STUN+TURN/UDP, users alice/bob) up in "
              f"{coturn.startup_s:.1f} s; dhtnode bootstrap {nl.PUB_IP}:{dht.dht_port}, "
              + ("one for all pairs (--shared-dht)" if args.shared_dht else
                 "restarted for each pair (empty storage)"))
        print("sipdht ping: `sipdht ping --config alice.ini --count N BOB` in ns alice, a fresh "
              "process per run; breakdown as printed by it (integer ms, RTT 0.01 ms); wall = "
              "process start to exit as seen by this script")
        print("bare aioice: aioice.Connection (same STUN/TURN server and users) in ns alice "
              "(controlling) and ns bob (controlled), SDP lines relayed through pipes; ICE = "
              "connect() on alice; total = alice gather + connect")
        print(flush=True)

        for mode_a, mode_b in pairs:
            pair = f"{mode_a}/{mode_b}"
            if not args.shared_dht and summaries + reports:
                nl.stop_process(dht)            # by PID; a fresh node has no stored values
                dht = nl.start_dhtnode(topo, nl.DHT_PORT)
            topo.set_nat("A", mode_a)
            topo.set_nat("B", mode_b)
            t0 = time.monotonic()
            bob = topo.spawn("bob", [*sip, "run", "--config", str(ini["bob"])], watch=True)
            try:
                nl.output(bob).wait_for(r"contact record of \w+ published on [1-9]", 30)
            except (TimeoutError, EOFError) as exc:
                reports.append(f"## {pair}\nbob's agent did not come up: {exc}")
                nl.stop_process(bob)
                bob = None
                continue
            bob_s = time.monotonic() - t0
            log(f"{pair}: bob's agent up in {bob_s:.1f} s; {args.runs} runs ...")
            pings: list[dict] = []
            bares: list[dict] = []
            t_pair = time.monotonic()
            for i in range(args.runs):
                pings.append(run_ping(topo, nl, sip, ini["alice"], ids["bob"], args.count,
                                      args.timeout))
                bares.append(run_bare(topo, nl, args.count, 20.0))
                if args.verbose:
                    p, b = pings[-1], bares[-1]
                    log(f"  run {i + 1}: ping " + (
                        f"{p['lookup']:.0f}/{p['gather']:.0f}/{p['signalling']:.0f}/"
                        f"{p['ice']:.0f} ms {p['path']} wall {p['wall_ms']:.0f}" if p["ok"]
                        else f"FAILED {p['error']}") + " | bare " + (
                        f"{b['gather']:.0f}/{b['ice']:.0f} ms {b['pair']}" if b["ok"]
                        else f"FAILED {b['error']}"))
                if bob.poll() is not None:
                    log(f"{pair}: bob's agent exited ({bob.returncode}); stopping this pair")
                    break
            elapsed = time.monotonic() - t_pair
            if bob.poll() is not None:
                reports.append(f"bob's agent exited with {bob.returncode} during {pair}; "
                               f"last lines:\n{nl.output(bob).tail(10)}")
            answered = sum(1 for ln in nl.output(bob).lines if ": answering" in ln)
            linked = sum(1 for ln in nl.output(bob).lines if re.search(r"link with \w+ up", ln))
            bob_warnings = [ln for ln in nl.output(bob).lines
                            if re.search(r"\b(WARNING|ERROR|Traceback)\b", ln)
                            and "not implemented yet" not in ln]
            nl.stop_process(bob)
            bob = None
            text, summary = summarise(pair, pings, bares, len(pings), args.count, bob_s, elapsed)
            text += (f"\nbob's agent: {answered} offers answered, {linked} links up, for "
                     f"{len(pings)} pings")
            if bob_warnings:
                text += (f"\nbob's agent logged {len(bob_warnings)} warning/error line(s), e.g.:\n  "
                         + "\n  ".join(bob_warnings[:5]))
            reports.append(text)
            summaries.append(summary)
            print(text + "\n", flush=True)
            log(f"{pair}: done in {elapsed:.0f} s")

        if summaries:
            rows = [["pair", "ping ok", "bare ok", "lookup", "gather", "signal", "ICE", "total",
                     "wall", "bare ICE", "bare total", "ICE ratio", "total ratio", "path",
                     "bare path"]]
            for s in summaries:
                rows.append([s["pair"], s["ok_p"], s["ok_b"], fmt(s["lookup"], 0),
                             fmt(s["gather"], 0), fmt(s["sig"], 0), fmt(s["ice"], 0),
                             fmt(s["total"], 0), fmt(s["wall"], 0), fmt(s["bare_ice"], 1),
                             fmt(s["bare_total"], 1), s["r_ice"], s["r_total"], s["paths"],
                             s["bare_paths"]])
            print("## summary (medians, ms; ratios = sipdht / bare aioice)")
            print(table(rows))
        for r in reports:
            if r.startswith("bob's agent") or "did not come up" in r:
                print(r)
        write_summary(args.summary, summary_rows(summaries))
        print(f"\ntotal run time {time.monotonic() - t_start:.0f} s; load average at the end "
              f"{loadavg()}", flush=True)
        return 0
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}): tearing down")
        return 130
    finally:
        if bob is not None:
            nl.stop_process(bob)
        if coturn is not None:
            coturn.stop()           # by PID; removes its temp dir (userdb, pidfile)
        topo.down()                 # stops dhtnode and anything left by PID; deletes namespaces
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == PEER_CMD:
        sys.exit(ice_peer_main(sys.argv[2:]))
    sys.exit(main())
