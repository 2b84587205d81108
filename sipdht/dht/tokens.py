"""Write tokens: SHA-256(secret | requester ip | port), secret rotated, previous accepted.

A token proves the requester can receive at the address it puts or listens
from; OpenDHT only needs it to be opaque, so the same scheme is used here.
The secrets come from os.urandom (never from an injected, seedable generator: a
guessable secret would let anyone forge tokens); the rotation times, which only
shape timing, come from the engine's generator so a simulation replays.
"""

from __future__ import annotations

import functools
import os
import random
import struct

from .digests import sha256
from .messages import address_bytes

TOKEN_SIZE = 32
ROTATE_MIN, ROTATE_MAX = 15 * 60.0, 45 * 60.0


class Tokens:
    def __init__(self, now: float, rng: random.Random | None = None) -> None:
        self.rng = rng if rng is not None else random.SystemRandom()
        self.secret = os.urandom(8)
        self.previous = os.urandom(8)
        self.next_rotation = now + self.rng.uniform(ROTATE_MIN, ROTATE_MAX)

    @staticmethod
    @functools.lru_cache(maxsize=4096)
    def _make(secret: bytes, addr: tuple[str, int]) -> bytes:
        """Every get/find reply carries one: cached per (secret, address)."""
        return sha256(secret + address_bytes(addr[0]) + struct.pack("!H", addr[1])).digest()

    def make(self, addr: tuple[str, int]) -> bytes:
        return self._make(self.secret, addr)

    def check(self, token: bytes | None, addr: tuple[str, int]) -> bool:
        if not token or len(token) != TOKEN_SIZE:
            return False
        return token in (self._make(self.secret, addr), self._make(self.previous, addr))

    def rotate(self, now: float) -> None:
        self.previous, self.secret = self.secret, os.urandom(8)
        self.next_rotation = now + self.rng.uniform(ROTATE_MIN, ROTATE_MAX)
