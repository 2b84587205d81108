"""The back-to-back user agent: every call is one dialog with the side that sent the INVITE
(leg `a`) and one or more dialogs towards the other side (the `forks`; the first 2xx wins).

One side of a call is always a local softphone and the other a peer link. Since the gateway
writes every request it sends, identities stay under control: towards a softphone, From is the
link's verified account (with the [contacts] alias as display name) and P-Asserted-Identity
says the same; nothing a peer writes in its own From or identity headers passes. SDP is
rewritten on every hop so media goes through `media.Relay`; over the link an m= port is the
sender's receive channel. Requests in a dialog (BYE, re-INVITE, UPDATE, INFO, OPTIONS,
MESSAGE) are re-issued on the other leg and their responses mapped back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sipmessage import URI, Address, Parameters, Request, Response

from ..account import FIRST_MEDIA_CHANNEL, CallFailure, Link
from . import message, sdp
from .dest import Dest, same_path
from .media import Relay
from .transaction import ClientTransaction, ServerTransaction

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger(__name__)

LINK_MEDIA_HOST = "sipdht.invalid"      # c= on the link: ports there are channel numbers
MAX_CALLS = 128                         # concurrent calls (a peer must not exhaust sockets)
MAX_STREAMS = 8                         # m= lines per call that get a relay
SILENT_FORK_GRACE = 2.0                 # s: a registered phone that never answered is gone
DIALOG_METHODS = ("INVITE", "UPDATE")   # requests that carry a Contact (target refresh)
SUPPORTED_REQUIRE = {"timer"}
NOT_COPIED = {
    "via", "route", "record-route", "from", "to", "call-id", "cseq", "contact", "max-forwards",
    "content-length", "content-type", "authorization", "proxy-authorization",
    "proxy-authenticate", "www-authenticate", "p-asserted-identity", "p-preferred-identity",
    "remote-party-id", "identity", "require", "proxy-require", "rseq", "rack", "supported",
}


@dataclass(eq=False)
class Leg:
    """One dialog of a call, as the gateway's user agent sees it."""
    call: Call
    side: str                       # "local" (a softphone) or "link"
    dest: Dest
    call_id: str
    local_tag: str
    local: Address                  # our address on this leg, without tag
    remote: Address
    remote_tag: str = ""
    target: URI | None = None       # where in-dialog requests go (the remote Contact)
    cseq: int = 0
    invite: ClientTransaction | ServerTransaction | None = None
    acks: dict[int, bytes] = field(default_factory=dict)
    pending_ack: dict[int, tuple[ServerTransaction, Leg, int]] = field(default_factory=dict)
    confirmed: bool = False
    done: bool = False


@dataclass(eq=False)
class Call:
    a_request: Request
    link: Link | None = None
    a: Leg | None = None
    forks: list[Leg] = field(default_factory=list)
    winner: Leg | None = None
    finals: list[Response] = field(default_factory=list)
    relays: dict[int, Relay] = field(default_factory=dict)
    answered: bool = False
    ended: bool = False
    held: bool = False
    task: asyncio.Task | None = None
    started: float = field(default_factory=time.monotonic)

    def other(self, leg: Leg) -> Leg | None:
        if leg is not self.a:
            return self.a
        if self.winner is not None:
            return self.winner
        live = [f for f in self.forks if not f.done and f.remote_tag]
        return live[0] if len(live) == 1 else None

    def legs(self) -> list[Leg]:
        return [leg for leg in (self.a, *self.forks) if leg is not None]


class B2BUA:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        self.legs: dict[tuple[str, str], Leg] = {}
        self.calls: set[Call] = set()

    # --- new calls ----------------------------------------------------------------------

    def outgoing(self, req: Request, tx: ServerTransaction) -> None:
        """A local softphone dials an account id or alias."""
        gw = self.gw
        if req.method == "INVITE":
            gw.respond(tx, message.response(req, 100))
        account = gw.resolve(req.uri.user or "")
        if account is None:
            gw.respond(tx, message.response(
                req, 404, f"Unknown account or alias '{req.uri.user or ''}'"))
            return
        if account == gw.account:
            gw.respond(tx, message.response(req, 482, "That is this agent's own account"))
            return
        if not self._acceptable(req, tx):
            return
        call = Call(req)
        call.a = self._uas_leg(call, req, tx, "local")
        self.calls.add(call)
        log.info("%s %s: %s -> %s (%s)", "call" if req.method == "INVITE" else "message",
                 req.call_id, req.from_address.uri, account, req.uri)
        call.task = asyncio.get_running_loop().create_task(self._connect(call, account))

    async def _connect(self, call: Call, account: str) -> None:
        gw = self.gw
        req = call.a_request
        try:
            link = await gw.pool.get(account, uri=str(req.uri))
        except CallFailure as exc:
            self._fail(call, exc.sip_status, str(exc) or exc.reason)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or I/O error below us: the user still gets an answer
            log.exception("call %s: link setup failed", req.call_id)
            self._fail(call, 503, f"No path to the callee ({type(exc).__name__})")
            return
        if call.ended:
            return
        self._attach(call, link)
        local = Address(URI("sip", gw.domain, user=gw.account))
        remote = Address(URI("sip", gw.domain, user=account))
        b = Leg(call, "link", gw.link_dest(link), message.new_call_id(), message.new_tag(),
                local, remote, target=remote.uri)
        call.forks.append(b)
        self._register(b)
        try:
            body = self._translate(call, call.a, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self._fail(call, 488, f"Bad SDP ({exc})")
            return
        first = self._build(b, req.method, req, body)
        b.invite = gw.send_request(b, first, ("invite", b))
        gw.flush()

    def incoming(self, req: Request, tx: ServerTransaction, link: Link) -> None:
        """A peer's INVITE over a link: ring every registered softphone."""
        gw = self.gw
        if req.method == "INVITE":
            gw.respond(tx, message.response(req, 100))
        bindings = gw.registrar.bindings(gw.now())
        if not bindings:
            gw.respond(tx, message.response(req, 480, "No softphone registered at the callee"))
            return
        if not self._acceptable(req, tx):
            return
        call = Call(req)
        call.a = self._uas_leg(call, req, tx, "link")
        self.calls.add(call)
        self._attach(call, link)
        caller = Address(URI("sip", gw.domain, user=link.peer), name=gw.alias_of(link.peer))
        log.info("call %s: incoming from %s%s to %d softphone(s)", req.call_id, link.peer,
                 f" ({caller.name})" if caller.name else "", len(bindings))
        try:
            body = self._translate(call, call.a, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self._fail(call, 488, f"Bad SDP ({exc})")
            return
        for binding in bindings:
            to = Address(URI("sip", gw.domain, user=binding.aor or gw.account))
            b = Leg(call, "local", binding.dest, message.new_call_id(), message.new_tag(),
                    caller, to, target=binding.contact.uri)
            call.forks.append(b)
            self._register(b)
            first = self._build(b, req.method, req, body)
            first.headers.set("P-Asserted-Identity", str(Address(caller.uri, caller.name)))
            b.invite = gw.send_request(b, first, ("invite", b))

    def _acceptable(self, req: Request, tx: ServerTransaction) -> bool:
        if len(self.calls) >= MAX_CALLS:
            self.gw.respond(tx, message.response(req, 503, "Too many calls in progress"))
            return False
        unsupported = [r for r in req.require if r not in SUPPORTED_REQUIRE]
        if unsupported:
            resp = message.response(req, 420)
            resp.headers.set("Unsupported", ", ".join(unsupported))
            self.gw.respond(tx, resp)
            return False
        return True

    def _uas_leg(self, call: Call, req: Request, tx: ServerTransaction, side: str) -> Leg:
        contact = req.contact
        leg = Leg(call, side, tx.dest, req.call_id, message.new_tag(),
                  _untagged(req.to_address), _untagged(req.from_address),
                  remote_tag=message.tag_of(req.from_address),
                  target=contact[0].uri if contact else req.from_address.uri, invite=tx)
        tx.context = leg
        self._register(leg)
        return leg

    def _attach(self, call: Call, link: Link) -> None:
        call.link = link
        self.gw.pool.hold(link)
        call.held = True

    def _register(self, leg: Leg) -> None:
        self.legs[(leg.call_id, leg.local_tag)] = leg

    # --- responses to our INVITEs -------------------------------------------------------

    def on_response(self, tx: ClientTransaction, resp: Response) -> None:
        ctx = tx.context
        if not isinstance(ctx, tuple):
            return
        if ctx[0] == "invite":
            self._invite_response(ctx[1], tx, resp)
        elif ctx[0] == "forward":
            self._forwarded_response(ctx[1], ctx[2], ctx[3], ctx[4], resp)
        elif ctx[0] == "cancel" and resp.code >= 200:
            pass

    def _invite_response(self, b: Leg, tx: ClientTransaction, resp: Response) -> None:
        if resp.code == 100:
            return
        tag = message.tag_of(resp.to_address)
        if resp.code < 300 and tag and not b.remote_tag:
            b.remote_tag = tag
        if resp.contact and resp.code < 300:
            b.target = resp.contact[0].uri
        if resp.code < 200:
            self._provisional(b, resp)
        elif resp.code < 300:
            self._answered(b, tx, resp)
        else:
            self._fork_failed(b, resp)

    def _provisional(self, b: Leg, resp: Response) -> None:
        call = b.call
        if call.answered or call.ended or call.a is None:
            return
        self.gw.respond(call.a.invite, self._mirror(call.a, b, call.a_request, resp))  # type: ignore[arg-type]

    def _answered(self, b: Leg, tx: ClientTransaction, resp: Response) -> None:
        call = b.call
        seq = tx.request.cseq.sequence
        if seq in b.acks:                        # a retransmitted 2xx: our ACK was lost
            self.gw.send(b.dest, b.acks[seq])
            return
        if call.winner is not None or call.ended or call.answered:
            if call.winner is not b:
                self._ack(b, seq, b"", "")
                self._bye(b)
            return
        call.winner = b
        b.confirmed = True
        for other in call.forks:
            if other is not b and not other.done:
                self._cancel(other)
        a = call.a
        assert a is not None and isinstance(a.invite, ServerTransaction)
        call.answered = True
        if call.a_request.method != "INVITE":              # a MESSAGE: delivered, done
            self.gw.respond(a.invite, self._mirror(a, b, call.a_request, resp))
            self._end(call, "delivered", bye=False)
            return
        a.confirmed = True
        a.pending_ack[call.a_request.cseq.sequence] = (a.invite, b, seq)
        self.gw.respond(a.invite, self._mirror(a, b, call.a_request, resp))
        log.info("call %s: answered %d %s after %.0f ms", call.a_request.call_id, resp.code,
                 resp.phrase, 1000 * (time.monotonic() - call.started))

    def _fork_failed(self, b: Leg, resp: Response) -> None:
        call = b.call
        b.done = True
        self.legs.pop((b.call_id, b.local_tag), None)
        call.finals.append(resp)
        if call.answered or call.ended or any(not f.done for f in call.forks):
            if not call.ended and all(f.done for f in call.forks) and call.winner is None:
                self._end(call, "all forks failed")
            elif not call.answered and all(_silent(f) for f in call.forks if not f.done):
                # the phones still pending never even said 100: a stale registration must
                # not hold a busy or decline from a live phone for Timer B (32 s)
                asyncio.get_running_loop().call_later(SILENT_FORK_GRACE, self._drop_silent,
                                                      call)
            return
        self._answer_failure(call, b)

    def _drop_silent(self, call: Call) -> None:
        if call.answered or call.ended or call.winner is not None:
            return
        for fork in call.forks:
            if not fork.done and _silent(fork):
                fork.done = True                  # its Timer B still ends its transaction
        if all(f.done for f in call.forks):
            self._answer_failure(call, call.forks[-1])
            self.gw.flush()

    def _answer_failure(self, call: Call, b: Leg) -> None:
        best = _best_final(call.finals)
        a = call.a
        assert a is not None
        self.gw.respond(a.invite, self._mirror(a, b, call.a_request, best))  # type: ignore[arg-type]
        call.answered = True
        log.info("call %s: failed %d %s", call.a_request.call_id, best.code, best.phrase)
        self._end(call, f"{best.code} {best.phrase}")

    def _fail(self, call: Call, code: int, reason: str) -> None:
        """The call fails before any fork answered: answer leg a, end the call."""
        a = call.a
        if a is not None and not call.answered and isinstance(a.invite, ServerTransaction):
            phrase = "".join(ch for ch in reason if ch.isprintable())[:200] or None
            self.gw.respond(a.invite, message.response(call.a_request, code, phrase or "",
                                                       to_tag=a.local_tag))
            call.answered = True
            log.info("call %s: failed %d %s", call.a_request.call_id, code, reason)
        self._end(call, reason)
        self.gw.flush()

    # --- ACK, CANCEL, in-dialog requests --------------------------------------------------

    def _leg_for(self, req: Request, dest: Dest) -> Leg | None:
        """The dialog a request belongs to, if it came the way that dialog runs."""
        leg = self.legs.get((req.call_id, message.tag_of(req.to_address)))
        if leg is None or not same_path(leg.dest, dest):
            return None
        return leg

    def on_ack(self, req: Request, dest: Dest) -> None:
        leg = self._leg_for(req, dest)
        if leg is None:
            return
        pending = leg.pending_ack.pop(req.cseq.sequence, None)
        if pending is None:
            return
        stx, other, seq = pending
        self.gw.ack_received(stx)
        if other.done or other.call.ended:
            return
        try:
            body = self._translate(leg.call, leg, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp:
            body = b""
        self._ack(other, seq, body, req.headers.get("Content-Type") or "")

    def on_cancel(self, req: Request, tx: ServerTransaction) -> None:
        invite = self.gw.find_invite(req)
        if (invite is None or not isinstance(invite.context, Leg)
                or not same_path(invite.dest, tx.dest)):
            self.gw.respond(tx, message.response(req, 481))
            return
        self.gw.respond(tx, message.response(req, 200))
        call = invite.context.call
        if call.answered:
            return
        a = invite.context
        self.gw.respond(invite, message.response(call.a_request, 487, to_tag=a.local_tag))
        call.answered = True
        log.info("call %s: cancelled by the caller", call.a_request.call_id)
        for fork in call.forks:
            if not fork.done:
                self._cancel(fork)
        self._end(call, "cancelled", bye=False)

    def in_dialog(self, req: Request, tx: ServerTransaction, dest: Dest) -> bool:
        """A request with a To tag; False when no dialog has it (the gateway says 481)."""
        leg = self._leg_for(req, dest)
        if leg is None or leg.call.ended and req.method != "BYE":
            return False
        call = leg.call
        if req.method == "INVITE":
            self.gw.respond(tx, message.response(req, 100))
        if req.contact and req.method in DIALOG_METHODS:
            leg.target = req.contact[0].uri
        other = call.other(leg)
        if req.method == "BYE":
            self.gw.respond(tx, message.response(req, 200))
            log.info("call %s: hung up by the %s side", call.a_request.call_id, leg.side)
            leg.done = True
            self._end(call, "BYE", skip=leg)
            return True
        if other is None or other.done:
            self.gw.respond(tx, message.response(req, 481))
            return True
        try:
            body = self._translate(call, leg, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self.gw.respond(tx, message.response(req, 488, f"Bad SDP ({exc})"))
            return True
        forward = self._build(other, req.method, req, body)
        self.gw.send_request(other, forward, ("forward", leg, tx, req, forward.cseq.sequence))
        return True

    def _forwarded_response(self, leg: Leg, stx: ServerTransaction, req: Request, seq: int,
                            resp: Response) -> None:
        if resp.code == 100:
            return
        other = leg.call.other(leg)
        if req.method == "INVITE" and 200 <= resp.code < 300 and other is not None:
            leg.pending_ack[req.cseq.sequence] = (stx, other, seq)
        if resp.contact and other is not None and resp.code < 300 and req.method in DIALOG_METHODS:
            other.target = resp.contact[0].uri
        self.gw.respond(stx, self._mirror(leg, other, req, resp))

    def on_timeout(self, tx: Any) -> None:
        ctx = tx.context
        if isinstance(tx, ServerTransaction):
            if isinstance(ctx, Leg) and tx.last_code < 300 and not ctx.call.ended:
                log.info("call %s: no ACK for the 2xx", ctx.call.a_request.call_id)
                self._end(ctx.call, "no ACK")
            return
        if not isinstance(ctx, tuple):
            return
        if ctx[0] == "invite":
            b = ctx[1]
            timeout = message.response(tx.request, 408, "No answer from the callee")
            self._fork_failed(b, timeout)
        elif ctx[0] == "forward":
            stx, req = ctx[2], ctx[3]
            self.gw.respond(stx, message.response(req, 408, "No answer over the link"))

    # --- link loss and ending -------------------------------------------------------------

    def link_closed(self, link: Link, reason: str) -> None:
        for call in [c for c in self.calls if c.link is link]:
            log.info("call %s: link closed (%s)", call.a_request.call_id, reason)
            for leg in call.legs():
                if leg.side == "link":
                    leg.done = True
            self._fail(call, 503, f"Link to the peer closed ({reason})")

    def _end(self, call: Call, reason: str, *, bye: bool = True, skip: Leg | None = None) -> None:
        if call.ended:
            return
        call.ended = True
        if (call.task is not None and not call.task.done()
                and call.task is not asyncio.current_task()):
            call.task.cancel()
        for leg in call.legs():
            if leg is skip or leg.done:
                continue
            if bye and leg.confirmed and leg.remote_tag:
                self._bye(leg)
            elif leg is not call.a and not leg.confirmed:
                self._cancel(leg)
            leg.done = True
        for relay in call.relays.values():
            relay.close()
        call.relays.clear()
        if call.held and call.link is not None:
            call.held = False
            self.gw.pool.release(call.link)
        self.calls.discard(call)
        loop = asyncio.get_running_loop()
        loop.call_later(32.0, self._forget, call)     # late BYE/ACK still find the dialog

    def _forget(self, call: Call) -> None:
        for leg in call.legs():
            self.legs.pop((leg.call_id, leg.local_tag), None)

    def end_all(self, reason: str) -> None:
        for call in list(self.calls):
            self._fail(call, 503, reason)

    # --- requests we write ----------------------------------------------------------------

    def _build(self, leg: Leg, method: str, src: Request | None, body: bytes,
               cseq: int | None = None) -> Request:
        gw = self.gw
        if cseq is None:
            leg.cseq += 1
            cseq = leg.cseq
        max_forwards = 70
        if src is not None and src.max_forwards is not None:
            max_forwards = min(70, src.max_forwards - 1)
        ctype = (src.headers.get("Content-Type") or "") if (src is not None and body) else ""
        req = message.request(
            method, leg.target or leg.remote.uri, via_host=gw.via_host(leg),
            via_port=gw.via_port(leg), via_transport=gw.via_transport(leg),
            from_addr=message.with_tag(leg.local, leg.local_tag),
            to_addr=message.with_tag(leg.remote, leg.remote_tag) if leg.remote_tag else leg.remote,
            call_id=leg.call_id, cseq=cseq,
            contact=gw.contact(leg) if method in DIALOG_METHODS else None,
            body=body, content_type=ctype, max_forwards=max_forwards)
        if src is not None:
            _copy_headers(src, req)
        return req

    def _ack(self, leg: Leg, seq: int, body: bytes, ctype: str) -> None:
        ack = self._build(leg, "ACK", None, body, cseq=seq)
        if ctype and body:
            ack.headers.set("Content-Type", ctype)
        data = message.serialize(ack)
        leg.acks[seq] = data
        self.gw.send(leg.dest, data)

    def _bye(self, leg: Leg) -> None:
        leg.done = True
        self.gw.send_request(leg, self._build(leg, "BYE", None, b""), ("bye", leg))

    def _cancel(self, leg: Leg) -> None:
        leg.done = True
        tx = leg.invite
        if (not isinstance(tx, ClientTransaction) or tx.method != "INVITE"
                or tx.state not in ("calling", "proceeding")):
            return
        invite = tx.request
        cancel = Request("CANCEL", invite.uri)
        for name in ("Via", "From", "To", "Call-ID", "Max-Forwards"):
            cancel.headers.set(name, invite.headers.getlist(name)[0])
        cancel.headers.set("CSeq", f"{invite.cseq.sequence} CANCEL")
        self.gw.send_request(leg, cancel, ("cancel", leg))

    def _mirror(self, leg: Leg, source: Leg | None, req: Request, resp: Response) -> Response:
        """`resp` (from the other side) as our response on `leg` to its request `req`."""
        body = resp.body
        if source is not None:
            try:
                body = self._translate(leg.call, source, resp.body,
                                       resp.headers.get("Content-Type"))
            except sdp.BadSdp:
                body = b""
        out = message.response(req, resp.code, resp.phrase, to_tag=leg.local_tag, body=body,
                               content_type=(resp.headers.get("Content-Type") or "") if body else "")
        if resp.code < 300 and req.method in DIALOG_METHODS and resp.code > 100:
            out.contact = [self.gw.contact(leg)]
        _copy_headers(resp, out)
        return out

    # --- SDP ------------------------------------------------------------------------------

    def _translate(self, call: Call, source: Leg | None, body: bytes, ctype: str | None) -> bytes:
        """Rewrite an SDP body coming from `source` for the other side of the call."""
        if source is None or not sdp.is_sdp(ctype, body) or call.link is None:
            return body
        streams = sdp.streams(body)
        if len(streams) > MAX_STREAMS:
            raise sdp.BadSdp(f"more than {MAX_STREAMS} media streams")
        ports: list[int | None] = []
        for stream in streams:
            if stream.port == 0:
                ports.append(None)
                continue
            if source.side == "link" and not FIRST_MEDIA_CHANNEL <= stream.port < 0xFFFF:
                raise sdp.BadSdp(f"m= port {stream.port} is not a media channel")
            relay = call.relays.get(stream.index)
            if relay is None:
                try:
                    relay = call.relays[stream.index] = self.gw.new_relay(call.link)
                except OSError as exc:
                    raise sdp.BadSdp(f"no relay port: {exc}") from None
            if source.side == "local":
                relay.set_phone(stream.address, stream.port, stream.rtcp_port, stream.rtcp_mux)
                ports.append(relay.channel)
            else:
                relay.peer_channel = stream.port
                relay.peer_mux = stream.rtcp_mux
                ports.append(relay.port)
        host = LINK_MEDIA_HOST if source.side == "local" else self.gw.media_host
        return sdp.rewrite(body, host, ports)


def _untagged(address: Address) -> Address:
    params = {k: v for k, v in address.parameters.items() if k != "tag"}
    return Address(address.uri, address.name, Parameters(**params))


def _copy_headers(src: Request | Response, dst: Request | Response) -> None:
    for name in src.headers.keys():
        if name.lower() in NOT_COPIED or dst.headers.get(name) is not None:
            continue
        dst.headers.setlist(name, list(src.headers.getlist(name)))
    supported = [s for s in src.supported if s not in ("100rel", "path", "gruu", "outbound")]
    if supported:
        dst.headers.set("Supported", ", ".join(supported))
    require = [r for r in src.require if r in SUPPORTED_REQUIRE]
    if require:
        dst.headers.set("Require", ", ".join(require))


def _silent(leg: Leg) -> bool:
    """Nothing at all came back for this leg's INVITE (not even 100 Trying)."""
    tx = leg.invite
    return isinstance(tx, ClientTransaction) and tx.state == "calling"


def _best_final(finals: list[Response]) -> Response:
    """RFC 3261 16.7: a 6xx wins, else the lowest code."""
    global_ = [r for r in finals if r.code >= 600]
    return global_[0] if global_ else min(finals, key=lambda r: r.code)
