"""Fixtures every test directory may ask for, and the bound on async tests.

Helpers (plain functions and classes) live in tests/harness/ and are imported from there;
fixtures live in conftest.py files and are never imported. The namespace fixtures are here,
not in tests/netns/, because tests/netns/test_sip_nat.py and others use them too.
"""

import inspect
import socket

import pytest

from sipdht.config import PUBLIC_BOOTSTRAP
from tests.harness import netlab as nl
from tests.harness.aio import bounded
from tests.harness.requirements import require_binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.async_timeout(seconds)``: the async test is cancelled past the bound
    (tests/harness/aio.py). pytest-asyncio reads the test function when the test runs, so
    wrapping it here, after collection, keeps the fixtures it asks for."""
    for item in items:
        mark = item.get_closest_marker("async_timeout")
        if mark is None or not isinstance(item, pytest.Function):
            continue
        if not inspect.iscoroutinefunction(item.obj):
            if "async_timeout" in item.keywords and mark in item.own_markers:
                raise pytest.UsageError(f"{item.nodeid}: async_timeout on a test that is not async")
            continue                    # a module's mark: its synchronous tests are not bounded
        item.obj = bounded(item.obj, *mark.args, **mark.kwargs)


@pytest.fixture
def dhtnode_bin():
    require_binary("dhtnode")


@pytest.fixture(autouse=True)
def no_public_bootstrap(monkeypatch):
    """The built-in [dht] bootstrap is the public OpenDHT network: a test that resolves it in
    this process (a config without its own bootstrap) gets a DNS failure and then fails.
    Yields the names asked for (processes a test starts use tests/harness/configs.py)."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        if isinstance(host, str) and host.rstrip(".").lower() == PUBLIC_BOOTSTRAP[0]:
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "refused by tests/conftest.py")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield asked
    if asked:
        pytest.fail(f"the test tried to resolve the public bootstrap {asked[0]} "
                    "(give every node its own bootstrap, or an empty one)", pytrace=False)


# --- the namespace NAT topology (tests/harness/netlab.py) -----------------------------------
# ``netlab`` builds the 5-namespace topology once per session (cone/cone) and always tears it
# down; ``coturn`` and ``dht_bootstrap`` start coturn / dhtnode in ns pub; ``set_nat`` switches
# NAT modes for one test and restores cone/cone afterwards. Everything skips cleanly without
# root (and fails instead under CI, SIPDHT_STRICT_PEERS=1).


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
