"""Anti-amplification: what we may send to an address that has not shown it is real.

UDP sources are trivially spoofed, so a query's source may be a victim. Like QUIC
before address validation, the engine sends an unproven address at most
AMPLIFICATION times the bytes of the query it answers, and, whatever the queries,
no more than a small per-IP byte budget (a token bucket). An IP is proven once it
answers one of our requests (it echoed a tid we sent there) or writes with a valid
token (it received a reply we sent there); proof lasts PROVEN_TIME.
"""

from __future__ import annotations

from collections import OrderedDict

AMPLIFICATION = 3
PROVEN_TIME = 3600.0
UNPROVEN_BURST = 16 * 1024     # bytes one unproven IP may get at once ...
UNPROVEN_RATE = 4 * 1024       # ... and per second after that
MAX_TRACKED = 65536            # IPs per table; the least recently seen are forgotten


class AddressProofs:
    def __init__(self) -> None:
        self._proven: OrderedDict[str, float] = OrderedDict()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()   # ip -> (level, at)

    def prove(self, ip: str, now: float) -> None:
        self._proven[ip] = now
        self._proven.move_to_end(ip)
        self._buckets.pop(ip, None)
        while len(self._proven) > MAX_TRACKED:
            self._proven.popitem(last=False)

    def proven(self, ip: str, now: float) -> bool:
        t = self._proven.get(ip)
        return t is not None and now - t < PROVEN_TIME

    def allowance(self, ip: str, request_bytes: int, now: float) -> int:
        """Bytes we may send an unproven ip in answer to a query of request_bytes."""
        return min(AMPLIFICATION * request_bytes, int(self._level(ip, now)))

    def spend(self, ip: str, sent: int, now: float) -> None:
        self._buckets[ip] = (self._level(ip, now) - sent, now)
        self._buckets.move_to_end(ip)
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)

    def _level(self, ip: str, now: float) -> float:
        level, at = self._buckets.get(ip, (UNPROVEN_BURST, now))
        return min(UNPROVEN_BURST, level + max(0.0, now - at) * UNPROVEN_RATE)
