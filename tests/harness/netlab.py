"""Network-namespace NAT test bed: five namespaces, two NAT routers, coturn and a DHT bootstrap.

Pure Python: it runs ``ip``, ``iptables-restore`` and ``conntrack`` as subprocesses (root needed)::

    alice 10.200.1.2 --[lan]-- 10.200.1.1 natA 198.51.100.10 --+
                                                              |  bridge br0 in ns "pub" = the internet
                                        pub 198.51.100.1 (STUN/TURN, DHT bootstrap :4222)
                                                              |
    bob   10.200.2.2 --[lan]-- 10.200.2.1 natB 198.51.100.20 --+

NAT modes (per router, switchable live with :meth:`Topology.set_nat`):

``cone``       plain MASQUERADE: endpoint-independent mapping (source port kept),
               address+port-dependent filtering ("port-restricted cone")
``fullcone``   cone + DNAT of every inbound UDP to the LAN host (endpoint-independent filtering)
``symmetric``  MASQUERADE ``--random-fully``: a new random port per destination
``random``     MASQUERADE ``--random`` (symmetric in practice too)

Network hygiene:

* 203.0.113.0/24 is a real uplink on the CI machines and is never used; the public segment is
  198.51.100.0/24 (TEST-NET-2) and the LANs are in 10.200.0.0/16.
* Nothing here sends traffic from the root namespace to a topology address: every probe runs
  inside a namespace (``ip netns exec``).
* Every process is started through :func:`spawn` (or :func:`run`, which has a timeout) and stopped
  by its PID; :meth:`Topology.down` also kills whatever is still inside *its own* namespaces.
* Every wait is bounded.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

# --- addresses ---------------------------------------------------------------------------------

PUB_NET = "198.51.100.0/24"
PUB_IP = "198.51.100.1"
NAT_A_IP = "198.51.100.10"
NAT_B_IP = "198.51.100.20"
LAN_A = "10.200.1.0/24"
LAN_B = "10.200.2.0/24"
ALICE_IP = "10.200.1.2"
BOB_IP = "10.200.2.2"
NAT_A_LAN_IP = "10.200.1.1"
NAT_B_LAN_IP = "10.200.2.1"
# Black-hole next hop of pub's default route (see Topology.up): nobody owns this MAC.
BLACKHOLE_GW = "198.51.100.254"
BLACKHOLE_MAC = "02:00:00:00:00:fe"

TURN_PORT = 3478
TURN_REALM = "test.local"
TURN_USERS = {"alice": "alicepass", "bob": "bobpass"}
DHT_PORT = 4222

NAT_MODES = ("cone", "fullcone", "symmetric", "random")
_MASQ_FLAGS = {"cone": "", "fullcone": "", "symmetric": " --random-fully", "random": " --random"}

PYTHON = sys.executable

_seq = itertools.count()


def default_prefix() -> str:
    """``sd<pid><letter>-``: unique per process and per Topology in it; short (<= 9 chars)."""
    n = next(_seq)
    return f"sd{os.getpid()}{chr(ord('a') + n % 26)}{n // 26 or ''}-"


# --- running things inside namespaces -----------------------------------------------------------


def netns_cmd(ns: str, argv: Sequence[str]) -> list[str]:
    """``ip netns exec NS argv...`` (ip execs argv directly, so the PID is the command's PID)."""
    return ["ip", "netns", "exec", ns, *map(str, argv)]


class LineReader:
    """Collects a text stream's lines in a daemon thread; bounded waits for patterns."""

    def __init__(self, stream, name: str = "") -> None:
        self.name = name
        self.lines: list[str] = []
        self.closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True,
                                        name=f"netlab-reader-{name}")
        self._thread.start()

    def _run(self, stream) -> None:
        try:
            for line in stream:
                with self._cond:
                    self.lines.append(line.rstrip("\r\n"))
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self._cond:
                self.closed = True
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def tail(self, n: int = 20) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        """First line at index >= since matching the regex; TimeoutError / EOFError otherwise."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        return m
                if self.closed:
                    raise EOFError(f"{self.name}: output ended before a line matching {pattern!r}; "
                                   f"last lines:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no line matching {pattern!r} in {timeout}s; "
                                       f"last lines:\n{self.tail()}")
                self._cond.wait(min(left, 0.5))

    def next_line(self, timeout: float, since: int) -> str:
        """The line at index ``since`` (waiting for it, bounded)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) <= since:
                if self.closed:
                    raise EOFError(f"{self.name}: output ended; last lines:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no output line in {timeout}s")
                self._cond.wait(min(left, 0.5))
            return self.lines[since]


# Every process started by spawn(): pid -> (namespace, Popen). Stopped by PID only.
_PROCS: dict[int, tuple[str, subprocess.Popen]] = {}
_PROCS_LOCK = threading.Lock()


def spawn(ns: str, argv: Sequence[str], *, watch: bool = False, **popen_kwargs) -> subprocess.Popen:
    """Start ``argv`` inside namespace ``ns`` and register it for :func:`stop_all` / ``down()``.

    ``watch=True`` pipes stdout (stderr merged unless given) as text and attaches a
    :class:`LineReader` as ``proc.output``.
    """
    if watch:
        popen_kwargs.setdefault("stdout", subprocess.PIPE)
        popen_kwargs.setdefault("stderr", subprocess.STDOUT)
        popen_kwargs.setdefault("text", True)
        popen_kwargs.setdefault("bufsize", 1)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(netns_cmd(ns, argv), **popen_kwargs)
    with _PROCS_LOCK:
        _PROCS[proc.pid] = (ns, proc)
    proc.output = LineReader(proc.stdout, f"{os.path.basename(str(argv[0]))}@{ns}") if watch else None
    return proc


def output(proc: subprocess.Popen) -> LineReader:
    reader = getattr(proc, "output", None)
    if reader is None:
        raise ValueError("process was not spawned with watch=True")
    return reader


def stop_process(proc: subprocess.Popen, timeout: float = 3.0) -> int | None:
    """SIGTERM by PID, SIGKILL after ``timeout``; reaps it, closes its pipes, unregisters it."""
    try:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    pass  # unkillable (D state); leave it, down() retries by namespace
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream:
                try:
                    stream.close()
                except OSError:
                    pass
    finally:
        with _PROCS_LOCK:
            _PROCS.pop(proc.pid, None)
    return proc.returncode


def stop_all(namespaces: Iterable[str] | None = None, timeout: float = 3.0) -> None:
    """Stop every registered process (only those in ``namespaces`` if given)."""
    wanted = set(namespaces) if namespaces is not None else None
    with _PROCS_LOCK:
        procs = [p for ns, p in _PROCS.values() if wanted is None or ns in wanted]
    for p in procs:  # terminate all first, then wait: faster than one by one
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
            except OSError:
                pass
    for p in procs:
        stop_process(p, timeout)


def run(ns: str, argv: Sequence[str], timeout: float = 10.0, check: bool = False,
        **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` in ``ns`` to completion (captured text output, bounded by ``timeout``;
    subprocess.run kills it by PID on timeout)."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(netns_cmd(ns, argv), timeout=timeout, check=check, **kwargs)


def _sh(*argv: str, input: str | None = None, check: bool = True,
        timeout: float = 10.0) -> subprocess.CompletedProcess:
    r = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --- skip helper --------------------------------------------------------------------------------


def netns_unavailable_reason() -> str | None:
    """None when namespaces + NAT can be used here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN + CAP_SYS_ADMIN); CI runs as root"
    for tool in ("ip", "iptables-restore", "conntrack"):
        if not shutil.which(tool):
            return f"{tool} is not installed (apt-get install iproute2 iptables conntrack)"
    probe = f"sd{os.getpid()}probe"
    try:
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`ip netns add` failed: {e}"
    if r.returncode:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return None


def require_netns() -> None:
    """pytest helper: skip the test with a clear reason when namespaces are unavailable
    (fail instead under CI: tests/harness/requirements.py)."""
    reason = netns_unavailable_reason()
    if reason:
        from tests.harness.requirements import unavailable

        unavailable(reason)


# --- the topology -------------------------------------------------------------------------------

_FILTER_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -i lan -o wan -j ACCEPT
-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT
-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i wan -p icmp --icmp-type echo-request -j ACCEPT
-A INPUT -i wan -j DROP
COMMIT
"""
# The INPUT DROP is essential (testbed gotcha G1): an unsolicited packet the router accepted would
# get a *confirmed* conntrack entry (plus an ICMP port-unreachable), and a later outbound packet of
# the LAN host to that peer would clash with it, so MASQUERADE would pick another source port:
# the "cone" NAT would behave as symmetric and ICE hole punching would break. Dropped packets
# never get a confirmed entry.


def _nat_rules(mode: str, lan_host: str) -> str:
    rules = ["*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
             ":POSTROUTING ACCEPT [0:0]", f"-A POSTROUTING -o wan -j MASQUERADE{_MASQ_FLAGS[mode]}"]
    if mode == "fullcone":
        rules.append(f"-A PREROUTING -i wan -p udp -j DNAT --to-destination {lan_host}")
    return "\n".join(rules + ["COMMIT", ""])


class Topology:
    """The 5-namespace NAT topology. ``up()`` builds it, ``down()`` destroys it (idempotent).

    Namespace names are ``<prefix>pub``, ``<prefix>natA``, ``<prefix>natB``, ``<prefix>alice``,
    ``<prefix>bob``; :meth:`ns` maps the short role names to them.
    """

    pub_ip = PUB_IP
    nat_a_ip = NAT_A_IP
    nat_b_ip = NAT_B_IP
    alice_ip = ALICE_IP
    bob_ip = BOB_IP
    lan_a = LAN_A
    lan_b = LAN_B

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or default_prefix()
        self.ns_pub = f"{self.prefix}pub"
        self.ns_nat_a = f"{self.prefix}natA"
        self.ns_nat_b = f"{self.prefix}natB"
        self.ns_alice = f"{self.prefix}alice"
        self.ns_bob = f"{self.prefix}bob"
        self.namespaces = (self.ns_alice, self.ns_bob, self.ns_nat_a, self.ns_nat_b, self.ns_pub)
        self.modes: dict[str, str] = {}
        self.is_up = False
        self._created: list[str] = []
        self.timings: dict[str, float] = {}

    # names / addresses
    def ns(self, role: str) -> str:
        """'pub' | 'alice' | 'bob' | 'natA'/'A' | 'natB'/'B' (or a full namespace name)."""
        table = {"pub": self.ns_pub, "alice": self.ns_alice, "bob": self.ns_bob,
                 "natA": self.ns_nat_a, "A": self.ns_nat_a, "natB": self.ns_nat_b,
                 "B": self.ns_nat_b}
        if role in table:
            return table[role]
        if role in self.namespaces:
            return role
        raise ValueError(f"unknown namespace role {role!r}")

    def router(self, which: str) -> str:
        """Router namespace of 'A'/'natA'/'alice' or 'B'/'natB'/'bob'."""
        key = {"A": "A", "natA": "A", "alice": "A", "B": "B", "natB": "B", "bob": "B"}.get(which)
        if key is None:
            raise ValueError(f"router must be 'A' or 'B', not {which!r}")
        return self.ns_nat_a if key == "A" else self.ns_nat_b

    def wan_ip(self, which: str) -> str:
        return NAT_A_IP if self.router(which) == self.ns_nat_a else NAT_B_IP

    # build / destroy
    def up(self, mode_a: str = "cone", mode_b: str = "cone") -> Topology:
        for m in (mode_a, mode_b):
            if m not in NAT_MODES:
                raise ValueError(f"NAT mode must be one of {NAT_MODES}, not {m!r}")
        if self.is_up:
            raise RuntimeError("topology is already up")
        t0 = time.monotonic()
        atexit.register(self.down)
        try:
            self._up(mode_a, mode_b)
        except BaseException:
            self.down()
            raise
        self.is_up = True
        self.timings["up"] = time.monotonic() - t0
        return self

    def _add_ns(self, ns: str) -> None:
        _sh("ip", "netns", "add", ns)
        self._created.append(ns)
        _sh("ip", "-n", ns, "link", "set", "lo", "up")

    def _up(self, mode_a: str, mode_b: str) -> None:
        pub = self.ns_pub
        self._add_ns(pub)
        ip = ["ip", "-n", pub]
        _sh(*ip, "link", "add", "br0", "type", "bridge")
        _sh(*ip, "addr", "add", f"{PUB_IP}/24", "dev", "br0")
        _sh(*ip, "link", "set", "br0", "up")
        # Black-hole default route (testbed gotcha G2): a next hop with a static MAC nobody owns,
        # so packets to unroutable (private) addresses vanish silently instead of failing with
        # ENETUNREACH. coturn 4.6.1 tears down the whole TURN allocation when relaying to a peer
        # fails with "Network is unreachable" (ICE tries relay -> private host candidates).
        _sh(*ip, "route", "add", "default", "via", BLACKHOLE_GW, "dev", "br0")
        _sh(*ip, "neigh", "add", BLACKHOLE_GW, "lladdr", BLACKHOLE_MAC, "dev", "br0",
            "nud", "permanent")
        self._router("natA", self.ns_nat_a, NAT_A_IP, "10.200.1", self.ns_alice, mode_a)
        self._router("natB", self.ns_nat_b, NAT_B_IP, "10.200.2", self.ns_bob, mode_b)

    def _router(self, role: str, r: str, wan_ip: str, lan: str, host: str, mode: str) -> None:
        pub = self.ns_pub
        self._add_ns(r)
        self._add_ns(host)
        # WAN: veth from the router into pub's bridge. Both ends are created directly inside
        # their namespaces, so the names never clash with the root namespace or other runs.
        _sh("ip", "link", "add", "wan", "netns", r, "type", "veth", "peer", "name", f"to-{role}",
            "netns", pub)
        _sh("ip", "-n", pub, "link", "set", f"to-{role}", "master", "br0", "up")
        _sh("ip", "-n", r, "addr", "add", f"{wan_ip}/24", "dev", "wan")
        _sh("ip", "-n", r, "link", "set", "wan", "up")
        _sh("ip", "-n", r, "route", "add", "default", "via", PUB_IP)
        # LAN: veth between the router and its host.
        _sh("ip", "link", "add", "lan", "netns", r, "type", "veth", "peer", "name", "eth0",
            "netns", host)
        _sh("ip", "-n", r, "addr", "add", f"{lan}.1/24", "dev", "lan")
        _sh("ip", "-n", r, "link", "set", "lan", "up")
        _sh("ip", "-n", host, "addr", "add", f"{lan}.2/24", "dev", "eth0")
        _sh("ip", "-n", host, "link", "set", "eth0", "up")
        _sh("ip", "-n", host, "route", "add", "default", "via", f"{lan}.1")
        _sh(*netns_cmd(r, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]))
        # Firewall = NAT filtering: LAN->WAN allowed; WAN->LAN only replies (or DNAT, fullcone).
        _sh(*netns_cmd(r, ["iptables-restore"]), input=_FILTER_RULES + _nat_rules(mode, f"{lan}.2"))
        self.modes[r] = mode

    def set_nat(self, router: str, mode: str) -> None:
        """Switch router 'A' or 'B' to ``mode`` and flush its conntrack table (old mappings go)."""
        if mode not in NAT_MODES:
            raise ValueError(f"NAT mode must be one of {NAT_MODES}, not {mode!r}")
        r = self.router(router)
        host = ALICE_IP if r == self.ns_nat_a else BOB_IP
        # iptables-restore without --noflush replaces only the tables it is given: here nat.
        _sh(*netns_cmd(r, ["iptables-restore"]), input=_nat_rules(mode, host))
        _sh(*netns_cmd(r, ["conntrack", "-F"]), check=False)
        self.modes[r] = mode

    def nat_mode(self, router: str) -> str:
        return self.modes[self.router(router)]

    def flush_conntrack(self, router: str) -> None:
        _sh(*netns_cmd(self.router(router), ["conntrack", "-F"]), check=False)

    def conntrack(self, router: str) -> str:
        """``conntrack -L`` of a router (for debugging / assertions)."""
        return _sh(*netns_cmd(self.router(router), ["conntrack", "-L"]), check=False).stdout

    def ns_pids(self, ns: str) -> list[int]:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
        return [int(x) for x in r.stdout.split() if x.isdigit()]

    def down(self, timeout: float = 2.0) -> None:
        """Stop our processes, kill whatever is left inside OUR namespaces (by PID), delete them."""
        t0 = time.monotonic()
        atexit.unregister(self.down)
        created = [ns for ns in self.namespaces if ns in self._created]
        if not created:
            self.is_up = False
            return
        stop_all(created, timeout=timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = [pid for ns in created for pid in self.ns_pids(ns) if pid != os.getpid()]
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _alive(pid)]
                if pids:
                    time.sleep(0.02)
            if not pids:
                break
        for ns in created:
            # deleting a namespace destroys its veths (and thus the peers) and the bridge
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._created = [ns for ns in self._created if ns not in created]
        self.is_up = False
        self.timings["down"] = time.monotonic() - t0

    def __enter__(self) -> Topology:
        return self if self.is_up else self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # conveniences bound to this topology
    def spawn(self, role: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        return spawn(self.ns(role), argv, **kw)

    def run(self, role: str, argv: Sequence[str], timeout: float = 10.0,
            **kw) -> subprocess.CompletedProcess:
        return run(self.ns(role), argv, timeout=timeout, **kw)

    def python(self, role: str, script: str, *args, timeout: float = 10.0,
               **kw) -> subprocess.CompletedProcess:
        """Run a Python snippet (this interpreter, i.e. the venv's) inside a namespace."""
        return run(self.ns(role), [PYTHON, "-c", script, *map(str, args)], timeout=timeout, **kw)

    def ping(self, role: str, dst: str, count: int = 1, timeout: float = 1.0) -> bool:
        """ICMP echo from inside ``role`` (raw socket in Python: iputils-ping is not needed)."""
        r = self.python(role, _PING_SCRIPT, dst, count, timeout, timeout=count * timeout + 10)
        return r.returncode == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (not our child) still answers kill(0); treat it as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --- in-namespace helper scripts (run with this interpreter via -c) -----------------------------

_PING_SCRIPT = r"""
import os, socket, struct, sys, time
dst, count, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident, ok = os.getpid() & 0xFFFF, 0
for seq in range(count):
    body = struct.pack("!HH", ident, seq) + b"netlab"
    s.sendto(struct.pack("!BBH", 8, 0, csum(b"\x08\x00\x00\x00" + body)) + body, (dst, 0))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data, addr = s.recvfrom(2048)
        except socket.timeout:
            break
        h = (data[0] & 15) * 4
        t, _, _, i, q = struct.unpack("!BBHHH", data[h:h + 8])
        if t == 0 and i == ident and q == seq and addr[0] == dst:
            ok += 1
            break
print(f"{ok}/{count}")
sys.exit(0 if ok else 1)
"""

# UDP reflector: answers every datagram with "IP:PORT" of the source it saw (like STUN).
UDP_ECHO_SCRIPT = r"""
import selectors, socket, sys, time
host, ports, life = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3])
sel, bound = selectors.DefaultSelector(), []
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, p))
    sel.register(s, selectors.EVENT_READ)
    bound.append(str(s.getsockname()[1]))
print("READY " + ",".join(bound), flush=True)
end = time.monotonic() + life
while (left := end - time.monotonic()) > 0:
    for key, _ in sel.select(min(left, 1.0)):
        try:
            data, addr = key.fileobj.recvfrom(4096)
            key.fileobj.sendto(("%s:%d" % addr).encode(), addr)
        except OSError:
            pass
"""

# UDP agent: one JSON command per stdin line, one JSON result per stdout line.
UDP_AGENT_SCRIPT = r"""
import json, socket, sys
socks = {}
for _ in range(100000):
    line = sys.stdin.readline()
    if not line:
        break
    c = json.loads(line)
    op, r = c["op"], {"ok": True}
    try:
        if op == "bind":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((c.get("host", "0.0.0.0"), c.get("port", 0)))
            if c.get("connect"):
                s.connect(tuple(c["connect"]))
            r["port"] = s.getsockname()[1]
            socks[r["port"]] = s
        elif op == "send":
            s, data = socks[c["sock"]], c["data"].encode()
            s.sendto(data, tuple(c["to"])) if c.get("to") else s.send(data)
        elif op == "recv":
            s = socks[c["sock"]]
            s.settimeout(c.get("timeout", 1.0))
            try:
                data, addr = s.recvfrom(65535)
                r.update(data=data.decode(errors="replace"), addr=list(addr))
            except socket.timeout:
                r.update(ok=False, error="timeout")
        elif op == "close":
            socks.pop(c["sock"]).close()
        else:
            r = {"ok": False, "error": "bad op " + op}
    except OSError as e:
        r = {"ok": False, "error": type(e).__name__, "errno": e.errno}
    print(json.dumps(r), flush=True)
"""


class UdpEcho:
    """UDP reflector in a namespace (default pub): replies "IP:PORT" of each datagram's source."""

    def __init__(self, topology: Topology, ports: Sequence[int] = (0,), role: str = "pub",
                 host: str = "0.0.0.0", lifetime: float = 300.0, timeout: float = 10.0) -> None:
        self.proc = topology.spawn(role, [PYTHON, "-c", UDP_ECHO_SCRIPT, host,
                                          ",".join(map(str, ports)), lifetime], watch=True)
        try:
            m = output(self.proc).wait_for(r"^READY ([\d,]+)", timeout)
        except BaseException:
            self.stop()
            raise
        self.ports = [int(p) for p in m.group(1).split(",")]

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> UdpEcho:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class UdpAgent:
    """Scriptable UDP sockets inside a namespace (one helper process, JSON lines over pipes)."""

    def __init__(self, topology: Topology, role: str) -> None:
        self.proc = topology.spawn(role, [PYTHON, "-c", UDP_AGENT_SCRIPT], watch=True,
                                   stdin=subprocess.PIPE, stderr=None)
        self._next = 0

    def call(self, cmd: dict, wait: float = 10.0) -> dict:
        """Send one command, return its result (waiting at most ``wait`` seconds)."""
        assert self.proc.stdin
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = output(self.proc).next_line(wait, self._next)
        self._next += 1
        return json.loads(line)

    def bind(self, port: int = 0, host: str = "0.0.0.0",
             connect: tuple[str, int] | None = None) -> int:
        """A new UDP socket; returns its local port (the socket's handle)."""
        r = self.call({"op": "bind", "port": port, "host": host,
                       "connect": list(connect) if connect else None})
        if not r["ok"]:
            raise OSError(f"bind failed: {r}")
        return r["port"]

    def send(self, sock: int, data: str, to: tuple[str, int] | None = None) -> dict:
        return self.call({"op": "send", "sock": sock, "data": data, "to": list(to) if to else None})

    def recv(self, sock: int, timeout: float = 1.0) -> dict:
        """{"ok": True, "data", "addr": [ip, port]} or {"ok": False, "error": "timeout" | ...}."""
        return self.call({"op": "recv", "sock": sock, "timeout": timeout}, wait=timeout + 10)

    def close(self, sock: int) -> dict:
        return self.call({"op": "close", "sock": sock})

    def stop(self) -> None:
        stop_process(self.proc)

    def __enter__(self) -> UdpAgent:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --- services in pub ----------------------------------------------------------------------------


class Coturn:
    """coturn (``turnserver``) in pub on 198.51.100.1:3478 with long-term credentials.

    Started by the constructor (``start=False`` to defer); ``stop()`` stops it by PID and removes
    its temp dir (userdb, pidfile). ``lines`` holds its log (stdout).
    """

    def __init__(self, topology: Topology, *, ip: str = PUB_IP, port: int = TURN_PORT,
                 users: dict[str, str] | None = None, realm: str = TURN_REALM,
                 min_port: int = 49152, max_port: int = 49300, verbose: bool = True,
                 timeout: float = 10.0, start: bool = True) -> None:
        self.topology = topology
        self.ip, self.port = ip, port
        self.users = dict(TURN_USERS if users is None else users)
        self.realm = realm
        self.min_port, self.max_port = min_port, max_port
        self.verbose = verbose
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.dir: str | None = None
        self.startup_s: float | None = None
        if start:
            self.start()

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    @property
    def lines(self) -> list[str]:
        return output(self.proc).lines if self.proc else []

    def argv(self) -> list[str]:
        assert self.dir
        argv = ["turnserver", "-n", "--listening-ip", self.ip, "--relay-ip", self.ip,
                "--listening-port", str(self.port), "--min-port", str(self.min_port),
                "--max-port", str(self.max_port), "--lt-cred-mech", "--realm", self.realm]
        for user, password in self.users.items():
            argv += ["--user", f"{user}:{password}"]
        argv += ["--fingerprint", "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780",
                 "--no-software-attribute", "--log-file", "stdout", "--simple-log",
                 "--new-log-timestamp", "--pidfile", os.path.join(self.dir, "turnserver.pid"),
                 "--userdb", os.path.join(self.dir, "turndb")]
        if self.verbose:
            argv.append("--verbose")
        return argv

    def start(self) -> Coturn:
        if self.proc and self.proc.poll() is None:
            return self
        if not shutil.which("turnserver"):
            raise RuntimeError("turnserver is not installed (apt-get install coturn)")
        self.dir = tempfile.mkdtemp(prefix="netlab-turn-")
        t0 = time.monotonic()
        self.proc = self.topology.spawn("pub", self.argv(), watch=True)
        try:
            output(self.proc).wait_for(
                rf"UDP listener opened on:? {re.escape(self.ip)}:{self.port}\b", self.timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> Coturn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start_dhtnode(topology: Topology, port: int = DHT_PORT, timeout: float = 10.0,
                  extra: Sequence[str] = ()) -> subprocess.Popen:
    """``dhtnode -p PORT`` in pub (binds 0.0.0.0, so reachable at 198.51.100.1:PORT).

    dhtnode reads commands on stdin: it gets a pipe that stays open (``proc.stdin``; write e.g.
    ``"g key\\n"``). ``proc.output`` is a :class:`LineReader` of its stdout. Stop it with
    :func:`stop_process` (or ``Topology.down()`` / :func:`stop_all`).
    """
    if not shutil.which("dhtnode"):
        raise RuntimeError("dhtnode is not installed (apt-get install dhtnode)")
    proc = topology.spawn("pub", ["dhtnode", "-p", str(port), *extra], watch=True,
                          stdin=subprocess.PIPE)
    try:
        m = output(proc).wait_for(r"running on port (\d+)", timeout)
    except BaseException:
        stop_process(proc)
        raise
    proc.dht_port = int(m.group(1))
    return proc


def agent_config(directory: Path, who: str, policy: str = "") -> Path:
    """An INI for a sipdht agent inside the topology: DHT bootstrap and STUN/TURN in pub,
    a 2048-bit identity (fast to create), TURN user = the host's name."""
    ini = Path(directory) / f"{who}.ini"
    ini.write_text(f"""[identity]
path = {who}
key_bits = 2048
[dht]
port = 0
ipv6 = no
bootstrap = {PUB_IP}:{DHT_PORT}
state_file =
[ice]
stun = stun:{PUB_IP}:{TURN_PORT}
turn = turn:{PUB_IP}:{TURN_PORT}
turn_username = {who}
turn_password = {TURN_USERS[who]}
timeout = 20
[policy]
{policy}
[log]
stats_interval = 0
""")
    return ini
