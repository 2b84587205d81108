"""OpenDHT value signatures and encryption, with `cryptography` only.

Signatures: RSA PKCS#1 v1.5 + SHA-512 over the re-serialized ToSign map.
Encryption: the signed {"body","sig"} map, RSA PKCS#1 v1.5 to the recipient when
it fits one block, else an RSA-wrapped AES-256 key followed by the 12-byte IV and
the AES-GCM ciphertext with its tag (no associated data) - OpenDHT's layout.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import replace
from functools import lru_cache

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..identity import Identity, key_id, long_key_id
from .infohash import InfoHash
from .values import MalformedValue, Value, parse_body, to_encrypt, to_sign  # noqa: F401

GCM_IV_SIZE = 12
GCM_TAG_SIZE = 16
# The verify cost is the sender's choice unless the key is: a 3072-bit public exponent made
# one verify 11 ms instead of 0.14 ms. OpenDHT keys use e = 65537, 2048-4096 bits.
RSA_EXPONENT = 65537
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
MAX_KEY_ENCODING = 4096     # bytes: an 8192-bit key is ~1.1 kB in DER, ~1.5 kB in PEM


class CryptoError(ValueError):
    """A value could not be verified or decrypted."""


class PeerKeyError(CryptoError):
    """A peer's public key cannot be used: not a key, not RSA, or outside the accepted
    exponent and sizes. Every failure to load a peer's key raises this (never
    cryptography's own exception types), so callers catch one type."""


def load_public_key(der: bytes) -> rsa.RSAPublicKey:
    """A peer's RSA key from DER (or PEM) SubjectPublicKeyInfo; raises PeerKeyError."""
    key = _load_public_key(bytes(der))
    if isinstance(key, str):
        raise PeerKeyError(key)
    return key


@lru_cache(maxsize=1024)
def _load_public_key(der: bytes) -> rsa.RSAPublicKey | str:
    """The key, or why it was refused. Parsing is slow and owners repeat, so both outcomes
    are cached by the encoded bytes."""
    if len(der) > MAX_KEY_ENCODING:
        return f"owner key encoding too long ({len(der)} bytes)"
    try:
        key = _parse_public_key(der)
    except Exception as exc:  # ValueError, UnsupportedAlgorithm, ...: all mean "not usable"
        return f"owner is not a usable public key: {exc}"
    if not isinstance(key, rsa.RSAPublicKey):
        return "owner is not an RSA key (OpenDHT signs with RSA only)"
    if key.public_numbers().e != RSA_EXPONENT:
        return f"RSA public exponent must be {RSA_EXPONENT}"
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        return f"RSA key of {key.key_size} bits (accepted: {MIN_RSA_BITS}-{MAX_RSA_BITS})"
    return key


def _parse_public_key(der: bytes) -> object:
    try:
        return serialization.load_der_public_key(der)
    except ValueError:
        return serialization.load_pem_public_key(der.rstrip(b"\0"))


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]{1,65536}?"
                              rb"-----END CERTIFICATE-----")


def certificate_key_der(data: bytes) -> bytes | None:
    """The DER public key of the first certificate in a type-8 value's data, or None.

    The data is a PEM chain, wrapped in a msgpack bin by OpenDHT (like GnuTLS, we look for
    the first PEM block and ignore what is around it), or a DER certificate. Only the first
    certificate is parsed: a chain of many cannot cost more than one.
    """
    match = _PEM_CERTIFICATE.search(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # OpenDHT 2.4 writes negative serials
            if match is not None:
                cert = x509.load_pem_x509_certificate(match.group())
            elif data[:1] == b"\x30":
                cert = x509.load_der_x509_certificate(data)
            else:
                return None
            return cert.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # garbage from the network, or a key type cryptography cannot load
        return None


def certificate_key_hashes(data: bytes) -> tuple[bytes, ...]:
    """Keys a certificate may be stored at: its key id (OpenDHT 2.x) and SHA-1 of its long
    id (3.x); empty when the data is not a certificate."""
    der = certificate_key_der(data)
    if der is None:
        return ()
    return key_id(der), bytes(InfoHash.get(long_key_id(der)))


def certificate_public_key(data: bytes) -> rsa.RSAPublicKey | None:
    """The usable RSA key of a type-8 value's certificate (see load_public_key), or None."""
    der = certificate_key_der(data)
    if der is None:
        return None
    try:
        return load_public_key(der)
    except PeerKeyError:
        return None


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


class SignerMismatch(CryptoError):
    """The value is signed by another account than the one expected."""


def decrypt_value(identity: Identity, value: Value, signer: bytes | None = None) -> Value:
    """The clear, signed value inside an encrypted one; checks recipient and signature.
    With `signer` (a key id), a value signed by another key is refused before its
    signature is verified."""
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
    if signer is not None and owner_id(clear) != signer:
        raise SignerMismatch("signed by another account")
    if not verify_value(clear):
        raise CryptoError("signature mismatch")
    return clear
