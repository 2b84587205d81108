"""Fixtures for tests that need the namespace NAT topology (tests/harness/netlab.py).

``netlab`` builds the 5-namespace topology once per session (cone/cone) and always tears it down;
``coturn`` and ``dht_bootstrap`` start coturn / dhtnode in ns pub; ``set_nat`` switches NAT modes
for one test and restores cone/cone afterwards. Everything skips cleanly without root
(and fails instead under CI, SIPDHT_STRICT_PEERS=1).
"""

from __future__ import annotations

import pytest

from tests.harness import netlab as nl
from tests.harness.requirements import require_binary


@pytest.fixture(scope="session")
def netlab():
    """The live :class:`~tests.harness.netlab.Topology` (cone/cone), torn down even on failure."""
    nl.require_netns()
    topo = nl.Topology()
    topo.up("cone", "cone")  # cleans up after itself if it fails half way
    try:
        yield topo
    finally:
        topo.down()


@pytest.fixture(scope="session")
def coturn(netlab):
    """coturn on 198.51.100.1:3478 (users alice:alicepass, bob:bobpass, realm test.local)."""
    require_binary("turnserver", "coturn")
    server = nl.Coturn(netlab)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dht_bootstrap(netlab):
    """dhtnode in pub, the DHT bootstrap at 198.51.100.1:4222; yields its Popen."""
    require_binary("dhtnode", "dhtnode")
    proc = nl.start_dhtnode(netlab, nl.DHT_PORT)
    try:
        yield proc
    finally:
        nl.stop_process(proc)


@pytest.fixture
def set_nat(netlab):
    """``set_nat(mode_a=None, mode_b=None)`` switches the routers' NAT modes (flushing their
    conntrack); any router changed is put back to cone (flushed again) after the test."""
    changed: set[str] = set()

    def switch(mode_a: str | None = None, mode_b: str | None = None) -> None:
        for router, mode in (("A", mode_a), ("B", mode_b)):
            if mode is not None:
                netlab.set_nat(router, mode)
                changed.add(router)

    yield switch
    for router in sorted(changed):
        netlab.set_nat(router, "cone")
