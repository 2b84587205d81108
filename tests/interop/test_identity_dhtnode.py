"""An identity saved by real dhtnode keeps its id in sipdht."""

import subprocess
import sys

import pytest

from sipdht import identity
from tests.harness.dhtnode import Dhtnode


@pytest.mark.slow
def test_dhtnode_saved_identity_has_same_account_and_node_id(tmp_path, dhtnode_bin):
    prefix = tmp_path / "opendht"
    with Dhtnode(save_identity=str(prefix)) as node:
        printed_key_id, printed_node_id = node.key_id, node.node_id
    assert (tmp_path / "opendht.pem").exists() and (tmp_path / "opendht.crt").exists()
    ident = identity.load(prefix)
    assert ident.account_id == printed_key_id
    assert ident.node_id.hex() == printed_node_id
    assert len(ident.chain) == 2  # dhtnode's node certificate + its CA

    out = subprocess.run([sys.executable, "-m", "sipdht", "id", "--identity", str(prefix)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == printed_key_id
