"""Driving the searches: stepping each towards the nodes closest to its key, fetching
values by id, putting and listening on those nodes, refreshing them; and the table of
searches (one per key and family), dropped when idle.

search.py holds the state of one search; this module decides what to ask whom next.
Every request goes through requests.py; what the answers mean for the caller's
operations (values, done) goes to operations.py.
"""

from __future__ import annotations

import functools
from collections import OrderedDict, defaultdict, deque
from typing import Any

from .addresses import family_of
from .context import Context
from .infohash import InfoHash
from .messages import AF_INET, AF_INET6, UNAUTHORIZED, Addr, Message
from .operations import GetOp, ListenOp, Operations, PutOp
from .requests import Requests
from .search import LISTEN_NODES, MAX_IN_FLIGHT, TARGET_NODES, Fetch, Search, SearchNode
from .values import FIELD_ID, FIELD_SEQ, Query, type_expiration

INLINE_VALUES = 16              # an inline get reply this full may have been capped
ID_SEQ = (FIELD_ID, FIELD_SEQ)
# A write token is bound to our address, not to a key; OpenDHT and sipdht accept one for
# 15-45 min (current and previous secret). Reused across searches for this long, from the
# nodes of the most recent searches:
TOKEN_REUSE = 300.0
MAX_TOKENS_SEEN = 512
# Every search is looked at this often: its listens re-sent, permanent puts re-announced
# when due, a stalled search stepped. A dhtnode storer forgets a listener it has not heard
# from for 30 s (OpenDHT's LISTEN_EXPIRE_TIME); 20 s leaves a margin of 10 s (OpenDHT's
# REANNOUNCE_MARGIN, below) for a lost refresh to be sent again.
LISTEN_REFRESH = 20.0
REANNOUNCE_MARGIN = 10.0
SEARCH_IDLE = 62 * 60.0
MAX_SEARCHES = 4096
# New listens start their searches while fewer requests than this are out; the rest wait
# in a queue. 10,000 listens started at once sent 40,000 finds in one burst: the storers'
# socket buffers dropped most, every storer then looked unreachable, few listens were
# acknowledged.
LISTEN_START_WINDOW = 256

Op = GetOp | PutOp | ListenOp


class Searches:
    """Every search of one engine, by family and key, and the listen socket ids (sids)
    handed to storers, each naming one search node."""

    __slots__ = ("ctx", "requests", "ops", "by_family", "listen_sids", "_cached",
                 "_tokens_seen", "listen_queue", "resume")

    def __init__(self, ctx: Context, requests: Requests, ops: Operations,
                 listen_sids: dict[int, tuple[Search, SearchNode]]) -> None:
        self.ctx = ctx
        self.requests = requests
        self.ops = ops
        self.by_family: dict[int, dict[InfoHash, Search]] = defaultdict(dict)
        self.listen_sids = listen_sids
        # Searches that hold no listen and no permanent put, least recently used first: the
        # only ones MAX_SEARCHES and SEARCH_IDLE drop, found without visiting the others.
        self._cached: dict[int, OrderedDict[InfoHash, None]] = {}
        self._tokens_seen: dict[Addr, tuple[bytes, float]] = {}    # write tokens, when given
        # Listens waiting for LISTEN_START_WINDOW, and listen searches revived (_revive) to
        # step likewise (the engine starts them after every entry point); made on first use (a deque is 600 bytes, a simulation holds
        # thousands of engines)
        self.listen_queue: deque[ListenOp] | None = None
        self.resume: deque[Search] | None = None

    # --- operations joining and leaving searches --------------------------------------------

    def attach(self, op: Op, key: InfoHash, attr: str, now: float) -> None:
        tables, ops = self.ctx.tables, self.ops
        fams = [f for f in self.ctx.families if len(tables[f])] or list(self.ctx.families[:1])
        for fam in fams:
            search = self.search(key, fam, now)
            getattr(search, attr).append(op)
            if isinstance(op, ListenOp):
                op.searches.append(search)
                for other in search.listens[:-1]:     # already subscribed: no new push
                    ops.listen_values(op, "add", list(other.known.values()))
            else:
                op.searches.add(search)
            self._held_changed(search)
        for search in list(op.searches):
            self.step(search, now)

    def queue_listen(self, op: ListenOp, now: float) -> None:
        if self.listen_queue is None:
            self.listen_queue = deque()
        self.listen_queue.append(op)
        self.start_listens(now)

    def start_listens(self, now: float) -> None:
        """Attach queued listens to their searches while the request window has room (a
        listen joining a search already under way costs nothing and never waits)."""
        pending, by_family = self.requests.pending, self.by_family
        while self.resume and len(pending) < LISTEN_START_WINDOW:
            search = self.resume.popleft()
            if by_family[search.family].get(search.target) is search and search.listens:
                self.step(search, now)
        queue = self.listen_queue
        while queue and (len(pending) < LISTEN_START_WINDOW
                         or any(queue[0].key in by_family[f] for f in self.ctx.families)):
            op = queue.popleft()
            if self.ops.current(op):       # not cancelled while it waited
                self.attach(op, op.key, "listens", now)

    def cancel(self, op: Op, now: float) -> None:
        for search in (self.by_family[f].get(op.key) for f in (4, 6)):
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

    def listening_nodes(self, op: ListenOp, now: float) -> int:
        return sum(1 for search in op.searches for sn in search.nodes
                   if sn.listen_sid is not None and not sn.failed
                   and sn.listen_time > now - LISTEN_REFRESH - REANNOUNCE_MARGIN)

    # --- the table of searches --------------------------------------------------------------

    def search(self, key: InfoHash, fam: int, now: float) -> Search:
        search = self.by_family[fam].get(key)
        cached = self._cached_of(fam)
        if search is None:
            if len(cached) >= MAX_SEARCHES:
                self.drop_idle(now, force=True)
            search = self.by_family[fam][key] = Search(key, fam, now)
            cached[key] = None
            self.ctx.at(now + LISTEN_REFRESH, lambda t: self._refresh(search, t))
        elif key in cached:
            cached.move_to_end(key)
        search.last_used = now
        self._refill(search, now)
        return search

    def _cached_of(self, fam: int) -> OrderedDict[InfoHash, None]:
        cached = self._cached.get(fam)
        if cached is None:
            cached = self._cached[fam] = OrderedDict()
        return cached

    def _held_changed(self, search: Search) -> None:
        """A search holding a listen or a permanent put is never dropped, so it leaves the
        cached (droppable) set; it comes back, as most recently used, once released."""
        cached = self._cached_of(search.family)
        if self.by_family[search.family].get(search.target) is not search:
            return
        if search.listens or any(op.permanent for op in search.puts):
            cached.pop(search.target, None)
        else:
            cached[search.target] = None
            cached.move_to_end(search.target)

    def drop_idle(self, now: float, force: bool = False) -> None:
        """Drop cached searches idle for SEARCH_IDLE (force: the least recently used ones,
        down to MAX_SEARCHES), oldest first; visits only those and the busy ones it meets."""
        for fam, cached in self._cached.items():
            searches = self.by_family[fam]
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

    # --- stepping ---------------------------------------------------------------------------

    def _refill(self, search: Search, now: float, skip_suspects: bool = True) -> None:
        if len(search.live()) >= TARGET_NODES:
            return
        skip = functools.partial(self.requests.unreachable_node, now) if skip_suspects else None
        for node in self.ctx.tables[search.family].closest(search.target, 14, now, skip=skip):
            search.insert(node)

    def step(self, search: Search, now: float) -> None:
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
            self._failed(search)     # a put still retrying may yet be acknowledged

    def _inline(self, search: Search, sn: SearchNode, newest_get: float) -> bool:
        """Ask this node for the values whole? Once per get, a node that answered us
        before: it has pinged this full node back, so it sends values without first
        proving our address (a client-only node is never pinged: it lists ids first)."""
        if self.ctx.client_only or search.inline_at >= newest_get or sn.node.rtt <= 0:
            return False
        search.inline_at, search.inline = newest_get, sn
        return True

    def _live(self, search: Search, now: float) -> list[SearchNode]:
        """search.live() after updating who is slow: a node timing out in another search
        is not waited on here either, until it answers."""
        requests = self.requests
        unreachable = requests.unreachable
        live = []
        for sn in search.nodes:
            if sn.failed:
                continue
            if not sn.pending:
                sn.slow = bool(unreachable) and sn.node.addr in unreachable \
                    and not requests.reachable(sn.node, now)
            if not sn.slow:
                live.append(sn)
        return live

    def _slow(self, search: Search, sn: SearchNode, now: float) -> None:
        """No answer after a first timeout: go on with other nodes while it retries."""
        if not sn.slow:
            sn.slow = True
            self.step(search, now)

    def _synced(self, search: Search, synced: list[SearchNode], now: float) -> None:
        hops = 1 + max(sn.depth for sn in synced)
        for op in [op for op in search.gets if all(sn.last_get >= op.started for sn in synced)
                   and not search.fetches_busy(op.started)]:
            op.ok, op.hops = True, max(op.hops, hops)
            search.gets.remove(op)
            self.ops.done(op, search)
        if not search.gets:
            search.fetches.clear()
        for op in list(search.puts):       # sending happened in _write_early
            if all(op.id in sn.acked for sn in synced):
                if not op.permanent:
                    search.puts.remove(op)
                self.ops.done(op, search)

    def _failed(self, search: Search) -> None:
        for op in search.gets:
            self.ops.done(op, search)
        search.gets.clear()
        search.fetches.clear()
        for op in list(search.puts):
            if not op.permanent:
                search.puts.remove(op)
            self.ops.done(op, search)

    # --- gets and fetches -------------------------------------------------------------------

    def _send_get(self, search: Search, sn: SearchNode, now: float, inline: bool = False) -> None:
        """`inline`: ask for the values themselves, not their ids (one node per get: the
        values a small key holds then need no fetch, and a key stuffed with junk costs
        one capped reply before the paging below takes over)."""
        sn.pending = True
        families = self.ctx.families
        want = [AF_INET, AF_INET6] if len(families) > 1 else (
            [AF_INET] if families == (4,) else [AF_INET6])
        args: dict[str, Any]
        if search.gets and inline:
            where = search.common_where()
            name, args = "get", {"h": search.target, "w": want}
            if where:
                args["q"] = Query((), where).pack()
        elif search.gets:    # ids first; values are then fetched by id (_pump_fetches)
            q = Query(ID_SEQ, search.common_where())
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
            self.step(search, t)

        def on_expire(t: float) -> None:
            sn.pending, sn.failed = False, True
            self.step(search, t)

        self.requests.send(sn.node.addr, sn.node, name, args, now, on_reply, on_expire,
                           on_retry=lambda t: self._slow(search, sn, t))

    def _search_reply(self, search: Search, sn: SearchNode, msg: Message, now: float,
                      sent: float) -> None:
        sn.slow = False
        if msg.token:
            sn.token, sn.last_reply = msg.token, now
            self._note_token(sn.node.addr, msg.token, now)
        if msg.n4 or msg.n6:
            known = {x.node.id for x in search.nodes}
            reachable = self.requests.reachable
            for node in self.ctx.learn(msg, sn.node.addr, now, known):
                if family_of(node.addr) == search.family and reachable(node, now):
                    search.insert(node, sn.depth + 1)
        if msg.fields is not None:
            bad, dropped = search.listed(sn, msg.fields)
            if bad:
                self.ctx.stats["get_bad_id_rows"] += bad
            if dropped:
                self.ctx.stats["get_ids_dropped"] += dropped
        if msg.values:      # asked inline, or a server that ignored the select
            self.ops.found(search.gets, search.listens, msg.values)
            search.fetched(msg.values, sent)

    def _pump_fetches(self, search: Search, since: float, now: float) -> None:
        """Fetch by id what the gets still miss, FETCH_IN_FLIGHT at a time."""
        for fetch, sn in search.fetches_due(since):
            self._send_fetch(search, fetch, sn, now)

    def _send_fetch(self, search: Search, fetch: Fetch, sn: SearchNode, now: float) -> None:
        fetch.pending = True

        def on_reply(msg: Message, t: float) -> None:
            fetch.pending = False
            if msg.kind != "e":
                fetch.fetched = now
                if msg.values:
                    self.ops.found(search.gets, search.listens, msg.values)
            self.step(search, t)

        def on_expire(t: float) -> None:
            fetch.pending = False
            self.step(search, t)

        q = Query((), ((FIELD_ID, fetch.vid),))
        self.requests.send(sn.node.addr, sn.node, "get", {"h": search.target, "q": q.pack()},
                           now, on_reply, on_expire)

    # --- write tokens -----------------------------------------------------------------------

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

    # --- put and listen on the closest nodes ------------------------------------------------

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
            self.step(search, t)

        def on_expire(t: float) -> None:
            sn.put_pending.discard(tag)
            sn.failed = True
            self.step(search, t)

        self.requests.send(sn.node.addr, sn.node, "put",
                           {"h": search.target, "token": token or sn.token}, now, on_reply,
                           on_expire, values=[op.value],
                           on_retry=lambda t: self._slow(search, sn, t))

    def _send_listen(self, search: Search, sn: SearchNode, now: float) -> None:
        if sn.listen_sid is None or sn.listen_addr != sn.node.addr:
            self.listen_sids.pop(sn.listen_sid or 0, None)
            sn.listen_sid = self.requests.next_tid()
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
            self.step(search, t)

        def on_expire(t: float) -> None:
            sn.listen_pending, sn.failed = False, True
            self.listen_sids.pop(sid, None)
            sn.listen_sid = None
            self.step(search, t)

        args = {"ve": 1, "h": search.target, "token": sn.token, "sid": sid}
        self.requests.send(sn.node.addr, sn.node, "listen", args, now, on_reply, on_expire)

    def listen_update(self, sid: int, msg: Message, addr: Addr, token: bool = False) -> None:
        """A storer's notification for one of our listens: only from the node the sid was
        given to. `token`: an update query carries a fresh write token for that node."""
        entry = self.listen_sids.get(sid)
        if entry is None:
            self.ctx.stats["update_unknown_sid"] += 1
            return
        search, sn = entry
        if sn.listen_addr != addr:
            self.ctx.stats["update_wrong_source"] += 1
            return
        if token and msg.token:
            sn.token = msg.token
        self.ops.listen_notification(search.listens, msg)

    def _refresh(self, search: Search, now: float) -> None:
        """Every LISTEN_REFRESH: keep listens alive, re-announce permanent values, re-step."""
        if self.by_family[search.family].get(search.target) is not search:
            return
        for sn in search.nodes:
            if sn.listen_sid is not None and not sn.failed and search.listens and not sn.listen_pending:
                self._send_listen(search, sn, now)
        for op in search.puts:
            if op.permanent:
                self._reannounce(search, op, now)
        if search.listens and self._revive(search, now):
            if self.resume is None:
                self.resume = deque()
            self.resume.append(search)         # stepped within the request window
            self.start_listens(now)
        elif search.busy:
            self.step(search, now)
        self.ctx.at(now + LISTEN_REFRESH, lambda t: self._refresh(search, t))

    def _revive(self, search: Search, now: float) -> bool:
        """A listen whose storers all failed (e.g. we were offline past their retries) asks
        them again once the shared memory no longer holds them unreachable: a failed search
        node never comes back by itself, and the listen would stay deaf for good."""
        if len(search.live()) >= LISTEN_NODES:
            return False
        revived = False
        for sn in search.nodes:
            if sn.failed and not sn.pending and self.requests.reachable(sn.node, now):
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
            self.step(search, t)

        def on_expire(t: float) -> None:
            sn.put_pending.discard(tag)
            sn.acked.pop(tag, None)
            sn.failed = True
            self.step(search, t)

        args = {"h": search.target, "vid": vid, "token": sn.token}
        self.requests.send(sn.node.addr, sn.node, "refresh", args, now, on_reply, on_expire)
