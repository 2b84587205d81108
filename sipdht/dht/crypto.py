"""OpenDHT value signatures and encryption, with `cryptography` only.

Signatures: RSA PKCS#1 v1.5 + SHA-512 over the re-serialized ToSign map.
Encryption: the signed {"body","sig"} map, RSA PKCS#1 v1.5 to the recipient when
it fits one block, else an RSA-wrapped AES-256 key followed by the 12-byte IV and
the AES-GCM ciphertext with its tag (no associated data) - OpenDHT's layout.
"""

from __future__ import annotations

import os
from dataclasses import replace
from functools import lru_cache

import msgpack
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..identity import Identity, key_id
from .values import MalformedValue, Value, parse_body, to_encrypt, to_sign  # noqa: F401

GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16


class CryptoError(ValueError):
    """A value could not be verified or decrypted."""


@lru_cache(maxsize=1024)
def load_public_key(der: bytes) -> rsa.RSAPublicKey:
    """Parsing RSA keys is slow; values from one owner repeat, so cache by DER bytes."""
    try:
        key = serialization.load_der_public_key(der)
    except ValueError:
        try:
            key = serialization.load_pem_public_key(der.rstrip(b"\0"))
        except ValueError as exc:
            raise CryptoError(f"owner is not a public key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise CryptoError("owner is not an RSA key (OpenDHT signs with RSA only)")
    return key


def public_key_der(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def sign_value(identity: Identity, value: Value) -> Value:
    signed = replace(value, owner=identity.public_key_der, signature=None, cypher=None)
    return replace(signed, signature=identity.sign(to_sign(signed)))


def verify_value(value: Value) -> bool:
    """True when the value is signed and its signature verifies under its owner key."""
    if value.owner is None or not value.signature:
        return False
    try:
        key = load_public_key(bytes(value.owner))
        key.verify(value.signature, to_sign(value), padding.PKCS1v15(), hashes.SHA512())
    except (CryptoError, InvalidSignature, ValueError):
        return False
    return True


def owner_id(value: Value) -> bytes | None:
    return key_id(bytes(value.owner)) if value.owner is not None else None


def _rsa_block_size(key: rsa.RSAPublicKey) -> int:
    return (key.key_size + 7) // 8


def encrypt_value(identity: Identity, value: Value, recipient: rsa.RSAPublicKey) -> Value:
    """Sign `value` for `recipient` and return the encrypted form (id + cypher only)."""
    addressed = replace(value, recipient=key_id(public_key_der(recipient)))
    plaintext = to_encrypt(sign_value(identity, addressed))
    k = _rsa_block_size(recipient)
    if len(plaintext) <= k - 11:
        cypher = recipient.encrypt(plaintext, padding.PKCS1v15())
    else:
        aes_key = os.urandom(32)
        iv = os.urandom(GCM_IV_SIZE)
        cypher = (recipient.encrypt(aes_key, padding.PKCS1v15()) + iv
                  + AESGCM(aes_key).encrypt(iv, plaintext, None))
    return Value(id=value.id, cypher=cypher, priority=value.priority)


def _decrypt_bytes(identity: Identity, cypher: bytes) -> bytes:
    key = identity.private_key
    k = (key.key_size + 7) // 8
    if len(cypher) < k:
        raise CryptoError("cypher shorter than one RSA block")
    try:
        head = key.decrypt(cypher[:k], padding.PKCS1v15())
    except ValueError:
        raise CryptoError("not encrypted to this identity") from None
    if len(cypher) == k:
        return head
    if len(head) not in (16, 24, 32) or len(cypher) < k + GCM_IV_SIZE + GCM_TAG_SIZE:
        raise CryptoError("not encrypted to this identity")
    iv, body = cypher[k:k + GCM_IV_SIZE], cypher[k + GCM_IV_SIZE:]
    try:
        return AESGCM(head).decrypt(iv, body, None)
    except InvalidTag:
        raise CryptoError("not encrypted to this identity (AES-GCM tag mismatch)") from None


def decrypt_value(identity: Identity, value: Value) -> Value:
    """The clear, signed value inside an encrypted one; checks recipient and signature."""
    if value.cypher is None:
        raise CryptoError("value is not encrypted")
    plaintext = _decrypt_bytes(identity, bytes(value.cypher))
    try:
        obj = msgpack.unpackb(plaintext, raw=False, strict_map_key=False)
        if type(obj) is not dict:
            raise MalformedValue("encrypted body is not a map")
        clear = parse_body(obj.get("body"), obj.get("sig"), value.id, value.priority)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CryptoError(f"bad encrypted body: {exc}") from None
    if clear.recipient != identity.key_id:
        raise CryptoError("recipient mismatch")
    if not verify_value(clear):
        raise CryptoError("signature mismatch")
    return clear
