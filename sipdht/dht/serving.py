"""Answering other nodes' queries: the replies, what an unproven source may be sent
(the amplification budget), the pings that prove it (challenges), and the updates pushed
to the listeners we serve.

A source is unproven until it has shown it receives what we send to that address (it
echoed a tid or a write token): a spoofed query must not make us send much more than it
cost (proofs.py). The budget is charged on every datagram to that address while its
query is served, whoever sends it (Context.send).
"""

from __future__ import annotations

import itertools
from typing import Any

from .addresses import family_of
from .context import Context
from .fragments import fits_inline, fragment_datagrams
from .infohash import InfoHash
from .listeners import Listener, Listeners
from .messages import (
    AF_INET,
    AF_INET6,
    NON_AUTHORITATIVE_INFORMATION,
    NOT_FOUND,
    QUERIES,
    UNAUTHORIZED,
    Addr,
    Message,
    address_bytes,
    encode_error,
    encode_legacy_update,
    encode_reply,
    pack_nodes,
)
from .operations import Operations
from .proofs import AddressProofs
from .requests import Requests, ignore
from .routing import K
from .searches import Searches
from .storage import Storage, StoreStatus
from .tokens import Tokens
from .values import Query, Value, packb

# What one get reply (or a new listener's first push) may carry, whatever is stored: a
# burst a socket buffer holds. Callers page through the rest by id, as OpenDHT clients do.
MAX_REPLY_VALUES = 64
MAX_REPLY_BYTES = 32 * 1024         # at least one value is always sent, whatever its size
MAX_REPLY_IDS = 1024                # rows of a select reply (~10 bytes each)
CHALLENGE_INTERVAL = 5.0    # between two pings proving one unproven source (proofs.py)
MAX_CHALLENGES = 4096
# Packed node lists of find/get replies are reused for the same target within one window of
# this long (then all are dropped, so an idle engine holds at most one window's worth).
NODES_CACHE_TIME, MAX_NODES_CACHE = 1.0, 256
# query name -> (its stats counter, the method serving it): no string building per query
_SERVE = {q: (f"query_{q}", f"_serve_{q}") for q in QUERIES}


class Serving:
    """Serves queries from the store, the routing tables and the listeners."""

    __slots__ = ("ctx", "requests", "storage", "tokens", "proofs", "listeners", "searches",
                 "ops", "epoch_offset", "challenged", "nodes_cache", "nodes_cache_until")

    def __init__(self, ctx: Context, requests: Requests, storage: Storage, tokens: Tokens,
                 listeners: Listeners, searches: Searches, ops: Operations,
                 epoch_offset: float) -> None:
        self.ctx = ctx
        self.requests = requests
        self.storage = storage
        self.tokens = tokens
        self.proofs = AddressProofs()
        self.listeners = listeners
        self.searches = searches        # where updates for our own listens go
        self.ops = ops                  # where changes to what we store go for them
        self.epoch_offset = epoch_offset   # wall-clock seconds = now + epoch_offset
        self.challenged: dict[Addr, float] = {}     # unproven sources we pinged, and when
        self.nodes_cache: dict[tuple[InfoHash, tuple[int, ...]], dict[str, Any]] = {}
        self.nodes_cache_until = ctx.now        # see _nodes_body

    def on_query(self, msg: Message, addr: Addr, now: float, size: int) -> None:
        """`size`: of the datagram that completed it, what an unproven source's budget
        grows by. Rate limited before reassembly (DhtEngine._admit)."""
        ctx = self.ctx
        counter, serve = _SERVE[msg.query or ""]     # decode() made it one of QUERIES
        ctx.stats[counter] += 1
        ip = addr[0]
        if not self.proofs.proven(ip, now):     # maybe spoofed: answer within a budget
            allowed = self.proofs.allowance(ip, size, now)
            ctx.budget = (addr, [allowed])
        try:
            if not msg.client and msg.id is not None:
                self._heard_query(msg.id, addr, now)
            getattr(self, serve)(msg, addr, now)
        finally:
            if ctx.budget is not None:
                self.proofs.spend(ip, allowed - ctx.budget[1][0], now)
                ctx.budget = None

    def proven(self, addr: Addr, now: float) -> None:
        """It received what we sent to that address: no budget for it from now on."""
        self.proofs.prove(addr[0], now)
        budget = self.ctx.budget
        if budget is not None and budget[0][0] == addr[0]:
            self.ctx.budget = None

    def _heard_query(self, node_id: InfoHash, addr: Addr, now: float) -> None:
        """A newcomer that queries us is pinged once, so it can become good and be shared."""
        table = self.ctx.tables[family_of(addr)]
        known = table.find(node_id) is not None
        node = table.update(node_id, addr, now, 1)
        if node is not None and not known and not node.is_good(now):
            self._note_challenge(addr, now)   # this ping also proves an unproven source
            self.requests.ping(addr, now, node)

    # --- the queries ------------------------------------------------------------------------

    def _serve_ping(self, msg: Message, addr: Addr, now: float) -> None:
        self.reply(msg, addr, {})

    def _serve_find(self, msg: Message, addr: Addr, now: float) -> None:
        target = msg.target or msg.h
        if target is None:
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Find node with no target")
        body = self._nodes_body(target, self._want(msg, addr), now)
        self.reply(msg, addr, {**body, "token": self.tokens.make(addr)})

    def _serve_get(self, msg: Message, addr: Addr, now: float) -> None:
        if msg.h is None:
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Get_values with no info_hash")
        body = self._nodes_body(msg.h, self._want(msg, addr), now)
        body["token"] = self.tokens.make(addr)
        values = self._fair(msg.h, self.storage.get(msg.h, msg.q, now))
        if values and self.ctx.budget is not None:
            # Unproven, and values to hand out: ping it before answering, so that its
            # by-id fetches (or retry) find it proven instead of being withheld.
            self._challenge(addr, now)
        if msg.q is not None and msg.q.select:
            body["fileds"] = _select(msg.q, values[:MAX_REPLY_IDS])
            values = []
        self.reply(msg, addr, body, _capped(values))

    def _serve_put(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Put")
        if key is None:
            return
        if not msg.values or any(v.id == 0 for v in msg.values):
            return self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, "Put with invalid id")
        created = None if msg.created is None else msg.created - self.epoch_offset
        for value in msg.values:
            if not self.ctx.client_only:
                self._store_remote(key, value, now, addr[0], created)
            # OpenDHT answers success even when it refuses to store.
            self.reply(msg, addr, {"vid": value.id})

    def _store_remote(self, key: InfoHash, value: Value, now: float, ip: str,
                      created: float | None) -> None:
        result = self.storage.store(key, value, now, source=ip, created=created)
        self.ctx.stats[f"store_{result.status.name.lower()}"] += 1
        if result.status in (StoreStatus.NEW, StoreStatus.EDITED):
            self.notify(key, now, values=[value])
        elif result.status is StoreStatus.REFRESHED:
            self.notify(key, now, refreshed=[value.id])
        for ekey, vid in result.evicted:
            self.notify(ekey, now, expired=[vid])

    def _serve_refresh(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Refresh")
        if key is None:
            return
        found = self.storage.refresh(key, msg.vid or 0, now)
        # A key with listeners only is storage OpenDHT knows (one entry holds both): an
        # unknown value there is not a 404.
        if found is None and not self.listeners.count(key):
            return self._error(msg, addr, NOT_FOUND, "Access operation for unknown storage")
        self.reply(msg, addr, {"vid": msg.vid or 0})
        self.notify(key, now, refreshed=[msg.vid or 0])

    def _serve_listen(self, msg: Message, addr: Addr, now: float) -> None:
        key = self._check_write(msg, addr, "Listen")
        if key is None or msg.id is None:
            return
        sid = msg.sid if msg.sid is not None else msg.tid
        listener = Listener(msg.id, addr, sid, msg.q or Query(), min(msg.version, 1), now)
        new = self.listeners.subscribe(key, listener)
        if new is None:
            self.ctx.stats["listen_refused_cap"] += 1      # dropped, like a rate-limited query
            return
        self.reply(msg, addr, {"token": self.tokens.make(addr)})
        values = _capped(self._fair(key, self.storage.get(key, listener.query, now)))
        if new and values:
            self._push(key, listener, now, values=values)

    def _serve_update(self, msg: Message, addr: Addr, now: float) -> None:
        self.reply(msg, addr, {})
        if msg.sid is not None:
            self.searches.listen_update(msg.sid, msg, addr, token=True)

    def _check_write(self, msg: Message, addr: Addr, what: str) -> InfoHash | None:
        """The key a put/refresh/listen writes to, or None (and an error sent)."""
        if msg.h is None:
            self._error(msg, addr, NON_AUTHORITATIVE_INFORMATION, f"{what} with no info_hash")
            return None
        if not self.tokens.check(msg.token, addr):
            self._error(msg, addr, UNAUTHORIZED, f"{what} with wrong token")
            return None
        self.proven(addr, self.ctx.now)     # it received the reply that carried the token
        return msg.h

    # --- the listeners we serve -------------------------------------------------------------

    def notify(self, key: InfoHash, now: float, values: list[Value] | None = None,
               refreshed: list[int] | None = None, expired: list[int] | None = None) -> None:
        """What we store at key changed: tell its listeners, then our own listens of it."""
        for listener in self.listeners.of(key):
            matching = [v for v in values if listener.query.matches(v)] if values else None
            if values and not matching:
                continue
            self._push(key, listener, now, matching, refreshed, expired)
        self.ops.notify_local(key, values, refreshed, expired)

    def _push(self, key: InfoHash, lst: Listener, now: float, values: list[Value] | None = None,
              refreshed: list[int] | None = None, expired: list[int] | None = None) -> None:
        ctx = self.ctx
        token = self.tokens.make(lst.addr)
        if lst.version >= 1:
            args: dict[str, Any] = {"sid": lst.sid, "token": token}
            if values:
                args.update({"ve": 1, "h": key})
            if refreshed:
                args["re"] = refreshed
            if expired:
                args["exp"] = expired
            self.requests.send(lst.addr, None, "update", args, now, on_reply=ignore,
                               on_expire=lambda t: self.listeners.drop(key, lst),
                               values=values or None)
            return
        if values:
            fake = Message(kind="q", tid=lst.sid)
            self.reply(fake, lst.addr, {"token": token}, values)
        else:
            body: dict[str, Any] = {"id": ctx.id, "token": token}
            body["re" if refreshed else "exp"] = refreshed or expired
            ctx.send(encode_legacy_update(lst.sid, body, ctx.network), lst.addr)

    # --- replies ----------------------------------------------------------------------------

    def reply(self, msg: Message, addr: Addr, body: dict[str, Any],
              values: list[Value] | None = None) -> None:
        ctx = self.ctx
        tid = msg.tid
        body = {"id": ctx.id, "sa": address_bytes(addr[0]), **body}
        datagrams = self._datagrams(tid, body, values)
        budget = ctx.budget
        if budget is not None and budget[0] == addr:
            room = budget[1][0]
            while sum(map(len, datagrams)) > room and self._trim_nodes(body):
                datagrams = self._datagrams(tid, body, values)
            if sum(map(len, datagrams)) > room and (values or "fileds" in body):
                # Values (or a value-id listing) are never cut short, which would read as
                # "nothing stored": the reply is withheld, and the requester's retry finds
                # it proven by our ping.
                ctx.stats["reply_withheld_unproven"] += 1
                self._challenge(addr, ctx.now)
                return
        send = ctx.send
        for d in datagrams:
            send(d, addr)

    def _datagrams(self, tid: int, body: dict[str, Any], values: list[Value] | None
                   ) -> list[bytes]:
        network, client_only = self.ctx.network, self.ctx.client_only
        if not values:
            return [encode_reply(tid, body, network, client_only)]
        packed = [packb(v) for v in values]          # made once per stored value
        if fits_inline(packed):
            return [encode_reply(tid, body, network, client_only, packed)]
        return ([encode_reply(tid, {**body, "values": [len(p) for p in packed]}, network,
                              client_only)]
                + fragment_datagrams(tid, packed, network))

    def _trim_nodes(self, body: dict[str, Any]) -> bool:
        """Drop one node record (IPv6 first) from a reply; False when none is left."""
        for key, rec in (("n6", 38), ("n4", 26)):
            if key in body:
                body[key] = body[key][:-rec]
                if not body[key]:
                    del body[key]
                self.ctx.stats["reply_trimmed_unproven"] += 1
                return True
        return False

    def _error(self, msg: Message, addr: Addr, code: int, text: str) -> None:
        ctx = self.ctx
        ctx.stats[f"error_sent_{code}"] += 1
        ctx.send(encode_error(msg.tid, code, text, ctx.id, ctx.network), addr)

    def _challenge(self, addr: Addr, now: float) -> None:
        """Ping an unproven source whose answer we withheld: once it replies, its retry
        is answered in full. At most one ping per address every CHALLENGE_INTERVAL."""
        if now - self.challenged.get(addr, float("-inf")) < CHALLENGE_INTERVAL:
            return
        if self._note_challenge(addr, now):
            self.ctx.stats["challenge_ping"] += 1
            self.requests.ping(addr, now)

    def _note_challenge(self, addr: Addr, now: float) -> bool:
        """Remember a ping to a source (bounded: recent entries only); False when full."""
        if len(self.challenged) >= MAX_CHALLENGES:
            self.challenged = {a: t for a, t in self.challenged.items()
                               if now - t < CHALLENGE_INTERVAL}
            if len(self.challenged) >= MAX_CHALLENGES:
                return False
        self.challenged[addr] = now
        return True

    @staticmethod
    def _want(msg: Message, addr: Addr) -> tuple[int, ...]:
        if msg.want:
            return tuple(f for f, af in ((4, AF_INET), (6, AF_INET6)) if af in msg.want)
        return (family_of(addr),)

    def _nodes_body(self, target: InfoHash, families: tuple[int, ...],
                    now: float) -> dict[str, Any]:
        """The packed closest good nodes (n4/n6), reused for the same target and families
        within a window of NODES_CACHE_TIME: a popular key is asked for many times a second,
        and a list that old is as good an answer as OpenDHT's own snapshots."""
        cache = self.nodes_cache
        if now >= self.nodes_cache_until:      # a new window: nothing older is kept
            cache.clear()
            self.nodes_cache_until = now + NODES_CACHE_TIME
        hit = cache.get((target, families))
        if hit is not None:
            return dict(hit)
        body: dict[str, Any] = {}
        tables = self.ctx.tables
        for fam in families:
            nodes = tables[fam].closest(target, K, now, good_only=True)
            if nodes:
                body["n4" if fam == 4 else "n6"] = pack_nodes([(n.id, n.addr) for n in nodes],
                                                              fam)
        if len(cache) < MAX_NODES_CACHE:
            cache[(target, families)] = body
        return dict(body)

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


def _capped(values: list[Value]) -> list[Value]:
    out: list[Value] = []
    size = 0
    for v in values[:MAX_REPLY_VALUES]:
        size += len(packb(v))          # packed once per stored value, then reused
        if out and size > MAX_REPLY_BYTES:
            break
        out.append(v)
    return out


def _select(q: Query, values: list[Value]) -> dict[str, Any]:
    return {"f": list(q.select), "v": [x for v in values for x in q.field_values(v)]}
