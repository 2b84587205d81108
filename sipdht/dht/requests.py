"""Our requests to other nodes: transaction ids, retransmission, and what answers and
silences teach about the nodes (RTT and RTO, unreachable addresses).

OpenDHT keeps this in its network engine, apart from the DHT logic; aioquic keeps loss
recovery out of its connection. The searches and the serving side only say what to ask
and what to do with the answer, the expiry or a first timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from .context import Context, Timer
from .fragments import fragment_datagrams, split_values
from .messages import Addr, Message, encode_query
from .routing import MAX_FAILURES, Node
from .rtt import RTO_MAX, RTO_MIN, RttEstimate, rto, updated
from .values import Value

MAX_ATTEMPTS = 3
FIRST_TIMEOUT = RTO_MAX     # a node and an engine that measured no RTT yet
# An address that let a request expire is left out of every search for this long.
UNREACHABLE_TIME = 120.0
SUSPECT_TIME = 5.0          # after a first timeout only (a reply clears either at once)
MAX_UNREACHABLE = 4096


def ignore(*_: Any) -> None:
    """An answer (or expiry) nobody waits for: a ping's, an update's."""


@dataclass(eq=False, slots=True)
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


class Requests:
    """Requests out, by transaction id, and the memory of addresses that let one expire.
    `sids` are ids handed out as listen socket ids: a tid never collides with one."""

    __slots__ = ("ctx", "pending", "unreachable", "rtt", "sids")

    def __init__(self, ctx: Context, sids: Container[int]) -> None:
        self.ctx = ctx
        self.pending: dict[int, Request] = {}
        self.unreachable: dict[Addr, float] = {}    # address -> until when searches skip it
        self.rtt = RttEstimate()        # over all nodes: the RTO of a node never measured
        self.sids = sids

    def next_tid(self) -> int:
        """A random uint32 not in use as a tid or a listen socket id (0 is never used)."""
        getrandbits, pending, sids = self.ctx.rng.getrandbits, self.pending, self.sids
        while True:
            tid = getrandbits(32)
            if tid and tid not in pending and tid not in sids:
                return tid

    def ping(self, addr: Addr, now: float, node: Node | None = None) -> None:
        self.send(addr, node, "ping", {}, now, on_reply=ignore)

    def send(self, addr: Addr, node: Node | None, name: str, args: dict[str, Any], now: float,
             on_reply: Callable[[Message, float], None],
             on_expire: Callable[[float], None] = ignore,
             on_error: Callable[[Message, float], None] | None = None,
             values: list[Value] | None = None,
             on_retry: Callable[[float], None] | None = None) -> Request:
        ctx = self.ctx
        tid = self.next_tid()
        args = {"id": ctx.id, **args}
        packed: list[bytes] = []
        if values is not None:
            args["values"], packed = split_values(values)
        datagrams = [encode_query(name, tid, args, ctx.network, ctx.client_only)]
        datagrams += fragment_datagrams(tid, packed, ctx.network)
        req = Request(tid, addr, node, datagrams, on_reply, on_expire, on_error, on_retry,
                      wait=self.rto(node), sent=now, blind=self.blind(node))
        self.pending[tid] = req
        for d in datagrams:
            ctx.send(d, addr)
        first = min(req.wait, RTO_MIN) if req.blind else req.wait
        req.timer = ctx.at(now + first, lambda t: self._timeout(req, t))
        return req

    def match(self, tid: int, addr: Addr) -> Request | None:
        """The request a reply or an error answers: its tid, from the address it went to."""
        req = self.pending.get(tid)
        return req if req is not None and req.addr == addr else None

    def answered(self, req: Request, addr: Addr) -> None:
        """No more attempts, and the address is reachable again."""
        req.done = True
        if req.timer is not None:
            req.timer.cancelled = True      # no wake-up for a request already answered
        del self.pending[req.tid]
        self.unreachable.pop(addr, None)

    def blind(self, node: Node | None) -> bool:
        """No estimate for this node or any other yet (a fresh engine's first lookup)."""
        return (node is None or node.rtt <= 0) and self.rtt.srtt <= 0

    def rto(self, node: Node | None) -> float:
        """How long to wait for this node before moving on (and sending again): its own
        estimate, else the engine's over all nodes, else FIRST_TIMEOUT."""
        if node is not None and node.rtt > 0:
            return rto(node.rtt, node.rtt_var)
        return self.rtt.rto()

    def sample(self, req: Request, node: Node | None, now: float) -> None:
        """Time the round trip from the first attempt. After a retransmission that is an
        upper bound (Karn would drop it): dropping it would leave a node slower than its
        RTO never measured, and retried at every request."""
        sample = now - req.sent
        self.rtt.sample(sample)
        for n in {id(x): x for x in (req.node, node) if x is not None}.values():
            n.rtt, n.rtt_var = updated(n.rtt, n.rtt_var, sample)

    def _still_waiting(self, req: Request, now: float) -> bool:
        """A request sent blind waits RTO_MAX only while nothing is measured: once the first
        replies give an estimate, its RTO is that estimate, counted from when it was sent
        (else a fresh engine's first lookup waits half a second on every dead node)."""
        if not req.blind:
            return False
        deadline = req.sent + self.rto(req.node)
        if now >= deadline:
            req.blind = False
            req.wait = deadline - req.sent
            return False
        step = RTO_MIN if self.blind(req.node) else deadline - now
        req.timer = self.ctx.at(min(deadline, now + step), lambda t: self._timeout(req, t))
        return True

    def _timeout(self, req: Request, now: float) -> None:
        if req.done or self._still_waiting(req, now):
            return
        if req.attempts < MAX_ATTEMPTS:
            self._retry(req, now)
            return
        req.done = True
        self.pending.pop(req.tid, None)
        self.ctx.stats["requests_expired"] += 1
        self.mark_unreachable(req.addr, now)
        if req.node is not None:
            req.node.failures = MAX_FAILURES
        req.on_expire(now)

    def _retry(self, req: Request, now: float) -> None:
        ctx = self.ctx
        # Its search moves on at the RTO, but every search skips the address only once it
        # has been silent for FIRST_TIMEOUT: a node behind a NAT, or a busy one, that
        # answers a little late must not be shut out of the other searches (a listen's).
        if req.attempts == 1:
            ctx.at(max(now, req.sent + FIRST_TIMEOUT), lambda t: self._suspect(req, t))
        req.attempts += 1
        # Backing off from at least FIRST_TIMEOUT, whatever the RTO: a node is declared
        # dead only after ~3.5 s over three attempts, so a far node whose RTO a near
        # node's estimate underrates is retried, not written off.
        req.wait = max(req.wait, FIRST_TIMEOUT) * 2 + ctx.rng.uniform(0, 0.25)
        for d in req.datagrams:
            ctx.send(d, req.addr)
        req.timer = ctx.at(now + req.wait, lambda t: self._timeout(req, t))
        if req.on_retry is not None:
            req.on_retry(now)

    def _suspect(self, req: Request, now: float) -> None:
        if not req.done:
            self.mark_unreachable(req.addr, now, SUSPECT_TIME)

    def mark_unreachable(self, addr: Addr, now: float, duration: float = UNREACHABLE_TIME) -> None:
        """Shared by all searches, so the next one does not wait on this address again."""
        unreachable = self.unreachable
        if addr not in unreachable and len(unreachable) >= MAX_UNREACHABLE:
            unreachable = self.unreachable = {a: t for a, t in unreachable.items() if t > now}
            while len(unreachable) >= MAX_UNREACHABLE:
                del unreachable[next(iter(unreachable))]
        unreachable[addr] = max(unreachable.get(addr, now), now + duration)

    def unreachable_node(self, now: float, node: Node) -> bool:
        return not self.reachable(node, now)

    def reachable(self, node: Node, now: float) -> bool:
        until = self.unreachable.get(node.addr)
        if until is None:
            return True
        if until <= now:
            del self.unreachable[node.addr]
            return True
        return False
