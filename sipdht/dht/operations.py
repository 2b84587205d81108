"""The caller's operations (get, put, listen), what they report, and the value cache of
each listen.

A listen caches the values it has reported, as a storer would hold them (by value type),
so that a value heard again from another storer is not reported twice, and forgets them
when no storer would still hold them: long listens stay bounded.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .context import Context
from .infohash import InfoHash
from .messages import Message
from .values import Query, Value, type_expiration


@dataclass(eq=False)
class GetOp:
    id: int
    key: InfoHash
    query: Query | None
    started: float = 0.0
    searches: set = field(default_factory=set)
    seen: set = field(default_factory=set)
    ok: bool = False
    hops: int = 0


@dataclass(eq=False)
class PutOp:
    id: int
    key: InfoHash
    value: Value
    permanent: bool
    searches: set = field(default_factory=set)
    stored: set = field(default_factory=set)
    reported: bool = False


@dataclass(eq=False)
class ListenOp:
    id: int
    key: InfoHash
    known: dict[int, Value] = field(default_factory=dict)
    expires: dict[int, float] = field(default_factory=dict)   # like a storer, by value type
    searches: list = field(default_factory=list)
    queued: set[int] = field(default_factory=set)   # value ids with an entry in the expiry heap


Op = GetOp | PutOp | ListenOp


class Operations:
    """Operations by id, our listens by key, and the expiry heap of the listens' caches."""

    __slots__ = ("ctx", "by_id", "local_listens", "_ids", "_cache_heap", "_cache_dead")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.by_id: dict[int, Op] = {}
        self.local_listens: dict[InfoHash, list[ListenOp]] = {}
        self._ids = 1
        # (when, seq, listen op, value id): when a listen's cached value may be forgotten
        self._cache_heap: list[tuple[float, int, ListenOp, int]] = []
        self._cache_dead = 0        # entries of cancelled listens still in that heap

    def _next_id(self) -> int:
        op_id, self._ids = self._ids, self._ids + 1
        return op_id

    def new_get(self, key: InfoHash, query: Query | None, now: float) -> GetOp:
        op = GetOp(self._next_id(), key, query, now)
        self.by_id[op.id] = op
        return op

    def new_put(self, key: InfoHash, value: Value, permanent: bool) -> PutOp:
        op = PutOp(self._next_id(), key, value, permanent)
        self.by_id[op.id] = op
        return op

    def new_listen(self, key: InfoHash) -> ListenOp:
        op = ListenOp(self._next_id(), key)
        self.by_id[op.id] = op
        self.local_listens.setdefault(key, []).append(op)
        return op

    def current(self, op: Any) -> bool:
        """Not cancelled (nor reported and forgotten)."""
        return self.by_id.get(op.id) is op

    def cancel(self, op_id: int) -> Op | None:
        op = self.by_id.pop(op_id, None)
        if isinstance(op, ListenOp):
            mine = self.local_listens[op.key]
            mine.remove(op)
            if not mine:
                del self.local_listens[op.key]
            self._cache_dead += len(op.queued)
        return op

    # --- what operations report -------------------------------------------------------------

    def deliver_get(self, op: GetOp, values: list[Value]) -> None:
        fresh = []
        for v in values:
            tag = (v.id, v.seq, v.data, v.cypher)
            if tag not in op.seen and (op.query is None or op.query.matches(v)):
                op.seen.add(tag)
                fresh.append(v)
        if fresh:
            self.ctx.emit(ev.GetValues(op.id, fresh))

    def found(self, gets: list[GetOp], listens: list[ListenOp], values: list[Value]) -> None:
        """Values a search found, for its gets and its listens."""
        for get in gets:
            self.deliver_get(get, values)
        for listen in listens:
            self.listen_values(listen, "add", values)

    def done(self, op: GetOp | PutOp, search: Any) -> None:
        """One of the op's searches ended: the op is reported once all of them have."""
        op.searches.discard(search)
        if op.searches or self.by_id.get(op.id) is not op:
            return
        if isinstance(op, GetOp):
            self.ctx.emit(ev.GetDone(op.id, op.ok, op.hops))
            del self.by_id[op.id]
        elif not op.reported:
            op.reported = True
            self.ctx.emit(ev.PutDone(op.id, len(op.stored)))
            if not op.permanent:
                del self.by_id[op.id]

    def notify_local(self, key: InfoHash, values: list[Value] | None,
                     refreshed: list[int] | None, expired: list[int] | None) -> None:
        """A change to what we store at key, for our own listens of it."""
        for op in list(self.local_listens.get(key, [])):
            if values:
                self.listen_values(op, "add", values)
            if refreshed:
                self.listen_ids(op, "refresh", refreshed)
            if expired:
                self.listen_ids(op, "expire", expired)

    def listen_notification(self, listens: list[ListenOp], msg: Message) -> None:
        """A storer's update to the listens of one search."""
        for op in listens:
            if msg.values:
                self.listen_values(op, "add", msg.values)
            if msg.refreshed:
                self.listen_ids(op, "refresh", msg.refreshed)
            if msg.expired:
                self.listen_ids(op, "expire", msg.expired)

    def listen_values(self, op: ListenOp, kind: str, values: list[Value]) -> None:
        fresh = [v for v in values if op.known.get(v.id) != v]
        for v in values:
            self._cache_value(op, v)
        if fresh:
            self.ctx.emit(ev.ListenValues(op.id, kind, fresh))

    def listen_ids(self, op: ListenOp, kind: str, vids: list[int]) -> None:
        values = [op.known[vid] for vid in vids if vid in op.known]
        for v in values:
            if kind == "expire":
                del op.known[v.id], op.expires[v.id]
            else:
                self._cache_until(op, v.id, self.ctx.now + type_expiration(v.type))
        if values:
            self.ctx.emit(ev.ListenValues(op.id, kind, values))

    # --- the listens' value caches ----------------------------------------------------------

    def expire_caches(self, now: float) -> None:
        """Forget values no storer would still hold, so long listens stay bounded. A heap:
        only the due entries are visited, not every listen's cache every tick."""
        heap = self._cache_heap
        while heap and heap[0][0] <= now:
            _, _, op, vid = heapq.heappop(heap)
            op.queued.discard(vid)
            if self.by_id.get(op.id) is not op:
                self._cache_dead -= 1
                continue
            until = op.expires.get(vid)
            if until is None:
                continue
            if until <= now:
                del op.known[vid], op.expires[vid]
            else:
                self._queue_cached(op, vid, until)    # refreshed since: due later

    def _cache_value(self, op: ListenOp, value: Value) -> None:
        op.known[value.id] = value
        self._cache_until(op, value.id, self.ctx.now + type_expiration(value.type))

    def _cache_until(self, op: ListenOp, vid: int, until: float) -> None:
        op.expires[vid] = until
        if vid not in op.queued:        # one heap entry per cached value
            self._queue_cached(op, vid, until)

    def _queue_cached(self, op: ListenOp, vid: int, until: float) -> None:
        op.queued.add(vid)
        heapq.heappush(self._cache_heap, (until, next(self.ctx.seq), op, vid))
        if self._cache_dead > len(self._cache_heap) // 2 + 1024:
            self._compact_cache_heap()

    def _compact_cache_heap(self) -> None:
        """Cancelled listens' entries dominate: rebuild the heap from the live listens."""
        heap = []
        for ops in self.local_listens.values():
            for op in ops:
                for vid in op.queued:
                    heap.append((op.expires.get(vid, self.ctx.now), next(self.ctx.seq), op, vid))
        heapq.heapify(heap)
        self._cache_heap, self._cache_dead = heap, 0
