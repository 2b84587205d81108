"""Limits on incoming queries, per source IP and global, as OpenDHT applies them.

OpenDHT counts requests in a sliding second. Two fixed one-second windows, the
previous one weighted by how much of it still overlaps, approximate that sliding
second in O(1) memory per IP (the usual sliding-window-counter technique).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_REQUESTS_PER_SEC = 8192
MAX_PER_IP = MAX_REQUESTS_PER_SEC // 8
MAX_TRACKED_IPS = 65536


@dataclass
class SlidingWindow:
    rate: int
    start: float = -math.inf
    current: int = 0
    previous: int = 0

    def allow(self, now: float) -> bool:
        second = math.floor(now)
        if second != self.start:
            self.previous = self.current if second == self.start + 1 else 0
            self.current, self.start = 0, second
        if self.previous * (1.0 - (now - second)) + self.current >= self.rate:
            return False
        self.current += 1
        return True

    def idle(self, now: float) -> bool:
        return now - self.start >= 2.0


class QueryLimits:
    def __init__(self, enabled: bool = True, per_ip: int = MAX_PER_IP,
                 total: int = MAX_REQUESTS_PER_SEC) -> None:
        self.enabled = enabled
        self.per_ip_rate = per_ip
        self.total = SlidingWindow(total)
        self.per_ip: dict[str, SlidingWindow] = {}

    def allow(self, ip: str, now: float) -> bool:
        if not self.enabled:
            return True
        window = self.per_ip.get(ip)
        if window is None:
            if len(self.per_ip) >= MAX_TRACKED_IPS:
                self.prune(now)
                if len(self.per_ip) >= MAX_TRACKED_IPS:
                    return False        # that many active sources: refuse newcomers
            window = self.per_ip[ip] = SlidingWindow(self.per_ip_rate)
        return window.allow(now) and self.total.allow(now)

    def prune(self, now: float) -> None:
        """Forget IPs whose windows no longer matter."""
        for ip, window in list(self.per_ip.items()):
            if window.idle(now):
                del self.per_ip[ip]
