"""State of one iterative search: the nodes closest to a key and what was asked of them.

Kademlia as OpenDHT runs it: up to SEARCH_NODES tracked by XOR distance, at most
MAX_IN_FLIGHT requests out, "synced" once the TARGET_NODES closest live nodes
have answered a get/find with a token recently. The engine drives it.

Gets are paged as a stock OpenDHT client pages them: each node is asked for the ids
(and seqs) it holds, then every id not yet fetched is asked for on its own, at most
FETCH_IN_FLIGHT at a time. A key stuffed with junk then costs many small replies
instead of one burst of fragments that a socket buffer cannot hold.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .infohash import InfoHash
from .routing import Node

SEARCH_NODES = 14
TARGET_NODES = 8
LISTEN_NODES = 4
MAX_IN_FLIGHT = 4
SYNC_TIME = 600.0
FETCH_IN_FLIGHT = 16        # value-by-id gets outstanding per search
MAX_FETCHES = 4096          # distinct (id, seq) one search will fetch


@dataclass(eq=False)
class SearchNode:
    node: Node
    distance: int
    depth: int = 0                  # lookup hops: 0 = from our routing table
    token: bytes | None = None
    last_reply: float = float("-inf")
    last_get: float = float("-inf")     # when the last answered `get` was sent
    pending: bool = False
    failed: bool = False
    slow: bool = False          # a request to it timed out once: do not wait for it
    listen_sid: int | None = None
    listen_addr: tuple[str, int] | None = None    # where the sid was given: updates from there only
    listen_pending: bool = False
    listen_time: float = float("-inf")
    acked: dict[int, float] = field(default_factory=dict)    # put op id -> time acknowledged
    put_pending: set[int] = field(default_factory=set)

    def synced(self, now: float) -> bool:
        return self.token is not None and self.last_reply > now - SYNC_TIME

    def forget_token(self) -> None:
        """After a 401: get a fresh token before writing again."""
        self.token = None
        self.last_reply = float("-inf")
        self.listen_sid = None


@dataclass(eq=False)
class Fetch:
    """One (value id, seq) some node listed: fetched by id from one of the nodes that have it."""
    vid: int
    seq: int
    sources: list[SearchNode] = field(default_factory=list)   # listed it, not asked yet
    pending: bool = False
    fetched: float = float("-inf")      # when the last fetch that ended was sent

    def wanted(self, since: float) -> bool:
        """Still to ask someone: not fetched for gets started at `since`, and someone has it."""
        return not self.pending and self.fetched < since and bool(self.sources)


@dataclass(eq=False)
class Search:
    target: InfoHash
    family: int
    created: float
    nodes: list[SearchNode] = field(default_factory=list)
    gets: list[Any] = field(default_factory=list)
    puts: list[Any] = field(default_factory=list)
    listens: list[Any] = field(default_factory=list)
    last_used: float = 0.0
    fetches: dict[tuple[int, int], Fetch] = field(default_factory=dict)
    inline_at: float = float("-inf")    # newest get whose values were asked for whole
    inline: SearchNode | None = None    # the node asked for them

    @property
    def busy(self) -> bool:
        return bool(self.gets or self.puts or self.listens)

    def find(self, node_id: bytes) -> SearchNode | None:
        for sn in self.nodes:
            if sn.node.id == node_id:
                return sn
        return None

    def insert(self, node: Node, depth: int = 0) -> SearchNode | None:
        if self.find(node.id):
            return None
        sn = SearchNode(node, self.target.distance(node.id), depth)
        keys = [x.distance for x in self.nodes]
        pos = bisect.bisect(keys, sn.distance)
        full = len(self.nodes) >= SEARCH_NODES
        # A farther node still gets in when it can replace a failed or timed-out one: silent
        # nodes close to the key (dead ones, strangers that once queried us) must neither end
        # the search nor stall it until their retries expire.
        if full and pos >= SEARCH_NODES and not any((x.failed or x.slow) and self._droppable(x)
                                                    for x in self.nodes):
            return None
        self.nodes.insert(pos, sn)
        if len(self.nodes) > SEARCH_NODES:
            self._drop_one()
        return sn if sn in self.nodes else None

    @staticmethod
    def _droppable(sn: SearchNode) -> bool:
        return sn.listen_sid is None and not sn.acked and (not sn.pending or sn.slow)

    def _drop_one(self) -> None:
        """Drop the farthest node that holds nothing for us (failed ones first)."""
        for cand in ([x for x in reversed(self.nodes) if x.failed]
                     + [x for x in reversed(self.nodes) if x.slow] + list(reversed(self.nodes))):
            if self._droppable(cand):
                self.nodes.remove(cand)
                return
        self.nodes.pop()

    def live(self) -> list[SearchNode]:
        """Nodes worth waiting for: not failed, and not silent past a first timeout
        (a slow node that answers later counts again)."""
        return [sn for sn in self.nodes if not sn.failed and not sn.slow]

    def in_flight(self) -> int:
        return sum(1 for sn in self.nodes if sn.pending)

    def solicited(self, now: float) -> tuple[int, int]:
        """Requests out that the search still waits for (not those past a first timeout):
        to nodes synced in this search before, and to the others (the lookup)."""
        synced = exploring = 0
        for sn in self.nodes:
            if sn.pending and not sn.slow:
                if sn.synced(now):
                    synced += 1
                else:
                    exploring += 1
        return synced, exploring

    def fetches_busy(self, since: float) -> bool:
        """A value fetch is out or still to send for the gets started at `since`."""
        return any(f.pending or f.wanted(since) for f in self.fetches.values())
