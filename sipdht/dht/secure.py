"""Signed and encrypted values over a DhtNode, as OpenDHT's SecureDht does it.

Every value handed up is checked first: a signed value only if its signature
verifies under its owner key, an encrypted one only if it decrypts to a signed
value addressed to us. The signer is reported as an account id (the SHA-1 of the
owner key), so callers can bind a value to the account they asked about.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from ..identity import Identity, key_id, long_key_id
from .crypto import (
    CryptoError,
    SignerMismatch,
    certificate_public_key,
    decrypt_value,
    encrypt_value,
    public_key_der,
    sign_value,
    verify_value,
)
from .infohash import InfoHash
from .node import DhtNode, Listen
from .values import CERTIFICATE_TYPE, FIELD_ID, Query, Value, random_id

log = logging.getLogger(__name__)

CERTIFICATE_VALUE_ID = 1


@dataclass(frozen=True)
class SecureValue:
    value: Value               # the clear value (decrypted when it came encrypted)
    signer: str | None         # verified account id of the signer; None when unsigned
    encrypted: bool = False


def certificate_keys(public_key_der: bytes) -> list[InfoHash]:
    """Where an identity's certificate lives: OpenDHT 2.x and 3.x locations."""
    return [InfoHash(key_id(public_key_der)), InfoHash.get(long_key_id(public_key_der))]


def stable_value_id(identity: Identity, key: InfoHash) -> int:
    """One id per (account, key), so re-publishing edits the same value."""
    digest = hashlib.sha256(identity.key_id + bytes(key)).digest()
    return int.from_bytes(digest[:8], "big") or 1


def account_key_from_certificate(value: Value) -> rsa.RSAPublicKey | None:
    """A type-8 value's data is a msgpack bin holding the PEM chain; own cert first.
    None unless it holds a certificate with a usable RSA key (see crypto.load_public_key)."""
    return certificate_public_key(bytes(value.data))


class SecureDht:
    def __init__(self, node: DhtNode, identity: Identity) -> None:
        self.node = node
        self.identity = identity
        self.stats: Counter[str] = Counter()
        self._public_keys: dict[str, rsa.RSAPublicKey] = {identity.account_id:
                                                          identity.private_key.public_key()}
        self._certificate_ops: list[int] = []

    @property
    def account_id(self) -> str:
        return self.identity.account_id

    # --- checking what comes from the network -----------------------------------------------

    def check(self, value: Value, owner: str | None = None) -> SecureValue | None:
        """The verified form of a value, or None (counted) when it must be ignored.

        With `owner` (an account id), a value signed by anyone else is dropped before its
        signature is verified: a stranger's value costs no RSA work.
        """
        if value.cypher is not None:
            return self._decrypt(value, owner)
        if value.owner is None:
            if owner is not None:
                self.stats["owner_mismatch"] += 1
                return None
            return SecureValue(value, None)
        signer = key_id(bytes(value.owner)).hex()
        if owner is not None and signer != owner:
            self.stats["owner_mismatch"] += 1
            return None
        if not verify_value(value):
            self.stats["bad_signature"] += 1
            return None
        return SecureValue(value, signer)

    def _decrypt(self, value: Value, owner: str | None) -> SecureValue | None:
        try:
            clear = decrypt_value(self.identity, value,
                                  bytes.fromhex(owner) if owner is not None else None)
        except SignerMismatch:
            self.stats["owner_mismatch"] += 1
            return None
        except CryptoError as exc:
            self.stats["not_for_us" if "this identity" in str(exc) else "bad_encrypted"] += 1
            return None
        return SecureValue(clear, key_id(bytes(clear.owner or b"")).hex(), True)

    def _accept(self, value: Value, owner: str | None) -> SecureValue | None:
        return self.check(value, owner)

    async def get(self, key: InfoHash, owner: str | None = None) -> list[SecureValue]:
        """Verified values at key; with `owner`, only those signed by that account."""
        return [sv async for sv in self.get_iter(key, owner)]

    async def get_iter(self, key: InfoHash, owner: str | None = None, local: bool = True
                       ) -> AsyncIterator[SecureValue]:
        """Verified values as they arrive (see DhtNode.get_iter)."""
        async for value in self.node.get_iter(key, local=local):
            checked = self._accept(value, owner)
            if checked is not None:
                yield checked

    def listen(self, key: InfoHash, owner: str | None = None) -> SecureListen:
        return SecureListen(self, self.node.listen(key), owner)

    # --- writing ----------------------------------------------------------------------------

    async def put_signed(self, key: InfoHash, data: bytes, type: int = 0, utype: str = "",
                         vid: int | None = None, permanent: bool = False,
                         seq: int | None = None) -> tuple[Value, int]:
        """Sign and put; an edit of our earlier value gets the next seq (looked up on the DHT
        unless the caller knows it). -> (value, nodes)."""
        vid = vid or stable_value_id(self.identity, key)
        if seq is None:
            seq = await self._next_seq(key, vid)
        value = sign_value(self.identity, Value(id=vid, type=type, data=data, utype=utype, seq=seq))
        if permanent:
            _, stored = await self.node.put_permanent(key, value)
        else:
            stored = await self.node.put(key, value)
        return value, stored

    async def _next_seq(self, key: InfoHash, vid: int) -> int:
        existing = await self.node.get(key, Query(where=((FIELD_ID, vid),)))
        seqs = [v.seq for v in existing if v.id == vid and v.owner is not None]
        return (max(seqs) + 1) & 0xFFFF if seqs else 0

    async def put_encrypted(self, key: InfoHash, data: bytes, to: str, type: int = 0,
                            utype: str = "", recipient_key: rsa.RSAPublicKey | None = None
                            ) -> tuple[Value, int]:
        """Sign for and encrypt to account `to`. Its key is looked up on the DHT unless given
        (e.g. taken from a value it signed); either way it must hash to `to`."""
        recipient = recipient_key or await self.find_public_key(to)
        if recipient is None:
            raise CryptoError(f"no certificate found on the DHT for account {to}")
        if key_id(public_key_der(recipient)).hex() != to:
            raise CryptoError(f"the key given for {to} belongs to another account")
        clear = Value(id=random_id(), type=type, data=data, utype=utype)
        value = encrypt_value(self.identity, clear, recipient)
        return value, await self.node.put(key, value)

    # --- certificates -----------------------------------------------------------------------

    async def publish_certificate(self) -> int:
        """Put our certificate, permanently, at both OpenDHT locations; -> nodes that took it."""
        data = msgpack.packb(self.identity.chain_pem(), use_bin_type=True)
        value = Value(id=CERTIFICATE_VALUE_ID, type=CERTIFICATE_TYPE, data=data)
        results = await asyncio.gather(*(self.node.put_permanent(k, value)
                                         for k in certificate_keys(self.identity.public_key_der)))
        self._certificate_ops = [op for op, _ in results]
        return sum(stored for _, stored in results)

    async def find_public_key(self, account_id: str) -> rsa.RSAPublicKey | None:
        """An account's RSA key from its certificate, only if the key hashes to the id.

        A 40-hex account id (SHA-1 key id) is looked up where OpenDHT 2.x publishes;
        a 64-hex long id (SHA-256, OpenDHT 3.x's PkId) where 3.x publishes.
        """
        if account_id in self._public_keys:
            return self._public_keys[account_id]
        raw = bytes.fromhex(account_id)
        location, digest = ((InfoHash(raw), key_id) if len(raw) == 20
                            else (InfoHash.get(raw), long_key_id))
        for value in await self.node.get(location):
            if value.type != CERTIFICATE_TYPE:
                continue
            key = account_key_from_certificate(value)
            if key is not None and digest(public_key_der(key)) == raw:
                self._public_keys[account_id] = key
                return key
            self.stats["certificate_mismatch"] += 1
        return None


class SecureListen:
    """Async iterator of (kind, SecureValue): only values that pass `SecureDht.check`."""

    def __init__(self, secure: SecureDht, listen: Listen, owner: str | None) -> None:
        self.secure, self.inner, self.owner = secure, listen, owner

    def __aiter__(self) -> AsyncIterator[tuple[str, SecureValue]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[str, SecureValue]]:
        async for kind, value in self.inner:
            checked = self.secure._accept(value, self.owner)
            if checked is not None:
                yield kind, checked

    def cancel(self) -> None:
        self.inner.cancel()
