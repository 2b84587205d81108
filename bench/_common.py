"""Shared helpers for the benchmarks in bench/: start and stop `dhtnode` and `sipdht node`
processes, read their CPU/RSS from /proc, and small statistics.

Every process is started with its output in a log file (no reader threads, so the
measuring client has the interpreter to itself) and stopped by its PID: SIGTERM, a
bounded wait, then SIGKILL. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sipdht.dht.messages import Message, decode, encode_query  # noqa: E402

DHTNODE = shutil.which("dhtnode") or "/usr/bin/dhtnode"
_VENV_SIPDHT = ROOT / ".venv" / "bin" / "sipdht"
_PY_SIPDHT = Path(sys.executable).parent / "sipdht"     # the running venv's (e.g. in a worktree)
SIPDHT = str(_VENV_SIPDHT) if _VENV_SIPDHT.exists() else str(_PY_SIPDHT) if _PY_SIPDHT.exists() \
    else (shutil.which("sipdht") or "sipdht")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

DHTNODE_READY = r"OpenDHT node ([0-9a-f]{40}) running on port (\d+)"
SIPDHT_READY = r"DHT node ([0-9a-f]{40}) listening on UDP port (\d+)"

SIPDHT_INI = """\
; written by bench/: loopback only, IPv4 only, nothing saved, no periodic stats
[identity]
path = {dir}/identity
[dht]
port = 0
bind4 = 127.0.0.1
ipv4 = yes
ipv6 = no
bootstrap =
state_file =
[log]
level = info
file =
stats_interval = 0
"""


def write_sipdht_config(directory: str | Path) -> Path:
    path = Path(directory) / "sipdht-bench.ini"
    path.write_text(SIPDHT_INI.format(dir=directory))
    return path


class Proc:
    """One child process whose stdout+stderr go to a log file."""

    def __init__(self, argv: list[str], log_path: Path, stdin_pipe: bool = False,
                 ready: str | None = None, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self.ready = ready
        self.node_id = ""
        self.port = 0
        self._log = open(log_path, "w")
        try:
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=self._log, stderr=subprocess.STDOUT, text=True, bufsize=1,
                start_new_session=True, env=env)   # a terminal Ctrl-C reaches us, not the children
        except BaseException:
            self._log.close()
            raise
        self.pid = self.popen.pid

    # --- output -------------------------------------------------------------------------

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match:
        """First match of pattern in the log after character offset `since`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.text(), since)
            if m:
                return m
            if self.popen.poll() is not None:
                m = rx.search(self.text(), since)
                if m:
                    return m
                raise RuntimeError(f"{self.argv[0]} (pid {self.pid}) exited with "
                                   f"{self.popen.returncode}:\n{self.text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.argv[0]} (pid {self.pid}): no {pattern!r} in "
                                   f"{timeout:g} s:\n{self.text()[-2000:]}")
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 30.0) -> Proc:
        assert self.ready
        m = self.wait_for(self.ready, timeout)
        self.node_id, self.port = m.group(1), int(m.group(2))
        return self

    def mark(self) -> int:
        return len(self.text())

    def send_line(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    # --- /proc ----------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        """utime + stime of the whole process (all threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self.status_kb("VmRSS") / 1024

    def hwm_mb(self) -> float:
        return self.status_kb("VmHWM") / 1024

    # --- stopping -------------------------------------------------------------------------

    def terminate(self) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.terminate()          # by PID (Popen.send_signal uses self.pid)
            except ProcessLookupError:
                pass

    def finish(self, deadline: float) -> None:
        """Wait until `deadline` (monotonic) after terminate(), then kill by PID."""
        try:
            self.popen.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                self.popen.kill()
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                print(f"warning: pid {self.pid} did not die", file=sys.stderr)
        if self.popen.stdin:
            try:
                self.popen.stdin.close()
            except OSError:
                pass
        self._log.close()

    def stop(self, grace: float = 5.0) -> None:
        self.terminate()
        self.finish(time.monotonic() + grace)


def stop_all(procs: list[Proc], grace: float = 5.0) -> None:
    """SIGTERM every process, then wait for each (sharing one grace period), then SIGKILL."""
    for p in procs:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        p.finish(deadline)


def start_dhtnode(workdir: Path, name: str, bootstrap: int | None = None,
                  no_rate_limit: bool = False) -> Proc:
    argv = [DHTNODE, "-p", "0"]
    if bootstrap:
        argv += ["-b", f"127.0.0.1:{bootstrap}"]
    if no_rate_limit:
        argv.append("-U")
    # dhtnode quits when stdin reaches EOF, so it always gets a pipe.
    return Proc(argv, workdir / f"{name}.log", stdin_pipe=True, ready=DHTNODE_READY)


def start_sipdht_node(workdir: Path, config: Path, name: str, bootstrap: int | None = None,
                      no_rate_limit: bool = False) -> Proc:
    argv = [SIPDHT, "--config", str(config), "node", "--port", "0"]
    if bootstrap:
        argv += ["-b", f"127.0.0.1:{bootstrap}"]
    if no_rate_limit:
        argv.append("-U")
    return Proc(argv, workdir / f"{name}.log", ready=SIPDHT_READY, env=sipdht_env(config))


def sipdht_env(config: Path) -> dict[str, str]:
    """A sipdht node's environment: Python's bytecode cache on, kept in the temporary
    directory beside the config (PYTHONPYCACHEPREFIX), as an installed package has it.
    With PYTHONDONTWRITEBYTECODE=1 (set in some shells) every start compiled every module
    from source: +30 ms CPU and +3 MB RSS per node, measuring the shell, not the node."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(config).parent / "pycache")
    return env


def warm_bytecode_cache(workdir: Path, config: Path) -> None:
    """Start and stop one node, so that the measured ones find their bytecode cached."""
    proc = start_sipdht_node(workdir, config, "bytecode-warm-up")
    try:
        proc.wait_ready(60)
    finally:
        proc.stop()


def workdir(prefix: str) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=prefix)


# --- statistics ---------------------------------------------------------------------------


def percentile(data: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no data."""
    if not data:
        return float("nan")
    s = sorted(data)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(data: list[float]) -> float:
    data = [x for x in data if x == x]
    return statistics.median(data) if data else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def fmt_ratio(a: float, b: float) -> str:
    r = ratio(a, b)
    return "-" if r != r else f"{r:.3f}"


def table(rows: list[list[str]], left: int = 1) -> str:
    """A Markdown table; rows[0] is the header; the first `left` columns are left-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = lambda r: "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(r, widths, strict=True))) + " |"
    sep = "|" + "|".join("-" * (w + 2) if i < left else "-" * (w + 1) + ":"
                         for i, w in enumerate(widths)) + "|"
    return "\n".join([fmt(rows[0]), sep] + [fmt(r) for r in rows[1:]])


# --- machine load -------------------------------------------------------------------------


def machine_cpu_seconds() -> float:
    """CPU seconds spent busy (all CPUs, everything but idle and iowait) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLK_TCK


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# --- a raw OpenDHT client (msgpack over UDP, sipdht's message codec) -------------------------

class Tids:
    def __init__(self) -> None:
        self.n = int.from_bytes(os.urandom(4), "big") or 1

    def next(self) -> int:
        self.n = (self.n + 1) & 0xFFFFFFFF or 1
        return self.n


def request(sock: socket.socket, tids: Tids, name: str, args: dict, timeout: float = 2.0,
             tries: int = 3):
    """Send a query and return the decoded reply with the same tid (bounded retries)."""
    for _ in range(tries):
        tid = tids.next()
        sock.send(encode_query(name, tid, args))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                msg = decode(sock.recv(65536))
            except TimeoutError:
                break
            if msg.tid == tid:
                return msg
    raise TimeoutError(f"no reply to {name} after {tries} tries")


def raw_get(port: int, key: bytes, timeout: float = 1.0) -> Message | None:
    """One `get` for key straight to 127.0.0.1:port; the reply, or None."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.connect(("127.0.0.1", port))
        return request(sock, Tids(), "get", {"id": os.urandom(20), "h": key}, timeout, tries=2)
    except (TimeoutError, OSError):
        return None
    finally:
        sock.close()


# --- machine-readable summary (bench/all.py collects these) ---------------------------------


def add_summary_option(ap) -> None:
    """`--summary PATH` (default $BENCH_SUMMARY): where a script writes its headline rows."""
    ap.add_argument("--summary", metavar="PATH", default=os.environ.get("BENCH_SUMMARY") or None,
                    help="also write the headline figures as a JSON list of rows to PATH")


def summary_row(bench: str, figure: str, unit: str, ours: float | None,
                peer: float | None = None, peer_name: str | None = None) -> dict:
    """One row: our figure beside the peer's from the same run (peer None where there is none)."""
    def num(x: float | None) -> float | None:
        return None if x is None or x != x else float(x)
    o, p = num(ours), num(peer)
    return {"bench": bench, "figure": figure, "unit": unit, "ours": o, "peer": p,
            "peer_name": peer_name if p is not None else None,
            "ratio": o / p if o is not None and p else None}


def write_summary(path: str | None, rows: list[dict]) -> None:
    """Write the rows as JSON (nothing without a path); the printed output stays as it was."""
    if not path:
        return
    import json
    Path(path).write_text(json.dumps(rows, indent=1) + "\n")
