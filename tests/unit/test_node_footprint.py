"""What an idle `sipdht node` costs: it must not map OpenSSL.

Found measuring issue 11: asyncio's `import ssl` and `hashlib` mapped libssl and libcrypto,
5.1 MB of a 27.9 MB idle node (dhtnode: 10.8 MB), though a plain node uses no TLS and
hashes only ids and tokens. The node still answers (a raw ping on loopback).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from sipdht.dht.messages import decode, encode_query
from tests.harness.configs import loopback_ini

READY = re.compile(r"listening on UDP port (\d+)")


def start_node(ini: Path, log: Path) -> tuple[subprocess.Popen, int]:
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sipdht", "--config", str(ini), "node"],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        m = READY.search(log.read_text())
        if m:
            return proc, int(m.group(1))
        time.sleep(0.05)
    proc.kill()
    proc.wait(10)
    raise AssertionError(f"the node did not start:\n{log.read_text()[-2000:]}")


def ping(port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(encode_query("ping", 1, {"id": os.urandom(20)}), ("127.0.0.1", port))
        for _ in range(5):                  # the node may ping us first
            msg = decode(sock.recv(65536))
            if msg.tid == 1:
                return msg.kind
        return "no answer"


def test_an_idle_plain_node_maps_no_openssl(tmp_path: Path) -> None:
    proc, port = start_node(loopback_ini(tmp_path / "s.ini"), tmp_path / "node.log")
    try:
        assert ping(port) == "r"
        libs = {Path(line.split()[-1]).name.split(".so")[0]
                for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
                if ".so" in line}
        assert "libc" in libs, sorted(libs)         # the check reads real mappings
        assert not {"libssl", "libcrypto"} & libs, sorted(libs)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
