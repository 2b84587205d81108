"""Signed and encrypted values between sipdht and real `dhtnode -i` identities."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from sipdht import identity
from sipdht.dht.crypto import sign_value
from sipdht.dht.infohash import InfoHash
from sipdht.dht.secure import SecureDht
from sipdht.dht.storage import EditPolicy
from sipdht.dht.values import Value, new_value
from tests.harness.dht import our_node, wait_line
from tests.harness.dhtnode import Dhtnode
from tests.harness.requirements import unavailable

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]
PROBE = Path(__file__).resolve().parent.parent / "harness" / "opendht_probe.py"


@pytest.fixture(scope="module")
def ident():
    return identity.generate(2048)


@pytest.fixture
def pair(dhtnode_bin):
    """Two identified dhtnodes, the second bootstrapped on the first."""
    d0 = Dhtnode(identity=True).start()
    d1 = Dhtnode(identity=True, bootstrap=f"127.0.0.1:{d0.port}").start()
    yield d0, d1
    d0.stop()
    d1.stop()


def opendht_owner_ids(port: int, key: str) -> dict[str, str]:
    """OpenDHT's own library (python3-opendht) names each value's owner id."""
    if not os.path.exists("/usr/lib/python3/dist-packages/opendht.cpython-311-x86_64-linux-gnu.so") \
            and subprocess.run(["/usr/bin/python3", "-c", "import opendht"]).returncode:
        unavailable("python3-opendht is not installed: run `make test`")
    out = subprocess.run(["/usr/bin/python3", str(PROBE), str(port), key],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(line.split() for line in out.stdout.splitlines())


async def test_dhtnode_signed_value_verifies_in_get_and_listen(pair, ident):
    d0, d1 = pair
    node = await our_node(d1)
    secure = SecureDht(node, ident)
    try:
        listen = secure.listen(InfoHash.from_key("signed-by-dhtnode"))
        await asyncio.sleep(1.0)
        m = d0.cmd("s signed-by-dhtnode hello-signed")
        await wait_line(d0, "Put signed: success", m)
        got = []

        async def first():
            async for kind, sv in listen:
                got.append((kind, sv))
                return
        await asyncio.wait_for(first(), 10)
        assert got[0][1].value.data == b"hello-signed" and got[0][1].signer == d0.key_id
        values = await secure.get(InfoHash.from_key("signed-by-dhtnode"))
        assert [(sv.value.data, sv.signer, sv.encrypted) for sv in values] == \
            [(b"hello-signed", d0.key_id, False)]
        listen.cancel()
    finally:
        await node.stop()


@pytest.mark.slow
async def test_our_signed_value_is_signed_for_dhtnode(pair, ident):
    d0, d1 = pair
    node = await our_node(d0)
    try:
        value, stored = await SecureDht(node, ident).put_signed(
            InfoHash.from_key("signed-by-us"), b"ours-signed", utype="text/plain")
        assert stored >= 1 and value.signature
        m = d1.cmd("g signed-by-us")
        await wait_line(d1, r'signed \(v\d\) data\(text/plain\):"ours-signed"', m)
        owners = await asyncio.to_thread(opendht_owner_ids, d1.port, "signed-by-us")
        assert owners == {f"{value.id:016x}": ident.account_id}
    finally:
        await node.stop()


async def test_encryption_both_ways(pair, ident):
    d0, d1 = pair
    node = await our_node(d0)
    secure = SecureDht(node, ident)
    try:
        assert await secure.publish_certificate() >= 1     # so dhtnode can encrypt to us
        await asyncio.sleep(0.5)
        m = d1.cmd(f"e to-sipdht {ident.account_id} secret-for-sipdht")
        await wait_line(d1, "Put encrypted: success", m)
        values = await secure.get(InfoHash.from_key("to-sipdht"))
        assert [(sv.value.data, sv.signer, sv.encrypted) for sv in values] == \
            [(b"secret-for-sipdht", d1.key_id, True)]
        _, stored = await secure.put_encrypted(InfoHash.from_key("to-dhtnode"),
                                               b"secret-for-dhtnode", to=d1.key_id, utype="text/plain")
        assert stored >= 1
        m = d1.cmd("g to-dhtnode")
        await wait_line(d1, r'decrypted data\(text/plain\):"secret-for-dhtnode"', m)
        m = d0.cmd("g to-dhtnode")                       # not for d0: it cannot read it
        await wait_line(d0, "Get: completed", m)
        assert not d0.find_all("secret-for-dhtnode", m)
    finally:
        await node.stop()


@pytest.mark.slow
async def test_dhtnode_saved_identity_signs_as_the_same_id(tmp_path, dhtnode_bin):
    prefix = tmp_path / "saved"
    with Dhtnode(save_identity=str(prefix)) as saver:
        saved_id = saver.key_id
    loaded = identity.load(prefix)
    assert loaded.account_id == saved_id
    with Dhtnode() as d0:
        node = await our_node(d0)
        try:
            value, stored = await SecureDht(node, loaded).put_signed(
                InfoHash.from_key("saved-identity"), b"same-id", utype="text/plain")
            assert stored >= 1
            owners = await asyncio.to_thread(opendht_owner_ids, d0.port, "saved-identity")
            assert owners == {f"{value.id:016x}": saved_id}
        finally:
            await node.stop()


async def test_storage_and_get_reject_forgeries(ident):
    """Our storing node refuses forged/replayed/unsigned edits; our get ignores what a
    non-verifying storer hands out; both are counted."""
    other = identity.generate(2048)
    lax = await our_node(None, policy=EditPolicy(verify=None))     # a storer that does not verify
    storer = await our_node(lax)                                    # verifies (default policy)
    client = await our_node(storer)
    secure = SecureDht(client, ident)
    key = InfoHash.from_key("contested")
    try:
        await asyncio.sleep(0.5)
        v2, _ = await secure.put_signed(key, b"seq0", vid=77)
        v2, _ = await secure.put_signed(key, b"seq1", vid=77)
        assert v2.seq == 1
        forged = replace(v2, data=b"forged", seq=5)                          # bad signature
        stolen = replace(sign_value(other, Value(id=77, data=b"stolen", seq=9)))   # other owner
        replay = sign_value(ident, Value(id=77, data=b"older", seq=0))        # lower seq
        unsigned = Value(id=77, data=b"unsigned")
        for bad in (forged, stolen, replay, unsigned):
            await client.put(key, bad)
        assert storer.engine.stats["store_refused"] >= 4
        stored = storer.engine.storage.get_stored(key, 77).value
        assert (stored.data, stored.seq) == (b"seq1", 1)

        forged_only = InfoHash.from_key("forged-only")
        await client.put(forged_only, replace(sign_value(ident, new_value(b"x")), data=b"tampered"))
        assert lax.engine.storage.get(forged_only)                       # the lax node kept it
        assert await secure.get(forged_only) == []
        assert secure.stats["bad_signature"] >= 1
        got = await secure.get(key, owner=other.account_id)
        assert got == [] and secure.stats["owner_mismatch"] >= 1
        assert [sv.value.data for sv in await secure.get(key, owner=ident.account_id)] == [b"seq1"]
    finally:
        for n in (client, storer, lax):
            await n.stop()
