"""The SIP gateway: local registrar and outbound proxy for softphones, on UDP and TCP.

It only composes the layers and routes: the `Transport` hands it every message, which goes
through the `TransactionLayer`; a new request is routed by where it came from (a phone or a
link) and its method, through one table each, to the registrar, an OPTIONS answer or the
`B2BUA` (MESSAGE too; SUBSCRIBE/NOTIFY would be one more entry). Only loopback clients are
served unless `[sip] allow_remote` (then optionally with digest, `auth`). Malformed SIP gets
400 when it can be answered and is counted either way; it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from sipmessage import Request, Response

from ..account import IncomingLink, Link, LinkSource
from ..config import SipConfig
from . import message
from .auth import AccessPolicy, DigestAuth
from .b2bua import B2BUA
from .dest import Dest, DestKind, same_path
from .local import Local
from .media import Relay
from .registrar import Registrar
from .transaction import Received, ServerTransaction, TransactionLayer
from .transport import Transport

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, REGISTER"
NOT_ALLOWED = {"SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "PRACK"}
AUTHENTICATED = {"REGISTER", "INVITE"}     # from phones not on loopback, when a username is set
NO_DIALOG = {"BYE", "UPDATE", "INFO", "ACK"}   # only valid in a dialog: 481 out of one

Handler = Callable[[Request, ServerTransaction], None]


class GatewayError(Exception):
    """The gateway cannot start; the message is for the user."""


class Gateway:
    """`Gateway(sip_config, contacts, pool, account, domain)`; `await start()` / `stop()`."""

    def __init__(self, config: SipConfig, contacts: dict[str, str], pool: LinkSource,
                 account: str, domain: str) -> None:
        self.config = config
        self.pool = pool
        host, port = config.listen
        media_host = config.media_address or (
            "127.0.0.1" if host in ("0.0.0.0", "::", "") else host)
        self.local = Local(account, domain or "dht", host, port, media_host, dict(contacts))
        self.stats: collections.Counter[str] = collections.Counter()
        self.layer = TransactionLayer()
        self.registrar = Registrar()
        self.access = AccessPolicy(config.allow_remote)
        self.auth = DigestAuth(config.username, config.password)
        self.transport = Transport(self, host, port, admit=self.access.allowed, stats=self.stats)
        rtp_ports = (config.rtp_port_min, config.rtp_port_max)
        self.b2bua = B2BUA(self.layer, self.registrar, pool, self.local,
                           lambda link: Relay(link, media_host, rtp_ports),
                           reach=self.transport.reach, flush=self.flush)
        self._timer: asyncio.TimerHandle | None = None
        self._from_phone: dict[str, Handler] = {
            "REGISTER": self._register, "OPTIONS": self._options,
            "INVITE": self.b2bua.outgoing, "MESSAGE": self.b2bua.outgoing}
        self._from_link: dict[str, Handler] = {
            "OPTIONS": self._options,
            "INVITE": self.b2bua.incoming, "MESSAGE": self.b2bua.incoming}

    @property
    def port(self) -> int:
        """The port UDP and TCP listen on (the configured one, or the one bound for 0)."""
        return self.transport.port

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on UDP and TCP; GatewayError (naming [sip] listen) when that is impossible."""
        try:
            await self.transport.start()
        except OSError as exc:
            raise GatewayError(f"cannot listen for SIP on {self.local.host}:{self.port} "
                               f"([sip] listen): {exc.strerror or exc}") from None
        self.local.port = self.port
        self.pool.subscribe(self._on_link)
        log.info("SIP gateway on %s:%d (UDP and TCP) for sip:%s@%s", self.local.host,
                 self.port, self.local.account, self.local.domain)

    async def stop(self) -> None:
        self.b2bua.end_all("Gateway shutting down")
        self.flush()
        await asyncio.sleep(0)
        if self._timer is not None:
            self._timer.cancel()
        self.transport.stop()

    def softphone_settings(self) -> str:
        """What to type into a softphone, printed by `sipdht run` at start."""
        local = self.local
        example = next(iter(local.contacts), local.account)
        lines = [
            f"account id: {local.account}",
            "softphone settings:",
            f"  SIP address / user:  sip:me@{local.domain}  (any user name; all registered "
            "phones ring)",
            f"  registrar and outbound proxy:  sip:{local.host}:{self.port}  (UDP or TCP)",
            "  password:  " + ("[sip] password, for phones on other hosts"
                               if self.config.username else "none"),
            f"  call:  sip:<account id>@{local.domain} or an alias from [contacts], "
            f"e.g. sip:{example}@{local.domain}",
            f"  your callers dial:  sip:{local.account}@{local.domain}",
        ]
        return "\n".join(lines)

    # --- input (the transport's user) ----------------------------------------------------

    def receive(self, data: bytes, source: Dest, *, stream: bool = False) -> None:
        """One SIP message from a softphone or a link; never raises."""
        try:
            self._receive(data, source, stream)
        except Exception:                      # a bug must not stop the gateway
            self.stats["internal_errors"] += 1
            log.exception("SIP message from %s not handled", source.addr or source.kind)
        self.flush()

    def tcp_closed(self, source: Dest) -> None:
        self.registrar.forget(lambda b: b.dest is source)

    def link_closed(self, link: Link, reason: str) -> None:
        self.b2bua.link_closed(link, reason)
        self.flush()

    def _on_link(self, link: Link, incoming: IncomingLink | None) -> None:
        self.transport.watch(link)

    def _receive(self, data: bytes, source: Dest, stream: bool) -> None:
        if not data.strip(b"\r\n"):
            return                                            # CRLF keepalive
        if source.kind is not DestKind.LINK and not self.access.allowed(source.addr[0]):
            self.stats["refused_remote"] += 1
            refusal = self.access.refusal(data)
            if refusal is not None:
                self.transport.send(source, refusal)
            return
        try:
            msg = message.parse(data, stream=stream)
        except message.BadMessage as exc:
            self.stats["malformed"] += 1
            answer = message.bad_request(data, str(exc))
            log.info("malformed SIP from %s: %s%s", source.addr or source.kind, exc,
                     "" if answer else " (dropped)")
            if answer:
                self.transport.send(source, answer)
            return
        if isinstance(msg, Response):
            self._response(msg, source)
        else:
            self._request(msg, source)

    def _response(self, resp: Response, source: Dest) -> None:
        """A response for a request we sent over a link must come back over that link (a
        peer must not answer for another peer, nor a local process for a peer)."""
        sent = self.layer.find_client(message.branch(resp), resp.cseq.method)
        if sent is not None and not same_path(sent.dest, source):
            self.stats["response_wrong_path"] += 1
            return
        tx = self.layer.receive_response(resp, self.now())
        if tx is not None:
            self.b2bua.on_response(tx, resp)

    def _request(self, req: Request, source: Dest) -> None:
        if source.kind is DestKind.UDP:
            message.stamp_received(req, *source.addr)
        if req.max_forwards == 0 and req.method not in ("ACK", "REGISTER", "OPTIONS"):
            self.layer.reply(req, source, 483)
            return
        kind, tx = self.layer.receive_request(req, source, source.reliable, self.now())
        if kind is Received.ACK:
            self.b2bua.on_ack(req, source)
        if kind is not Received.NEW or tx is None:
            return
        self._route(req, tx)

    # --- routing a new request -----------------------------------------------------------

    def _route(self, req: Request, tx: ServerTransaction) -> None:
        if req.method == "CANCEL":
            self.b2bua.on_cancel(req, tx)
        elif message.tag_of(req.to_address):
            if not self.b2bua.in_dialog(req, tx):
                self._respond(tx, message.response(req, 481))
        elif tx.dest.kind is DestKind.LINK:
            self._from_link.get(req.method, self._unsupported)(req, tx)
        elif req.method in AUTHENTICATED and not self._authorized(req, tx):
            return
        else:
            self._from_phone.get(req.method, self._unsupported)(req, tx)

    def _authorized(self, req: Request, tx: ServerTransaction) -> bool:
        challenge = self.auth.challenge(req, tx.dest.addr[0], self.now())
        if challenge is not None:
            self._respond(tx, challenge)
        return challenge is None

    def _register(self, req: Request, tx: ServerTransaction) -> None:
        self._respond(tx, self.registrar.answer(req, tx.dest, self.now()))

    def _options(self, req: Request, tx: ServerTransaction) -> None:
        resp = message.response(req, 200, to_tag=message.new_tag())
        resp.headers.set("Allow", ALLOW)
        resp.headers.set("Accept", "application/sdp")
        resp.headers.set("Supported", "timer")
        resp.headers.set("Server", "sipdht")
        self._respond(tx, resp)

    def _unsupported(self, req: Request, tx: ServerTransaction) -> None:
        if req.method in NOT_ALLOWED:
            resp = message.response(req, 405)
            resp.headers.set("Allow", ALLOW)
        elif req.method in NO_DIALOG:
            resp = message.response(req, 481)
        elif req.method == "REGISTER":                 # over a link: not a peer's business
            resp = message.response(req, 403, "Not here")
        else:
            resp = message.response(req, 501)
            resp.headers.set("Allow", ALLOW)
        self._respond(tx, resp)

    def _respond(self, tx: ServerTransaction, resp: Response) -> None:
        self.layer.respond(tx, resp, self.now())

    # --- output and timers ---------------------------------------------------------------

    def flush(self) -> None:
        """Send what the transaction layer queued, hand timeouts to the B2BUA, re-arm."""
        for _ in range(64):                       # timeouts may queue more output
            for out in self.layer.datagrams_to_send():
                self.transport.send(out.dest, out.data)
            event = self.layer.next_event()
            if event is None:
                break
            self.b2bua.on_timeout(event.transaction)
        self._arm()

    def _arm(self) -> None:
        deadline = self.layer.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.layer.handle_timer(self.now())
        except Exception:
            log.exception("transaction timer failed")
        self.flush()
