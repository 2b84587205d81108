import os
import shutil

import pytest


def require_binary(name: str) -> None:
    """Skip with a clear reason when a peer binary is missing (make test installs it)."""
    if shutil.which(name) is None:
        pytest.skip(f"{name} is not installed: run `make test` (installs the test peers with apt)")


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces (CI runs as root)")


@pytest.fixture
def dhtnode_bin():
    require_binary("dhtnode")
