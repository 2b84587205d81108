"""Driving bench/_dht_client.py processes (one OpenDHT python client, one sipdht client) and
the two 32-node networks they talk to: shared by bench/warm_ops.py and bench/kill_nodes.py.

Each client is its own process, started with its output on a pipe that only this process
reads (one JSON line per command, read with a deadline), and stopped by its PID.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import (  # noqa: E402
    Proc,
    fmt_ratio,
    loadavg,
    median,
    percentile,
    start_dhtnode,
    start_sipdht_node,
    workdir,
    write_sipdht_config,
)

SYSTEM_PYTHON = "/usr/bin/python3"      # Debian's, with python3-opendht
NETS = ("dhtnode", "sipdht")
PEER_IMPL = {"dhtnode": "opendht", "sipdht": "sipdht"}   # each network's own client


def opendht_missing() -> str | None:
    """Why OpenDHT's python client cannot run here, or None."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    r = subprocess.run([SYSTEM_PYTHON, "-c", "import opendht"], capture_output=True, timeout=30)
    return None if r.returncode == 0 else "python3-opendht not installed: apt-get install python3-opendht"


class Client:
    """One _dht_client.py process: JSON commands in, one JSON reply line per command out."""

    def __init__(self, impl: str, bootstrap: int, log: Path) -> None:
        python = SYSTEM_PYTHON if impl == "opendht" else sys.executable
        self.impl = impl
        self._err = open(log, "w")
        env = dict(os.environ)
        if impl == "sipdht":
            env["PYTHONPATH"] = os.pathsep.join(
                [str(HERE.parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.popen = subprocess.Popen(
            [python, str(HERE / "_dht_client.py"), "--impl", impl, "--bootstrap", str(bootstrap)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True,
            bufsize=1, env=env, start_new_session=True)
        self.pid = self.popen.pid
        self._buf = ""

    def read(self, timeout: float) -> dict:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while "\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.impl} client (pid {self.pid}): no reply in {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536).decode()
                if not chunk:
                    raise RuntimeError(f"{self.impl} client (pid {self.pid}) exited "
                                       f"({self.popen.poll()})")
                self._buf += chunk
        line, self._buf = self._buf.split("\n", 1)
        return json.loads(line)

    def ready(self, timeout: float = 30.0) -> dict:
        return self.read(timeout)

    def call(self, timeout: float = 30.0, **cmd) -> dict:
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(cmd) + "\n")
        self.popen.stdin.flush()
        return self.read(timeout)

    def stop(self) -> None:
        """Ask it to quit, then SIGTERM / SIGKILL by PID."""
        try:
            if self.popen.poll() is None and self.popen.stdin:
                self.popen.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.popen.stdin.flush()
        except OSError:
            pass
        for action in (None, self.popen.terminate, self.popen.kill):
            if action is not None and self.popen.poll() is None:
                action()
            try:
                self.popen.wait(5.0)
                break
            except subprocess.TimeoutExpired:
                continue
        for f in (self.popen.stdin, self.popen.stdout):
            try:
                f and f.close()
            except OSError:
                pass
        self._err.close()


def start_network(kind: str, n: int, tmp: Path, config: Path) -> list[Proc]:
    """n nodes of one kind on 127.0.0.1; node 0 first, the others bootstrap from it."""
    def start(i: int, boot: int | None) -> Proc:
        name = f"{kind}-{i:02d}"
        if kind == "dhtnode":
            return start_dhtnode(tmp, name, bootstrap=boot)
        return start_sipdht_node(tmp, config, name, bootstrap=boot)

    procs = [start(0, None)]
    try:
        procs[0].wait_ready(30)
        procs += [start(i, procs[0].port) for i in range(1, n)]
        for p in procs[1:]:
            p.wait_ready(60)
    except BaseException:
        from _common import stop_all
        stop_all(procs)
        raise
    return procs


def stats(ms: list[float]) -> dict:
    return {"p50": percentile(ms, 50), "p95": percentile(ms, 95), "n": len(ms)}


def load_note() -> str:
    return f"{os.cpu_count()} CPUs, load average {loadavg():.2f}"


def run_all(prefix: str, runs: int, one_run: Callable[[int, Path, Path], dict]) -> list[dict]:
    """`one_run(run, its directory, the sipdht config)` for each run, in one temporary workdir."""
    results = []
    with workdir(prefix) as d:
        tmp = Path(d)
        config = write_sipdht_config(tmp)
        for run in range(runs):
            (tmp / f"run{run}").mkdir()
            results.append(one_run(run, tmp / f"run{run}", config))
    return results


def med(runs: list[dict], net: str, what: str, q: str) -> float:
    """Median over runs of one network's figure (`r[net][what][q]`)."""
    return median([r[net][what][q] for r in runs])


def ratio_rows(runs: list[dict], whats: Iterable[str], label: Callable[[str, str], str]) -> list[list[str]]:
    """p50 and p95 of each figure, dhtnode's beside ours and the ratio ours/dhtnode."""
    rows = []
    for what in whats:
        for q in ("p50", "p95"):
            a, b = med(runs, "dhtnode", what, q), med(runs, "sipdht", what, q)
            rows.append([label(what, q), f"{a:.2f}", f"{b:.2f}", fmt_ratio(b, a)])
    return rows
