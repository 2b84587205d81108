"""Limits on incoming queries, per source IP and global, as OpenDHT applies them.

OpenDHT counts requests in a sliding second; a token bucket refilled at the same
rate with a one-second burst admits the same traffic in O(1) memory per IP.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_REQUESTS_PER_SEC = 8192
MAX_PER_IP = MAX_REQUESTS_PER_SEC // 8
MAX_TRACKED_IPS = 65536


@dataclass
class TokenBucket:
    rate: float
    tokens: float
    last: float

    def allow(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class QueryLimits:
    def __init__(self, enabled: bool = True, per_ip: int = MAX_PER_IP,
                 total: int = MAX_REQUESTS_PER_SEC) -> None:
        self.enabled = enabled
        self.per_ip_rate = per_ip
        self.total = TokenBucket(total, total, 0.0)
        self.per_ip: dict[str, TokenBucket] = {}

    def allow(self, ip: str, now: float) -> bool:
        if not self.enabled:
            return True
        bucket = self.per_ip.get(ip)
        if bucket is None:
            if len(self.per_ip) >= MAX_TRACKED_IPS:
                self.prune(now)
            bucket = self.per_ip[ip] = TokenBucket(self.per_ip_rate, self.per_ip_rate, now)
        return bucket.allow(now) and self.total.allow(now)

    def prune(self, now: float) -> None:
        """Forget IPs idle for a second (their bucket is full again anyway)."""
        for ip, bucket in list(self.per_ip.items()):
            if bucket.last <= now - 1.0:
                del self.per_ip[ip]
