"""Kademlia routing table modelled on OpenDHT's (K nodes per bucket, split on prefix).

Sans-IO: every time-dependent call takes `now` so the engine (and tests) own the clock.
Bucket ranges are half-open intervals of the 160-bit id space as ints; they are always
obtained by halving, so each is an aligned power-of-two block (a common id prefix).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from .infohash import HASH_LEN, InfoHash

K = 8
NODE_GOOD_TIME = 7200.0  # a good node replied to us within 2 h ...
NODE_EXPIRE_TIME = 600.0  # ... and was heard from within 10 min
MAX_FAILURES = 3  # consecutive unanswered requests before a node is expired

ID_SPACE = 1 << (8 * HASH_LEN)
_NEVER = float("-inf")


@dataclass(eq=False, slots=True)
class Node:
    """A remote node as the table knows it; identity is the object, not the fields.

    Slotted: a simulation holds ~100 of these per engine. New per-node state must be a
    declared field (slots=True then makes room for it), not an attribute set on the fly."""

    id: InfoHash
    addr: tuple[str, int]
    time: float = _NEVER  # last time we heard anything from it
    reply_time: float = _NEVER  # last reply to one of our requests
    failures: int = 0  # consecutive requests that expired unanswered
    rtt: float = 0.0  # smoothed round-trip time of its replies, 0 until measured (rtt.py)
    rtt_var: float = 0.0  # its mean deviation

    def is_good(self, now: float) -> bool:
        """Answered us recently and is still talking: safe to hand out to others."""
        return (
            not self.is_expired
            and self.reply_time >= now - NODE_GOOD_TIME
            and self.time >= now - NODE_EXPIRE_TIME
        )

    @property
    def is_expired(self) -> bool:
        """Too many unanswered requests in a row: treat as gone until it talks again."""
        return self.failures >= MAX_FAILURES

    def heard(self, now: float, reply: bool) -> None:
        """Any message proves liveness; only a reply proves it answers our requests."""
        self.time = now
        if reply:
            self.reply_time = now
            self.failures = 0

    def failed(self) -> None:
        """One of our requests to it timed out."""
        self.failures += 1


@dataclass(eq=False, slots=True)
class Bucket:
    """Up to K nodes with ids in [lower, upper), plus one spare candidate for when one leaves."""

    lower: int
    upper: int = ID_SPACE
    nodes: list[Node] = field(default_factory=list)
    cached: Node | None = None
    time: float = _NEVER  # last time a node in it replied or was added

    def contains(self, node_id: bytes) -> bool:
        return self.lower <= int.from_bytes(node_id, "big") < self.upper

    def get(self, node_id: bytes) -> Node | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None

    def random_id(self, rng: random.Random) -> InfoHash:
        """An id inside this bucket, to refresh it by searching for it."""
        return InfoHash(rng.randrange(self.lower, self.upper).to_bytes(HASH_LEN, "big"))

    def promote_cached(self) -> None:
        """Fill a free slot with the spare candidate, so the bucket refills without a search."""
        if self.cached is not None and len(self.nodes) < K:
            self.nodes.append(self.cached)
            self.cached = None

    def min_distance(self, target: int) -> int:
        """Smallest XOR distance from target to any id of this (aligned) range."""
        return (self.lower ^ target) & ~(self.upper - self.lower - 1)


Intern = Callable[[InfoHash, tuple[str, int]], tuple[InfoHash, tuple[str, int]]]


class RoutingTable:
    """Buckets sorted by lower bound; only the bucket holding my_id ever splits."""

    __slots__ = ("my_id", "buckets", "_lowers", "_rng", "intern", "__dict__")   # dict: for later additions

    def __init__(self, my_id: InfoHash, rng: random.Random | None = None,
                 intern: Intern | None = None) -> None:
        self.my_id = my_id if type(my_id) is InfoHash else InfoHash(my_id)
        self.buckets: list[Bucket] = [Bucket(lower=0)]
        self._lowers: list[int] = [0]       # bucket lower bounds, for bisect
        self._rng = rng or random.Random()
        # (id, addr) -> the same values, possibly shared objects: a simulation of many
        # engines passes one that returns each node's own id and address objects, so
        # thousands of tables do not each hold copies of them.
        self.intern = intern

    def __len__(self) -> int:
        return sum(len(b.nodes) for b in self.buckets)

    # -- lookup ---------------------------------------------------------------

    def bucket_of(self, node_id: bytes) -> Bucket:
        return self.buckets[bisect_right(self._lowers, int.from_bytes(node_id, "big")) - 1]

    def find(self, node_id: bytes) -> Node | None:
        return self.bucket_of(node_id).get(node_id)

    def nodes(self) -> list[Node]:
        return [n for b in self.buckets for n in b.nodes]

    # -- insertion ------------------------------------------------------------

    def update(
        self, node_id: InfoHash, addr: tuple[str, int], now: float, confirm: int
    ) -> Node | None:
        """Record that a node exists (confirm 0), queried us (1) or replied to us (2).

        Returns the node if it is in the table afterwards, None if it was only cached
        (or is ourselves).
        """
        if node_id == self.my_id:
            return None
        bucket = self.bucket_of(node_id)
        node = bucket.get(node_id)
        if node is not None:
            self._refresh(bucket, node, addr, now, confirm)
            return node
        if bucket.cached is not None and bucket.cached.id == node_id:
            node, bucket.cached = bucket.cached, None
            self._refresh(bucket, node, addr, now, confirm)
        else:
            nid = node_id if type(node_id) is InfoHash else InfoHash(node_id)
            if self.intern is not None:
                nid, addr = self.intern(nid, addr)
            node = Node(nid, addr)
            if confirm >= 1:
                node.heard(now, reply=confirm == 2)
        return self._insert(node, now, confirm, bucket)

    def _refresh(
        self, bucket: Bucket, node: Node, addr: tuple[str, int], now: float, confirm: int
    ) -> None:
        """Only first-hand contact may change an address: a gossiped one could be stale or
        forged. A query's source can be spoofed too, so a query moves a node only once it no
        longer answers at its address; a reply (it echoed our tid) always may."""
        if confirm < 1:
            return
        if addr != node.addr:
            if confirm == 1 and node.is_good(now):
                return
            node.addr = addr if self.intern is None else self.intern(node.id, addr)[1]
        node.heard(now, reply=confirm == 2)
        if confirm == 2 and node in bucket.nodes:
            bucket.time = now

    def _insert(self, node: Node, now: float, confirm: int, bucket: Bucket) -> Node | None:
        """Into `bucket` (node's), splitting our own bucket as long as it is full."""
        while True:
            if len(bucket.nodes) < K:
                bucket.nodes.append(node)
                bucket.time = now
                return node
            for i, old in enumerate(bucket.nodes):
                if old.is_expired:
                    bucket.nodes[i] = node
                    bucket.time = now
                    return node
            if not self._can_split(bucket):
                # As OpenDHT: a first-hand candidate beats a gossiped one already cached.
                if confirm >= 1 or bucket.cached is None:
                    bucket.cached = node
                return None
            self._split(bucket)
            bucket = self.bucket_of(node.id)

    def _can_split(self, bucket: Bucket) -> bool:
        """Only our own neighbourhood gets finer; far buckets stay at K nodes."""
        mine = bucket.contains(self.my_id) or len(self.buckets) == 1
        return mine and bucket.upper - bucket.lower > 1

    def _split(self, bucket: Bucket) -> None:
        mid = bucket.lower + (bucket.upper - bucket.lower) // 2
        high = Bucket(lower=mid, upper=bucket.upper, time=bucket.time)
        bucket.upper = mid
        high.nodes = [n for n in bucket.nodes if not bucket.contains(n.id)]
        bucket.nodes = [n for n in bucket.nodes if bucket.contains(n.id)]
        if bucket.cached is not None and not bucket.contains(bucket.cached.id):
            high.cached, bucket.cached = bucket.cached, None
        i = self.buckets.index(bucket) + 1
        self.buckets.insert(i, high)
        self._lowers.insert(i, mid)
        bucket.promote_cached()
        high.promote_cached()

    # -- removal --------------------------------------------------------------

    def remove(self, node_id: bytes) -> None:
        bucket = self.bucket_of(node_id)
        bucket.nodes = [n for n in bucket.nodes if n.id != node_id]
        if bucket.cached is not None and bucket.cached.id == node_id:
            bucket.cached = None
        bucket.promote_cached()

    def expire(self) -> list[Node]:
        """Drop expired nodes (OpenDHT's expireBuckets) and let cached candidates take their place."""
        dropped: list[Node] = []
        for bucket in self.buckets:
            dropped += [n for n in bucket.nodes if n.is_expired]
            bucket.nodes = [n for n in bucket.nodes if not n.is_expired]
            bucket.promote_cached()
        return dropped

    # -- queries --------------------------------------------------------------

    def closest(
        self, target: bytes, count: int = K, now: float | None = None, good_only: bool = False,
        skip: Callable[[Node], bool] | None = None,
    ) -> list[Node]:
        """The `count` usable nodes (not `skip`ped) nearest to target by XOR distance, nearest first.

        Bucket ranges are aligned blocks, so their XOR-distance intervals are disjoint:
        visiting buckets by increasing minimum distance and stopping once `count` nodes
        are collected is exact and touches only a few buckets.
        """
        usable = self._filter(now, good_only)
        keep = usable if skip is None else (lambda n: usable(n) and not skip(n))
        t = int.from_bytes(target, "big")
        found: list[Node] = []
        for bucket in sorted(self.buckets, key=lambda b: b.min_distance(t)):
            if len(found) >= count:
                break
            found += [n for n in bucket.nodes if keep(n)]
        found.sort(key=lambda n: n.id.int ^ t)
        return found[:count]

    @staticmethod
    def _filter(now: float | None, good_only: bool) -> Callable[[Node], bool]:
        if not good_only:
            return lambda n: not n.is_expired
        if now is None:
            raise ValueError("good_only needs now")
        return lambda n: n.is_good(now)

    def good_count(self, now: float) -> int:
        return sum(n.is_good(now) for b in self.buckets for n in b.nodes)

    def dubious(self, now: float) -> list[Node]:
        """Neither good nor expired: worth a ping to find out which."""
        return [n for n in self.nodes() if not n.is_good(now) and not n.is_expired]

    def stale_buckets(
        self, now: float, age: float = NODE_EXPIRE_TIME
    ) -> list[tuple[InfoHash, Node]]:
        """(id to search, node to ask) for each bucket nothing has refreshed in `age` seconds."""
        out: list[tuple[InfoHash, Node]] = []
        for bucket in self.buckets:
            alive = [n for n in bucket.nodes if not n.is_expired]
            if bucket.time < now - age and alive:
                out.append((bucket.random_id(self._rng), self._rng.choice(alive)))
        return out
