"""State of one iterative search: the nodes closest to a key and what was asked of them.

Kademlia as OpenDHT runs it: up to SEARCH_NODES tracked by XOR distance, at most
MAX_IN_FLIGHT requests out, "synced" once the TARGET_NODES closest live nodes
have answered a get/find with a token recently. searches.py drives it; what is decided
from this state alone (which values to fetch from whom) is here.

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
from .values import FIELD_ID, FIELD_SEQ, FieldIndex, Value

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

    def common_where(self) -> tuple:
        """The gets' filter, sent to the storers when every get of the search shares it."""
        wheres = {op.query.where if op.query else () for op in self.gets}
        return wheres.pop() if len(wheres) == 1 else ()

    def listed(self, sn: SearchNode, fields: FieldIndex) -> tuple[int, int]:
        """A node listed the (id, seq) it holds: remember it as a source of each. Returns
        (rows that were no ids, ids dropped past MAX_FETCHES)."""
        if FIELD_ID not in fields.fields:
            return 0, 0
        bad = dropped = 0
        i_id = fields.fields.index(FIELD_ID)
        i_seq = fields.fields.index(FIELD_SEQ) if FIELD_SEQ in fields.fields else None
        fetches = self.fetches
        for row in fields.rows[:MAX_FETCHES]:
            vid, seq = row[i_id], row[i_seq] if i_seq is not None else 0
            if type(vid) is not int or type(seq) is not int:
                bad += 1
                continue
            fetch = fetches.get((vid, seq))
            if fetch is None:
                if len(fetches) >= MAX_FETCHES:
                    dropped += 1
                    continue
                fetch = fetches[(vid, seq)] = Fetch(vid, seq)
            if sn not in fetch.sources:
                fetch.sources.append(sn)
        return bad, dropped

    def fetched(self, values: list[Value], sent: float) -> None:
        """Values that came whole need no fetch by id for the gets started before `sent`."""
        if not self.gets:
            return
        fetches = self.fetches
        for v in values:
            fetch = fetches.get((v.id, v.seq))
            if fetch is None:
                if len(fetches) >= MAX_FETCHES:
                    continue
                fetch = fetches[(v.id, v.seq)] = Fetch(v.id, v.seq)
            fetch.fetched = max(fetch.fetched, sent)

    def fetches_due(self, since: float) -> list[tuple[Fetch, SearchNode]]:
        """What to fetch by id now for the gets started at `since`, and from whom (taken
        off its sources), keeping FETCH_IN_FLIGHT out."""
        if not self.gets or not self.fetches:
            return []
        asked = self.inline
        if asked is not None and asked.pending and not asked.slow:
            return []       # what it sends whole is not fetched again
        due: list[tuple[Fetch, SearchNode]] = []
        inflight = sum(1 for f in self.fetches.values() if f.pending)
        for fetch in self.fetches.values():
            if inflight >= FETCH_IN_FLIGHT:
                break
            while fetch.wanted(since) and fetch.sources[0].failed:
                fetch.sources.pop(0)
            if fetch.wanted(since):
                due.append((fetch, fetch.sources.pop(0)))
                inflight += 1
        return due
