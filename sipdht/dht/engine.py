"""The sans-IO DHT engine: OpenDHT's protocol without sockets or clocks.

Feed it datagrams with `receive_datagram(data, addr, now)`, send what
`datagrams_to_send(now)` returns, call `handle_timer(now)` at `get_timer()`, and
read results with `next_event()`. Operations (get, put, listen) return an op id
that the events refer to. Everything it holds is bounded, and every datagram it
drops is counted in `stats`.

The engine is this facade, the dispatch of what arrives, and maintenance (bootstrap,
routing-table upkeep, housekeeping). The rest are parts it composes, each with its own
state, sharing one `Context` (who we are, timers, datagrams out, events, counters,
routing tables), as aioquic keeps recovery out of its connection and OpenDHT its network
engine out of `Dht`:
- requests.py: our requests (tids, retransmission, RTT/RTO, unreachable addresses),
- serving.py: answering queries (replies, amplification budgets, challenges, pushes),
- listeners.py: the listeners we serve, per key and per source IP,
- searches.py (search.py: one search's state): stepping, fetch paging, put/listen/refresh,
- operations.py: the caller's gets, puts and listens, and each listen's value cache.

Randomness: every protocol choice (transaction and listen-socket ids, timer jitter,
bucket-refresh targets, token rotation times) is drawn from the `rng` given to the
engine, so a simulation replays from its seed. Without one the engine uses the OS's
generator (unpredictable ids make off-path reply spoofing harder). Only the token
secrets always come from os.urandom: they must never be guessable, and their bytes
change no decision the engine takes.
"""

from __future__ import annotations

import functools
import heapq
import logging
import random

from . import events as ev
from .addresses import family_of, is_martian
from .context import Context
from .fragments import Reassembler
from .infohash import HASH_LEN, ZERO, InfoHash
from .listeners import MAX_LISTENERS_PER_IP, Listeners
from .messages import (
    NON_AUTHORITATIVE_INFORMATION,
    NOT_FOUND,
    UNAUTHORIZED,
    Addr,
    MalformedMessage,
    Message,
    decode,
)
from .operations import ListenOp, Operations
from .ratelimit import QueryLimits
from .requests import Request, Requests
from .routing import Node
from .search import TARGET_NODES, Search, SearchNode
from .searches import Searches
from .serving import Serving
from .storage import EditPolicy, Storage, StoreStatus
from .tokens import Tokens
from .values import Query, Value

log = logging.getLogger(__name__)

HOUSEKEEPING = 2.0
BOOTSTRAP_RETRY, BOOTSTRAP_RETRY_MAX = 10.0, 300.0


class DhtEngine:
    # 18 attributes, in slots: a simulation holds thousands of engines, and an instance dict
    # past CPython's shared-key size (30 keys) costs 1.6 KB each. `__dict__` keeps room for
    # attributes not listed here (a test replaces a method on one engine).
    __slots__ = ("id", "network", "ctx", "stats", "tables", "storage", "tokens", "limits",
                 "proofs", "reassembler", "requests", "listeners", "ops", "searches",
                 "serving", "_bootstrap", "_bootstrap_wait", "_connected",
                 "__dict__", "__weakref__")

    def __init__(self, node_id: InfoHash | None = None, *, network: int = 0,
                 rate_limit: bool = True, max_storage: int = 64 * 1024 * 1024,
                 client_only: bool = False, policy: EditPolicy | None = None,
                 families: tuple[int, ...] = (4, 6), now: float = 0.0,
                 epoch_offset: float = 0.0, rng: random.Random | None = None,
                 max_listeners_per_ip: int = MAX_LISTENERS_PER_IP) -> None:
        rng = rng if rng is not None else random.SystemRandom()
        self.id = node_id or InfoHash(rng.randbytes(HASH_LEN))
        self.network = network
        ctx = self.ctx = Context(self.id, network, client_only, families, rng, now)
        self.stats = ctx.stats
        self.tables = ctx.tables
        self.storage = Storage(max_total=max_storage, policy=policy)
        self.tokens = Tokens(now, rng)
        self.limits = QueryLimits(rate_limit)
        self.reassembler = Reassembler()
        listen_sids: dict[int, tuple[Search, SearchNode]] = {}   # tids must not collide
        self.requests = Requests(ctx, listen_sids)
        self.listeners = Listeners(max_per_ip=max_listeners_per_ip)
        self.ops = Operations(ctx)
        self.searches = Searches(ctx, self.requests, self.ops, listen_sids)
        self.serving = Serving(ctx, self.requests, self.storage, self.tokens, self.listeners,
                               self.searches, self.ops, epoch_offset)
        self.proofs = self.serving.proofs
        self._bootstrap: list[Addr] = []
        self._bootstrap_wait = BOOTSTRAP_RETRY
        self._connected = False
        ctx.at(now + HOUSEKEEPING, self._housekeeping)
        ctx.at(now + rng.uniform(5, 25), self._maintain)

    @property
    def now(self) -> float:
        """The last time given to any entry point."""
        return self.ctx.now

    @property
    def families(self) -> tuple[int, ...]:
        return self.ctx.families

    @families.setter
    def families(self, families: tuple[int, ...]) -> None:
        self.ctx.families = families

    # --- sans-IO interface ------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        ctx = self.ctx
        out, ctx.out = ctx.out, []
        self.stats["sent"] += len(out)
        return out

    def get_timer(self) -> float | None:
        timers = self.ctx.timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        ctx = self.ctx
        ctx.now = now
        timers = ctx.timers
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if not timer.cancelled:
                timer.fn(now)
        searches = self.searches
        if searches.listen_queue or searches.resume:
            searches.start_listens(now)

    def next_event(self) -> ev.Event | None:
        return self.ctx.next_event()

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.ctx.now = now
        stats = self.stats
        stats["received"] += 1
        if is_martian(addr):
            stats["dropped_martian"] += 1
            return
        try:
            msg = decode(data)
        except MalformedMessage as exc:
            stats["dropped_malformed"] += 1
            log.debug("malformed datagram from %s: %s", addr, exc)
            return
        if msg.network != self.network:
            stats["dropped_network"] += 1
            return
        if not self._admit(msg, addr, now):
            return
        whole = self._reassemble(msg, addr, now)
        if whole is None:
            return
        if whole.id is None or whole.id == ZERO or whole.id == self.id:
            stats["dropped_bad_id"] += 1
            return
        kind = whole.kind
        if kind == "q":
            self.serving.on_query(whole, addr, now, len(data))
        elif kind == "r":
            self._on_reply(whole, addr, now)
        elif kind == "e":
            self._on_error(whole, addr, now)
        else:
            self._on_legacy_update(whole, addr, now)
        searches = self.searches
        if searches.listen_queue or searches.resume:
            searches.start_listens(now)

    # --- operations -------------------------------------------------------------------------

    def bootstrap(self, addrs: list[Addr], now: float) -> None:
        """Ping these nodes now, and again (backing off) while we know no good node."""
        self._bootstrap = list(addrs)
        for addr in addrs:
            self.ping(addr, now)
        self.ctx.at(now + self._bootstrap_wait, self._ping_bootstrap)

    def ping(self, addr: Addr, now: float, node: Node | None = None) -> None:
        self.requests.ping(addr, now, node)

    def add_known_node(self, node_id: InfoHash, addr: Addr, now: float) -> None:
        """A node from a saved state file: inserted as unconfirmed and pinged."""
        node = self.tables[family_of(addr)].update(node_id, addr, now, 0)
        self.ping(addr, now, node)

    def good_nodes(self, now: float) -> list[Node]:
        return [n for t in self.tables.values() for n in t.nodes() if n.is_good(now)]

    def get(self, key: InfoHash, now: float, query: Query | None = None,
            local: bool = True) -> int:
        """Values at `key`; `local=False` asks only the network (a publisher reading back
        what the storers really kept)."""
        self.ctx.now = now
        op = self.ops.new_get(key, query, now)
        if local:
            self.ops.deliver_get(op, self.storage.get(key, query, now))
        self.searches.attach(op, key, "gets", now)
        return op.id

    def put(self, key: InfoHash, value: Value, now: float, permanent: bool = False) -> int:
        self.ctx.now = now
        op = self.ops.new_put(key, value, permanent)
        result = self.storage.store(key, value, now)
        if result.status in (StoreStatus.NEW, StoreStatus.EDITED):
            self.serving.notify(key, now, values=[value])
        self.searches.attach(op, key, "puts", now)
        return op.id

    def listen(self, key: InfoHash, now: float) -> int:
        self.ctx.now = now
        op = self.ops.new_listen(key)
        self.ops.listen_values(op, "add", self.storage.get(key, now=now))
        self.searches.queue_listen(op, now)
        return op.id

    def listening_nodes(self, op_id: int) -> int:
        """How many storers have acknowledged this listen's subscription and still hold it
        (0 while it waits to start, or for an unknown op)."""
        op = self.ops.by_id.get(op_id)
        if not isinstance(op, ListenOp):
            return 0
        return self.searches.listening_nodes(op, self.ctx.now)

    def cancel(self, op_id: int, now: float) -> None:
        """Stop a listen or a permanent put; the remote subscriptions time out on their own."""
        op = self.ops.cancel(op_id)
        if op is not None:
            self.searches.cancel(op, now)

    # --- what arrives -----------------------------------------------------------------------

    def _admit(self, msg: Message, addr: Addr, now: float) -> bool:
        """Before any reassembly work, as OpenDHT does: a query, or a fragment that would
        open a partial message, passes the rate limiter (a query whose fragments came first
        was charged then); a fragmented reply must answer one of our requests."""
        kind = msg.kind
        if kind == "r" and msg.value_sizes and not self._expected(msg, addr):
            self.stats["unmatched_reply"] += 1
            return False
        if kind == "p":
            limited = not self.reassembler.has(addr, msg.tid)
        else:
            limited = kind == "q" and not (
                msg.value_sizes and self.reassembler.awaiting_header(addr, msg.tid))
        if limited and not self.limits.allow(addr[0], now):
            self.stats["dropped_rate_limit"] += 1
            return False
        return True

    def _expected(self, msg: Message, addr: Addr) -> bool:
        return (self.requests.match(msg.tid, addr) is not None
                or msg.tid in self.searches.listen_sids)

    def _reassemble(self, msg: Message, addr: Addr, now: float) -> Message | None:
        if msg.kind == "p":
            done = self.reassembler.fragment(msg, addr, now)
        elif msg.value_sizes:
            done = self.reassembler.header(msg, addr, now)
        else:
            return msg
        self.stats["dropped_fragments"] = self.reassembler.dropped
        return done

    def _on_reply(self, msg: Message, addr: Addr, now: float) -> None:
        req = self.requests.match(msg.tid, addr)
        if req is None:
            if msg.tid in self.searches.listen_sids and msg.has_values:   # legacy notification
                self.searches.listen_update(msg.tid, msg, addr)
            else:
                self.stats["unmatched_reply"] += 1
            return
        self._answered(req, msg, addr, now)
        req.on_reply(msg, now)

    def _on_error(self, msg: Message, addr: Addr, now: float) -> None:
        req = self.requests.match(msg.tid, addr)
        code = msg.error[0] if msg.error else 0
        known = code in (NON_AUTHORITATIVE_INFORMATION, UNAUTHORIZED, NOT_FOUND)
        self.stats[f"error_received_{code if known else 'other'}"] += 1
        if req is None:
            self.stats["unmatched_reply"] += 1
            return
        self._answered(req, msg, addr, now)
        (req.on_error or req.on_reply)(msg, now)

    def _answered(self, req: Request, msg: Message, addr: Addr, now: float) -> None:
        """What any answer to one of our requests proves and teaches."""
        requests = self.requests
        requests.answered(req, addr)
        self.serving.proven(addr, now)          # it echoed a tid we sent to that address
        if msg.client or msg.id is None:
            return
        node = self.tables[family_of(addr)].update(msg.id, addr, now, 2)
        requests.sample(req, node, now)
        if req.node is None:
            req.node = node
        elif node is not None and node is not req.node:
            req.node.heard(now, True)
        self._check_connectivity(now)

    def _on_legacy_update(self, msg: Message, addr: Addr, now: float) -> None:
        if msg.tid not in self.searches.listen_sids:
            self.stats["unmatched_reply"] += 1
            return
        self.searches.listen_update(msg.tid, msg, addr)

    # --- bootstrap and maintenance ----------------------------------------------------------

    def _ping_bootstrap(self, now: float) -> None:
        if not self._bootstrap or self.good_nodes(now):
            return
        for addr in self._bootstrap:
            self.ping(addr, now)
        self.ctx.at(now + self._bootstrap_wait, self._ping_bootstrap)
        self._bootstrap_wait = min(self._bootstrap_wait * 2, BOOTSTRAP_RETRY_MAX)

    def _check_connectivity(self, now: float) -> None:
        if self._connected:
            return
        self._connected = True
        self._bootstrap_wait = BOOTSTRAP_RETRY
        self.ctx.emit(ev.Connectivity(len(self.good_nodes(now))))
        self._step_own_search(now)      # find our neighbourhood

    def _step_own_search(self, now: float) -> None:
        searches = self.searches
        for fam in self.families:
            if len(self.tables[fam]):
                searches.step(searches.search(self.id, fam, now), now)

    def _maintain(self, now: float) -> None:
        good = self.good_nodes(now)
        for fam in self.families:
            table = self.tables[fam]
            for target, node in table.stale_buckets(now)[:4]:
                self.requests.send(node.addr, node, "find", {"target": target}, now,
                                   on_reply=functools.partial(self._learn_from, node.addr))
            for node in table.dubious(now)[:4]:
                self.ping(node.addr, now, node)
        if 0 < len(good) < TARGET_NODES:
            self._step_own_search(now)      # fill our neighbourhood
        if self._connected and not good:
            self._connected = False
            self.ctx.emit(ev.Connectivity(0))
            self._ping_bootstrap(now)
        rng = self.ctx.rng
        delay = rng.uniform(5, 25) if len(good) < TARGET_NODES else rng.uniform(60, 180)
        self.ctx.at(now + delay, self._maintain)

    def _learn_from(self, addr: Addr, msg: Message, now: float) -> None:
        self.ctx.learn(msg, addr, now)

    def _housekeeping(self, now: float) -> None:
        for key, vids in self.storage.expire(now):
            self.serving.notify(key, now, expired=vids)
        self.listeners.expire(now)
        self.reassembler.expire(now)
        self.stats["dropped_fragments"] = self.reassembler.dropped
        self.ops.expire_caches(now)
        if now >= self.tokens.next_rotation:
            self.tokens.rotate(now)
        self.searches.drop_idle(now)
        self.ctx.at(now + HOUSEKEEPING, self._housekeeping)
