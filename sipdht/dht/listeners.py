"""The listeners we serve: other nodes' subscriptions to keys we store, their expiry, and
the caps per source IP and per key.

Sans-IO and beside the value store (storage.py), as OpenDHT keeps both in one storage
entry per key. The per-IP index is kept here with the records it mirrors, so a cap check
is O(1) and no listener is forgotten in one and kept in the other.

One heap entry per Listener object, keyed on its `refreshed` time when pushed: a refresh
only moves `refreshed`, and the entry is pushed again (once) when it pops early. So no
operation visits listeners it does not act on: expiry pops only what is due (or moved),
a put visits only its key's listeners. `work` counts the listeners visited.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from .infohash import InfoHash
from .values import Query

LISTENER_EXPIRE_TIME = 600.0
# OpenDHT has no cap: one IP cannot make a put fan out to thousands.
MAX_LISTENERS_PER_IP = 256
MAX_LISTENERS_PER_KEY = 128

# The heap is rebuilt when stale entries outnumber live ones by this much.
_COMPACT_SLACK = 64

Ident = tuple[InfoHash, bytes, int]     # key, node id, sid


@dataclass
class Listener:
    node_id: bytes
    addr: tuple[str, int]
    sid: int
    query: Query
    version: int  # 0 = legacy notifications, 1 = "update" queries
    refreshed: float


class Listeners:
    """Listeners per key, and per source IP (exactly the same set)."""

    __slots__ = ("max_per_ip", "max_per_key", "work", "_by_key", "_by_ip", "_heap",
                 "_count", "_tick")

    def __init__(self, max_per_ip: int = MAX_LISTENERS_PER_IP,
                 max_per_key: int = MAX_LISTENERS_PER_KEY) -> None:
        self.max_per_ip = max_per_ip
        self.max_per_key = max_per_key
        self.work = 0       # listeners visited by expiry and notification (tests count it)
        self._by_key: dict[InfoHash, dict[tuple[bytes, int], Listener]] = {}
        self._by_ip: dict[str, set[Ident]] = {}
        self._heap: list[tuple[float, int, InfoHash, Listener]] = []
        self._count = 0
        self._tick = 0      # tie-breaker: insertion order among equal times

    def get(self, key: InfoHash, node_id: bytes, sid: int) -> Listener | None:
        mine = self._by_key.get(key)
        return mine.get((node_id, sid)) if mine else None

    def of(self, key: InfoHash) -> list[Listener]:
        """The listeners of one key (counted in `work`)."""
        mine = self._by_key.get(key)
        if mine is None:
            return []
        self.work += len(mine)
        return list(mine.values())

    def count(self, key: InfoHash | None = None) -> int:
        """Listeners under key (all keys when None), without visiting them."""
        if key is None:
            return self._count
        mine = self._by_key.get(key)
        return len(mine) if mine else 0

    def subscribe(self, key: InfoHash, listener: Listener) -> bool | None:
        """True for a new subscription, False when (node id, sid) existed and was refreshed
        (from wherever it now comes), None when refused: its IP, or for a new one the key,
        holds as many as allowed."""
        ident = (listener.node_id, listener.sid)
        current = self.get(key, *ident)
        old_ip = current.addr[0] if current is not None else None
        ip = listener.addr[0]
        if old_ip != ip and not self._room(key, ip, new=current is None):
            return None
        new = self.add(key, listener)
        if old_ip != ip:       # new, or the same subscription from another address
            if old_ip is not None:
                self._unindex(old_ip, (key, *ident))
            self._by_ip.setdefault(ip, set()).add((key, *ident))
        return new

    def add(self, key: InfoHash, listener: Listener) -> bool:
        """True for a new subscription; False when (node_id, sid) existed and was refreshed.
        Not capped, not indexed by IP: `subscribe` is the way in for remote listeners."""
        mine = self._by_key.setdefault(key, {})
        ident = (listener.node_id, listener.sid)
        current = mine.get(ident)
        if current is None:
            mine[ident] = listener
            self._count += 1
            self._queue(listener.refreshed, key, listener)
            return True
        current.addr = listener.addr
        current.query = listener.query
        current.version = listener.version
        current.refreshed = listener.refreshed
        return False

    def remove(self, key: InfoHash, node_id: bytes, sid: int) -> None:
        mine = self._by_key.get(key)
        lst = mine.pop((node_id, sid), None) if mine is not None else None
        if lst is not None:
            self._count -= 1
            self._unindex(lst.addr[0], (key, node_id, sid))
            if not mine:
                del self._by_key[key]

    def drop(self, key: InfoHash, lst: Listener) -> None:
        """An update it never answered: forget that subscription (unless since replaced)."""
        if self.get(key, lst.node_id, lst.sid) is lst:
            self.remove(key, lst.node_id, lst.sid)

    def expire(self, now: float, max_age: float = LISTENER_EXPIRE_TIME
               ) -> list[tuple[InfoHash, Listener]]:
        """Drop and return the subscriptions not refreshed within max_age."""
        dropped: list[tuple[InfoHash, Listener]] = []
        heap = self._heap
        while heap and heap[0][0] + max_age < now:
            _, _, key, lst = heapq.heappop(heap)
            self.work += 1
            mine = self._by_key.get(key)
            ident = (lst.node_id, lst.sid)
            if mine is None or mine.get(ident) is not lst:
                continue                                    # removed (or replaced) since
            if lst.refreshed + max_age < now:
                self.remove(key, *ident)
                dropped.append((key, lst))
            else:
                self._queue(lst.refreshed, key, lst)   # refreshed since: due later
            heap = self._heap
        return dropped

    def _room(self, key: InfoHash, ip: str, new: bool) -> bool:
        """Room for one more listener from ip (and, for a new one, under key): O(1)."""
        if len(self._by_ip.get(ip, ())) >= self.max_per_ip:
            return False
        return not new or self.count(key) < self.max_per_key

    def _unindex(self, ip: str, ident: Ident) -> None:
        mine = self._by_ip.get(ip)
        if mine is not None:
            mine.discard(ident)
            if not mine:
                del self._by_ip[ip]

    def _queue(self, when: float, key: InfoHash, lst: Listener) -> None:
        self._tick += 1
        heapq.heappush(self._heap, (when, self._tick, key, lst))
        if len(self._heap) > 2 * self._count + _COMPACT_SLACK:
            # entries of removed listeners dominate: rebuild from the live ones
            self._heap = []
            for k, mine in self._by_key.items():
                for live in mine.values():
                    self._tick += 1
                    self._heap.append((live.refreshed, self._tick, k, live))
            heapq.heapify(self._heap)
