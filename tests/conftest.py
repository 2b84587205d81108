import pytest

# Re-exported: tests call these; under CI (SIPDHT_STRICT_PEERS=1) they fail instead of skipping.
from tests.harness.requirements import require_binary, require_root  # noqa: F401


@pytest.fixture
def dhtnode_bin():
    require_binary("dhtnode")
