"""Two agents find each other on the DHT and open an encrypted ICE link through NATs.

Topology (tests/harness/netlab.py): dhtnode bootstrap and coturn on the public segment,
alice and bob each behind a NAT router whose mode each test sets.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.harness import netlab as nl

pytestmark = [pytest.mark.netns, pytest.mark.interop]

PATH_RE = re.compile(r"ICE (\d+) ms, first RTT ([\d.]+) ms, RTT ([\d.]+) ms .* path (\w+)")


def sipdht(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([nl.PYTHON, "-m", "sipdht", *args], capture_output=True, text=True,
                          timeout=timeout)


class Agents:
    """alice and bob: identities, configs, and `sipdht run` inside their namespaces."""

    def __init__(self, topo: nl.Topology, tmp: Path) -> None:
        self.topo, self.tmp = topo, tmp
        self.ini = {w: nl.agent_config(tmp, w) for w in ("alice", "bob")}
        self.id = {}
        for who, ini in self.ini.items():
            assert sipdht("init", "--config", str(ini)).returncode == 0
            self.id[who] = sipdht("id", "--config", str(ini)).stdout.strip()
        self.procs: dict[str, object] = {}

    def start(self, who: str) -> None:
        proc = self.topo.spawn(who, [nl.PYTHON, "-m", "sipdht", "run", "--config",
                                     str(self.ini[who])], watch=True)
        self.procs[who] = proc
        nl.output(proc).wait_for(r"contact record of \w+ published on [1-9]", 20)

    def ping(self, src: str, dst: str, *extra: str, timeout: float = 60):
        return self.topo.run(src, [nl.PYTHON, "-m", "sipdht", "ping", "--config",
                                   str(self.ini[src]), *extra, self.id[dst]],
                             timeout=timeout, capture_output=True, text=True)

    def stop(self) -> None:
        for proc in self.procs.values():
            nl.stop_process(proc)
        self.procs.clear()


@pytest.fixture
def agents(netlab, coturn, dht_bootstrap, tmp_path):
    a = Agents(netlab, tmp_path)
    try:
        yield a
    finally:
        a.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode_a,mode_b", [
    ("cone", "cone"), ("fullcone", "fullcone"), ("symmetric", "symmetric"), ("cone", "symmetric"),
])
def test_ping_both_ways_through_nats(agents, set_nat, mode_a, mode_b):
    set_nat(mode_a, mode_b)
    agents.start("alice")
    agents.start("bob")
    paths = []
    for src, dst in (("alice", "bob"), ("bob", "alice")):
        out = agents.ping(src, dst, "--count", "3", "--data", "20000")
        assert out.returncode == 0, f"{src}->{dst}: {out.stderr}"
        m = PATH_RE.search(out.stdout)
        assert m, out.stdout
        paths.append(m.group(4))
    if (mode_a, mode_b) == ("symmetric", "symmetric"):
        assert paths == ["relay", "relay"]        # no direct path exists: TURN carried it
    if (mode_a, mode_b) == ("fullcone", "fullcone"):
        assert "relay" not in paths


@pytest.mark.slow
def test_offline_callee_fails_fast_with_reason(agents):
    out = agents.topo.run("alice", ["sh", "-c", "true"], timeout=5)
    assert out.returncode == 0
    lookup = agents.topo.run("alice", [nl.PYTHON, "-m", "sipdht", "lookup", "--config",
                                       str(agents.ini["alice"]), agents.id["bob"]],
                             timeout=30, capture_output=True, text=True)
    assert lookup.returncode == 1 and " offline" in lookup.stdout
    ping = agents.ping("alice", "bob", "--timeout", "10", timeout=30)
    assert ping.returncode == 1          # never published: unknown (a gateway says 404)
    assert "no contact record" in ping.stderr and "Traceback" not in ping.stderr

    agents.start("bob")           # online, then stopped cleanly: its record says offline
    agents.stop()
    lookup = agents.topo.run("alice", [nl.PYTHON, "-m", "sipdht", "lookup", "--config",
                                       str(agents.ini["alice"]), agents.id["bob"]],
                             timeout=30, capture_output=True, text=True)
    assert lookup.returncode == 1 and "device" in lookup.stdout and "offline" in lookup.stdout
    ping = agents.ping("alice", "bob", "--timeout", "10", timeout=30)
    assert ping.returncode == 1          # published, now offline (a gateway says 480)
    assert "is offline" in ping.stderr and "Traceback" not in ping.stderr
