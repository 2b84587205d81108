"""The back-to-back user agent: every call is one dialog with the side that sent the INVITE
(leg `a`) and one or more dialogs towards the other side (the `forks`; the first 2xx wins).

One side of a call is always a local softphone and the other a peer link. Since the B2BUA
writes every request it sends, identities stay under control: towards a softphone, From is the
link's verified account (with the [contacts] alias as display name) and P-Asserted-Identity
says the same; nothing a peer writes in its own From or identity headers passes. Every SDP
body goes through the call's `MediaMap`. Requests in a dialog (BYE, re-INVITE, UPDATE, INFO,
OPTIONS, MESSAGE) are re-issued on the other leg and their responses mapped back.

It is built from the parts it uses (the transaction layer, the registrar, a link source, this
agent's `Local` names, a relay factory) and knows nothing of sockets: `reach` gives it a
destination over a link, `flush` sends what it queued outside a received message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sipmessage import URI, Address, Request, Response

from ..account import CallFailure, Link, LinkSource
from . import message, sdp
from .call import AwaitedAck, Call, Ending, ForkInvite, Forwarded, Leg
from .dest import Dest, same_path
from .dialog import Dialog, Side, cancel
from .local import Local
from .media import RelayFactory
from .media_map import MediaMap
from .registrar import Registrar
from .transaction import ClientTransaction, ServerTransaction, TransactionLayer, TxState

log = logging.getLogger(__name__)

MAX_CALLS = 128                         # concurrent calls (a peer must not exhaust sockets)
SILENT_FORK_GRACE = 2.0                 # s: a registered phone that never answered is gone
FORGET_AFTER = 32.0                     # s: an ended call's late BYE/ACK still find its dialogs
SUPPORTED_REQUIRE = {"timer"}
NOT_COPIED = {
    "via", "route", "record-route", "from", "to", "call-id", "cseq", "contact", "max-forwards",
    "content-length", "content-type", "authorization", "proxy-authorization",
    "proxy-authenticate", "www-authenticate", "p-asserted-identity", "p-preferred-identity",
    "remote-party-id", "identity", "require", "proxy-require", "rseq", "rack", "supported",
}


class B2BUA:
    def __init__(self, layer: TransactionLayer, registrar: Registrar, links: LinkSource,
                 local: Local, new_relay: RelayFactory, *, reach: Callable[[Link], Dest],
                 flush: Callable[[], None]) -> None:
        self.layer = layer
        self.registrar = registrar
        self.links = links
        self.local = local
        self.new_relay = new_relay
        self.reach = reach              # a destination over a link, whose SIP is then read
        self.flush = flush              # send what the layer queued (timers, link set-up)
        self.legs: dict[tuple[str, str], Leg] = {}
        self.calls: set[Call] = set()

    # --- new calls ----------------------------------------------------------------------

    def outgoing(self, req: Request, tx: ServerTransaction) -> None:
        """A local softphone dials an account id or alias."""
        if req.method == "INVITE":
            self._respond(tx, message.response(req, 100))
        account = self.local.resolve(req.uri.user or "")
        if account is None:
            self._respond(tx, message.response(
                req, 404, f"Unknown account or alias '{req.uri.user or ''}'"))
            return
        if account == self.local.account:
            self._respond(tx, message.response(req, 482, "That is this agent's own account"))
            return
        if not self._acceptable(req, tx):
            return
        call = Call(req)
        call.a = self._uas_leg(call, req, tx, Side.LOCAL)
        self.calls.add(call)
        log.info("%s %s: %s -> %s (%s)", "call" if req.method == "INVITE" else "message",
                 req.call_id, req.from_address.uri, account, req.uri)
        call.task = asyncio.get_running_loop().create_task(self._connect(call, account))

    async def _connect(self, call: Call, account: str) -> None:
        req = call.a_request
        try:
            link = await self.links.get(account, uri=str(req.uri))
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
        dest = self.reach(link)
        dialog = Dialog.calling(Side.LINK, dest, self.local.end(Side.LINK, dest),
                                self.local.aor(self.local.account), self.local.aor(account),
                                target=self.local.aor(account).uri)
        b = self._uac_leg(call, dialog)
        assert call.a is not None
        try:
            body = self._translate(call, call.a, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self._fail(call, 488, f"Bad SDP ({exc})")
            return
        b.invite = self._send_request(b, self._build(b, req, body), ForkInvite(b))
        self.flush()

    def incoming(self, req: Request, tx: ServerTransaction) -> None:
        """A peer's INVITE over a link: ring every registered softphone."""
        link = tx.dest.link
        assert link is not None
        if req.method == "INVITE":
            self._respond(tx, message.response(req, 100))
        bindings = self.registrar.bindings(self._now())
        if not bindings:
            self._respond(tx, message.response(req, 480, "No softphone registered at the callee"))
            return
        if not self._acceptable(req, tx):
            return
        call = Call(req)
        call.a = self._uas_leg(call, req, tx, Side.LINK)
        self.calls.add(call)
        self._attach(call, link)
        caller = Address(URI("sip", self.local.domain, user=link.peer),
                         name=self.local.alias_of(link.peer))
        log.info("call %s: incoming from %s%s to %d softphone(s)", req.call_id, link.peer,
                 f" ({caller.name})" if caller.name else "", len(bindings))
        try:
            body = self._translate(call, call.a, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self._fail(call, 488, f"Bad SDP ({exc})")
            return
        for binding in bindings:
            to = self.local.aor(binding.aor or self.local.account)
            dialog = Dialog.calling(Side.LOCAL, binding.dest,
                                    self.local.end(Side.LOCAL, binding.dest), caller, to,
                                    target=binding.contact.uri)
            b = self._uac_leg(call, dialog)
            first = self._build(b, req, body)
            first.headers.set("P-Asserted-Identity", str(Address(caller.uri, caller.name)))
            b.invite = self._send_request(b, first, ForkInvite(b))

    def _acceptable(self, req: Request, tx: ServerTransaction) -> bool:
        if len(self.calls) >= MAX_CALLS:
            self._respond(tx, message.response(req, 503, "Too many calls in progress"))
            return False
        unsupported = [r for r in req.require if r not in SUPPORTED_REQUIRE]
        if unsupported:
            resp = message.response(req, 420)
            resp.headers.set("Unsupported", ", ".join(unsupported))
            self._respond(tx, resp)
            return False
        return True

    def _uas_leg(self, call: Call, req: Request, tx: ServerTransaction, side: Side) -> Leg:
        dialog = Dialog.answering(req, side, tx.dest, self.local.end(side, tx.dest))
        leg = Leg(call, dialog, invite=tx)
        tx.context = leg
        self._register(leg)
        return leg

    def _uac_leg(self, call: Call, dialog: Dialog) -> Leg:
        leg = Leg(call, dialog)
        call.forks.append(leg)
        self._register(leg)
        return leg

    def _attach(self, call: Call, link: Link) -> None:
        call.link = link
        call.media = MediaMap(link, self.new_relay, self.local.media_host)
        self.links.hold(link)
        call.holds_link = True

    def _register(self, leg: Leg) -> None:
        self.legs[leg.dialog.key] = leg

    # --- responses to our INVITEs -------------------------------------------------------

    def on_response(self, tx: ClientTransaction, resp: Response) -> None:
        ctx = tx.context
        if isinstance(ctx, ForkInvite):
            self._invite_response(ctx.leg, tx, resp)
        elif isinstance(ctx, Forwarded):
            self._forwarded_response(ctx, resp)
        # Ending: the answer to a BYE or CANCEL changes nothing

    def _invite_response(self, b: Leg, tx: ClientTransaction, resp: Response) -> None:
        if resp.code == 100:
            return
        b.dialog.establish(resp)
        b.dialog.on_response(resp, tx.method)
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
        self._respond(_server(call.a), self._mirror(call.a, b, call.a_request, resp))

    def _answered(self, b: Leg, tx: ClientTransaction, resp: Response) -> None:
        call = b.call
        seq = tx.request.cseq.sequence
        if seq in b.dialog.acks:                 # a retransmitted 2xx: our ACK was lost
            self.layer.send(b.dialog.dest, b.dialog.acks[seq])
            return
        if call.winner is not None or call.ended or call.answered:
            if call.winner is not b:
                self._ack(b, seq, b"", "")
                self._bye(b)
            return
        call.winner = b
        b.dialog.confirmed = True
        for other in call.forks:
            if other is not b and not other.done:
                self._cancel(other)
        a = call.a
        assert a is not None
        call.answered = True
        if call.a_request.method != "INVITE":              # a MESSAGE: delivered, done
            self._respond(_server(a), self._mirror(a, b, call.a_request, resp))
            self._end(call, "delivered", bye=False)
            return
        a.dialog.confirmed = True
        a.pending_ack[call.a_request.cseq.sequence] = AwaitedAck(_server(a), b, seq)
        self._respond(_server(a), self._mirror(a, b, call.a_request, resp))
        log.info("call %s: answered %d %s after %.0f ms", call.a_request.call_id, resp.code,
                 resp.phrase, 1000 * (time.monotonic() - call.started))

    def _fork_failed(self, b: Leg, resp: Response) -> None:
        call = b.call
        b.done = True
        self.legs.pop(b.dialog.key, None)
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
            self.flush()

    def _answer_failure(self, call: Call, b: Leg) -> None:
        best = _best_final(call.finals)
        a = call.a
        assert a is not None
        self._respond(_server(a), self._mirror(a, b, call.a_request, best))
        call.answered = True
        log.info("call %s: failed %d %s", call.a_request.call_id, best.code, best.phrase)
        self._end(call, f"{best.code} {best.phrase}")

    def _fail(self, call: Call, code: int, reason: str) -> None:
        """The call fails before any fork answered: answer leg a, end the call."""
        a = call.a
        if a is not None and not call.answered and isinstance(a.invite, ServerTransaction):
            phrase = "".join(ch for ch in reason if ch.isprintable())[:200] or None
            self._respond(a.invite, a.dialog.response(call.a_request, code, phrase or ""))
            call.answered = True
            log.info("call %s: failed %d %s", call.a_request.call_id, code, reason)
        self._end(call, reason)
        self.flush()

    # --- ACK, CANCEL, in-dialog requests --------------------------------------------------

    def _leg_for(self, req: Request, source: Dest) -> Leg | None:
        """The dialog a request belongs to, if it came the way that dialog runs."""
        leg = self.legs.get((req.call_id, message.tag_of(req.to_address)))
        if leg is None or not same_path(leg.dialog.dest, source):
            return None
        return leg

    def on_ack(self, req: Request, source: Dest) -> None:
        leg = self._leg_for(req, source)
        if leg is None:
            return
        pending = leg.pending_ack.pop(req.cseq.sequence, None)
        if pending is None:
            return
        self.layer.ack_received(pending.server, self._now())
        other = pending.other
        if other.done or other.call.ended:
            return
        try:
            body = self._translate(leg.call, leg, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp:
            body = b""
        self._ack(other, pending.seq, body, req.headers.get("Content-Type") or "")

    def on_cancel(self, req: Request, tx: ServerTransaction) -> None:
        invite = self.layer.find_server(req, "INVITE")
        a = invite.context if invite is not None else None
        if invite is None or not isinstance(a, Leg) or not same_path(invite.dest, tx.dest):
            self._respond(tx, message.response(req, 481))
            return
        self._respond(tx, message.response(req, 200))
        call = a.call
        if call.answered:
            return
        self._respond(invite, a.dialog.response(call.a_request, 487))
        call.answered = True
        log.info("call %s: cancelled by the caller", call.a_request.call_id)
        for fork in call.forks:
            if not fork.done:
                self._cancel(fork)
        self._end(call, "cancelled", bye=False)

    def in_dialog(self, req: Request, tx: ServerTransaction) -> bool:
        """A request with a To tag; False when no dialog has it (the caller says 481)."""
        leg = self._leg_for(req, tx.dest)
        if leg is None or leg.call.ended and req.method != "BYE":
            return False
        call = leg.call
        if req.method == "INVITE":
            self._respond(tx, message.response(req, 100))
        leg.dialog.on_request(req)
        other = call.other(leg)
        if req.method == "BYE":
            self._respond(tx, message.response(req, 200))
            log.info("call %s: hung up by the %s side", call.a_request.call_id, leg.dialog.side)
            leg.done = True
            self._end(call, "BYE", skip=leg)
            return True
        if other is None or other.done:
            self._respond(tx, message.response(req, 481))
            return True
        try:
            body = self._translate(call, leg, req.body, req.headers.get("Content-Type"))
        except sdp.BadSdp as exc:
            self._respond(tx, message.response(req, 488, f"Bad SDP ({exc})"))
            return True
        forward = self._build(other, req, body)
        self._send_request(other, forward, Forwarded(leg, tx, req, forward.cseq.sequence))
        return True

    def _forwarded_response(self, sent: Forwarded, resp: Response) -> None:
        if resp.code == 100:
            return
        leg, req = sent.leg, sent.request
        other = leg.call.other(leg)
        if req.method == "INVITE" and 200 <= resp.code < 300 and other is not None:
            leg.pending_ack[req.cseq.sequence] = AwaitedAck(sent.server, other, sent.seq)
        if other is not None:
            other.dialog.on_response(resp, req.method)
        self._respond(sent.server, self._mirror(leg, other, req, resp))

    def on_timeout(self, tx: ClientTransaction | ServerTransaction) -> None:
        ctx = tx.context
        if isinstance(tx, ServerTransaction):
            if isinstance(ctx, Leg) and tx.last_code < 300 and not ctx.call.ended:
                log.info("call %s: no ACK for the 2xx", ctx.call.a_request.call_id)
                self._end(ctx.call, "no ACK")
            return
        if isinstance(ctx, ForkInvite):
            timeout = message.response(tx.request, 408, "No answer from the callee")
            self._fork_failed(ctx.leg, timeout)
        elif isinstance(ctx, Forwarded):
            self._respond(ctx.server, message.response(ctx.request, 408,
                                                       "No answer over the link"))

    # --- link loss and ending -------------------------------------------------------------

    def link_closed(self, link: Link, reason: str) -> None:
        for call in [c for c in self.calls if c.link is link]:
            log.info("call %s: link closed (%s)", call.a_request.call_id, reason)
            for leg in call.legs():
                if leg.dialog.side is Side.LINK:
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
            if bye and leg.dialog.confirmed and leg.dialog.remote_tag:
                self._bye(leg)
            elif leg is not call.a and not leg.dialog.confirmed:
                self._cancel(leg)
            leg.done = True
        if call.media is not None:
            call.media.close()
        if call.holds_link and call.link is not None:
            call.holds_link = False
            self.links.release(call.link)
        self.calls.discard(call)
        asyncio.get_running_loop().call_later(FORGET_AFTER, self._forget, call)

    def _forget(self, call: Call) -> None:
        for leg in call.legs():
            self.legs.pop(leg.dialog.key, None)

    def end_all(self, reason: str) -> None:
        for call in list(self.calls):
            self._fail(call, 503, reason)

    # --- what we send ---------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _respond(self, tx: ServerTransaction, resp: Response) -> None:
        self.layer.respond(tx, resp, self._now())

    def _send_request(self, leg: Leg, req: Request, why: object) -> ClientTransaction:
        dest = leg.dialog.dest
        return self.layer.send_request(req, dest, dest.reliable, self._now(), why)

    def _build(self, leg: Leg, src: Request, body: bytes) -> Request:
        """`src` from the other side as our request on `leg`, with `body` already mapped."""
        max_forwards = 70 if src.max_forwards is None else min(70, src.max_forwards - 1)
        ctype = (src.headers.get("Content-Type") or "") if body else ""
        req = leg.dialog.request(src.method, body=body, content_type=ctype,
                                 max_forwards=max_forwards)
        _copy_headers(src, req)
        return req

    def _ack(self, leg: Leg, seq: int, body: bytes, ctype: str) -> None:
        self.layer.send(leg.dialog.dest, leg.dialog.ack(seq, body, ctype))

    def _bye(self, leg: Leg) -> None:
        leg.done = True
        self._send_request(leg, leg.dialog.bye(), Ending(leg))

    def _cancel(self, leg: Leg) -> None:
        leg.done = True
        tx = leg.invite
        if (not isinstance(tx, ClientTransaction) or tx.method != "INVITE"
                or tx.state not in (TxState.CALLING, TxState.PROCEEDING)):
            return
        self._send_request(leg, cancel(tx.request), Ending(leg))

    def _mirror(self, leg: Leg, source: Leg | None, req: Request, resp: Response) -> Response:
        """`resp` (from the other side) as our response on `leg` to its request `req`."""
        body = resp.body
        ctype = resp.headers.get("Content-Type")
        if source is not None:
            try:
                body = self._translate(leg.call, source, resp.body, ctype)
            except sdp.BadSdp:
                body = b""
        out = leg.dialog.response(req, resp.code, resp.phrase, body=body,
                                  content_type=(ctype or "") if body else "")
        _copy_headers(resp, out)
        return out

    def _translate(self, call: Call, source: Leg | None, body: bytes, ctype: str | None) -> bytes:
        """An SDP body coming from `source` as the other side of the call must see it."""
        if source is None or call.media is None:
            return body
        return call.media.translate(source.dialog.side, body, ctype)


def _server(leg: Leg) -> ServerTransaction:
    """Leg a's INVITE (or MESSAGE): the transaction its caller waits on."""
    assert isinstance(leg.invite, ServerTransaction)
    return leg.invite


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
    return isinstance(tx, ClientTransaction) and tx.state is TxState.CALLING


def _best_final(finals: list[Response]) -> Response:
    """RFC 3261 16.7: a 6xx wins, else the lowest code."""
    global_ = [r for r in finals if r.code >= 600]
    return global_[0] if global_ else min(finals, key=lambda r: r.code)
