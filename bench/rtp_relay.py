#!/usr/bin/env python3
"""RTP relay through two sipdht agents and their link, beside a plain Python UDP forwarder.

On 127.0.0.1 only (no root needed). One run starts a ``dhtnode`` bootstrap and two
``sipdht run`` agents (A calls, B answers; their gateways on loopback), registers this
script's callee "softphone" at B, and sets up calls with its own minimal SIP UA through A's
gateway: the 200's SDP names A's relay port, the INVITE that B delivers names B's. RTP then
goes UAC socket -> A relay -> link -> B relay -> UAS socket, and back. The baseline is the
same path through two plain UDP forwarder processes (this file run as ``_forwarder``: per
call two sockets, read with ``loop.add_reader`` and forwarded with ``sendto`` as sipdht's
relay does, without a link, encryption or framing).

Packets are G.711 frames: 12-byte RTP header + 160 bytes payload = 172 bytes, payload
type 0; the payload carries the stream number, a sequence number and the send time
(``time.monotonic_ns``), so the receiver (this process, same clock) gets the one-way
latency of every packet. Three measurements per system, in the same run:

1. latency: one call, 50 packets/s one way for 2 x ``--seconds`` s; one-way latency p50/p99,
   and "added" = minus the same measure sent straight from socket to socket;
2. concurrent calls (``--concurrency 1,10,50``): each call 50 packets/s each way; CPU of
   the two relay processes per call (% of one core), loss, latency p50/p99;
3. throughput (``--rates``): one-way blasts over 4 calls at rising offered rates; delivered
   packets/s, loss, and packets per CPU-second of each relay process ("per core").

    .venv/bin/python -m bench.rtp_relay [--seconds 10] [--concurrency 1,10,50]
        [--rates 5000,10000,20000,40000] [--sipdht-cmd CMD] [--no-sipdht]

Every process is stopped by its PID in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import (  # noqa: E402
    DHTNODE,
    Proc,
    add_summary_option,
    median,
    percentile,
    stop_all,
    summary_row,
    table,
    write_summary,
)

_VENV_SIPDHT = ROOT / ".venv" / "bin" / "sipdht"
SIPDHT = [str(_VENV_SIPDHT)] if _VENV_SIPDHT.exists() else [sys.executable, "-m", "sipdht"]
LOCAL = "127.0.0.1"
PACKET = 172
PPS_CALL = 50                       # 20 ms frames
FORWARDER_CMD = "_forwarder"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- the baseline forwarder (a child process) ---------------------------------------------------


async def _forwarder(dests: list[tuple[str, int]]) -> None:
    """Per destination: socket L (faces the caller side) and R (faces the callee side).
    L -> R -> dest; R -> L -> whoever last sent to L (latched)."""
    loop = asyncio.get_running_loop()
    out = []
    for dest in dests:
        left = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        right = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (left, right):
            s.bind((LOCAL, 0))
            s.setblocking(False)
        latched: list[tuple[str, int] | None] = [None]

        def from_left(left=left, right=right, dest=dest, latched=latched) -> None:
            for _ in range(64):
                try:
                    data, addr = left.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                latched[0] = addr
                right.sendto(data, dest)

        def from_right(left=left, right=right, latched=latched) -> None:
            for _ in range(64):
                try:
                    data, _addr = right.recvfrom(2048)
                except (BlockingIOError, InterruptedError):
                    return
                if latched[0] is not None:
                    left.sendto(data, latched[0])

        loop.add_reader(left.fileno(), from_left)
        loop.add_reader(right.fileno(), from_right)
        out.append([left.getsockname()[1], right.getsockname()[1]])
    print(json.dumps({"ports": out}), flush=True)
    await asyncio.Event().wait()                  # until SIGTERM


def forwarder_main(argv: list[str]) -> int:
    dests = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in argv)]
    try:
        asyncio.run(_forwarder(dests))
    except KeyboardInterrupt:
        pass
    return 0


class Forwarders:
    """Two forwarder processes in a row, K calls: UAC -> fwd A -> fwd B -> UAS."""

    name = "python forwarder"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def _start(self, name: str, dests: list[tuple[str, int]]) -> list[list[int]]:
        argv = [sys.executable, str(Path(__file__).resolve()), FORWARDER_CMD,
                *[f"{h}:{p}" for h, p in dests]]
        p = Proc(argv, self.tmp / f"{name}.log")
        self.procs.append(p)
        m = p.wait_for(r'\{"ports": .*\}', 20)
        return json.loads(m.group(0))["ports"]

    def calls(self, legs: list[Leg]) -> None:
        """Fill in each leg's relay addresses (where the UAC and the UAS send)."""
        self.stop()
        ports_b = self._start("fwd-b", [(LOCAL, leg.uas.getsockname()[1]) for leg in legs])
        ports_a = self._start("fwd-a", [(LOCAL, pb[0]) for pb in ports_b])
        for leg, pa, pb in zip(legs, ports_a, ports_b, strict=True):
            leg.to_a = (LOCAL, pa[0])
            leg.to_b = (LOCAL, pb[1])
        # latch fwd A's and fwd B's left sockets (the reverse direction needs a first packet)
        for leg in legs:
            leg.uac.sendto(rtp(0xFFFF, 0, 0), leg.to_a)
        drain([leg.uas for leg in legs], 0.2)

    def pids(self) -> list[Proc]:
        return self.procs

    def hang_up(self, legs: list[Leg]) -> None:
        self.stop()

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs = []


# --- RTP ------------------------------------------------------------------------------------------

_HDR = struct.Struct("!BBHII")
_BODY = struct.Struct("!IIq")


def rtp(stream: int, seq: int, sent_ns: int) -> bytes:
    """172 bytes: RTP header (PT 0 = PCMU) + payload carrying stream, seq and send time."""
    head = _HDR.pack(0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, 0x5D000000 + stream)
    body = _BODY.pack(stream, seq, sent_ns)
    return head + body + b"\xff" * (PACKET - len(head) - len(body))


def drain(socks: list[socket.socket], seconds: float) -> int:
    n = 0
    end = time.monotonic() + seconds
    for s in socks:
        s.setblocking(False)
    while time.monotonic() < end:
        got = False
        for s in socks:
            try:
                s.recv(2048)
                n += 1
                got = True
            except BlockingIOError:
                pass
        if not got:
            time.sleep(0.01)
    return n


@dataclass
class Leg:
    """One call's media: the caller's and the callee's RTP sockets and where each sends."""

    uac: socket.socket
    uas: socket.socket
    to_a: tuple[str, int] = ("", 0)
    to_b: tuple[str, int] = ("", 0)
    call_id: str = ""


def new_legs(n: int) -> list[Leg]:
    legs = []
    for _ in range(n):
        pair = []
        for _ in range(2):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOCAL, 0))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.setblocking(False)
            pair.append(s)
        legs.append(Leg(pair[0], pair[1]))
    return legs


@dataclass
class Flow:
    """Results of one paced run."""

    sent: int = 0
    received: int = 0
    latency_ms: list[float] = field(default_factory=list)
    wall: float = 0.0


def drive(sends: list[tuple[socket.socket, tuple[str, int], int]], receivers: list[socket.socket],
          pps_each: float, seconds: float, sample_every: int = 1) -> Flow:
    """Send one packet per (socket, destination, stream) every 1/pps_each s (paced in 1 ms
    slots) for `seconds`, reading every receiver in between; latency from the payload."""
    sel = selectors.DefaultSelector()
    for s in receivers:
        sel.register(s, selectors.EVENT_READ)
    flow = Flow()
    seq = 0
    start = time.monotonic()
    end = start + seconds
    period = 1.0 / pps_each
    next_at = start
    n_streams = len(sends)
    k = 0
    while True:
        now = time.monotonic()
        if now >= end + 0.3:                     # 300 ms for the last packets to arrive
            break
        if now < end:
            # send everything due (at most one period's worth per slot, spread over the slot)
            while next_at <= now:
                sock, dest, stream = sends[k]
                try:
                    sock.sendto(rtp(stream, seq, time.monotonic_ns()), dest)
                    flow.sent += 1
                except (BlockingIOError, OSError):
                    pass
                k += 1
                if k == n_streams:
                    k = 0
                    seq += 1
                    next_at += period
        wait = max(0.0, min(next_at, end + 0.3) - time.monotonic())
        for key, _ in sel.select(min(wait, 0.001)):
            rsock: socket.socket = key.fileobj  # type: ignore[assignment]
            for _ in range(256):
                try:
                    data = rsock.recv(2048)
                except BlockingIOError:
                    break
                t = time.monotonic_ns()
                if len(data) != PACKET:
                    continue
                stream, pseq, sent_ns = _BODY.unpack_from(data, 12)
                if stream == 0xFFFF:
                    continue
                flow.received += 1
                if flow.received % sample_every == 0:
                    flow.latency_ms.append((t - sent_ns) / 1e6)
    flow.wall = time.monotonic() - start
    sel.close()
    return flow


# --- a minimal SIP UA (bench client only: talks to our gateways) ---------------------------------


def _sdp(port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {LOCAL}\r\ns=-\r\nc=IN IP4 {LOCAL}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")


@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]]
    body: str
    src: tuple[str, int]

    def get(self, name: str) -> str:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return ""

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def code(self) -> int:
        return int(self.first.split()[1]) if self.first.startswith("SIP/2.0") else 0

    def media(self) -> tuple[str, int]:
        c = re.search(r"^c=IN IP4 (\S+)", self.body, re.M)
        m = re.search(r"^m=audio (\d+)", self.body, re.M)
        if not c or not m:
            raise ValueError(f"no audio in SDP:\n{self.body}")
        return c.group(1), int(m.group(1))


def parse(data: bytes, src: tuple[str, int]) -> Msg:
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for ln in lines[1:]:
        name, _, value = ln.partition(":")
        headers.append((name.strip(), value.strip()))
    return Msg(lines[0], headers, body, src)


class UA:
    """One UDP SIP socket; requests are built by hand (the gateway is what is measured)."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCAL, 0))
        self.port = self.sock.getsockname()[1]
        self.n = 0

    def send(self, text: str, dest: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), dest)

    def request(self, method: str, uri: str, call_id: str, cseq: int, to: str,
                body: str = "", extra: str = "", from_tag: str = "") -> str:
        self.n += 1
        return (f"{method} {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {LOCAL}:{self.port};branch=z9hG4bK{call_id}x{self.n};rport\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:{self.user}@{LOCAL}>;tag={from_tag or call_id}\r\n"
                f"To: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n"
                f"Contact: <sip:{self.user}@{LOCAL}:{self.port}>\r\n{extra}"
                + ("Content-Type: application/sdp\r\n" if body else "")
                + f"Content-Length: {len(body)}\r\n\r\n{body}")

    def recv(self, timeout: float) -> Msg | None:
        self.sock.settimeout(max(0.001, timeout))
        try:
            data, src = self.sock.recvfrom(65535)
        except (TimeoutError, BlockingIOError):
            return None
        return parse(data, src)

    def reply(self, req: Msg, code: str, to_tag: str = "", body: str = "") -> None:
        to = req.get("To") + (f";tag={to_tag}" if to_tag and "tag=" not in req.get("To") else "")
        lines = [f"SIP/2.0 {code}"] + [f"Via: {v}" for v in req.all("Via")]
        lines += [f"Record-Route: {v}" for v in req.all("Record-Route")]
        lines += [f"From: {req.get('From')}", f"To: {to}", f"Call-ID: {req.get('Call-ID')}",
                  f"CSeq: {req.get('CSeq')}", f"Contact: <sip:{self.user}@{LOCAL}:{self.port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n" + body).encode(), req.src)


class SipdhtPair:
    """dhtnode + agents A and B (`sipdht run`), this script's UAC at A and UAS at B."""

    name = "sipdht"

    def __init__(self, tmp: Path, cmd: list[str]) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        dht = Proc([DHTNODE, "-p", "0"], tmp / "dhtnode.log", stdin_pipe=True,
                   ready=r"OpenDHT node ([0-9a-f]{40}) running on port (\d+)")
        self.procs.append(dht)
        dht.wait_ready(20)
        ids = {}
        self.gw: dict[str, int] = {}
        inis = {}
        for who, rtp_range in (("bob", (45000, 49999)), ("alice", (40000, 44999))):
            self.gw[who] = free_port()
            ini = tmp / f"{who}.ini"
            ini.write_text(
                f"[identity]\npath = {tmp}/{who}\nkey_bits = 2048\n"
                f"[dht]\nport = 0\nbind4 = {LOCAL}\nipv6 = no\nbootstrap = {LOCAL}:{dht.port}\n"
                f"state_file =\n[ice]\nhost_addresses = {LOCAL}\ntimeout = 20\n"
                f"idle_timeout = 600\n[sip]\nlisten = {LOCAL}:{self.gw[who]}\n"
                f"rtp_port_min = {rtp_range[0]}\nrtp_port_max = {rtp_range[1]}\n"
                f"[log]\nlevel = info\nstats_interval = 0\n")
            r = subprocess.run([*cmd, "--config", str(ini), "init"], capture_output=True,
                               text=True, timeout=120, stdin=subprocess.DEVNULL)
            if r.returncode:
                raise RuntimeError(f"sipdht init: {r.stderr[-500:]}")
            ids[who] = r.stdout.strip().splitlines()[-1].strip()
            inis[who] = ini
        self.bob_id = ids["bob"]
        self.agents = {}
        for who in ("bob", "alice"):
            p = Proc([*cmd, "--config", str(inis[who]), "run"], tmp / f"agent-{who}.log")
            self.procs.append(p)
            self.agents[who] = p
        for p in self.agents.values():
            p.wait_for(r"contact record of \w+ published on [1-9]", 60)
        self.uac = UA("alice")
        self.uas = UA("bob")
        self._register()

    def _register(self) -> None:
        dest = (LOCAL, self.gw["bob"])
        for _ in range(20):
            self.uas.send(self.uas.request("REGISTER", f"sip:bob@{LOCAL}:{dest[1]}", "reg1", 1,
                                           f"<sip:bob@{LOCAL}>", extra="Expires: 3600\r\n"),
                          dest)
            end = time.monotonic() + 1
            while (left := end - time.monotonic()) > 0:
                m = self.uas.recv(left)
                if m and m.code == 200:
                    return
        raise RuntimeError("agent B's gateway did not accept the REGISTER")

    def pids(self) -> list[Proc]:
        return list(self.agents.values())

    def calls(self, legs: list[Leg]) -> None:
        gw_a = (LOCAL, self.gw["alice"])
        for i, leg in enumerate(legs):
            leg.call_id = f"rtp{os.getpid()}c{i}t{time.monotonic_ns() % 10**9}"
            to = f"<sip:{self.bob_id}@dht>"
            self.uac.send(self.uac.request("INVITE", f"sip:{self.bob_id}@{LOCAL}:{gw_a[1]}",
                                           leg.call_id, 1, to,
                                           _sdp(leg.uac.getsockname()[1])), gw_a)
            self._establish(leg, gw_a)

    def _establish(self, leg: Leg, gw_a: tuple[str, int], timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        answered = acked = False
        while not (answered and acked):
            if time.monotonic() > end:
                raise RuntimeError(f"call {leg.call_id} not established in {timeout:g} s")
            m = self.uas.recv(0.005)
            if m and m.first.startswith("INVITE"):
                leg.to_b = m.media()
                self.uas.reply(m, "200 OK", to_tag="uas" + leg.call_id[-6:],
                               body=_sdp(leg.uas.getsockname()[1]))
            elif m and m.first.startswith("ACK"):
                acked = True
            elif m and m.first.startswith("BYE"):
                self.uas.reply(m, "200 OK")
            m = self.uac.recv(0.005)
            if m and m.code == 200 and "INVITE" in m.get("CSeq"):
                leg.to_a = m.media()
                to = m.get("To")
                uri = re.search(r"<([^>]+)>", m.get("Contact"))
                route = "".join(f"Route: {r}\r\n" for r in reversed(m.all("Record-Route")))
                self.uac.send(self.uac.request("ACK", uri.group(1) if uri else
                                               f"sip:{self.bob_id}@{LOCAL}", leg.call_id, 1, to,
                                               extra=route), gw_a)
                leg.bye_to = (to, uri.group(1) if uri else "", route)  # type: ignore[attr-defined]
                answered = True
            elif m and m.code >= 300:
                raise RuntimeError(f"call {leg.call_id}: {m.first}")

    def hang_up(self, legs: list[Leg]) -> None:
        gw_a = (LOCAL, self.gw["alice"])
        for leg in legs:
            to, uri, route = getattr(leg, "bye_to", ("", "", ""))
            if not to:
                continue
            self.uac.send(self.uac.request("BYE", uri, leg.call_id, 2, to, extra=route), gw_a)
        end = time.monotonic() + 3
        pending = {leg.call_id for leg in legs}
        while pending and time.monotonic() < end:
            m = self.uas.recv(0.005)
            if m and m.first.startswith("BYE"):
                self.uas.reply(m, "200 OK")
            m = self.uac.recv(0.005)
            if m and m.code == 200 and "BYE" in m.get("CSeq"):
                pending.discard(m.get("Call-ID"))

    def stop(self) -> None:
        stop_all(self.procs)
        self.procs = []


def free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((LOCAL, 0))
            port = u.getsockname()[1]
            with socket.socket() as t:
                try:
                    t.bind((LOCAL, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


# --- measurements ---------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` in ns (/proc/PID/task/*/schedstat; clock ticks of
    /proc/PID/stat are too coarse for a few seconds at low load)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def cpu(procs: list[Proc]) -> list[float]:
    return [cpu_ns(p.pid) / 1e9 for p in procs]


@dataclass
class Result:
    system: str
    what: str
    calls: int
    offered_pps: float
    flow: Flow
    cpu_s: list[float]

    @property
    def delivered_pps(self) -> float:
        return self.flow.received / max(1e-9, self.flow.wall - 0.3)

    @property
    def loss(self) -> float:
        return 1 - self.flow.received / self.flow.sent if self.flow.sent else float("nan")


def measure(system, what: str, n_calls: int, pps_each: float, seconds: float,
            both_ways: bool) -> Result:
    legs = new_legs(n_calls)
    try:
        system.calls(legs)
        sends = [(leg.uac, leg.to_a, i) for i, leg in enumerate(legs)]
        receivers = [leg.uas for leg in legs]
        if both_ways:
            sends += [(leg.uas, leg.to_b, n_calls + i) for i, leg in enumerate(legs)]
            receivers += [leg.uac for leg in legs]
        drive(sends[:1], receivers, 50, 0.2)        # warm-up: latches, first-packet paths
        c0 = cpu(system.pids())
        flow = drive(sends, receivers, pps_each, seconds,
                     sample_every=max(1, int(len(sends) * pps_each * seconds) // 20000))
        c1 = cpu(system.pids())
        return Result(system.name, what, n_calls, pps_each * len(sends), flow,
                      [b - a for a, b in zip(c0, c1, strict=True)])
    finally:
        system.hang_up(legs)
        for leg in legs:
            leg.uac.close()
            leg.uas.close()


def direct_latency(seconds: float) -> Flow:
    legs = new_legs(1)
    try:
        leg = legs[0]
        return drive([(leg.uac, leg.uas.getsockname(), 0)], [leg.uas], PPS_CALL, seconds)
    finally:
        legs[0].uac.close()
        legs[0].uas.close()


def fmt(x: float, d: int = 3) -> str:
    return "-" if x != x else f"{x:.{d}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "-"


def gateway_in_run() -> str | None:
    try:
        import sipdht.sip.gateway  # noqa: F401
    except ImportError:
        return "sipdht.sip.gateway does not exist on this branch"
    if "not implemented yet: SIP gateway" in (ROOT / "sipdht/commands/agent.py").read_text():
        return "`sipdht run` does not start the SIP gateway yet"
    return None


def run_system(system, args: argparse.Namespace, levels: list[int],
               rates: list[int]) -> list[Result]:
    out = [measure(system, "latency", 1, PPS_CALL, 2 * args.seconds, both_ways=False)]
    log(f"{system.name}: latency done")
    for k in levels:
        out.append(measure(system, "concurrent", k, PPS_CALL, args.seconds, both_ways=True))
        log(f"{system.name}: {k} concurrent calls done")
    for r in rates:
        res = measure(system, "throughput", 4, r / 4, args.blast, both_ways=False)
        out.append(res)
        log(f"{system.name}: {r} pps offered -> {res.delivered_pps:.0f} delivered, "
            f"loss {res.loss:.1%}")
        if res.loss > 0.2:
            break
    return out


def headline(results: list[Result], system: str, d50: float, d99: float) -> dict[str, float]:
    """The issue's figures for one system: packets/s per core (the best packets per CPU-second
    of the busier relay over the loss-free throughput steps), added latency at one call, CPU
    per call at the highest concurrency."""
    mine = [r for r in results if r.system == system]
    out = {"pps_core": float("nan"), "add50": float("nan"), "add99": float("nan"),
           "cpu_call": float("nan"), "calls": 0}
    steps = [r for r in mine if r.what == "throughput" and r.loss < 0.01 and min(r.cpu_s) > 0]
    if steps:
        out["pps_core"] = max(r.flow.received / max(r.cpu_s) for r in steps)
    lat = [r for r in mine if r.what == "latency"]
    if lat:
        out["add50"] = median(lat[0].flow.latency_ms) - d50
        out["add99"] = percentile(lat[0].flow.latency_ms, 99) - d99
    conc = [r for r in mine if r.what == "concurrent"]
    if conc:
        top = max(conc, key=lambda r: r.calls)
        out["cpu_call"] = sum(top.cpu_s) / max(1e-9, top.flow.wall - 0.3) * 100 / top.calls
        out["calls"] = top.calls
    return out


def summary(results: list[Result], d50: float, d99: float) -> str:
    systems = list(dict.fromkeys(r.system for r in results))
    h = {s: headline(results, s, d50, d99) for s in systems}
    rows = [["headline", *systems] + (["sipdht/forwarder"] if len(systems) == 2 else [])]
    calls = int(max(v["calls"] for v in h.values()))
    for key, label, d in (("pps_core", "packets/s per core (busier relay, loss-free steps)", 0),
                          ("add50", "added one-way latency p50, 1 call (ms)", 3),
                          ("add99", "added one-way latency p99, 1 call (ms)", 3),
                          ("cpu_call", f"CPU per call, A+B, {calls} calls (% of a core)", 3)):
        row = [label] + [fmt(h[s][key], d) for s in systems]
        if len(systems) == 2:
            row.append(ratio(h[systems[0]][key], h[systems[1]][key]))
        rows.append(row)
    return "summary (goals: >= 20,000 packets/s per core, added p99 <= 1 ms):\n" + table(rows)


def summary_rows(results: list[Result], direct: Flow) -> list[dict]:
    """The headline figures of sipdht beside the plain Python forwarder's from the same run."""
    d50, d99 = median(direct.latency_ms), percentile(direct.latency_ms, 99)
    systems = list(dict.fromkeys(r.system for r in results))
    h = {sy: headline(results, sy, d50, d99) for sy in systems}
    ours, base = h.get("sipdht"), h.get(systems[-1]) if systems else None
    if ours is None:
        return []
    calls = int(ours["calls"])
    return [summary_row("rtp_relay", label, unit, ours[key],
                        base[key] if base is not ours and base else None, "python forwarder")
            for key, label, unit in (
                ("pps_core", "RTP packets/s per core (busier relay)", "1/s"),
                ("add50", "RTP added one-way latency p50, 1 call", "ms"),
                ("add99", "RTP added one-way latency p99, 1 call", "ms"),
                ("cpu_call", f"RTP CPU per call, A+B, {calls} calls", "% core"))]


def report(results: list[Result], direct: Flow, args: argparse.Namespace) -> str:
    d50 = median(direct.latency_ms)
    d99 = percentile(direct.latency_ms, 99)
    out = [f"direct socket->socket one-way latency (same process): p50 {d50:.3f} ms, "
           f"p99 {d99:.3f} ms over {len(direct.latency_ms)} packets"]
    systems = list(dict.fromkeys(r.system for r in results))
    rows = [["system", "what", "calls", "offered pps", "delivered pps", "loss", "lat p50 ms",
             "lat p99 ms", "added p50 ms", "added p99 ms", "CPU relay 1 %", "CPU relay 2 %",
             "CPU % per call", "pkts per CPU-s (1)", "pkts per CPU-s (2)"]]
    keyed: dict[tuple[str, str, int, float], Result] = {}
    for r in results:
        keyed[(r.system, r.what, r.calls, r.offered_pps)] = r
        span = max(1e-9, r.flow.wall - 0.3)
        util = [c / span * 100 for c in r.cpu_s]
        lat = r.flow.latency_ms
        per_cpu = [r.flow.received / c if c > 0 else float("nan") for c in r.cpu_s]
        rows.append([r.system, r.what, str(r.calls), f"{r.offered_pps:.0f}",
                     f"{r.delivered_pps:.0f}", f"{r.loss:.2%}", fmt(median(lat)),
                     fmt(percentile(lat, 99)), fmt(median(lat) - d50),
                     fmt(percentile(lat, 99) - d99), f"{util[0]:.1f}", f"{util[1]:.1f}",
                     f"{sum(util) / r.calls:.2f}" if r.what != "throughput" else "",
                     f"{per_cpu[0]:.0f}", f"{per_cpu[1]:.0f}"])
    out.append(table(rows))
    if len(systems) == 2:
        ours, base = systems
        rr = [["measure", "sipdht", "python forwarder", "sipdht/forwarder"]]
        for what, calls, pps in dict.fromkeys((r.what, r.calls, r.offered_pps) for r in results):
            a, b = keyed.get((ours, what, calls, pps)), keyed.get((base, what, calls, pps))
            if not a or not b:
                continue
            tag = f"{what} {calls} call(s) {pps:.0f} pps"
            la, lb = a.flow.latency_ms, b.flow.latency_ms
            rr.append([f"{tag}: latency p50 ms", fmt(median(la)), fmt(median(lb)),
                       ratio(median(la), median(lb))])
            rr.append([f"{tag}: latency p99 ms", fmt(percentile(la, 99)), fmt(percentile(lb, 99)),
                       ratio(percentile(la, 99), percentile(lb, 99))])
            ca, cb = sum(a.cpu_s), sum(b.cpu_s)
            rr.append([f"{tag}: relay CPU s per 1000 packets", fmt(ca / max(1, a.flow.received)
                                                                  * 1000, 4),
                       fmt(cb / max(1, b.flow.received) * 1000, 4), ratio(ca / max(1, a.flow.received),
                                                                    cb / max(1, b.flow.received))])
        out.append("ratios (same run):\n" + table(rr))
    out.append(summary(results, d50, d99))
    out.append("pkts per CPU-s = packets delivered / CPU seconds of that relay process (each "
               "packet crosses both: relay 1 = agent A / forwarder A, relay 2 = B); this is "
               "packets/s per core when the process is CPU-bound. CPU % = of one core.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10, help="latency and concurrency runs (s)")
    ap.add_argument("--blast", type=float, default=5, help="each throughput step (s)")
    ap.add_argument("--concurrency", default="1,10,50")
    ap.add_argument("--rates", default="5000,10000,20000,40000",
                    help="offered one-way packets/s of the throughput steps (stops at >20%% loss)")
    ap.add_argument("--sipdht-cmd", help="command that runs sipdht (its `run` must start the "
                    "SIP gateway); default .venv/bin/sipdht or python -m sipdht")
    ap.add_argument("--no-sipdht", action="store_true", help="only the baseline forwarder")
    add_summary_option(ap)
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    rates = [int(x) for x in args.rates.split(",") if x.strip()]
    if not all(1 <= k <= 500 for k in levels) or not all(100 <= r <= 200000 for r in rates):
        ap.error("--concurrency 1..500 calls, --rates 100..200000 pps")
    reason = "--no-sipdht" if args.no_sipdht else (
        None if args.sipdht_cmd else gateway_in_run())
    if reason is None and not shutil.which(DHTNODE) and not os.path.exists(DHTNODE):
        reason = "dhtnode is not installed"
    print(f"# RTP relay: 172-byte RTP packets (G.711, 20 ms), 127.0.0.1, {os.cpu_count()} CPUs, "
          f"load average {open('/proc/loadavg').read().split()[0]}", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="sipdht-rtp-bench-") as tmp_s:
        tmp = Path(tmp_s)
        direct = direct_latency(args.seconds)
        systems: list[SipdhtPair | Forwarders] = []
        try:
            if reason is None:
                t0 = time.monotonic()
                systems.append(SipdhtPair(tmp, args.sipdht_cmd.split() if args.sipdht_cmd
                                          else SIPDHT))
                log(f"sipdht agents up in {time.monotonic() - t0:.1f} s")
            systems.append(Forwarders(tmp))
            for system in systems:
                results += run_system(system, args, levels, rates)
        finally:
            for system in systems:
                system.stop()
        print(report(results, direct, args))
        write_summary(args.summary, summary_rows(results, direct))
        if reason:
            print(f"sipdht not measured: {reason}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == FORWARDER_CMD:
        sys.exit(forwarder_main(sys.argv[2:]))
    sys.exit(main())
