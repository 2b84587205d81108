"""Private files are written 0600, atomically, and never through a planted symlink.

Found in review: the key's temporary file was opened without O_EXCL|O_NOFOLLOW at a
predictable name (a symlink planted there received the private key), and the DHT state
file was written in place with the umask's mode (0644), following symlinks.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from sipdht import identity as identity_mod
from sipdht.dht.node import DhtNode, NodeConfig


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_key_temp_file_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # the temporary name the old code used, planted beforehand
    (tmp_path / f".me.pem.{os.getpid()}.tmp").symlink_to(victim)
    ident = identity_mod.generate(2048)
    key_path, _ = identity_mod.save(ident, tmp_path / "me")
    assert victim.read_bytes() == b"precious"
    assert mode(key_path) == 0o600 and not key_path.is_symlink()
    assert identity_mod.load(tmp_path / "me").account_id == ident.account_id
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == [
        f".me.pem.{os.getpid()}.tmp"]          # ours left nothing behind


async def test_state_file_is_private_and_replaced_atomically(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    state = tmp_path / "state.json"
    state.symlink_to(victim)

    old_umask = os.umask(0o022)
    try:
        a = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False))
        await a.start()
        b = DhtNode(NodeConfig(bind4="127.0.0.1", ipv6=False, state_file=state,
                               bootstrap=[("127.0.0.1", a.port)]))
        try:
            await b.start()
            assert await b.wait_connected(5)
        finally:
            await b.stop()
            await a.stop()
    finally:
        os.umask(old_umask)
    assert victim.read_text() == "precious"
    assert not state.is_symlink() and mode(state) == 0o600
    assert json.loads(state.read_text())["nodes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]
