"""The sans-IO DHT engine: OpenDHT's protocol without sockets or clocks.

Feed it datagrams with `receive_datagram(data, addr, now)`, send what
`datagrams_to_send(now)` returns, call `handle_timer(now)` at `get_timer()`, and
read results with `next_event()`. Operations (get, put, listen) return an op id
that the events refer to. Everything it holds is bounded, and every datagram it
drops is counted in `stats`.

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
import ipaddress
import itertools
import logging
import random
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .fragments import Reassembler, fits_inline, fragment_datagrams, split_values
from .infohash import HASH_LEN, ZERO, InfoHash
from .messages import (
    AF_INET,
    AF_INET6,
    NON_AUTHORITATIVE_INFORMATION,
    NOT_FOUND,
    QUERIES,
    UNAUTHORIZED,
    Addr,
    MalformedMessage,
    Message,
    address_bytes,
    decode,
    encode_error,
    encode_legacy_update,
    encode_query,
    encode_reply,
    pack_nodes,
)
from .proofs import AddressProofs
from .ratelimit import QueryLimits
from .routing import MAX_FAILURES, K, Node, RoutingTable
from .rtt import RTO_MIN, RttEstimate, rto, updated
from .search import (
    FETCH_IN_FLIGHT,
    LISTEN_NODES,
    MAX_FETCHES,
    MAX_IN_FLIGHT,
    TARGET_NODES,
    Fetch,
    Search,
    SearchNode,
)
from .storage import EditPolicy, Listener, Storage, StoreStatus
from .tokens import Tokens
from .values import FIELD_ID, FIELD_SEQ, FieldIndex, Query, Value, packb, type_expiration

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
FIRST_TIMEOUT = 0.5             # a node and an engine that measured no RTT yet (rtt.RTO_MAX)
INLINE_VALUES = 16              # an inline get reply this full may have been capped
# A write token is bound to our address, not to a key; OpenDHT and sipdht accept one for
# 15-45 min (current and previous secret). Reused across searches for this long, from the
# nodes of the most recent searches:
TOKEN_REUSE = 300.0
MAX_TOKENS_SEEN = 512
LISTEN_REFRESH = 20.0          # LISTEN_EXPIRE_TIME - REANNOUNCE_MARGIN
REANNOUNCE_MARGIN = 10.0
HOUSEKEEPING = 2.0
SEARCH_IDLE = 62 * 60.0
BOOTSTRAP_RETRY, BOOTSTRAP_RETRY_MAX = 10.0, 300.0
MAX_SEARCHES = 4096
# New listens start their searches while fewer requests than this are out; the rest wait
# in a queue. 10,000 listens started at once sent 40,000 finds in one burst: the storers'
# socket buffers dropped most, every storer then looked unreachable, few listens were
# acknowledged.
LISTEN_START_WINDOW = 256

# What one get reply (or a new listener's first push) may carry, whatever is stored: a
# burst a socket buffer holds. Callers page through the rest by id, as OpenDHT clients do.
MAX_REPLY_VALUES = 64
MAX_REPLY_BYTES = 32 * 1024         # at least one value is always sent, whatever its size
MAX_REPLY_IDS = 1024                # rows of a select reply (~10 bytes each)
ID_SEQ = (FIELD_ID, FIELD_SEQ)
# Listeners we serve (OpenDHT has no cap): one IP cannot make a put fan out to thousands.
MAX_LISTENERS_PER_IP = 256
MAX_LISTENERS_PER_KEY = 128
# An address that let a request expire is left out of every search for this long.
UNREACHABLE_TIME = 120.0
SUSPECT_TIME = 5.0          # after a first timeout only (a reply clears either at once)
MAX_UNREACHABLE = 4096
CHALLENGE_INTERVAL = 5.0    # between two pings proving one unproven source (proofs.py)
MAX_CHALLENGES = 4096
# Packed node lists of find/get replies are reused for the same target within one window of
# this long (then all are dropped, so an idle engine holds at most one window's worth).
NODES_CACHE_TIME, MAX_NODES_CACHE = 1.0, 256
# query name -> (its stats counter, the method serving it): no string building per query
_SERVE = {q: (f"query_{q}", f"_serve_{q}") for q in QUERIES}


def family_of(addr: Addr) -> int:
    return 6 if ":" in addr[0] else 4


def is_martian(addr: Addr) -> bool:
    """Sources OpenDHT refuses outright: port 0, 0.x, multicast and above, ::, v4-mapped."""
    return addr[1] == 0 or _martian_ip(addr[0])


@functools.lru_cache(maxsize=4096)
def _martian_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return True
    if ip.is_unspecified or ip.is_multicast:
        return True
    if ip.version == 4:
        return ip.packed[0] == 0 or ip.packed[0] >= 224
    return ip.ipv4_mapped is not None


@functools.lru_cache(maxsize=4096)
def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


@dataclass(eq=False)
class Timer:
    when: float
    fn: Callable[[float], None]
    cancelled: bool = False


@dataclass(eq=False)
class Request:
    tid: int
    addr: Addr
    node: Node | None
    datagrams: list[bytes]
    on_reply: Callable[[Message, float], None]
    on_expire: Callable[[float], None]
    on_error: Callable[[Message, float], None] | None = None
    on_retry: Callable[[float], None] | None = None
    attempts: int = 1
    wait: float = FIRST_TIMEOUT     # until the next attempt: the node's RTO, then backing off
    done: bool = False
    sent: float = 0.0               # first attempt: an RTT sample if it is answered
    timer: Timer | None = None      # the next timeout, cancelled by the reply
    blind: bool = False             # sent before any RTT was known: its RTO is re-read later


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


class DhtEngine:
    # What __init__ allocates, in slots: ~35 attributes overflow CPython's shared-key
    # instance dict (30 keys), which then costs 1.6 KB per engine, and a simulation holds
    # thousands of engines. `__dict__` keeps room for attributes not listed here.
    __slots__ = ("rng", "id", "network", "client_only", "families", "epoch_offset", "tables",
                 "storage", "tokens", "limits", "proofs", "_budget", "_rx_bytes", "_challenged",
                 "_unreachable", "reassembler", "stats", "searches", "requests", "listen_sids",
                 "local_listens", "ops", "_ip_listens", "_out", "_events",
                 "_timers", "_seq", "_op_ids", "_bootstrap", "_bootstrap_wait", "_connected",
                 "now", "_nodes_cache", "_nodes_cache_until", "max_listeners_per_ip",
                 "_cached_searches", "_cache_heap", "_cache_dead", "_listen_queue", "_resume", "_rtt", "_tokens_seen",
                 "__dict__", "__weakref__")

    def __init__(self, node_id: InfoHash | None = None, *, network: int = 0,
                 rate_limit: bool = True, max_storage: int = 64 * 1024 * 1024,
                 client_only: bool = False, policy: EditPolicy | None = None,
                 families: tuple[int, ...] = (4, 6), now: float = 0.0,
                 epoch_offset: float = 0.0, rng: random.Random | None = None,
                 max_listeners_per_ip: int = MAX_LISTENERS_PER_IP) -> None:
        self.rng: random.Random = rng if rng is not None else random.SystemRandom()
        self.id = node_id or InfoHash(self.rng.randbytes(HASH_LEN))
        self.network = network
        self.client_only = client_only
        self.families = families
        self.max_listeners_per_ip = max_listeners_per_ip
        self.epoch_offset = epoch_offset   # wall-clock seconds = now + epoch_offset
        self.tables = {f: RoutingTable(self.id, self.rng) for f in (4, 6)}
        self.storage = Storage(max_total=max_storage, policy=policy)
        self.tokens = Tokens(now, self.rng)
        self.limits = QueryLimits(rate_limit)
        self.proofs = AddressProofs()
        self._budget: tuple[Addr, list[int]] | None = None   # (unproven source, bytes left)
        self._rx_bytes = 0
        self._challenged: dict[Addr, float] = {}     # unproven sources we pinged, and when
        self._unreachable: dict[Addr, float] = {}    # address -> until when searches skip it
        self._rtt = RttEstimate()       # over all nodes: the RTO of a node never measured
        self._tokens_seen: dict[Addr, tuple[bytes, float]] = {}    # write tokens, when given
        self.reassembler = Reassembler()
        self.stats: Counter[str] = Counter()
        self.searches: dict[int, dict[InfoHash, Search]] = defaultdict(dict)   # family -> key -> search
        self.requests: dict[int, Request] = {}
        self.listen_sids: dict[int, tuple[Search, SearchNode]] = {}
        self.local_listens: dict[InfoHash, list[ListenOp]] = {}
        self.ops: dict[int, GetOp | PutOp | ListenOp] = {}
        # IP -> (key, node id, sid): exactly the listeners storage holds for each source IP
        self._ip_listens: dict[str, set[tuple[InfoHash, bytes, int]]] = {}
        # Searches that hold no listen and no permanent put, least recently used first: the
        # only ones MAX_SEARCHES and SEARCH_IDLE drop, found without visiting the others.
        self._cached_searches: dict[int, OrderedDict[InfoHash, None]] = {}   # see _cached
        # (when, seq, listen op, value id): when a listen's cached value may be forgotten
        self._cache_heap: list[tuple[float, int, ListenOp, int]] = []
        self._cache_dead = 0        # entries of cancelled listens still in that heap
        # Listens waiting for LISTEN_START_WINDOW, and listen searches revived (_revive) to
        # step likewise; made on first use (a deque is 600 bytes, a simulation holds
        # thousands of engines)
        self._listen_queue: deque[ListenOp] | None = None
        self._resume: deque[Search] | None = None
        self._out: list[tuple[bytes, Addr]] = []
        self._nodes_cache: dict[tuple[InfoHash, tuple[int, ...]], dict[str, Any]] = {}
        self._nodes_cache_until = now        # see _nodes_body
        self._events: deque[ev.Event] = deque()     # 600 bytes, but pop(0) on a list is quadratic in a burst
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._op_ids = itertools.count(1)
        self._bootstrap: list[Addr] = []
        self._bootstrap_wait = BOOTSTRAP_RETRY
        self._connected = False
        self.now = now          # last time given to any entry point
        self._at(now + HOUSEKEEPING, self._housekeeping)
        self._at(now + self.rng.uniform(5, 25), self._maintain)

    # --- sans-IO interface ------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        self.stats["sent"] += len(out)
        return out

    def get_timer(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> None:
        self.now = now
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.fn(now)
        if self._listen_queue or self._resume:
            self._start_listens(now)

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.now = now
        self.stats["received"] += 1
        self._rx_bytes = len(data)
        if is_martian(addr):
            self.stats["dropped_martian"] += 1
            return
        try:
            msg = decode(data)
        except MalformedMessage as exc:
            self.stats["dropped_malformed"] += 1
            log.debug("malformed datagram from %s: %s", addr, exc)
            return
        if msg.network != self.network:
            self.stats["dropped_network"] += 1
            return
        if not self._admit(msg, addr, now):
            return
        whole = self._reassemble(msg, addr, now)
        if whole is None:
            return
        if whole.id is None or whole.id == ZERO or whole.id == self.id:
            self.stats["dropped_bad_id"] += 1
            return
        kind = whole.kind
        if kind == "q":
            self._on_query(whole, addr, now)
        elif kind == "r":
            self._on_reply(whole, addr, now)
        elif kind == "e":
            self._on_error(whole, addr, now)
        else:
            self._on_legacy_update(whole, addr, now)
        if self._listen_queue or self._resume:
            self._start_listens(now)

    # --- operations -------------------------------------------------------------------------

    def bootstrap(self, addrs: list[Addr], now: float) -> None:
        """Ping these nodes now, and again (backing off) while we know no good node."""
        self._bootstrap = list(addrs)
        for addr in addrs:
            self.ping(addr, now)
        self._at(now + self._bootstrap_wait, self._ping_bootstrap)

    def ping(self, addr: Addr, now: float, node: Node | None = None) -> None:
        self._request(addr, node, "ping", {}, now, on_reply=lambda m, t: None)

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
        self.now = now
        op = GetOp(next(self._op_ids), key, query, now)
        self.ops[op.id] = op
        if local:
            self._deliver_get(op, self.storage.get(key, query, now))
        self._attach(op, key, "gets", now)
        return op.id

    def put(self, key: InfoHash, value: Value, now: float, permanent: bool = False) -> int:
        self.now = now
        op = PutOp(next(self._op_ids), key, value, permanent)
        self.ops[op.id] = op
        result = self.storage.store(key, value, now)
        if result.status in (StoreStatus.NEW, StoreStatus.EDITED):
            self._notify(key, now, values=[value])
        self._attach(op, key, "puts", now)
        return op.id

    def listen(self, key: InfoHash, now: float) -> int:
        self.now = now
        op = ListenOp(next(self._op_ids), key)
        self.ops[op.id] = op
        self.local_listens.setdefault(key, []).append(op)
        self._listen_values(op, "add", self.storage.get(key, now=now))
        if self._listen_queue is None:
            self._listen_queue = deque()
        self._listen_queue.append(op)
        self._start_listens(now)
        return op.id

    def listening_nodes(self, op_id: int) -> int:
        """How many storers have acknowledged this listen's subscription and still hold it
        (0 while it waits to start, or for an unknown op)."""
        op = self.ops.get(op_id)
        if not isinstance(op, ListenOp):
            return 0
        return sum(1 for search in op.searches for sn in search.nodes
                   if sn.listen_sid is not None and not sn.failed
                   and sn.listen_time > self.now - LISTEN_REFRESH - REANNOUNCE_MARGIN)

    def _start_listens(self, now: float) -> None:
        """Attach queued listens to their searches while the request window has room (a
        listen joining a search already under way costs nothing and never waits)."""
        while self._resume and len(self.requests) < LISTEN_START_WINDOW:
            search = self._resume.popleft()
            if self.searches[search.family].get(search.target) is search and search.listens:
                self._step(search, now)
        queue = self._listen_queue
        while queue and (len(self.requests) < LISTEN_START_WINDOW
                         or any(queue[0].key in self.searches[f] for f in self.families)):
            op = queue.popleft()
            if self.ops.get(op.id) is op:       # not cancelled while it waited
                self._attach(op, op.key, "listens", now)

    def cancel(self, op_id: int, now: float) -> None:
        """Stop a listen or a permanent put; the remote subscriptions time out on their own."""
        op = self.ops.pop(op_id, None)
        if op is None:
            return
        if isinstance(op, ListenOp):
            mine = self.local_listens[op.key]
            mine.remove(op)
            if not mine:
                del self.local_listens[op.key]
            self._cache_dead += len(op.queued)
        for search in (self.searches[f].get(op.key) for f in (4, 6)):
            if search is None:
                continue
            for attr in ("gets", "puts", "listens"):
                lst = getattr(search, attr)
                if op in lst:
                    lst.remove(op)
            if not search.listens:
                for sn in search.nodes:
                    if sn.listen_sid is not None:
                        self.listen_sids.pop(sn.listen_sid, None)
                        sn.listen_sid = None
            search.last_used = now
            self._held_changed(search)

    # --- plumbing ---------------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[[float], None]) -> Timer:
        timer = Timer(when, fn)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def _next_tid(self) -> int:
        """A random uint32 not in use as a tid or a listen socket id (0 is never used)."""
        while True:
            tid = self.rng.getrandbits(32)
            if tid and tid not in self.requests and tid not in self.listen_sids:
                return tid

    def _send(self, data: bytes, addr: Addr) -> None:
        if self._budget is not None and self._budget[0] == addr:
            left = self._budget[1]
            if len(data) > left[0]:
                self.stats["amplification_dropped"] += 1
                return
            left[0] -= len(data)
        self._out.append((data, addr))

    def _request(self, addr: Addr, node: Node | None, name: str, args: dict[str, Any], now: float,
                 on_reply: Callable[[Message, float], None],
                 on_expire: Callable[[float], None] = lambda t: None,
                 on_error: Callable[[Message, float], None] | None = None,
                 values: list[Value] | None = None,
                 on_retry: Callable[[float], None] | None = None) -> Request:
        tid = self._next_tid()
        args = {"id": self.id, **args}
        packed: list[bytes] = []
        if values is not None:
            args["values"], packed = split_values(values)
        datagrams = [encode_query(name, tid, args, self.network, self.client_only)]
        datagrams += fragment_datagrams(tid, packed, self.network)
        req = Request(tid, addr, node, datagrams, on_reply, on_expire, on_error, on_retry,
                      wait=self._rto(node), sent=now, blind=self._blind(node))
        self.requests[tid] = req
        for d in datagrams:
            self._send(d, addr)
        first = min(req.wait, RTO_MIN) if req.blind else req.wait
        req.timer = self._at(now + first, lambda t: self._request_timeout(req, t))
        return req

    def _blind(self, node: Node | None) -> bool:
        """No estimate for this node or any other yet (a fresh engine's first lookup)."""
        return (node is None or node.rtt <= 0) and self._rtt.srtt <= 0

    def _still_waiting(self, req: Request, now: float) -> bool:
        """A request sent blind waits RTO_MAX only while nothing is measured: once the first
        replies give an estimate, its RTO is that estimate, counted from when it was sent
        (else a fresh engine's first lookup waits half a second on every dead node)."""
        if not req.blind:
            return False
        deadline = req.sent + self._rto(req.node)
        if now >= deadline:
            req.blind = False
            req.wait = deadline - req.sent
            return False
        step = RTO_MIN if self._blind(req.node) else deadline - now
        req.timer = self._at(min(deadline, now + step), lambda t: self._request_timeout(req, t))
        return True

    def _request_timeout(self, req: Request, now: float) -> None:
        if req.done or self._still_waiting(req, now):
            return
        if req.attempts < MAX_ATTEMPTS:
            # This search moves on at the RTO; every search skips the address once it has
            # been silent for FIRST_TIMEOUT, as before: a node behind a NAT or a busy one
            # that answers a little late must not be shut out of the others' (a listen's).
            if req.attempts == 1:
                self._at(max(now, req.sent + FIRST_TIMEOUT), lambda t: self._suspect(req, t))
            req.attempts += 1
            # Searches moved on at the first timeout (the RTO); declaring the node dead
            # stays as slow as before (~3.5 s over three attempts): a far node that a
            # near node's estimate underrates is retried, not written off.
            req.wait = max(req.wait, FIRST_TIMEOUT) * 2 + self.rng.uniform(0, 0.25)
            for d in req.datagrams:
                self._send(d, req.addr)
            req.timer = self._at(now + req.wait, lambda t: self._request_timeout(req, t))
            if req.on_retry is not None:
                req.on_retry(now)
            return
        req.done = True
        self.requests.pop(req.tid, None)
        self.stats["requests_expired"] += 1
        self._mark_unreachable(req.addr, now)
        if req.node is not None:
            req.node.failures = MAX_FAILURES
        req.on_expire(now)

    def _suspect(self, req: Request, now: float) -> None:
        if not req.done:
            self._mark_unreachable(req.addr, now, SUSPECT_TIME)

    def _rto(self, node: Node | None) -> float:
        """How long to wait for this node before moving on (and sending again): its own
        estimate, else the engine's over all nodes, else FIRST_TIMEOUT."""
        if node is not None and node.rtt > 0:
            return rto(node.rtt, node.rtt_var)
        return self._rtt.rto()

    def _rtt_sample(self, req: Request, node: Node | None, now: float) -> None:
        """Time the round trip from the first attempt. After a retransmission that is an
        upper bound (Karn would drop it): dropping it would leave a node slower than its
        RTO never measured, and retried at every request."""
        sample = now - req.sent
        self._rtt.sample(sample)
        for n in {id(x): x for x in (req.node, node) if x is not None}.values():
            n.rtt, n.rtt_var = updated(n.rtt, n.rtt_var, sample)

    def _admit(self, msg: Message, addr: Addr, now: float) -> bool:
        """Before any reassembly work, as OpenDHT does: a query, or a fragment that would
        open a partial message, passes the rate limiter (a query whose fragments came first
        was charged then); a fragmented reply must answer one of our requests."""
        if msg.kind == "r" and msg.value_sizes and not self._expected(msg, addr):
            self.stats["unmatched_reply"] += 1
            return False
        if msg.kind == "p":
            limited = not self.reassembler.has(addr, msg.tid)
        else:
            limited = msg.kind == "q" and not (
                msg.value_sizes and self.reassembler.awaiting_header(addr, msg.tid))
        if limited and not self.limits.allow(addr[0], now):
            self.stats["dropped_rate_limit"] += 1
            return False
        return True

    def _expected(self, msg: Message, addr: Addr) -> bool:
        req = self.requests.get(msg.tid)
        return (req is not None and req.addr == addr) or msg.tid in self.listen_sids

    def _mark_unreachable(self, addr: Addr, now: float, duration: float = UNREACHABLE_TIME) -> None:
        """Shared by all searches, so the next one does not wait on this address again."""
        if addr not in self._unreachable and len(self._unreachable) >= MAX_UNREACHABLE:
            self._unreachable = {a: t for a, t in self._unreachable.items() if t > now}
            while len(self._unreachable) >= MAX_UNREACHABLE:
                del self._unreachable[next(iter(self._unreachable))]
        self._unreachable[addr] = max(self._unreachable.get(addr, now), now + duration)

    def _unreachable_node(self, now: float, node: Node) -> bool:
        return not self._reachable(node, now)

    def _reachable(self, node: Node, now: float) -> bool:
        until = self._unreachable.get(node.addr)
        if until is None:
            return True
        if until <= now:
            del self._unreachable[node.addr]
            return True
        return False

    def _reassemble(self, msg: Message, addr: Addr, now: float) -> Message | None:
        if msg.kind == "p":
            done = self.reassembler.fragment(msg, addr, now)
        elif msg.value_sizes:
            done = self.reassembler.header(msg, addr, now)
        else:
            return msg
        self.stats["dropped_fragments"] = self.reassembler.dropped
        return done

    def _want(self, msg: Message, addr: Addr) -> tuple[int, ...]:
        if msg.want:
            return tuple(f for f, af in ((4, AF_INET), (6, AF_INET6)) if af in msg.want)
        return (family_of(addr),)

    def _nodes_body(self, target: InfoHash, families: tuple[int, ...],
                    now: float) -> dict[str, Any]:
        """The packed closest good nodes (n4/n6), reused for the same target and families
        within a window of NODES_CACHE_TIME: a popular key is asked for many times a second,
        and a list that old is as good an answer as OpenDHT's own snapshots."""
        cache = self._nodes_cache
        if now >= self._nodes_cache_until:      # a new window: nothing older is kept
            cache.clear()
            self._nodes_cache_until = now + NODES_CACHE_TIME
        hit = cache.get((target, families))
        if hit is not None:
            return dict(hit)
        body: dict[str, Any] = {}
        for fam in families:
            nodes = self.tables[fam].closest(target, K, now, good_only=True)
            if nodes:
                body["n4" if fam == 4 else "n6"] = pack_nodes([(n.id, n.addr) for n in nodes],
                                                              fam)
        if len(cache) < MAX_NODES_CACHE:
            cache[(target, families)] = body
        return dict(body)

    def _reply(self, msg: Message, addr: Addr, body: dict[str, Any],
               values: list[Value] | None = None, tid: int | None = None) -> None:
        tid = msg.tid if tid is None else tid
        body = {"id": self.id, "sa": address_bytes(addr[0]), **body}
        datagrams = self._reply_datagrams(tid, body, values)
        if self._budget is not None and self._budget[0] == addr:
            room = self._budget[1][0]
            while sum(map(len, datagrams)) > room and self._trim_nodes(body):
                datagrams = self._reply_datagrams(tid, body, values)
            if sum(map(len, datagrams)) > room and (values or "fileds" in body):
                # Values (or a value-id listing) are never cut short, which would read as
                # "nothing stored": the reply is withheld, and the requester's retry finds
                # it proven by our ping.
                self.stats["reply_withheld_unproven"] += 1
                self._challenge(addr, self.now)
                return
        for d in datagrams:
            self._send(d, addr)

    def _reply_datagrams(self, tid: int, body: dict[str, Any],
                         values: list[Value] | None) -> list[bytes]:
        if not values:
            return [encode_reply(tid, body, self.network, self.client_only)]
        packed = [packb(v) for v in values]          # made once per stored value
        if fits_inline(packed):
            return [encode_reply(tid, body, self.network, self.client_only, packed)]
        return ([encode_reply(tid, {**body, "values": [len(p) for p in packed]}, self.network,
                              self.client_only)]
                + fragment_datagrams(tid, packed, self.network))

    def _trim_nodes(self, body: dict[str, Any]) -> bool:
        """Drop one node record (IPv6 first) from a reply; False when none is left."""
        for key, rec in (("n6", 38), ("n4", 26)):
            if key in body:
                body[key] = body[key][:-rec]
                if not body[key]:
                    del body[key]
                self.stats["reply_trimmed_unproven"] += 1
                return True
        return False

    def _challenge(self, addr: Addr, now: float) -> None:
        """Ping an unproven source whose answer we withheld: once it replies, its retry
        is answered in full. At most one ping per address every CHALLENGE_INTERVAL."""
        if now - self._challenged.get(addr, float("-inf")) < CHALLENGE_INTERVAL:
            return
        if self._note_challenge(addr, now):
            self.stats["challenge_ping"] += 1
            self.ping(addr, now)

    def _note_challenge(self, addr: Addr, now: float) -> bool:
        """Remember a ping to a source (bounded: recent entries only); False when full."""
        if len(self._challenged) >= MAX_CHALLENGES:
            self._challenged = {a: t for a, t in self._challenged.items()
                                if now - t < CHALLENGE_INTERVAL}
            if len(self._challenged) >= MAX_CHALLENGES:
                return False
        self._challenged[addr] = now
        return True

    def _error(self, msg: Message, addr: Addr, code: int, text: str) -> None:
        self.stats[f"error_sent_{code}"] += 1
        self._send(encode_error(msg.tid, code, text, self.id, self.network), addr)

    def _learn(self, msg: Message, addr: Addr, now: float,
               skip: Container[bytes] = ()) -> list[Node]:
        """Insert the nodes a reply lists; loopback entries from a remote sender use its IP.
        The only path by which gossiped nodes enter the table: one set of checks. Ids in
        `skip` (a search's nodes, learnt before) are passed over."""
        learnt = []
        sender_loopback = _is_loopback(addr[0])
        for fam, entries in ((4, msg.n4), (6, msg.n6)):
            for nid, naddr in entries:
                if nid == self.id or nid in skip or is_martian(naddr):
                    continue
                if _is_loopback(naddr[0]) and not sender_loopback:
                    if family_of(addr) != fam:
                        continue
                    naddr = (addr[0], naddr[1])
                node = self.tables[fam].update(nid, naddr, now, 0)
                # A full bucket only caches the node, but searches still need it.
                learnt.append(node if node is not None else Node(nid, naddr))
        return learnt

    def _learn_from(self, addr: Addr, msg: Message, now: float) -> None:
        self._learn(msg, addr, now)

    # --- serving queries --------------------------------------------------------------------

    def _on_query(self, msg: Message, addr: Addr, now: float) -> None:
        # rate limited in _admit, before reassembly
        counter, serve = _SERVE[msg.query or ""]     # decode() made it one of QUERIES
        self.stats[counter] += 1
        ip = addr[0]
        if not self.proofs.proven(ip, now):     # maybe spoofed: answer within a budget
            allowed = self.proofs.allowance(ip, self._rx_bytes, now)
            self._budget = (addr, [allowed])
        try:
            if not msg.client and msg.id is not None:
                self._heard_query(msg.id, addr, now)
            getattr(self, serve)(msg, addr, now)
        finally:
            if self._budget is not None:
                self.proofs.spend(ip, allowed - self._budget[1][0], now)
                self._budget = None

    def _heard_query(self, node_id: InfoHash, addr: Addr, now: float) -> None:
        """A newcomer that queries us is pinged once, so it can become good and be shared."""
        table = self.tables[family_of(addr)]
        known = table.find(node_id) is not None
        node = table.update(node_id, addr, now, 1)
        if node is not None and not known and not node.is_good(now):
            self._note_challenge(addr, now)   # this ping also proves an unproven source
            self.ping(addr, now, node)

    def _serve_ping(self, msg: Message, addr: Addr, now: float) -> None:
        self._reply(msg, addr, {})

    def _serve_find(self, msg: Message, addr: Addr, now: float) -> None:
        target = msg.target or msg.h
        if target is None:
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Find node with no target")
        body = self._nodes_body(target, self._want(msg, addr), now)
        self._reply(msg, addr, {**body, "token": self.tokens.make(addr)})

    def _serve_get(self, msg: Message, addr: Addr, now: float) -> None:
        if msg.h is None:
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Get_values with no info_hash")
        body = self._nodes_body(msg.h, self._want(msg, addr), now)
        body["token"] = self.tokens.make(addr)
        values = self._fair(msg.h, self.storage.get(msg.h, msg.q, now))
        if values and self._budget is not None:
            # Unproven, and values to hand out: ping it before answering, so that its
            # by-id fetches (or retry) find it proven instead of being withheld.
            self._challenge(addr, now)
        if msg.q is not None and msg.q.select:
            body["fileds"] = self._select(msg.q, values[:MAX_REPLY_IDS])
            values = []
        self._reply(msg, addr, body, self._capped(values))

    def _fair(self, key: InfoHash, values: list[Value]) -> list[Value]:
        """Round-robin over source IPs (our own values first), so that when a reply is capped
        every source's oldest values are in it, not only the most prolific source's."""
        if len(values) < 2:
            return values
        groups: dict[str | None, list[Value]] = {}
        for v in values:
            sv = self.storage.get_stored(key, v.id)
            groups.setdefault(sv.source if sv else None, []).append(v)
        if len(groups) <= 1:
            return values
        tiers = itertools.zip_longest(*groups.values())
        return [v for tier in tiers for v in tier if v is not None]

    @staticmethod
    def _capped(values: list[Value]) -> list[Value]:
        out: list[Value] = []
        size = 0
        for v in values[:MAX_REPLY_VALUES]:
            size += len(packb(v))          # packed once per stored value, then reused
            if out and size > MAX_REPLY_BYTES:
                break
            out.append(v)
        return out

    @staticmethod
    def _select(q: Query, values: list[Value]) -> dict[str, Any]:
        return {"f": list(q.select), "v": [x for v in values for x in q.field_values(v)]}

    def _check_write(self, msg: Message, addr: Addr, what: str) -> InfoHash | None:
        """The key a put/refresh/listen writes to, or None (and an error sent)."""
        if msg.h is None:
            self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, f"{what} with no info_hash")
            return None
        if not self.tokens.check(msg.token, addr):
            self._error(msg, addr, UNAUTHORIZED, f"{what} with wrong token")
            return None
        self._proven(addr, self.now)     # it received the reply that carried the token
        return msg.h

    def _proven(self, addr: Addr, now: float) -> None:
        self.proofs.prove(addr[0], now)
        if self._budget is not None and self._budget[0][0] == addr[0]:
            self._budget = None

    def _serve_put(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Put")
        if key is None:
            return
        if not msg.values or any(v.id == 0 for v in msg.values):
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Put with invalid id")
        created = None if msg.created is None else msg.created - self.epoch_offset
        for value in msg.values:
            if not self.client_only:
                self._store_remote(key, value, now, addr[0], created)
            # OpenDHT answers success even when it refuses to store.
            self._reply(msg, addr, {"vid": value.id})

    def _store_remote(self, key: InfoHash, value: Value, now: float, ip: str,
                      created: float | None) -> None:
        result = self.storage.store(key, value, now, source=ip, created=created)
        self.stats[f"store_{result.status.name.lower()}"] += 1
        if result.status in (StoreStatus.NEW, StoreStatus.EDITED):
            self._notify(key, now, values=[value])
        elif result.status is StoreStatus.REFRESHED:
            self._notify(key, now, refreshed=[value.id])
        for ekey, vid in result.evicted:
            self._notify(ekey, now, expired=[vid])

    def _serve_refresh(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Refresh")
        if key is None:
            return
        found = self.storage.refresh(key, msg.vid or 0, now)
        if found is None:
            return self._error(msg, addr, NOT_FOUND, "Access operation for unknown storage")
        self._reply(msg, addr, {"vid": msg.vid or 0})
        self._notify(key, now, refreshed=[msg.vid or 0])

    def _serve_listen(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Listen")
        if key is None or msg.id is None:
            return
        sid = msg.sid if msg.sid is not None else msg.tid
        current = self.storage.listener(key, msg.id, sid)
        old_ip = current.addr[0] if current is not None else None
        if old_ip != addr[0] and not self._listen_room(key, addr[0], new=current is None):
            self.stats["listen_refused_cap"] += 1      # dropped, like a rate-limited query
            return
        listener = Listener(msg.id, addr, sid, msg.q or Query(), min(msg.version, 1), now)
        new = self.storage.add_listener(key, listener)
        if old_ip != addr[0]:       # new, or the same subscription from another address
            if old_ip is not None:
                self._unindex_listener(old_ip, (key, msg.id, sid))
            self._ip_listens.setdefault(addr[0], set()).add((key, msg.id, sid))
        self._reply(msg, addr, {"token": self.tokens.make(addr)})
        values = self._capped(self._fair(key, self.storage.get(key, listener.query, now)))
        if new and values:
            self._push(key, listener, now, values=values)

    def _listen_room(self, key: InfoHash, ip: str, new: bool) -> bool:
        """Room for one more listener from ip (and, for a new one, under key): O(1), as
        _ip_listens holds exactly what storage holds (expiry and drops remove entries)."""
        if len(self._ip_listens.get(ip, ())) >= self.max_listeners_per_ip:
            return False
        return not new or self.storage.listener_count(key) < MAX_LISTENERS_PER_KEY

    def _unindex_listener(self, ip: str, ident: tuple[InfoHash, bytes, int]) -> None:
        mine = self._ip_listens.get(ip)
        if mine is not None:
            mine.discard(ident)
            if not mine:
                del self._ip_listens[ip]

    def _expire_listeners(self, now: float) -> None:
        """Listeners not refreshed in time: only the due ones are visited (a heap)."""
        for key, lst in self.storage.pop_expired_listeners(now):
            self._unindex_listener(lst.addr[0], (key, lst.node_id, lst.sid))

    def _drop_listener(self, key: InfoHash, lst: Listener) -> None:
        """An update it never answered: forget that subscription (unless since replaced)."""
        if self.storage.listener(key, lst.node_id, lst.sid) is lst:
            self.storage.remove_listener(key, lst.node_id, lst.sid)
            self._unindex_listener(lst.addr[0], (key, lst.node_id, lst.sid))

    def _serve_update(self, msg: Message, addr: Addr, now: float) -> None:
        self._reply(msg, addr, {})
        entry = self._listen_entry(msg.sid, addr) if msg.sid is not None else None
        if entry is None:
            return
        search, sn = entry
        if msg.token:
            sn.token = msg.token
        self._listen_notification(search, msg)

    def _listen_entry(self, sid: int, addr: Addr) -> tuple[Search, SearchNode] | None:
        """The listen a notification is for: its sid, and only from the node it was given to."""
        entry = self.listen_sids.get(sid)
        if entry is None:
            self.stats["update_unknown_sid"] += 1
            return None
        if entry[1].listen_addr != addr:
            self.stats["update_wrong_source"] += 1
            return None
        return entry

    # --- listeners we serve -----------------------------------------------------------------

    def _notify(self, key: InfoHash, now: float, values: list[Value] | None = None,
                refreshed: list[int] | None = None, expired: list[int] | None = None) -> None:
        for listener in self.storage.listeners(key):
            matching = [v for v in values if listener.query.matches(v)] if values else None
            if values and not matching:
                continue
            self._push(key, listener, now, matching, refreshed, expired)
        for op in list(self.local_listens.get(key, [])):
            if values:
                self._listen_values(op, "add", values)
            if refreshed:
                self._listen_ids(op, "refresh", refreshed)
            if expired:
                self._listen_ids(op, "expire", expired)

    def _push(self, key: InfoHash, lst: Listener, now: float, values: list[Value] | None = None,
              refreshed: list[int] | None = None, expired: list[int] | None = None) -> None:
        token = self.tokens.make(lst.addr)
        if lst.version >= 1:
            args: dict[str, Any] = {"sid": lst.sid, "token": token}
            if values:
                args.update({"ve": 1, "h": key})
            if refreshed:
                args["re"] = refreshed
            if expired:
                args["exp"] = expired
            self._request(lst.addr, None, "update", args, now, on_reply=lambda m, t: None,
                          on_expire=lambda t: self._drop_listener(key, lst),
                          values=values or None)
            return
        if values:
            fake = Message(kind="q", tid=lst.sid)
            self._reply(fake, lst.addr, {"token": token}, values)
        else:
            body: dict[str, Any] = {"id": self.id, "token": token}
            body["re" if refreshed else "exp"] = refreshed or expired
            self._send(encode_legacy_update(lst.sid, body, self.network), lst.addr)

    # --- replies to our requests ------------------------------------------------------------

    def _on_reply(self, msg: Message, addr: Addr, now: float) -> None:
        req = self.requests.get(msg.tid)
        if req is None or req.addr != addr:
            if msg.tid in self.listen_sids and msg.has_values:   # legacy listen notification
                entry = self._listen_entry(msg.tid, addr)
                if entry is not None:
                    self._listen_notification(entry[0], msg)
            else:
                self.stats["unmatched_reply"] += 1
            return
        self._finish_request(req, msg, addr, now)
        req.on_reply(msg, now)

    def _on_error(self, msg: Message, addr: Addr, now: float) -> None:
        req = self.requests.get(msg.tid)
        code = msg.error[0] if msg.error else 0
        known = code in (NON_AUTHORITATIVE_INFORMATION, UNAUTHORIZED, NOT_FOUND)
        self.stats[f"error_received_{code if known else 'other'}"] += 1
        if req is None or req.addr != addr:
            self.stats["unmatched_reply"] += 1
            return
        self._finish_request(req, msg, addr, now)
        (req.on_error or req.on_reply)(msg, now)

    def _finish_request(self, req: Request, msg: Message, addr: Addr, now: float) -> None:
        req.done = True
        if req.timer is not None:
            req.timer.cancelled = True      # no wake-up for a request already answered
        del self.requests[req.tid]
        self._proven(addr, now)          # it echoed a tid we sent to that address
        self._unreachable.pop(addr, None)
        if msg.client or msg.id is None:
            return
        node = self.tables[family_of(addr)].update(msg.id, addr, now, 2)
        self._rtt_sample(req, node, now)
        if req.node is None:
            req.node = node
        elif node is not None and node is not req.node:
            req.node.heard(now, True)
        self._check_connectivity(now)

    def _on_legacy_update(self, msg: Message, addr: Addr, now: float) -> None:
        if msg.tid not in self.listen_sids:
            self.stats["unmatched_reply"] += 1
            return
        entry = self._listen_entry(msg.tid, addr)
        if entry is not None:
            self._listen_notification(entry[0], msg)

    def _listen_notification(self, search: Search, msg: Message) -> None:
        for op in search.listens:
            if msg.values:
                self._listen_values(op, "add", msg.values)
            if msg.refreshed:
                self._listen_ids(op, "refresh", msg.refreshed)
            if msg.expired:
                self._listen_ids(op, "expire", msg.expired)

    def _listen_values(self, op: ListenOp, kind: str, values: list[Value]) -> None:
        fresh = [v for v in values if op.known.get(v.id) != v]
        for v in values:
            self._cache_value(op, v)
        if fresh:
            self._events.append(ev.ListenValues(op.id, kind, fresh))

    def _listen_ids(self, op: ListenOp, kind: str, vids: list[int]) -> None:
        values = [op.known[vid] for vid in vids if vid in op.known]
        for v in values:
            if kind == "expire":
                del op.known[v.id], op.expires[v.id]
            else:
                self._cache_until(op, v.id, self.now + type_expiration(v.type))
        if values:
            self._events.append(ev.ListenValues(op.id, kind, values))

    def _deliver_get(self, op: GetOp, values: list[Value]) -> None:
        fresh = []
        for v in values:
            tag = (v.id, v.seq, v.data, v.cypher)
            if tag not in op.seen and (op.query is None or op.query.matches(v)):
                op.seen.add(tag)
                fresh.append(v)
        if fresh:
            self._events.append(ev.GetValues(op.id, fresh))

    # --- searches ---------------------------------------------------------------------------

    def _attach(self, op: GetOp | PutOp | ListenOp, key: InfoHash, attr: str, now: float) -> None:
        fams = [f for f in self.families if len(self.tables[f])] or list(self.families[:1])
        for fam in fams:
            search = self._search(key, fam, now)
            getattr(search, attr).append(op)
            if isinstance(op, ListenOp):
                op.searches.append(search)
                for other in search.listens[:-1]:     # already subscribed: no new push
                    self._listen_values(op, "add", list(other.known.values()))
            else:
                op.searches.add(search)
            self._held_changed(search)
        for search in list(op.searches):
            self._step(search, now)

    def _search(self, key: InfoHash, fam: int, now: float) -> Search:
        search = self.searches[fam].get(key)
        cached = self._cached(fam)
        if search is None:
            if len(cached) >= MAX_SEARCHES:
                self._drop_idle_searches(now, force=True)
            search = self.searches[fam][key] = Search(key, fam, now)
            cached[key] = None
            self._at(now + LISTEN_REFRESH, lambda t: self._search_refresh(search, t))
        elif key in cached:
            cached.move_to_end(key)
        search.last_used = now
        self._refill(search, now)
        return search

    def _refill(self, search: Search, now: float, skip_suspects: bool = True) -> None:
        if len(search.live()) >= TARGET_NODES:
            return
        skip = functools.partial(self._unreachable_node, now) if skip_suspects else None
        for node in self.tables[search.family].closest(search.target, 14, now, skip=skip):
            search.insert(node)

    def _step(self, search: Search, now: float) -> None:
        live = self._live(search, now)
        if len(live) < TARGET_NODES:
            self._refill(search, now)
            live = self._live(search, now)
        if not live and not search.in_flight():
            # nothing else to ask: suspects are skipped only while others are available
            self._refill(search, now, skip_suspects=False)
            for sn in search.nodes:
                if not sn.failed and not sn.pending:
                    sn.slow = False
            live = search.live()
        # A node past its first timeout no longer holds a slot (OpenDHT's "candidate"). A
        # node that answered this search before (a get again on a key) is asked at once, up
        # to the replication set; a lookup explores MAX_IN_FLIGHT at a time besides.
        first = live[:TARGET_NODES]
        synced, exploring = search.solicited(now)
        newest_get = max((op.started for op in search.gets), default=float("-inf"))
        for sn in first:
            if sn.pending or (sn.synced(now) and sn.last_get >= newest_get):
                continue
            if sn.synced(now) and synced < TARGET_NODES:
                synced += 1
            elif not sn.synced(now) and exploring < MAX_IN_FLIGHT:
                exploring += 1
            else:
                continue
            self._send_get(search, sn, now, self._inline(search, sn, newest_get))
        if search.gets and search.fetches:
            self._pump_fetches(search, newest_get, now)
        if search.puts or search.listens:
            self._write_early(search, live, now)
        if first and all(sn.synced(now) for sn in first):
            self._synced(search, first, now)
        elif not live and not search.in_flight() and not any(sn.put_pending
                                                                for sn in search.nodes):
            self._search_failed(search)     # a put still retrying may yet be acknowledged

    def _inline(self, search: Search, sn: SearchNode, newest_get: float) -> bool:
        """Ask this node for the values whole? Once per get, a node that answered us
        before: it has pinged this full node back, so it sends values without first
        proving our address (a client-only node is never pinged: it lists ids first)."""
        if self.client_only or search.inline_at >= newest_get or sn.node.rtt <= 0:
            return False
        search.inline_at, search.inline = newest_get, sn
        return True

    def _live(self, search: Search, now: float) -> list[SearchNode]:
        """search.live() after updating who is slow: a node timing out in another search
        is not waited on here either, until it answers."""
        unreachable = self._unreachable
        live = []
        for sn in search.nodes:
            if sn.failed:
                continue
            if not sn.pending:
                sn.slow = bool(unreachable) and sn.node.addr in unreachable \
                    and not self._reachable(sn.node, now)
            if not sn.slow:
                live.append(sn)
        return live

    def _write_early(self, search: Search, live: list[SearchNode], now: float) -> None:
        """Put and listen on each close node as soon as it has given us a token, without
        waiting for the whole search to sync: a listener then hears a new value at once.
        Completion is still judged on the synced set."""
        for sn in live[:TARGET_NODES]:
            # A token is bound to our address, not to a key: one from a recent search lets
            # the put go out with the find instead of after its reply.
            cached = None if sn.synced(now) else self._reusable_token(sn.node.addr, now)
            if cached is None and not sn.synced(now):
                continue
            for op in search.puts:
                if op.id not in sn.acked and op.id not in sn.put_pending:
                    self._send_put(search, sn, op, now, cached)
        if search.listens:
            for sn in live[:LISTEN_NODES]:
                if sn.synced(now) and sn.listen_sid is None and not sn.listen_pending:
                    self._send_listen(search, sn, now)

    def _send_get(self, search: Search, sn: SearchNode, now: float, inline: bool = False) -> None:
        """`inline`: ask for the values themselves, not their ids (one node per get: the
        values a small key holds then need no fetch, and a key stuffed with junk costs
        one capped reply before the paging below takes over)."""
        sn.pending = True
        want = [AF_INET, AF_INET6] if len(self.families) > 1 else (
            [AF_INET] if self.families == (4,) else [AF_INET6])
        args: dict[str, Any]
        if search.gets and inline:
            where = self._common_where(search)
            name, args = "get", {"h": search.target, "w": want}
            if where:
                args["q"] = Query((), where).pack()
        elif search.gets:    # ids first; values are then fetched by id (_pump_fetches)
            q = Query(ID_SEQ, self._common_where(search))
            name, args = "get", {"h": search.target, "w": want, "q": q.pack()}
        else:                # puts and listens only need a token: no values come back
            name, args = "find", {"target": search.target, "w": want}

        def on_reply(msg: Message, t: float) -> None:
            sn.pending = False
            if msg.kind == "e":
                sn.failed = True
            else:
                if name == "get" and not (inline and len(msg.values) >= INLINE_VALUES):
                    sn.last_get = now       # else maybe capped: listed by id next
                self._search_reply(search, sn, msg, t, now)
            self._step(search, t)

        def on_expire(t: float) -> None:
            sn.pending, sn.failed = False, True
            self._step(search, t)

        self._request(sn.node.addr, sn.node, name, args, now, on_reply, on_expire,
                      on_retry=lambda t: self._slow(search, sn, t))

    def _slow(self, search: Search, sn: SearchNode, now: float) -> None:
        """No answer after a first timeout: go on with other nodes while it retries."""
        if not sn.slow:
            sn.slow = True
            self._step(search, now)

    def _search_reply(self, search: Search, sn: SearchNode, msg: Message, now: float,
                      sent: float) -> None:
        sn.slow = False
        if msg.token:
            sn.token, sn.last_reply = msg.token, now
            self._note_token(sn.node.addr, msg.token, now)
        if msg.n4 or msg.n6:
            known = {x.node.id for x in search.nodes}
            for node in self._learn(msg, sn.node.addr, now, known):
                if family_of(node.addr) == search.family and self._reachable(node, now):
                    search.insert(node, sn.depth + 1)
        if msg.fields is not None:
            self._listed(search, sn, msg.fields)
        if msg.values:      # asked inline, or a server that ignored the select
            self._found_values(search, msg.values)
            self._fetched(search, msg.values, sent)

    def _found_values(self, search: Search, values: list[Value]) -> None:
        for op in search.gets:
            self._deliver_get(op, values)
        for op in search.listens:
            self._listen_values(op, "add", values)

    def _note_token(self, addr: Addr, token: bytes, now: float) -> None:
        """Remember a node's write token for other searches (bounded, oldest out first)."""
        seen = self._tokens_seen
        seen.pop(addr, None)
        if len(seen) >= MAX_TOKENS_SEEN:
            del seen[next(iter(seen))]
        seen[addr] = (token, now)

    def _reusable_token(self, addr: Addr, now: float) -> bytes | None:
        entry = self._tokens_seen.get(addr)
        return entry[0] if entry is not None and now - entry[1] < TOKEN_REUSE else None

    def _fetched(self, search: Search, values: list[Value], sent: float) -> None:
        """Values that came whole need no fetch by id for the gets started before `sent`."""
        if not search.gets:
            return
        for v in values:
            fetch = search.fetches.get((v.id, v.seq))
            if fetch is None:
                if len(search.fetches) >= MAX_FETCHES:
                    continue
                fetch = search.fetches[(v.id, v.seq)] = Fetch(v.id, v.seq)
            fetch.fetched = max(fetch.fetched, sent)

    @staticmethod
    def _common_where(search: Search) -> tuple:
        """The gets' filter, sent to the storers when every get of the search shares it."""
        wheres = {op.query.where if op.query else () for op in search.gets}
        return wheres.pop() if len(wheres) == 1 else ()

    def _listed(self, search: Search, sn: SearchNode, fields: FieldIndex) -> None:
        """A node listed the (id, seq) it holds: remember it as a source of each."""
        if FIELD_ID not in fields.fields:
            return
        i_id = fields.fields.index(FIELD_ID)
        i_seq = fields.fields.index(FIELD_SEQ) if FIELD_SEQ in fields.fields else None
        for row in fields.rows[:MAX_FETCHES]:
            vid, seq = row[i_id], row[i_seq] if i_seq is not None else 0
            if type(vid) is not int or type(seq) is not int:
                self.stats["get_bad_id_rows"] += 1
                continue
            fetch = search.fetches.get((vid, seq))
            if fetch is None:
                if len(search.fetches) >= MAX_FETCHES:
                    self.stats["get_ids_dropped"] += 1
                    continue
                fetch = search.fetches[(vid, seq)] = Fetch(vid, seq)
            if sn not in fetch.sources:
                fetch.sources.append(sn)

    def _pump_fetches(self, search: Search, since: float, now: float) -> None:
        """Fetch by id what the gets still miss, FETCH_IN_FLIGHT at a time."""
        if not search.gets or not search.fetches:
            return
        asked = search.inline
        if asked is not None and asked.pending and not asked.slow:
            return      # what it sends whole is not fetched again
        inflight = sum(1 for f in search.fetches.values() if f.pending)
        for fetch in search.fetches.values():
            if inflight >= FETCH_IN_FLIGHT:
                return
            while fetch.wanted(since) and fetch.sources[0].failed:
                fetch.sources.pop(0)
            if fetch.wanted(since):
                self._send_fetch(search, fetch, fetch.sources.pop(0), now)
                inflight += 1

    def _send_fetch(self, search: Search, fetch: Fetch, sn: SearchNode, now: float) -> None:
        fetch.pending = True

        def on_reply(msg: Message, t: float) -> None:
            fetch.pending = False
            if msg.kind != "e":
                fetch.fetched = now
                if msg.values:
                    self._found_values(search, msg.values)
            self._step(search, t)

        def on_expire(t: float) -> None:
            fetch.pending = False
            self._step(search, t)

        q = Query((), ((FIELD_ID, fetch.vid),))
        self._request(sn.node.addr, sn.node, "get", {"h": search.target, "q": q.pack()}, now,
                      on_reply, on_expire)

    def _synced(self, search: Search, synced: list[SearchNode], now: float) -> None:
        hops = 1 + max(sn.depth for sn in synced)
        for op in [op for op in search.gets if all(sn.last_get >= op.started for sn in synced)
                   and not search.fetches_busy(op.started)]:
            op.ok, op.hops = True, max(op.hops, hops)
            search.gets.remove(op)
            self._search_done(op, search)
        if not search.gets:
            search.fetches.clear()
        for op in list(search.puts):       # sending happened in _write_early
            if all(op.id in sn.acked for sn in synced):
                if not op.permanent:
                    search.puts.remove(op)
                self._search_done(op, search)

    def _search_failed(self, search: Search) -> None:
        for op in search.gets:
            self._search_done(op, search)
        search.gets.clear()
        search.fetches.clear()
        for op in list(search.puts):
            if not op.permanent:
                search.puts.remove(op)
            self._search_done(op, search)

    def _search_done(self, op: GetOp | PutOp, search: Search) -> None:
        op.searches.discard(search)
        if op.searches or self.ops.get(op.id) is not op:
            return
        if isinstance(op, GetOp):
            self._events.append(ev.GetDone(op.id, op.ok, op.hops))
            del self.ops[op.id]
        elif not op.reported:
            op.reported = True
            self._events.append(ev.PutDone(op.id, len(op.stored)))
            if not op.permanent:
                del self.ops[op.id]

    # --- put and listen on the closest nodes ----------------------------------------------

    def _send_put(self, search: Search, sn: SearchNode, op: PutOp, now: float,
                  token: bytes | None = None) -> None:
        """`token`: one the node gave us in another search (not yet synced here)."""
        tag = op.id   # per put operation: a new put of the same value id is sent again
        sn.put_pending.add(tag)

        def on_reply(msg: Message, t: float) -> None:
            sn.put_pending.discard(tag)
            if msg.kind == "e":
                if msg.error and msg.error[0] == UNAUTHORIZED and token is not None:
                    self._tokens_seen.pop(sn.node.addr, None)   # sent again once synced
                elif msg.error and msg.error[0] == UNAUTHORIZED:
                    sn.forget_token()
                else:
                    sn.failed = True
            else:
                sn.acked[tag] = t
                sn.slow = False
                op.stored.add(sn.node.id)
            self._step(search, t)

        def on_expire(t: float) -> None:
            sn.put_pending.discard(tag)
            sn.failed = True
            self._step(search, t)

        self._request(sn.node.addr, sn.node, "put", {"h": search.target, "token": token or sn.token},
                      now, on_reply, on_expire, values=[op.value],
                      on_retry=lambda t: self._slow(search, sn, t))

    def _send_listen(self, search: Search, sn: SearchNode, now: float) -> None:
        if sn.listen_sid is None or sn.listen_addr != sn.node.addr:
            self.listen_sids.pop(sn.listen_sid or 0, None)
            sn.listen_sid = self._next_tid()
            sn.listen_addr = sn.node.addr
            self.listen_sids[sn.listen_sid] = (search, sn)
        sn.listen_pending = True
        sid = sn.listen_sid

        def on_reply(msg: Message, t: float) -> None:
            sn.listen_pending = False
            if msg.kind == "e":
                self.listen_sids.pop(sid, None)
                sn.forget_token()
            else:
                sn.listen_time = t
                if msg.token:
                    sn.token = msg.token
            self._step(search, t)

        def on_expire(t: float) -> None:
            sn.listen_pending, sn.failed = False, True
            self.listen_sids.pop(sid, None)
            sn.listen_sid = None
            self._step(search, t)

        args = {"ve": 1, "h": search.target, "token": sn.token, "sid": sid}
        self._request(sn.node.addr, sn.node, "listen", args, now, on_reply, on_expire)

    def _search_refresh(self, search: Search, now: float) -> None:
        """Every ~20 s: keep listens alive, re-announce permanent values, re-step."""
        if self.searches[search.family].get(search.target) is not search:
            return
        for sn in search.nodes:
            if sn.listen_sid is not None and not sn.failed and search.listens and not sn.listen_pending:
                self._send_listen(search, sn, now)
        for op in search.puts:
            if op.permanent:
                self._reannounce(search, op, now)
        if search.listens and self._revive(search, now):
            if self._resume is None:
                self._resume = deque()
            self._resume.append(search)         # stepped within the request window
            self._start_listens(now)
        elif search.busy:
            self._step(search, now)
        self._at(now + LISTEN_REFRESH, lambda t: self._search_refresh(search, t))

    def _revive(self, search: Search, now: float) -> bool:
        """A listen whose storers all failed (e.g. we were offline past their retries) asks
        them again once the shared memory no longer holds them unreachable: a failed search
        node never comes back by itself, and the listen would stay deaf for good."""
        if len(search.live()) >= LISTEN_NODES:
            return False
        revived = False
        for sn in search.nodes:
            if sn.failed and not sn.pending and self._reachable(sn.node, now):
                sn.failed = sn.slow = False
                revived = True
        return revived

    def _reannounce(self, search: Search, op: PutOp, now: float) -> None:
        tag = op.id
        margin = type_expiration(op.value.type) - REANNOUNCE_MARGIN - LISTEN_REFRESH
        for sn in search.nodes:
            acked = sn.acked.get(tag)
            if acked is None or acked > now - margin or sn.failed or tag in sn.put_pending:
                continue
            self._send_refresh(search, sn, op, now)

    def _send_refresh(self, search: Search, sn: SearchNode, op: PutOp, now: float) -> None:
        tag, vid = op.id, op.value.id
        sn.put_pending.add(tag)

        def on_reply(msg: Message, t: float) -> None:
            sn.put_pending.discard(tag)
            if msg.kind == "e":     # 404: the node lost it; 401: re-get a token. Put again.
                sn.acked.pop(tag, None)
                if msg.error and msg.error[0] == UNAUTHORIZED:
                    sn.forget_token()
            else:
                sn.acked[tag] = t
            self._step(search, t)

        def on_expire(t: float) -> None:
            sn.put_pending.discard(tag)
            sn.acked.pop(tag, None)
            sn.failed = True
            self._step(search, t)

        args = {"h": search.target, "vid": vid, "token": sn.token}
        self._request(sn.node.addr, sn.node, "refresh", args, now, on_reply, on_expire)

    # --- bootstrap and maintenance ----------------------------------------------------------

    def _ping_bootstrap(self, now: float) -> None:
        if not self._bootstrap or self.good_nodes(now):
            return
        for addr in self._bootstrap:
            self.ping(addr, now)
        self._at(now + self._bootstrap_wait, self._ping_bootstrap)
        self._bootstrap_wait = min(self._bootstrap_wait * 2, BOOTSTRAP_RETRY_MAX)

    def _check_connectivity(self, now: float) -> None:
        if self._connected:
            return
        self._connected = True
        self._bootstrap_wait = BOOTSTRAP_RETRY
        self._events.append(ev.Connectivity(len(self.good_nodes(now))))
        for fam in self.families:
            if len(self.tables[fam]):
                self._step(self._search(self.id, fam, now), now)   # find our neighbourhood

    def _maintain(self, now: float) -> None:
        good = self.good_nodes(now)
        for fam in self.families:
            table = self.tables[fam]
            for target, node in table.stale_buckets(now)[:4]:
                self._request(node.addr, node, "find", {"target": target}, now,
                              on_reply=functools.partial(self._learn_from, node.addr))
            for node in table.dubious(now)[:4]:
                self.ping(node.addr, now, node)
        if 0 < len(good) < TARGET_NODES:
            for fam in self.families:
                if len(self.tables[fam]):
                    self._step(self._search(self.id, fam, now), now)   # fill our neighbourhood
        if self._connected and not good:
            self._connected = False
            self._events.append(ev.Connectivity(0))
            self._ping_bootstrap(now)
        delay = self.rng.uniform(5, 25) if len(good) < TARGET_NODES else self.rng.uniform(60, 180)
        self._at(now + delay, self._maintain)

    def _housekeeping(self, now: float) -> None:
        for key, vids in self.storage.expire(now):
            self._notify(key, now, expired=vids)
        self._expire_listeners(now)
        self.reassembler.expire(now)
        self.stats["dropped_fragments"] = self.reassembler.dropped
        self._expire_listen_caches(now)
        if now >= self.tokens.next_rotation:
            self.tokens.rotate(now)
        self._drop_idle_searches(now)
        self._at(now + HOUSEKEEPING, self._housekeeping)

    def _expire_listen_caches(self, now: float) -> None:
        """Forget values no storer would still hold, so long listens stay bounded. A heap:
        only the due entries are visited, not every listen's cache every tick."""
        heap = self._cache_heap
        while heap and heap[0][0] <= now:
            _, _, op, vid = heapq.heappop(heap)
            op.queued.discard(vid)
            if self.ops.get(op.id) is not op:
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
        self._cache_until(op, value.id, self.now + type_expiration(value.type))

    def _cache_until(self, op: ListenOp, vid: int, until: float) -> None:
        op.expires[vid] = until
        if vid not in op.queued:        # one heap entry per cached value
            self._queue_cached(op, vid, until)

    def _queue_cached(self, op: ListenOp, vid: int, until: float) -> None:
        op.queued.add(vid)
        heapq.heappush(self._cache_heap, (until, next(self._seq), op, vid))
        if self._cache_dead > len(self._cache_heap) // 2 + 1024:
            self._compact_cache_heap()

    def _compact_cache_heap(self) -> None:
        """Cancelled listens' entries dominate: rebuild the heap from the live listens."""
        heap = []
        for ops in self.local_listens.values():
            for op in ops:
                for vid in op.queued:
                    heap.append((op.expires.get(vid, self.now), next(self._seq), op, vid))
        heapq.heapify(heap)
        self._cache_heap, self._cache_dead = heap, 0

    def _cached(self, fam: int) -> OrderedDict[InfoHash, None]:
        cached = self._cached_searches.get(fam)
        if cached is None:
            cached = self._cached_searches[fam] = OrderedDict()
        return cached

    def _held_changed(self, search: Search) -> None:
        """A search holding a listen or a permanent put is never dropped, so it leaves the
        cached (droppable) set; it comes back, as most recently used, once released."""
        cached = self._cached(search.family)
        if self.searches[search.family].get(search.target) is not search:
            return
        if search.listens or any(op.permanent for op in search.puts):
            cached.pop(search.target, None)
        else:
            cached[search.target] = None
            cached.move_to_end(search.target)

    def _drop_idle_searches(self, now: float, force: bool = False) -> None:
        """Drop cached searches idle for SEARCH_IDLE (force: the least recently used ones,
        down to MAX_SEARCHES), oldest first; visits only those and the busy ones it meets."""
        for fam, cached in self._cached_searches.items():
            searches = self.searches[fam]
            busy: list[InfoHash] = []
            for _ in range(len(cached)):
                key = next(iter(cached))
                search = searches[key]
                if (len(cached) + len(busy) < MAX_SEARCHES if force
                        else now - search.last_used <= SEARCH_IDLE):
                    break
                cached.popitem(last=False)
                if search.busy:         # a get or put in progress: kept, looked at later
                    busy.append(key)
                else:
                    del searches[key]
            for key in busy:
                cached[key] = None
