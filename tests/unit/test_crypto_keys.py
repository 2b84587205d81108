"""Peer keys whose cost or type the sender chooses, found in review and reproduced first.

- any RSA public exponent was accepted: a 3072-bit e made one verify 11 ms (0.14 ms with
  e = 65537), so ten puts cost a storer 5 s of CPU;
- an owner key of an algorithm cryptography does not know raised UnsupportedAlgorithm,
  which is not a ValueError: it escaped the verifier and killed the callers' loops;
- the owner was compared with the expected account only after the signature was verified.
"""

from __future__ import annotations

import os
from dataclasses import replace

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sipdht import identity as identity_mod
from sipdht.dht.crypto import (
    PeerKeyError,
    load_public_key,
    sign_value,
    verify_value,
)
from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import encode_query
from sipdht.dht.policies import secure_policy
from sipdht.dht.secure import SecureDht
from sipdht.dht.values import Value, pack, to_encrypt, to_sign

T0 = 1000.0
# SubjectPublicKeyInfo whose algorithm is sha384WithRSAEncryption: cryptography raises
# UnsupportedAlgorithm ("Unknown key type") on it.
UNSUPPORTED_SPKI = bytes.fromhex("3015300b06092a864886f70d01010c0306000102030405")


@pytest.fixture(scope="module")
def alice() -> identity_mod.Identity:
    return identity_mod.generate(2048)


@pytest.fixture(scope="module")
def bob() -> identity_mod.Identity:
    return identity_mod.generate(2048)


def spki(e: int, n: int) -> bytes:
    key = rsa.RSAPublicNumbers(e, n).public_key()
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def odd(bits: int) -> int:
    return int.from_bytes(os.urandom(bits // 8), "big") | (1 << (bits - 1)) | 1


@pytest.mark.parametrize("e", [3, 17, odd(3072)], ids=["3", "17", "3072-bit"])
def test_exponent_other_than_65537_refused(alice, e: int) -> None:
    n = odd(4096)
    with pytest.raises(PeerKeyError):
        load_public_key(spki(e, n))
    value = replace(sign_value(alice, Value(id=1, data=b"x")), owner=spki(e, n))
    assert verify_value(value) is False


@pytest.mark.parametrize("bits", [1024, 8200])
def test_key_size_outside_2048_8192_refused(bits: int) -> None:
    with pytest.raises(PeerKeyError):
        load_public_key(spki(65537, odd(bits)))


def test_usual_keys_accepted(alice) -> None:
    assert load_public_key(alice.public_key_der).key_size == 2048
    assert verify_value(sign_value(alice, Value(id=1, data=b"x")))


@pytest.mark.parametrize("der", [UNSUPPORTED_SPKI, b"", b"garbage", b"\x30" * 5000])
def test_every_load_failure_is_one_value_error(der: bytes) -> None:
    with pytest.raises(PeerKeyError) as info:
        load_public_key(der)
    assert isinstance(info.value, ValueError)


def unsupported_signed() -> Value:
    return Value(id=1, data=b"x", owner=UNSUPPORTED_SPKI, seq=1, signature=b"\x01" * 256)


def test_verify_value_false_for_unsupported_owner() -> None:
    assert verify_value(unsupported_signed()) is False


def test_remote_put_with_unsupported_owner_is_refused_not_raised() -> None:
    e = DhtEngine(InfoHash(b"\x55" * 20), now=T0, policy=secure_policy())
    peer, addr, key = InfoHash(b"\x11" * 20), ("203.0.113.10", 4222), InfoHash.get("k")
    e.receive_datagram(encode_query("get", 1, {"id": peer, "h": key}), addr, T0)
    token = msgpack.unpackb(e.datagrams_to_send(T0)[-1][0], raw=False)["r"]["token"]
    e.receive_datagram(encode_query("put", 2, {"id": peer, "h": key, "token": token,
                                               "values": [pack(unsupported_signed())]}),
                       addr, T0)
    assert e.storage.get(key) == []
    assert e.stats["store_refused"] == 1


def encrypt_raw(plaintext: bytes, recipient: rsa.RSAPublicKey) -> bytes:
    """OpenDHT's hybrid layout, for a body we could not make with encrypt_value."""
    aes_key, iv = os.urandom(32), os.urandom(12)
    return (recipient.encrypt(aes_key, padding.PKCS1v15()) + iv
            + AESGCM(aes_key).encrypt(iv, plaintext, None))


class Values:
    """Just enough of a DhtNode for SecureDht.get_iter: these values, once."""

    def __init__(self, values: list[Value]) -> None:
        self.values = values

    async def get_iter(self, key, query=None, **kwargs):
        for v in self.values:
            yield v


async def secure_get(values: list[Value], me, owner: str | None = None) -> tuple[list, SecureDht]:
    secure = SecureDht(Values(values), me)  # type: ignore[arg-type]
    return await secure.get(InfoHash.get("k"), owner), secure


async def test_secure_get_survives_unsupported_owner_keys(alice) -> None:
    inner = replace(unsupported_signed(), recipient=alice.key_id)
    encrypted = Value(id=2, cypher=encrypt_raw(to_encrypt(inner),
                                               alice.private_key.public_key()))
    good = sign_value(alice, Value(id=3, data=b"ok"))
    got, secure = await secure_get([unsupported_signed(), encrypted, good], alice)
    assert [sv.value.id for sv in got] == [3]
    assert secure.stats["bad_signature"] == 1 and secure.stats["bad_encrypted"] == 1


async def test_owner_compared_before_the_signature(alice, bob) -> None:
    """A value from another owner is dropped as such, its signature never checked."""
    forged = replace(sign_value(bob, Value(id=1, data=b"x")), signature=b"\x00" * 256)
    got, secure = await secure_get([forged], alice, owner=alice.account_id)
    assert got == []
    assert secure.stats == {"owner_mismatch": 1}
    assert to_sign(forged)   # (the value itself is well formed)
