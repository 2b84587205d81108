#!/usr/bin/env python3
"""A userspace delay hub between network namespaces (this kernel has no tc netem).

Each namespace NS:K gets a TUN device ``dhub`` with address 10.200.K.1/16. Every IPv4
packet a namespace sends into 10.200.0.0/16 is read from its TUN and written to the TUN of
the namespace owning the destination after a fixed one-way delay, so ``--oneway-ms 25``
gives every pair of namespaces a 50 ms round-trip time. Traffic inside one namespace
(loopback, its own address) never reaches the hub and is not delayed.

Only 10.200.0.0/16 and only namespaces the caller created are touched. Run it as its own
process (``python -m bench._delayhub --ns NAME:K ... --oneway-ms 25``); it prints one JSON
line ``{"ready": true, ...}`` when the TUNs are up, runs until SIGTERM/SIGINT and then
prints ``{"stats": ...}`` (packets relayed, how late the latest one left). The
:class:`DelayHub` class starts and stops it by PID.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

TUN_NAME = "dhub"
_CLONE_NEWNET = 0x40000000
_TUNSETIFF = 0x400454CA
_IFF_TUN, _IFF_NO_PI = 0x0001, 0x1000


def address(k: int) -> str:
    """The address the hub gives to namespace number k (1..254)."""
    return f"10.200.{k}.1"


def _open_tun(ns: str) -> int:
    """Open a TUN device inside namespace `ns` (setns there and back); the fd stays valid."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    here = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(),
                                                    _IFF_TUN | _IFF_NO_PI))
        finally:
            if libc.setns(here, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)
        os.close(there)
    return fd


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, timeout=10)


class _Hub:
    """Packets read from one TUN, held in a heap until due, written to another."""

    def __init__(self, namespaces: list[tuple[str, int]], oneway_s: float) -> None:
        self.fd_by_ip: dict[bytes, int] = {}
        self.fds: list[int] = []
        for ns, k in namespaces:
            fd = _open_tun(ns)
            _ip(ns, "link", "set", "lo", "up")
            _ip(ns, "addr", "add", f"{address(k)}/16", "dev", TUN_NAME)
            _ip(ns, "link", "set", TUN_NAME, "up", "txqueuelen", "10000")
            self.fds.append(fd)
            self.fd_by_ip[socket.inet_aton(address(k))] = fd
        self.delay = oneway_s
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.stats = {"packets": 0, "bytes": 0, "no_route": 0, "max_late_ms": 0.0}

    def read(self, fd: int, now: float) -> None:
        for _ in range(256):                       # bounded burst per readiness event
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                return
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                continue
            dst = self.fd_by_ip.get(pkt[16:20])
            if dst is None:
                self.stats["no_route"] += 1
                continue
            self.seq += 1
            heapq.heappush(self.heap, (now + self.delay, self.seq, dst, pkt))

    def flush(self, now: float) -> None:
        while self.heap and self.heap[0][0] <= now:
            due, _, dst, pkt = heapq.heappop(self.heap)
            try:
                os.write(dst, pkt)
            except OSError:
                continue
            self.stats["packets"] += 1
            self.stats["bytes"] += len(pkt)
            self.stats["max_late_ms"] = max(self.stats["max_late_ms"], (now - due) * 1e3)

    def run(self, running: list[bool]) -> None:
        ep = select.epoll()
        for fd in self.fds:
            ep.register(fd, select.EPOLLIN)
        while running[0]:
            now = time.monotonic()
            timeout = max(0.0, self.heap[0][0] - now) if self.heap else 0.5
            for fd, _ in ep.poll(timeout):
                self.read(fd, time.monotonic())
            self.flush(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ns", action="append", required=True, metavar="NAME:K",
                    help="namespace NAME gets 10.200.K.1/16 (repeat)")
    ap.add_argument("--oneway-ms", type=float, default=25.0)
    a = ap.parse_args(argv)
    nss = []
    for spec in a.ns:
        name, _, k = spec.rpartition(":")
        if not name or not k.isdigit() or not 1 <= int(k) <= 254:
            ap.error(f"--ns wants NAME:K with K in 1..254, not {spec!r}")
        nss.append((name, int(k)))
    running = [True]

    def stop(*_: object) -> None:
        running[0] = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    hub = _Hub(nss, a.oneway_ms / 1000)
    print(json.dumps({"ready": True, "ns": nss, "oneway_ms": a.oneway_ms}), flush=True)
    hub.run(running)
    print(json.dumps({"stats": hub.stats}), flush=True)
    return 0


class DelayHub:
    """The hub as a child process (stdout to a log file), stopped by its PID."""

    def __init__(self, namespaces: list[tuple[str, int]], oneway_ms: float, log: Path) -> None:
        root = Path(__file__).resolve().parent.parent
        argv = [sys.executable, "-m", "bench._delayhub", "--oneway-ms", str(oneway_ms)]
        for ns, k in namespaces:
            argv += ["--ns", f"{ns}:{k}"]
        self.log_path = log
        self._log = open(log, "w")
        env = dict(os.environ, PYTHONPATH=f"{root}:{os.environ.get('PYTHONPATH', '')}")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=root, env=env,
                                      start_new_session=True)
        deadline = time.monotonic() + 15
        while '"ready"' not in log.read_text():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"delay hub did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.02)

    def stats(self) -> dict:
        for line in reversed(self.log_path.read_text().splitlines()):
            if line.startswith('{"stats"'):
                return json.loads(line)["stats"]
        return {}

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


if __name__ == "__main__":
    sys.exit(main())
