"""The sans-IO DHT engine: OpenDHT's protocol without sockets or clocks.

Feed it datagrams with `receive_datagram(data, addr, now)`, send what
`datagrams_to_send(now)` returns, call `handle_timer(now)` at `get_timer()`, and
read results with `next_event()`. Operations (get, put, listen) return an op id
that the events refer to. Everything it holds is bounded, and every datagram it
drops is counted in `stats`.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import logging
import os
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import events as ev
from .fragments import Reassembler, fragment_datagrams, split_values
from .infohash import ZERO, InfoHash
from .messages import (
    AF_INET,
    AF_INET6,
    NON_AUTHORITATIVE_INFORMATION,
    NOT_FOUND,
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
from .ratelimit import QueryLimits
from .routing import MAX_FAILURES, K, Node, RoutingTable
from .search import LISTEN_NODES, MAX_IN_FLIGHT, TARGET_NODES, Search, SearchNode
from .storage import EditPolicy, Listener, Storage, StoreStatus
from .tokens import Tokens
from .values import Query, Value, type_expiration

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
FIRST_TIMEOUT = 0.5
LISTEN_REFRESH = 20.0          # LISTEN_EXPIRE_TIME - REANNOUNCE_MARGIN
REANNOUNCE_MARGIN = 10.0
HOUSEKEEPING = 2.0
SEARCH_IDLE = 62 * 60.0
BOOTSTRAP_RETRY, BOOTSTRAP_RETRY_MAX = 10.0, 300.0
MAX_SEARCHES = 4096


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
    wait: float = FIRST_TIMEOUT
    done: bool = False


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


class DhtEngine:
    def __init__(self, node_id: InfoHash | None = None, *, network: int = 0,
                 rate_limit: bool = True, max_storage: int = 64 * 1024 * 1024,
                 client_only: bool = False, policy: EditPolicy | None = None,
                 families: tuple[int, ...] = (4, 6), now: float = 0.0,
                 epoch_offset: float = 0.0) -> None:
        self.id = node_id or InfoHash.random()
        self.network = network
        self.client_only = client_only
        self.families = families
        self.epoch_offset = epoch_offset   # wall-clock seconds = now + epoch_offset
        self.tables = {f: RoutingTable(self.id) for f in (4, 6)}
        self.storage = Storage(max_total=max_storage, policy=policy)
        self.tokens = Tokens(now)
        self.limits = QueryLimits(rate_limit)
        self.reassembler = Reassembler()
        self.stats: Counter[str] = Counter()
        self.searches: dict[int, dict[InfoHash, Search]] = {4: {}, 6: {}}
        self.requests: dict[int, Request] = {}
        self.listen_sids: dict[int, tuple[Search, SearchNode]] = {}
        self.local_listens: dict[InfoHash, list[ListenOp]] = {}
        self.ops: dict[int, GetOp | PutOp | ListenOp] = {}
        self._out: list[tuple[bytes, Addr]] = []
        self._events: deque[ev.Event] = deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._op_ids = itertools.count(1)
        self._tid = int.from_bytes(os.urandom(4), "big")
        self._bootstrap: list[Addr] = []
        self._bootstrap_wait = BOOTSTRAP_RETRY
        self._connected = False
        self.now = now          # last time given to any entry point
        self._at(now + HOUSEKEEPING, self._housekeeping)
        self._at(now + random.uniform(5, 25), self._maintain)

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

    def next_event(self) -> ev.Event | None:
        return self._events.popleft() if self._events else None

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        self.now = now
        self.stats["received"] += 1
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
        msg = self._reassemble(msg, addr, now)
        if msg is None:
            return
        if msg.id is None or msg.id == ZERO or msg.id == self.id:
            self.stats["dropped_bad_id"] += 1
            return
        {"q": self._on_query, "r": self._on_reply, "e": self._on_error,
         "u": self._on_legacy_update}[msg.kind](msg, addr, now)

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
        self._attach(op, key, "listens", now)
        return op.id

    def cancel(self, op_id: int, now: float) -> None:
        """Stop a listen or a permanent put; the remote subscriptions time out on their own."""
        op = self.ops.pop(op_id, None)
        if op is None:
            return
        if isinstance(op, ListenOp):
            self.local_listens.get(op.key, []).remove(op)
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

    # --- plumbing ---------------------------------------------------------------------------

    def _at(self, when: float, fn: Callable[[float], None]) -> Timer:
        timer = Timer(when, fn)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def _next_tid(self) -> int:
        self._tid = (self._tid + 1) & 0xFFFFFFFF or 1
        return self._tid

    def _send(self, data: bytes, addr: Addr) -> None:
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
        req = Request(tid, addr, node, datagrams, on_reply, on_expire, on_error, on_retry)
        self.requests[tid] = req
        for d in datagrams:
            self._send(d, addr)
        self._at(now + req.wait, lambda t: self._request_timeout(req, t))
        return req

    def _request_timeout(self, req: Request, now: float) -> None:
        if req.done:
            return
        if req.attempts < MAX_ATTEMPTS:
            req.attempts += 1
            req.wait = req.wait * 2 + random.uniform(0, 0.25)
            for d in req.datagrams:
                self._send(d, req.addr)
            self._at(now + req.wait, lambda t: self._request_timeout(req, t))
            if req.on_retry is not None:
                req.on_retry(now)
            return
        req.done = True
        self.requests.pop(req.tid, None)
        self.stats["requests_expired"] += 1
        if req.node is not None:
            req.node.failures = MAX_FAILURES
        req.on_expire(now)

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

    def _reassemble(self, msg: Message, addr: Addr, now: float) -> Message | None:
        if msg.kind == "p":
            done = self.reassembler.fragment(msg, addr, now)
        elif msg.value_sizes:
            done = self.reassembler.header(msg, addr, now)
        else:
            return msg
        self.stats["dropped_fragments"] = self.reassembler.dropped
        return done

    def _want(self, msg: Message, addr: Addr) -> set[int]:
        if msg.want:
            return {4 for w in msg.want if w == AF_INET} | {6 for w in msg.want if w == AF_INET6}
        return {family_of(addr)}

    def _nodes_body(self, target: InfoHash, families: set[int], now: float) -> dict[str, Any]:
        body: dict[str, Any] = {}
        for fam in sorted(families):
            nodes = self.tables[fam].closest(target, K, now, good_only=True)
            if nodes:
                body[f"n{fam}"] = pack_nodes([(n.id, n.addr) for n in nodes], fam)
        return body

    def _reply(self, msg: Message, addr: Addr, body: dict[str, Any],
               values: list[Value] | None = None, tid: int | None = None) -> None:
        tid = msg.tid if tid is None else tid
        body = {"id": self.id, "sa": address_bytes(addr[0]), **body}
        packed: list[bytes] = []
        if values:
            body["values"], packed = split_values(values)
        self._send(encode_reply(tid, body, self.network, self.client_only), addr)
        for d in fragment_datagrams(tid, packed, self.network):
            self._send(d, addr)

    def _error(self, msg: Message, addr: Addr, code: int, text: str) -> None:
        self.stats[f"error_sent_{code}"] += 1
        self._send(encode_error(msg.tid, code, text, self.id, self.network), addr)

    def _learn(self, msg: Message, addr: Addr, now: float) -> list[Node]:
        """Insert the nodes a reply lists; loopback entries from a remote sender use its IP."""
        learnt = []
        sender_loopback = _is_loopback(addr[0])
        for fam, entries in ((4, msg.n4), (6, msg.n6)):
            for nid, naddr in entries:
                if nid == self.id or is_martian(naddr):
                    continue
                if _is_loopback(naddr[0]) and not sender_loopback:
                    if family_of(addr) != fam:
                        continue
                    naddr = (addr[0], naddr[1])
                node = self.tables[fam].update(nid, naddr, now, 0)
                # A full bucket only caches the node, but searches still need it.
                learnt.append(node if node is not None else Node(nid, naddr))
        return learnt

    # --- serving queries --------------------------------------------------------------------

    def _on_query(self, msg: Message, addr: Addr, now: float) -> None:
        # rate limited in _admit, before reassembly
        self.stats[f"query_{msg.query}"] += 1
        if not msg.client:
            self._heard_query(msg.id, addr, now)
        getattr(self, f"_serve_{msg.query}")(msg, addr, now)

    def _heard_query(self, node_id: InfoHash, addr: Addr, now: float) -> None:
        """A newcomer that queries us is pinged once, so it can become good and be shared."""
        table = self.tables[family_of(addr)]
        known = table.find(node_id) is not None
        node = table.update(node_id, addr, now, 1)
        if node is not None and not known and not node.is_good(now):
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
        values = self.storage.get(msg.h, msg.q, now)
        if msg.q is not None and msg.q.select:
            body["fileds"] = self._select(msg.q, values)
            values = []
        self._reply(msg, addr, body, values)

    @staticmethod
    def _select(q: Query, values: list[Value]) -> dict[str, Any]:
        return {"f": list(q.select), "v": [x for v in values for x in q.field_values(v)]}

    def _check_write(self, msg: Message, addr: Addr, what: str) -> bool:
        if msg.h is None:
            self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, f"{what} with no info_hash")
            return False
        if not self.tokens.check(msg.token, addr):
            self._error(msg, addr, UNAUTHORIZED, f"{what} with wrong token")
            return False
        return True

    def _serve_put(self, msg: Message, addr: Addr, now: float) -> None:
        if not self._check_write(msg, addr, "Put"):
            return
        if not msg.values or any(v.id == 0 for v in msg.values):
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Put with invalid id")
        created = None if msg.created is None else msg.created - self.epoch_offset
        for value in msg.values:
            if not self.client_only:
                self._store_remote(msg.h, value, now, addr[0], created)
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
        if not self._check_write(msg, addr, "Refresh"):
            return
        found = self.storage.refresh(msg.h, msg.vid or 0, now)
        if found is None:
            return self._error(msg, addr, NOT_FOUND, "Access operation for unknown storage")
        self._reply(msg, addr, {"vid": msg.vid or 0})
        self._notify(msg.h, now, refreshed=[msg.vid or 0])

    def _serve_listen(self, msg: Message, addr: Addr, now: float) -> None:
        if not self._check_write(msg, addr, "Listen"):
            return
        sid = msg.sid if msg.sid is not None else msg.tid
        listener = Listener(msg.id, addr, sid, msg.q or Query(), min(msg.version, 1), now)
        new = self.storage.add_listener(msg.h, listener)
        self._reply(msg, addr, {"token": self.tokens.make(addr)})
        values = self.storage.get(msg.h, listener.query, now)
        if new and values:
            self._push(msg.h, listener, now, values=values)

    def _serve_update(self, msg: Message, addr: Addr, now: float) -> None:
        self._reply(msg, addr, {})
        entry = self.listen_sids.get(msg.sid) if msg.sid is not None else None
        if entry is None:
            self.stats["update_unknown_sid"] += 1
            return
        search, sn = entry
        if msg.token:
            sn.token = msg.token
        self._listen_notification(search, msg)

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
                          on_expire=lambda t: self.storage.remove_listener(key, lst.node_id, lst.sid),
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
            entry = self.listen_sids.get(msg.tid)
            if entry is not None and msg.has_values:      # legacy listen notification
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
        del self.requests[req.tid]
        if msg.client:
            return
        node = self.tables[family_of(addr)].update(msg.id, addr, now, 2)
        if req.node is None:
            req.node = node
        elif node is not None and node is not req.node:
            req.node.heard(now, True)
        self._check_connectivity(now)

    def _on_legacy_update(self, msg: Message, addr: Addr, now: float) -> None:
        entry = self.listen_sids.get(msg.tid)
        if entry is None:
            self.stats["unmatched_reply"] += 1
            return
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
            op.known[v.id] = v
            op.expires[v.id] = self.now + type_expiration(v.type)
        if fresh:
            self._events.append(ev.ListenValues(op.id, kind, fresh))

    def _listen_ids(self, op: ListenOp, kind: str, vids: list[int]) -> None:
        values = [op.known[vid] for vid in vids if vid in op.known]
        for v in values:
            if kind == "expire":
                del op.known[v.id], op.expires[v.id]
            else:
                op.expires[v.id] = self.now + type_expiration(v.type)
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
        for search in list(op.searches):
            self._step(search, now)

    def _search(self, key: InfoHash, fam: int, now: float) -> Search:
        search = self.searches[fam].get(key)
        if search is None:
            if len(self.searches[fam]) >= MAX_SEARCHES:
                self._drop_idle_searches(now, force=True)
            search = self.searches[fam][key] = Search(key, fam, now)
            self._at(now + LISTEN_REFRESH, lambda t: self._search_refresh(search, t))
        search.last_used = now
        self._refill(search, now)
        return search

    def _refill(self, search: Search, now: float) -> None:
        if len(search.live()) >= TARGET_NODES:
            return
        for node in self.tables[search.family].closest(search.target, 14, now):
            search.insert(node)

    def _step(self, search: Search, now: float) -> None:
        self._refill(search, now)
        live = search.live()
        inflight = search.in_flight()
        newest_get = max((op.started for op in search.gets), default=float("-inf"))
        for sn in live[:TARGET_NODES]:
            if inflight >= MAX_IN_FLIGHT:
                break
            if not sn.pending and (not sn.synced(now) or sn.last_get < newest_get):
                self._send_get(search, sn, now)
                inflight += 1
        self._write_early(search, live, now)
        synced = search.synced_nodes(now)
        if synced is not None:
            self._synced(search, synced, now)
        elif not live and inflight == 0:
            self._search_failed(search)

    def _write_early(self, search: Search, live: list[SearchNode], now: float) -> None:
        """Put and listen on each close node as soon as it has given us a token, without
        waiting for the whole search to sync: a listener then hears a new value at once.
        Completion is still judged on the synced set."""
        for sn in live[:TARGET_NODES]:
            if not sn.synced(now):
                continue
            for op in search.puts:
                if op.id not in sn.acked and op.id not in sn.put_pending:
                    self._send_put(search, sn, op, now)
        if search.listens:
            for sn in live[:LISTEN_NODES]:
                if sn.synced(now) and sn.listen_sid is None and not sn.listen_pending:
                    self._send_listen(search, sn, now)

    def _send_get(self, search: Search, sn: SearchNode, now: float) -> None:
        sn.pending = True
        want = [AF_INET, AF_INET6] if len(self.families) > 1 else (
            [AF_INET] if self.families == (4,) else [AF_INET6])
        if search.busy:
            name, args = "get", {"h": search.target, "w": want}
        else:
            name, args = "find", {"target": search.target, "w": want}

        def on_reply(msg: Message, t: float) -> None:
            sn.pending = False
            if msg.kind == "e":
                sn.failed = True
            else:
                if name == "get":
                    sn.last_get = now
                self._search_reply(search, sn, msg, t)
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

    def _search_reply(self, search: Search, sn: SearchNode, msg: Message, now: float) -> None:
        sn.slow = False
        if msg.token:
            sn.token, sn.last_reply = msg.token, now
        for node in self._learn(msg, sn.node.addr, now):
            if family_of(node.addr) == search.family:
                search.insert(node, sn.depth + 1)
        if msg.values:
            for op in search.gets:
                self._deliver_get(op, msg.values)
            for op in search.listens:
                self._listen_values(op, "add", msg.values)

    def _synced(self, search: Search, synced: list[SearchNode], now: float) -> None:
        hops = 1 + max(sn.depth for sn in synced)
        for op in [op for op in search.gets if all(sn.last_get >= op.started for sn in synced)]:
            op.ok, op.hops = True, max(op.hops, hops)
            search.gets.remove(op)
            self._search_done(op, search)
        for op in list(search.puts):       # sending happened in _write_early
            if all(op.id in sn.acked for sn in synced):
                if not op.permanent:
                    search.puts.remove(op)
                self._search_done(op, search)

    def _search_failed(self, search: Search) -> None:
        for op in search.gets:
            self._search_done(op, search)
        search.gets.clear()
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

    def _send_put(self, search: Search, sn: SearchNode, op: PutOp, now: float) -> None:
        tag = op.id   # per put operation: a new put of the same value id is sent again
        sn.put_pending.add(tag)

        def on_reply(msg: Message, t: float) -> None:
            sn.put_pending.discard(tag)
            if msg.kind == "e":
                if msg.error and msg.error[0] == UNAUTHORIZED:
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

        self._request(sn.node.addr, sn.node, "put", {"h": search.target, "token": sn.token},
                      now, on_reply, on_expire, values=[op.value],
                      on_retry=lambda t: self._slow(search, sn, t))

    def _send_listen(self, search: Search, sn: SearchNode, now: float) -> None:
        if sn.listen_sid is None:
            sn.listen_sid = self._next_tid()
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
        if search.busy:
            self._step(search, now)
        self._at(now + LISTEN_REFRESH, lambda t: self._search_refresh(search, t))

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
                              on_reply=lambda m, t: self._learn_reply(m, t))
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
        delay = random.uniform(5, 25) if len(good) < TARGET_NODES else random.uniform(60, 180)
        self._at(now + delay, self._maintain)

    def _learn_reply(self, msg: Message, now: float) -> None:
        for fam, entries in ((4, msg.n4), (6, msg.n6)):
            for nid, naddr in entries:
                if nid != self.id and not is_martian(naddr):
                    self.tables[fam].update(nid, naddr, now, 0)

    def _housekeeping(self, now: float) -> None:
        for key, vids in self.storage.expire(now):
            self._notify(key, now, expired=vids)
        self.storage.expire_listeners(now)
        self.reassembler.expire(now)
        self.stats["dropped_fragments"] = self.reassembler.dropped
        self._expire_listen_caches(now)
        if now >= self.tokens.next_rotation:
            self.tokens.rotate(now)
        self._drop_idle_searches(now)
        self._at(now + HOUSEKEEPING, self._housekeeping)

    def _expire_listen_caches(self, now: float) -> None:
        """Forget values no storer would still hold, so long listens stay bounded."""
        for op in self.ops.values():
            if isinstance(op, ListenOp):
                stale = [vid for vid, t in op.expires.items() if t <= now]
                for vid in stale:
                    del op.known[vid], op.expires[vid]

    def _drop_idle_searches(self, now: float, force: bool = False) -> None:
        for searches in self.searches.values():
            for key, search in list(searches.items()):
                idle = now - search.last_used > (0 if force else SEARCH_IDLE)
                if not search.busy and idle:
                    del searches[key]
