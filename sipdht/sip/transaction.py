"""RFC 3261 section 17 transactions (with RFC 6026's Accepted state), sans-IO.

One `TransactionLayer` serves every transport: it only stores a `Dest` (a UDP address, a TCP
connection or a peer link) and hands it back with what to send, and `reliable` says whether the
retransmission timers (A, E, G and the 2xx retransmission) run. A peer link loses datagrams
like UDP, so it is unreliable here. Timers: A/B (INVITE client), E/F (non-INVITE client),
D/K (absorbing retransmitted finals), G/H/I (INVITE server), J (non-INVITE server).

Drive it like the other sans-IO cores: `receive_request` / `receive_response` / `respond` /
`send_request`, then `datagrams_to_send()`, `get_timer()`, `handle_timer(now)`,
`next_event()`.
"""

from __future__ import annotations

import collections
import enum
import heapq
import itertools
from dataclasses import dataclass, field

from sipmessage import Request, Response

from .dest import Dest
from .message import branch, response, serialize, top_via

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMER_B = 64 * T1


class TxState(enum.StrEnum):
    CALLING = "calling"            # INVITE client, nothing heard yet
    TRYING = "trying"              # non-INVITE, nothing heard / answered yet
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"          # RFC 6026: a 2xx to an INVITE, retransmissions pass
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Received(enum.StrEnum):
    """What `receive_request` made of a request."""
    NEW = "new"                    # a new server transaction for the user
    ABSORBED = "absorbed"          # a retransmission, or the ACK of an error
    ACK = "ack"                    # an ACK outside any transaction: a 2xx's, the dialog's


@dataclass
class Outgoing:
    dest: Dest
    data: bytes


@dataclass
class Timeout:
    """A client transaction got no final response (B/F), or a server INVITE's 2xx or
    error got no ACK (H): the transaction user decides what the user sees."""
    transaction: ClientTransaction | ServerTransaction


@dataclass(eq=False)
class _Transaction:
    request: Request
    dest: Dest
    reliable: bool
    state: TxState = TxState.TRYING
    timers: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)
    context: object = None     # the transaction user's (the B2BUA's): why it was sent

    @property
    def retransmitted(self) -> bytes:
        """What timers A, E and G send again."""
        raise NotImplementedError

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def next_deadline(self) -> float | None:
        return min(self.timers.values(), default=None)


@dataclass(eq=False)
class ClientTransaction(_Transaction):
    data: bytes = b""
    ack: bytes = b""           # the ACK of a non-2xx final, re-sent on retransmissions
    final: Response | None = None

    @property
    def retransmitted(self) -> bytes:
        return self.data


@dataclass(eq=False)
class ServerTransaction(_Transaction):
    last: bytes = b""
    last_code: int = 0

    @property
    def retransmitted(self) -> bytes:
        return self.last


def _server_key(request: Request) -> tuple[str, str, str]:
    via = top_via(request)
    method = "INVITE" if request.method == "ACK" else request.method
    return (branch(request), f"{via.host}:{via.port or 5060}", method)


class TransactionLayer:
    def __init__(self) -> None:
        self._clients: dict[tuple[str, str], ClientTransaction] = {}
        self._servers: dict[tuple[str, str, str], ServerTransaction] = {}
        self._out: list[Outgoing] = []
        self._events: collections.deque[Timeout] = collections.deque()
        # timers: a heap of (deadline, n, tx), refreshed from the transactions touched since
        # (stale entries are skipped), so a message costs O(log n), not a scan of them all
        self._heap: list[tuple[float, int, _Transaction]] = []
        self._dirty: list[_Transaction] = []
        self._seq = itertools.count()

    # --- client side -------------------------------------------------------------------

    def send_request(self, request: Request, dest: Dest, reliable: bool, now: float,
                     context: object = None) -> ClientTransaction:
        """Start a client transaction and send its request (ACK is never one: use send)."""
        assert request.method != "ACK"
        tx = ClientTransaction(request, dest, reliable, context=context, data=serialize(request))
        self._clients[(branch(request), request.method)] = tx
        self._out.append(Outgoing(dest, tx.data))
        timeout = "B" if tx.is_invite else "F"
        tx.state = TxState.CALLING if tx.is_invite else TxState.TRYING
        tx.timers[timeout] = now + TIMER_B
        if not reliable:
            retransmit = "A" if tx.is_invite else "E"
            tx.timers[retransmit] = now + T1
            tx.intervals[retransmit] = T1
        self._dirty.append(tx)
        return tx

    def send(self, dest: Dest, data: bytes) -> None:
        """Send outside any transaction (ACK for a 2xx)."""
        self._out.append(Outgoing(dest, data))

    def receive_response(self, resp: Response, now: float) -> ClientTransaction | None:
        """The matching transaction when its user must see `resp`; None when absorbed."""
        tx = self._clients.get((branch(resp), resp.cseq.method))
        if tx is None or tx.state is TxState.TERMINATED:
            return None
        self._dirty.append(tx)
        if resp.code < 200:
            if tx.state in (TxState.CALLING, TxState.TRYING, TxState.PROCEEDING):
                tx.state = TxState.PROCEEDING
                tx.timers.pop("A", None)
                tx.timers.pop("B", None)
                if "E" in tx.timers:
                    tx.intervals["E"] = T2
                return tx
            return None
        if tx.is_invite:
            return self._invite_final(tx, resp, now)
        if tx.state in (TxState.TRYING, TxState.PROCEEDING):
            tx.final = resp
            tx.state = TxState.COMPLETED
            tx.timers = {"K": now + (0 if tx.reliable else T4)}
            return tx
        return None

    def _invite_final(self, tx: ClientTransaction, resp: Response,
                      now: float) -> ClientTransaction | None:
        if resp.code < 300:
            if tx.state in (TxState.CALLING, TxState.PROCEEDING, TxState.ACCEPTED):
                first = tx.state is not TxState.ACCEPTED
                tx.state = TxState.ACCEPTED
                tx.final = tx.final or resp
                if first:
                    tx.timers = {"M": now + TIMER_B}
                return tx          # 2xx retransmissions go to the user, which re-sends ACK
            return None
        if tx.state in (TxState.CALLING, TxState.PROCEEDING):
            tx.final = resp
            tx.ack = serialize(_ack_for(tx.request, resp))
            tx.state = TxState.COMPLETED
            tx.timers = {"D": now + (0 if tx.reliable else 32.0)}
            self._out.append(Outgoing(tx.dest, tx.ack))
            return tx
        if tx.state is TxState.COMPLETED:
            self._out.append(Outgoing(tx.dest, tx.ack))
        return None

    def find_client(self, branch_id: str, method: str) -> ClientTransaction | None:
        return self._clients.get((branch_id, method))

    # --- server side -------------------------------------------------------------------

    def receive_request(self, request: Request, dest: Dest, reliable: bool,
                        now: float) -> tuple[Received, ServerTransaction | None]:
        """(NEW, tx) for the user; (ABSORBED, None) for a retransmission or an ACK of an
        error; (ACK, None) for an ACK outside any transaction (a 2xx's ACK: the dialog's)."""
        key = _server_key(request)
        tx = self._servers.get(key)
        if tx is not None:
            self._dirty.append(tx)
        if request.method == "ACK":
            if tx is None or not key[0]:
                return Received.ACK, None
            if tx.state is TxState.COMPLETED:
                tx.state = TxState.CONFIRMED
                tx.timers = {"I": now + (0 if tx.reliable else T4)}
            if tx.state is TxState.ACCEPTED:
                return Received.ACK, None
            return Received.ABSORBED, None
        if tx is not None:
            if tx.last:
                self._out.append(Outgoing(tx.dest, tx.last))
            return Received.ABSORBED, None
        tx = ServerTransaction(request, dest, reliable)
        tx.state = TxState.PROCEEDING if request.method == "INVITE" else TxState.TRYING
        self._servers[key] = tx
        return Received.NEW, tx

    def find_server(self, request: Request, method: str = "INVITE") -> ServerTransaction | None:
        """The transaction a CANCEL refers to (same branch and sent-by, method INVITE)."""
        b, sent_by, _ = _server_key(request)
        return self._servers.get((b, sent_by, method))

    def respond(self, tx: ServerTransaction, resp: Response, now: float) -> None:
        self._dirty.append(tx)
        if tx.state in (TxState.COMPLETED, TxState.CONFIRMED, TxState.TERMINATED) or (
                tx.state is TxState.ACCEPTED and resp.code >= 300):
            return
        if tx.state is TxState.ACCEPTED and tx.last_code >= 200:
            return
        tx.last = serialize(resp)
        tx.last_code = resp.code
        self._out.append(Outgoing(tx.dest, tx.last))
        if resp.code < 200:
            tx.state = TxState.PROCEEDING
            return
        if tx.is_invite:
            self._invite_answered(tx, resp.code, now)
        else:
            tx.state = TxState.COMPLETED
            tx.timers = {"J": now + (0 if tx.reliable else TIMER_B)}

    def _invite_answered(self, tx: ServerTransaction, code: int, now: float) -> None:
        tx.state = TxState.ACCEPTED if code < 300 else TxState.COMPLETED
        tx.timers = {"H": now + TIMER_B}
        if not tx.reliable:
            tx.timers["G"] = now + T1
            tx.intervals["G"] = T1
        elif code < 300:
            tx.timers["L"] = now + TIMER_B

    def ack_received(self, tx: ServerTransaction, now: float) -> None:
        """The dialog got the ACK of this transaction's 2xx: stop re-sending the 2xx."""
        self._dirty.append(tx)
        if tx.state is TxState.ACCEPTED:
            tx.state = TxState.CONFIRMED
            tx.timers = {"L": now + TIMER_B}   # absorb INVITE retransmissions a while

    def reply(self, request: Request, dest: Dest, code: int, reason: str = "",
              now: float = 0.0) -> None:
        """A stateless answer (e.g. 400 to something that made no transaction)."""
        self._out.append(Outgoing(dest, serialize(response(request, code, reason))))

    # --- timers ------------------------------------------------------------------------

    def _reschedule(self) -> None:
        for tx in self._dirty:
            deadline = tx.next_deadline()
            if deadline is not None:
                heapq.heappush(self._heap, (deadline, next(self._seq), tx))
        self._dirty.clear()

    def _current(self, entry: tuple[float, int, _Transaction]) -> bool:
        return (entry[2].state is not TxState.TERMINATED
                and entry[2].next_deadline() == entry[0])

    def get_timer(self) -> float | None:
        self._reschedule()
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def handle_timer(self, now: float) -> None:
        self._reschedule()
        due: list[_Transaction] = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            if self._current(entry) and entry[2] not in due:
                due.append(entry[2])
        for tx in due:
            for name, deadline in sorted(tx.timers.items(), key=lambda kv: kv[1]):
                if deadline <= now and name in tx.timers:
                    self._fire(tx, name, now)
            self._dirty.append(tx)
        self._reschedule()

    def _fire(self, tx: _Transaction, name: str, now: float) -> None:
        if name in ("A", "E", "G"):
            interval = tx.intervals[name]
            self._out.append(Outgoing(tx.dest, tx.retransmitted))
            cap = T2 if (name != "A") else float("inf")
            if name == "E" and tx.state is TxState.PROCEEDING:
                interval = T2
            else:
                interval = min(interval * 2, cap)
            tx.intervals[name] = interval
            tx.timers[name] = now + interval
            return
        if name in ("B", "F", "H") and not (name == "H" and tx.state is TxState.CONFIRMED):
            assert isinstance(tx, ClientTransaction | ServerTransaction)
            self._events.append(Timeout(tx))
        self._terminate(tx)

    def _terminate(self, tx: _Transaction) -> None:
        tx.state = TxState.TERMINATED
        tx.timers.clear()
        if isinstance(tx, ClientTransaction):
            self._clients.pop((branch(tx.request), tx.method), None)
        else:
            self._servers.pop(_server_key(tx.request), None)

    # --- output ------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Outgoing]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Timeout | None:
        return self._events.popleft() if self._events else None

    def __len__(self) -> int:
        return len(self._clients) + len(self._servers)


def _ack_for(request: Request, resp: Response) -> Request:
    """RFC 3261 17.1.1.3: the ACK of a non-2xx final, in the INVITE's transaction."""
    ack = Request("ACK", request.uri)
    ack.headers.set("Via", request.headers.getlist("Via")[0])
    for name in ("Max-Forwards", "From", "Call-ID"):
        if request.headers.get(name) is not None:
            ack.headers.set(name, request.headers[name])
    ack.headers.set("To", resp.headers["To"])
    ack.headers.set("CSeq", f"{request.cseq.sequence} ACK")
    routes = request.headers.getlist("Route")
    if routes:
        ack.headers.setlist("Route", list(routes))
    return ack
