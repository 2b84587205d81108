"""What every part of the DHT engine shares: who we are, the timers, the datagrams going
out, the events, the counters and the routing tables.

The parts (requests, serving, searches, operations) hold this one object, not the engine:
none of them imports the engine, and each owns only its own state. Everything here is one
object per engine, never rebound (the engine's own `stats` and `tables` are these), except
`out`, which `DhtEngine.datagrams_to_send` swaps for an empty list.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, deque
from collections.abc import Callable, Container
from dataclasses import dataclass

from . import events as ev
from .addresses import family_of, is_loopback, is_martian
from .infohash import InfoHash
from .messages import Addr, Message
from .routing import Node, RoutingTable


@dataclass(eq=False, slots=True)
class Timer:
    when: float
    fn: Callable[[float], None]
    cancelled: bool = False


class Context:
    """Shared by the engine and its parts. `budget` is what the query being served may still
    send to its unproven source, (that address, [bytes left]); serving sets and clears it,
    and every datagram to that address, whoever sends it, is charged in `send`."""

    __slots__ = ("id", "network", "client_only", "families", "rng", "stats", "tables", "now",
                 "timers", "seq", "out", "events", "budget")

    def __init__(self, node_id: InfoHash, network: int, client_only: bool,
                 families: tuple[int, ...], rng: random.Random, now: float) -> None:
        self.id = node_id
        self.network = network
        self.client_only = client_only
        self.families = families
        self.rng = rng
        self.stats: Counter[str] = Counter()
        self.tables = {f: RoutingTable(node_id, rng) for f in (4, 6)}
        self.now = now          # last time given to any entry point of the engine
        self.timers: list[tuple[float, int, Timer]] = []
        self.seq = itertools.count()        # tie-breaker of equal times in every heap
        self.out: list[tuple[bytes, Addr]] = []
        # Made on first use and dropped once drained: a deque is 600 bytes (a simulation
        # holds thousands of engines), but pop(0) on a list is quadratic in a burst.
        self.events: deque[ev.Event] | None = None
        self.budget: tuple[Addr, list[int]] | None = None

    def at(self, when: float, fn: Callable[[float], None]) -> Timer:
        timer = Timer(when, fn)
        heapq.heappush(self.timers, (when, next(self.seq), timer))
        return timer

    def emit(self, event: ev.Event) -> None:
        events = self.events
        if events is None:
            events = self.events = deque()
        events.append(event)

    def next_event(self) -> ev.Event | None:
        events = self.events
        if not events:
            return None
        event = events.popleft()
        if not events:
            self.events = None
        return event

    def send(self, data: bytes, addr: Addr) -> None:
        budget = self.budget
        if budget is not None and budget[0] == addr:
            left = budget[1]
            if len(data) > left[0]:
                self.stats["amplification_dropped"] += 1
                return
            left[0] -= len(data)
        self.out.append((data, addr))

    def learn(self, msg: Message, addr: Addr, now: float,
              skip: Container[bytes] = ()) -> list[Node]:
        """Insert the nodes a reply lists; loopback entries from a remote sender use its IP.
        The only path by which gossiped nodes enter the table: one set of checks. Ids in
        `skip` (a search's nodes, learnt before) are passed over."""
        learnt = []
        sender_loopback = is_loopback(addr[0])
        for fam, entries in ((4, msg.n4), (6, msg.n6)):
            for nid, naddr in entries:
                if nid == self.id or nid in skip or is_martian(naddr):
                    continue
                if is_loopback(naddr[0]) and not sender_loopback:
                    if family_of(addr) != fam:
                        continue
                    naddr = (addr[0], naddr[1])
                node = self.tables[fam].update(nid, naddr, now, 0)
                # A full bucket only caches the node, but searches still need it.
                learnt.append(node if node is not None else Node(nid, naddr))
        return learnt
