#!/usr/bin/env python3
"""SIP call setup time (INVITE->180, INVITE->200) measured by SIPp through sipdht and peers.

Paths, all measured in the same run and on the same topology (see bench/README.md):

* ``direct``      SIPp UAC -> SIPp UAS;
* ``kamailio``    SIPp UAC -> Kamailio (registrar + record-routing proxy, bench/_kamailio.py)
                  -> SIPp UAS (registered at Kamailio); at 50 ms RTT the proxy sits in a third
                  site (2 RTT); ``kamailio@callee`` puts a second one beside the callee (1 RTT);
* ``sipdht``      SIPp UAC -> `sipdht run` agent A (its [sip] gateway) -> link -> agent B ->
                  SIPp UAS (registered at agent B): ``first (cold A)`` is the first call of a
                  freshly started agent A (nothing cached: DHT lookup, what A fetches once per peer,
                  signalling, ICE); ``new link`` calls each need a new link to B, which A has
                  called before (the previous link was closed for idleness); ``reused`` calls
                  go over a link that is up.

Topologies: ``loopback`` (every process on 127.0.0.1 in one fresh namespace) and ``--rtt 50``
(namespaces a = caller site: SIPp UAC + agent A; b = callee site: SIPp UAS + agent B +
kamailio@callee; s = server site: dhtnode bootstrap + Kamailio; joined by bench/_delayhub.py,
10.200.K.1/16, 25 ms each way between every pair of sites, nothing inside a site is delayed).

Each measurement is one SIPp UAC run of ``--calls`` calls, one at a time (-l 1); ``--runs``
rounds rotate the order of the paths. The 5-RTT floor of a first call is 4 network RTTs (DHT
lookup, offer, answer, ICE check) + the direct INVITE->180 median (one RTT plus SIPp's own
turn-around), i.e. what a first call could cost if every step took exactly one round trip.

    .venv/bin/python -m bench.call_setup [--rtt 0,50] [--calls 50] [--runs 2] [--cold 20]
        [--first 20] [--idle 2]
        [--no-sipdht] [--sipdht-cmd CMD] [--keep-logs DIR] [-v]

Root is needed (namespaces); traffic stays in the script's namespaces (loopback and
10.200.0.0/16); every process is stopped by its PID and the namespaces are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _kamailio, _sipp  # noqa: E402
from bench._common import (  # noqa: E402
    Proc,
    add_summary_option,
    median,
    percentile,
    stop_all,
    summary_row,
    table,
    write_summary,
)
from bench._delayhub import DelayHub, address  # noqa: E402

DHTNODE = shutil.which("dhtnode") or "/usr/bin/dhtnode"
_VENV_SIPDHT = ROOT / ".venv" / "bin" / "sipdht"
SIPDHT = [str(_VENV_SIPDHT)] if _VENV_SIPDHT.exists() else [sys.executable, "-m", "sipdht"]

UAC_PORT, UAS_PORT, UAS_LOCAL_PORT, REG_PORT = 5061, 5070, 5071, 5069
LOCAL = "127.0.0.1"                 # softphones reach their own agent on loopback
KAM_PORT, KAM_B_PORT = 5080, 5082
DHT_PORT = 4222
PUBLISHED = r"contact record of \w+ published on [1-9]"
# agent A's per-link set-up line (sipdht.v1.account)
SETUP_RE = re.compile(r"link to \w+: lookup (\d+) ms, gather (\d+) ms, signalling (\d+) ms, "
                      r"ICE (\d+) ms")
STAGES = ("lookup", "gather", "signalling", "ICE")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the topology ------------------------------------------------------------------------------


@dataclass
class Site:
    ns: str
    ip: str


class Lab:
    """Namespaces (and the delay hub when rtt > 0); every process started in it by PID."""

    def __init__(self, rtt_ms: float, tmp: Path) -> None:
        self.rtt_ms = rtt_ms
        self.tmp = tmp
        self.prefix = f"sb{os.getpid() % 100000}-"
        self.namespaces: list[str] = []
        self.procs: list[Proc] = []
        self.hub: DelayHub | None = None
        if rtt_ms <= 0:
            ns = self._add("lo")
            self.a = self.b = self.s = Site(ns, "127.0.0.1")
            self.gw_ports = (5062, 5064)          # agents A and B share the namespace
            self.rtp_ports = ((40000, 44999), (45000, 49999))
        else:
            sites = [(self._add(name), k) for name, k in (("a", 1), ("b", 2), ("s", 3))]
            self.hub = DelayHub(sites, rtt_ms / 2, tmp / "delayhub.log")
            self.a, self.b, self.s = (Site(ns, address(k)) for ns, k in sites)
            self.gw_ports = (5060, 5060)
            self.rtp_ports = ((40000, 49999), (40000, 49999))

    def _add(self, name: str) -> str:
        ns = self.prefix + name
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
        self.namespaces.append(ns)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
        return ns

    @property
    def name(self) -> str:
        return "loopback" if self.rtt_ms <= 0 else f"{self.rtt_ms:g} ms RTT"

    def spawn(self, site: Site, argv: list[str], name: str, stdin_pipe: bool = False) -> Proc:
        p = Proc(["ip", "netns", "exec", site.ns, *argv], self.tmp / f"{name}.log",
                 stdin_pipe=stdin_pipe)
        self.procs.append(p)
        return p

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def down(self) -> None:
        stop_all(self.procs)
        self.procs.clear()
        if self.hub:
            self.hub.stop()
        for ns in self.namespaces:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                               timeout=10)
            for pid in r.stdout.split():          # left-overs of our own namespaces only
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self.namespaces.clear()


# --- sipdht agents ------------------------------------------------------------------------------


AGENT_INI = """\
; written by bench/call_setup.py
[identity]
path = {dir}/{who}
key_bits = 2048
[dht]
port = 0
bind4 = {ip}
ipv6 = no
bootstrap = {bootstrap}
state_file =
[ice]
host_addresses = {ip}
timeout = 20
idle_timeout = {idle}
[sip]
listen = 127.0.0.1:{sip_port}
domain = dht
rtp_port_min = {rtp[0]}
rtp_port_max = {rtp[1]}
[contacts]
{contacts}
[log]
level = info
stats_interval = 0
"""


def agent_ini(tmp: Path, who: str, site: Site, sip_port: int, rtp: tuple[int, int],
              bootstrap: str, idle: float, contacts: str = "") -> Path:
    """The gateway listens on loopback (only local softphones are served); the DHT node
    and ICE use the site's network address."""
    path = tmp / f"{who}.ini"
    path.write_text(AGENT_INI.format(dir=tmp, who=who, ip=site.ip, sip_port=sip_port, rtp=rtp,
                                     bootstrap=bootstrap, idle=idle, contacts=contacts))
    return path


def init_identity(sipdht: list[str], ini: Path) -> str:
    r = subprocess.run([*sipdht, "--config", str(ini), "init"], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    if r.returncode:
        raise RuntimeError(f"sipdht init failed: {r.stderr.strip()[-500:]}")
    return r.stdout.strip().splitlines()[-1].strip()


def gateway_in_run() -> str | None:
    """None when `sipdht run` starts the SIP gateway, else why not (checked in the source)."""
    try:
        import sipdht.sip.gateway  # noqa: F401
    except ImportError:
        return "sipdht.sip.gateway does not exist on this branch"
    src = (ROOT / "sipdht" / "commands" / "agent.py").read_text()
    if "not implemented yet: SIP gateway" in src:
        return "`sipdht run` does not start the SIP gateway yet"
    return None


class Agents:
    """Two `sipdht run` agents (A calls, B answers) bootstrapped from one dhtnode."""

    def __init__(self, lab: Lab, tmp: Path, idle: float, sipdht: list[str]) -> None:
        self.lab = lab
        # dhtnode quits at the end of its stdin: it gets a pipe that stays open
        self.dht = lab.spawn(lab.s, [DHTNODE, "-p", str(DHT_PORT)], "dhtnode", stdin_pipe=True)
        self.dht.wait_for(r"running on port", 15)
        boot = f"{lab.s.ip}:{DHT_PORT}"
        ini_b = agent_ini(tmp, "bob", lab.b, lab.gw_ports[1], lab.rtp_ports[1], boot, idle)
        self.bob_id = init_identity(sipdht, ini_b)
        ini_a = agent_ini(tmp, "alice", lab.a, lab.gw_ports[0], lab.rtp_ports[0], boot, idle,
                          contacts=f"bob = {self.bob_id}")
        self.alice_id = init_identity(sipdht, ini_a)
        self.sipdht, self.ini_a, self.starts = sipdht, ini_a, 1
        self.b = lab.spawn(lab.b, [*sipdht, "--config", str(ini_b), "run"], "agent-bob")
        self.a = lab.spawn(lab.a, [*sipdht, "--config", str(ini_a), "run"], "agent-alice")
        self.b.wait_for(PUBLISHED, 60)
        self.a.wait_for(PUBLISHED, 60)
        self.old_logs: list[str] = []
        self.gw_a = f"{LOCAL}:{lab.gw_ports[0]}"
        self.gw_b = f"{LOCAL}:{lab.gw_ports[1]}"

    def restart_a(self) -> None:
        """A fresh agent A process (same identity): nothing cached about B or the DHT."""
        self.old_logs.append(self.a.text())
        self.lab.stop(self.a)
        self.starts += 1
        self.a = self.lab.spawn(self.lab.a, [*self.sipdht, "--config", str(self.ini_a), "run"],
                                f"agent-alice-{self.starts}")
        self.a.wait_for(PUBLISHED, 60)

    def wait_no_link(self, timeout: float) -> bool:
        """Until agent A's log shows as many links closed as opened (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.a.text()
            if (len(re.findall(r"link with \w+ closed", text))
                    >= len(re.findall(r"link (?:to|with) \w+ up", text))):
                return True
            time.sleep(0.1)
        return False

    def problems(self) -> list[str]:
        out = []
        for who, text in (("A", "\n".join([*self.old_logs, self.a.text()])), ("B", self.b.text())):
            for ln in text.splitlines():
                if re.search(r"\b(ERROR|Traceback)\b", ln):
                    out.append(f"agent {who}: {ln.strip()[:200]}")
        return out[:10]


# --- measuring ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, lab: Lab, tmp: Path, args: argparse.Namespace) -> None:
        self.lab, self.tmp, self.args = lab, tmp, args
        self.sipdht = args.sipdht_cmd.split() if args.sipdht_cmd else SIPDHT
        self.scen = _sipp.write_scenarios(tmp)
        self.results: dict[str, _sipp.CallTimes] = {}
        self.kams: dict[str, str] = {}
        self.agents: Agents | None = None
        self.stages: dict[str, list[list[float]]] = {}
        self.n = 0
        self.uas = lab.spawn(lab.b, [_sipp.SIPP, "-sf", str(self.scen["uas"]), "-i", lab.b.ip,
                                     "-p", str(UAS_PORT), "-nostdin"], "sipp-uas")
        self.uas_contact = f"{lab.b.ip}:{UAS_PORT}"
        # the callee's softphone as agent B sees it: on loopback beside it
        self.uas_local = lab.spawn(lab.b, [_sipp.SIPP, "-sf", str(self.scen["uas"]), "-i", LOCAL,
                                           "-p", str(UAS_LOCAL_PORT), "-nostdin"], "sipp-uas-local")

    def cwd(self, label: str) -> Path:
        self.n += 1
        return self.tmp / f"{self.n:03d}-{re.sub(r'[^a-z0-9]+', '_', label)}"

    def start_kamailio(self, label: str, site: Site, port: int) -> None:
        rundir = self.tmp / f"kam-{port}"
        rundir.mkdir()
        cfg = _kamailio.write_cfg(rundir, site.ip, port)
        self.lab.spawn(site, _kamailio.argv(cfg, rundir), f"kamailio-{port}")
        target = f"{site.ip}:{port}"
        if not _sipp.register(self.lab.b.ns, self.cwd(f"reg-{label}"), self.scen["register"],
                              target, "bob", self.uas_contact, self.lab.b.ip, REG_PORT):
            raise RuntimeError(f"could not register the UAS at {label} ({target}); see "
                               f"{self.tmp}/kamailio-{port}.log")
        self.kams[label] = target

    def start_agents(self) -> None:
        self.agents = Agents(self.lab, self.tmp, self.args.idle, self.sipdht)
        ag = self.agents
        ok = _sipp.register(self.lab.b.ns, self.cwd("reg-gw-b"), self.scen["register"], ag.gw_b,
                            "bob", f"{LOCAL}:{UAS_LOCAL_PORT}", LOCAL, REG_PORT)
        if not ok:
            raise RuntimeError(f"could not register the UAS at agent B's gateway {ag.gw_b}")

    def batch(self, path: str, target: str, service: str, calls: int) -> None:
        # 25 calls/s offered; -l 1 keeps one call at a time
        local_ip = LOCAL if path.startswith("sipdht") else self.lab.a.ip
        res = _sipp.run_uac(self.lab.a.ns, self.cwd(path), self.scen["uac"], target, service,
                            local_ip, UAC_PORT, calls, rate=25, timeout=60 + calls * 2)
        acc = self.results.setdefault(path, _sipp.CallTimes())
        acc.extend(res, offset=len(acc.t200) + len(acc.t180) + acc.failed + 10_000 * self.n)
        if self.args.verbose or res.failed or res.rc:
            log(f"  {self.lab.name} {path}: {res.ok} ok, {res.failed} failed, rc {res.rc}, "
                f"180 median {median(list(res.t180.values())):.2f} ms, 200 median "
                f"{median(list(res.t200.values())):.2f} ms"
                + (f"\n    {res.errors.strip().splitlines()[0][:300] if res.errors.strip() else ''}"
                   if res.failed or res.rc else ""))

    def cold_calls(self, count: int) -> None:
        """First calls of a freshly started agent A (the first one is the agents' start)."""
        ag = self.agents
        assert ag is not None
        for i in range(count):
            if i:
                ag.restart_a()
            self.timed_link_call("sipdht first (cold A)")

    def new_link_calls(self, count: int) -> None:
        """Calls that each need a new link to a peer agent A has called before."""
        ag = self.agents
        assert ag is not None
        for _ in range(count):
            if not ag.wait_no_link(self.args.idle + 15):
                log("  the link did not close for idleness: stopping new-link samples")
                break
            self.timed_link_call("sipdht new link")

    def timed_link_call(self, path: str) -> None:
        """One call that sets up a link; agent A's log gives the link's set-up stages."""
        ag = self.agents
        assert ag is not None
        mark = ag.a.mark()
        self.batch(path, ag.gw_a, ag.bob_id, 1)
        time.sleep(0.05)
        found = SETUP_RE.findall(ag.a.text()[mark:])
        if found:
            self.stages.setdefault(path, []).append([float(x) for x in found[-1]])

    def round(self, r: int) -> None:
        paths: list[tuple[str, str, str]] = [("direct", self.uas_contact, "bob")]
        paths += [(label, target, "bob") for label, target in self.kams.items()]
        if self.agents:
            paths.append(("sipdht reused", self.agents.gw_a, self.agents.bob_id))
        k = r % len(paths)
        for path, target, service in paths[k:] + paths[:k]:
            if path == "sipdht reused":          # make sure a link is up before timing
                self.batch("sipdht warm-up", target, service, 1)
            self.batch(path, target, service, self.args.calls)


# --- report -------------------------------------------------------------------------------------


def fmt(x: float, d: int = 2) -> str:
    return "-" if x != x else f"{x:.{d}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "-"


def stage_line(samples: list[list[float]], t180: float) -> str:
    """Medians of agent A's link set-up stages for these calls, and what is left of INVITE->180."""
    if not samples:
        return "    (no link set-up line in agent A's log)"
    meds = [median([x[i] for x in samples]) for i in range(len(STAGES))]
    total = median([sum(x) for x in samples])
    return ("    agent A's link set-up, medians of " + str(len(samples)) + " calls: "
            + ", ".join(f"{n} {m:.0f}" for n, m in zip(STAGES, meds, strict=True))
            + f" ms; sum {total:.0f} ms; INVITE->180 p50 minus that {t180 - total:.0f} ms "
            "(SIP through both gateways and the link, plus whatever overlaps)")


def summary_rows(lab: Lab, stats: dict) -> list[dict]:
    """INVITE->180 p50 of each sipdht path beside Kamailio's (reused link) or the 5-RTT floor
    (first calls) from the same run, and the reused link's calls ok beside Kamailio's."""
    rows = []
    d, k, kc = stats.get("direct"), stats.get("kamailio"), stats.get("kamailio@callee")
    reused = stats.get("sipdht reused")
    if reused:
        for name, ref in (("Kamailio", k), ("Kamailio beside the callee", kc), ("SIPp direct", d)):
            if ref:
                rows.append(summary_row("call_setup", f"reused link INVITE->180 p50, {lab.name}",
                                        "ms", reused[0], ref[0], name))
        if k:
            rows.append(summary_row("call_setup", f"reused link calls ok, {lab.name}", "%",
                                    100 * reused[6] / max(1, reused[6] + reused[7]),
                                    100 * k[6] / max(1, k[6] + k[7]), "Kamailio"))
    if d:
        floor = 4 * max(lab.rtt_ms, 0.0) + d[0]
        for row_name in ("sipdht first (cold A)", "sipdht new link"):
            if row_name in stats:
                rows.append(summary_row("call_setup", f"{row_name} INVITE->180 p50, {lab.name}",
                                        "ms", stats[row_name][0], floor,
                                        "5-RTT floor" if lab.rtt_ms > 0 else "SIPp direct"))
    return rows


def report(lab: Lab, b: Bench, summary: list[dict] | None = None) -> str:
    res = {k: v for k, v in b.results.items() if k != "sipdht warm-up"}
    stats = {}
    for path, ct in res.items():
        t1, t2 = list(ct.t180.values()), list(ct.t200.values())
        stats[path] = (median(t1), percentile(t1, 95), median(t2), percentile(t2, 95),
                       len(t1), len(t2), ct.ok, ct.failed)
    refs = [(name, stats[name]) for name in ("kamailio", "kamailio@callee", "direct")
            if name in stats]
    head = ["path", "calls ok/failed", "n 180", "INVITE->180 p50", "p95", "n 200",
            "INVITE->200 p50", "p95"]
    for name, _ in refs:
        short = {"kamailio": "kam", "kamailio@callee": "kam@callee"}.get(name, name)
        head += [f"180 ours/{short}", f"200 ours/{short}"]
    rows = [head]
    for path, s in stats.items():
        ours = path.startswith("sipdht")
        row = [path, f"{s[6]}/{s[7]}", str(s[4]), fmt(s[0]), fmt(s[1]), str(s[5]), fmt(s[2]),
               fmt(s[3])]
        for _, ref in refs:
            row += [ratio(s[0], ref[0]), ratio(s[2], ref[2])] if ours else ["", ""]
        rows.append(row)
    if summary is not None:
        summary += summary_rows(lab, stats)
    d = stats.get("direct")
    k = stats.get("kamailio")
    out = [f"## {lab.name} (ms; medians and p95 over all calls of the run)", table(rows)]
    if d and ("sipdht first (cold A)" in stats or "sipdht new link" in stats):
        floor = 4 * max(lab.rtt_ms, 0.0) + d[0]
        out.append(f"5-RTT floor of a first call = 4 x {lab.rtt_ms:g} ms (lookup, offer, answer, "
                   f"ICE check) + direct INVITE->180 {d[0]:.2f} ms = {floor:.1f} ms (goal: first "
                   f"call INVITE->180 <= 1.5 x)")
        for row_name in ("sipdht first (cold A)", "sipdht new link"):
            if row_name in stats:
                st = stats[row_name]
                out.append(f"  {row_name}: INVITE->180 p50 {st[0]:.1f} ms = {ratio(st[0], floor)} x "
                           f"the floor, p95 {st[1]:.1f} ms = {ratio(st[1], floor)} x")
                out.append(stage_line(b.stages.get(row_name, []), st[0]))
    reused = stats.get("sipdht reused")
    if reused and k:
        kc = stats.get("kamailio@callee")
        out.append(f"reused link INVITE->180 p50 / Kamailio's = {ratio(reused[0], k[0])} "
                   + (f"(proxy beside the callee: {ratio(reused[0], kc[0])}) " if kc else "")
                   + "(goal <= 1.2)")
    if b.agents:
        probs = b.agents.problems()
        if probs:
            out.append("agent log lines worth a look:\n  " + "\n  ".join(probs))
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------


def check_tools(want_sipdht: bool) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which(_sipp.SIPP):
        return "sipp is not installed: apt-get install sip-tester"
    if not os.path.exists(_kamailio.KAMAILIO):
        return _kamailio.INSTALL_HINT
    if want_sipdht and not os.path.exists(DHTNODE):
        return "dhtnode is not installed: apt-get install opendht-tools"
    return None


def one_topology(rtt: float, args: argparse.Namespace, tmp: Path, sipdht_reason: str | None,
                 summary: list[dict] | None = None) -> str:
    lab = Lab(rtt, tmp)
    try:
        b = Bench(lab, tmp, args)
        b.start_kamailio("kamailio", lab.s, KAM_PORT)
        if rtt > 0:
            b.start_kamailio("kamailio@callee", lab.b, KAM_B_PORT)
        if sipdht_reason is None:
            t0 = time.monotonic()
            b.start_agents()
            log(f"{lab.name}: agents up in {time.monotonic() - t0:.1f} s")
            log(f"{lab.name}: {args.cold} first calls, agent A restarted before each")
            b.cold_calls(args.cold)
            log(f"{lab.name}: {args.first} new-link calls (link closed for idleness before each)")
            b.new_link_calls(args.first)
        for r in range(args.runs):
            log(f"{lab.name}: round {r + 1}/{args.runs}")
            b.round(r)
        text = report(lab, b, summary)
        if lab.hub:
            lab.hub.stop()
            st = lab.hub.stats()
            text += (f"\ndelay hub: {st.get('packets', 0)} packets relayed, latest "
                     f"{st.get('max_late_ms', 0):.1f} ms late")
        if sipdht_reason:
            text += f"\nsipdht paths not measured: {sipdht_reason}"
        return text
    finally:
        lab.down()
        if args.keep_logs:
            dest = Path(args.keep_logs) / lab.name.replace(" ", "_")
            shutil.copytree(tmp, dest, dirs_exist_ok=True)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rtt", default="0,50", help="comma-separated RTTs in ms (0 = loopback)")
    ap.add_argument("--calls", type=int, default=50, help="calls per path per round")
    ap.add_argument("--runs", type=int, default=2, help="rounds (path order rotates)")
    ap.add_argument("--cold", type=int, default=20,
                    help="sipdht first calls, each by a freshly started agent A")
    ap.add_argument("--first", type=int, default=20,
                    help="sipdht calls that each need a new link to a known peer")
    ap.add_argument("--idle", type=float, default=2.0,
                    help="[ice] idle_timeout of the agents (s): how soon a link closes")
    ap.add_argument("--no-sipdht", action="store_true", help="only direct and Kamailio")
    ap.add_argument("--sipdht-cmd", help="command that runs sipdht (default: .venv/bin/sipdht "
                    "or python -m sipdht); its `run` must start the SIP gateway")
    ap.add_argument("--keep-logs", metavar="DIR", help="copy logs and SIPp traces here")
    ap.add_argument("-v", "--verbose", action="store_true")
    add_summary_option(ap)
    args = ap.parse_args(argv)
    if not 1 <= args.calls <= 5000 or not 1 <= args.runs <= 50 or not 0 <= args.first <= 200 \
            or not 0 <= args.cold <= 200:
        ap.error("--calls 1..5000, --runs 1..50, --first and --cold 0..200")
    rtts = [float(x) for x in args.rtt.split(",") if x.strip()]
    reason = check_tools(not args.no_sipdht)
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    sipdht_reason = ("--no-sipdht" if args.no_sipdht else
                     None if args.sipdht_cmd else gateway_in_run())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    print(f"# SIP call setup: SIPp UAC -> {{SIPp UAS direct, Kamailio, sipdht A -> B}}; "
          f"{args.calls} calls per path x {args.runs} rounds, {args.cold} cold first calls, "
          f"{args.first} new-link calls; "
          f"{os.cpu_count()} CPUs; {_kamailio.version()}; {_sipp.version()}", flush=True)
    t0 = time.monotonic()
    summary: list[dict] = []
    try:
        for rtt in rtts:
            with tempfile.TemporaryDirectory(prefix="sipdht-sip-bench-") as tmp:
                print(one_topology(rtt, args, Path(tmp), sipdht_reason, summary) + "\n",
                      flush=True)
                write_summary(args.summary, summary)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'Ctrl-C'})")
        return 130
    except (RuntimeError, TimeoutError, EOFError) as exc:
        log(f"failed: {exc}\n(--keep-logs DIR keeps every process's log)")
        return 1
    print(f"total {time.monotonic() - t0:.0f} s; load average "
          f"{open('/proc/loadavg').read().split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
