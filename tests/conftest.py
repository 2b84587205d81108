import socket

import pytest

from sipdht.config import PUBLIC_BOOTSTRAP

# Re-exported: tests call these; under CI (SIPDHT_STRICT_PEERS=1) they fail instead of skipping.
from tests.harness.requirements import require_binary, require_root  # noqa: F401


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
