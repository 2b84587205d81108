"""Link keys and AEAD sealing (sans-IO): per-direction ChaCha20-Poly1305 keys from the X25519
keys exchanged in the signed offer/answer, a counter nonce and a sliding replay window.

Wire format of one datagram: version (1 byte) | channel (2, big endian) | counter (8, big
endian) | ciphertext + tag; the 11-byte header is the associated data. Version 2 widened the
channel to 16 bits so that one link carries the media of many calls.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VERSION = 2
HEADER = struct.Struct("!BHQ")
TAG = 16
REPLAY_WINDOW = 1024
MAX_COUNTER = 2**64 - 1


class BadKey(ValueError):
    """A peer's X25519 key that must not be used (wrong size or low order)."""


class DropDatagram(ValueError):
    """A received datagram that must be dropped (and counted under its message)."""


# --- keys -----------------------------------------------------------------------------------


@dataclass
class EphemeralKey:
    """One side's X25519 key for one call."""
    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


_PROBE = X25519PrivateKey.generate()


def check_public_key(raw: bytes) -> None:
    """Refuse keys whose shared secret would be all zeros (the low-order points): such a key
    would give a link anyone can read. Checked when the offer/answer is decoded, before ICE."""
    if len(raw) != 32:
        raise BadKey("x25519: expected 32 bytes")
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(raw))
    except ValueError:
        raise BadKey("x25519: low-order public key") from None


def derive_keys(mine: EphemeralKey, peer_public: bytes, call_id: int, caller: str,
                callee: str) -> tuple[bytes, bytes]:
    """-> (caller-to-callee key, callee-to-caller key), bound to the call and both accounts."""
    check_public_key(peer_public)
    shared = mine.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    okm = HKDF(hashes.SHA256(), 64, salt=call_id.to_bytes(8, "big"),
               info=b"sipdht link v1 " + caller.encode() + b" " + callee.encode()).derive(shared)
    return okm[:32], okm[32:]


# --- sealing --------------------------------------------------------------------------------


class ReplayWindow:
    """Accepts each counter once, within `size` of the highest seen (as IPsec does). The
    shift is bounded by the window, so a huge counter jump costs nothing."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.highest = -1
        self.bits = 0

    def check(self, counter: int) -> bool:
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < self.size and not (self.bits >> offset) & 1

    def update(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.bits = 1 if shift >= self.size else ((self.bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self.bits |= 1 << (self.highest - counter)


class LinkCrypto:
    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._counter = 0
        self.window = ReplayWindow()

    def seal(self, channel: int, payload: bytes) -> bytes:
        if not 0 <= channel <= 0xFFFF:
            raise ValueError("channel must be 0-65535")
        if self._counter >= MAX_COUNTER:
            raise ValueError("link counter exhausted")     # after 2^64 datagrams: re-key
        self._counter += 1
        header = HEADER.pack(VERSION, channel, self._counter)
        return header + self._send.encrypt(_nonce(self._counter), payload, header)

    def open(self, datagram: bytes) -> tuple[int, bytes]:
        if len(datagram) < HEADER.size + TAG:
            raise DropDatagram("short")
        version, channel, counter = HEADER.unpack_from(datagram)
        if version != VERSION:
            raise DropDatagram("version")
        if not self.window.check(counter):
            raise DropDatagram("replay")
        header = datagram[:HEADER.size]
        try:
            payload = self._recv.decrypt(_nonce(counter), datagram[HEADER.size:], header)
        except InvalidTag:
            raise DropDatagram("auth") from None
        self.window.update(counter)
        return channel, payload


def _nonce(counter: int) -> bytes:
    return b"\0\0\0\0" + counter.to_bytes(8, "big")

