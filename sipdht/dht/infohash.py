"""20-byte DHT keys and node ids, compared by XOR distance (OpenDHT's InfoHash)."""

from __future__ import annotations

import os
import re

from .digests import sha1

HASH_LEN = 20
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")


_Int = int          # `InfoHash.int` shadows the builtin inside the class body


class InfoHash(bytes):
    """Immutable 20-byte id; bytes subclass so it packs as msgpack bin directly."""

    __slots__ = ()      # no per-instance __dict__: 72 bytes, not 80

    def __new__(cls, data: bytes) -> InfoHash:
        if len(data) != HASH_LEN:
            raise ValueError(f"an InfoHash is {HASH_LEN} bytes, got {len(data)}")
        return super().__new__(cls, data)

    @classmethod
    def get(cls, data: bytes | str) -> InfoHash:
        """SHA-1 of the data, as OpenDHT's InfoHash::get."""
        if isinstance(data, str):
            data = data.encode()
        return cls(sha1(data).digest())

    @classmethod
    def from_key(cls, key: str) -> InfoHash:
        """A CLI key: 40 hex characters are the raw hash, anything else is hashed (as dhtnode)."""
        if _HEX40.match(key):
            return cls(bytes.fromhex(key))
        return cls.get(key)

    @classmethod
    def random(cls) -> InfoHash:
        return cls(os.urandom(HASH_LEN))

    @property
    def int(self) -> _Int:
        return _Int.from_bytes(self, "big")

    def distance(self, other: bytes) -> _Int:
        return _Int.from_bytes(self, "big") ^ _Int.from_bytes(other, "big")

    def common_bits(self, other: bytes) -> _Int:
        """Length of the common prefix, in bits."""
        x = self.distance(other)
        return 160 - x.bit_length()

    def __repr__(self) -> str:
        return f"InfoHash({self.hex()})"

    def __str__(self) -> str:
        return self.hex()


ZERO = InfoHash(bytes(HASH_LEN))
