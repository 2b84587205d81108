"""The SIP gateway: local registrar and outbound proxy for softphones, on UDP and TCP.

It is the thin asyncio adapter around the sans-IO pieces: datagrams and TCP frames from
softphones, and SIP messages from peer links, all go through one `TransactionLayer`; what is
not answered locally (REGISTER, OPTIONS) goes to the `B2BUA`. Only loopback clients are served
unless `[sip] allow_remote` (then optionally with digest authentication). Malformed SIP gets
400 when it can be answered and is counted either way; it never stops the gateway.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ipaddress
import logging
import secrets
from typing import Any

from sipmessage import URI, Address, AuthChallenge, AuthParameters, Parameters, Request, Response

from ..account import CHANNEL_SIP, Link, LinkClosed
from ..config import SipConfig
from . import message
from .b2bua import B2BUA, Leg
from .dest import Dest, same_path
from .media import Relay
from .registrar import MIN_EXPIRES, Registrar
from .transaction import ServerTransaction, TransactionLayer

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, MESSAGE, REGISTER"
NOT_ALLOWED = {"SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "PRACK"}
LINK_HOST_SUFFIX = ".dht.invalid"
MAX_TCP_CONNECTIONS = 64
REALM = "sipdht"


class GatewayError(Exception):
    """The gateway cannot start; the message is for the user."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.gateway.receive(data, Dest("udp", addr[:2]))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class Gateway:
    """`Gateway(sip_config, contacts, pool, account, domain)`; `await start()` / `stop()`."""

    def __init__(self, config: SipConfig, contacts: dict[str, str], pool: Any, account: str,
                 domain: str) -> None:
        self.config = config
        self.contacts = dict(contacts)
        self.aliases = {acct: alias for alias, acct in contacts.items()}
        self.pool = pool
        self.account = account
        self.domain = domain or "dht"
        self.layer = TransactionLayer()
        self.registrar = Registrar()
        self.b2bua = B2BUA(self)
        self.stats: collections.Counter[str] = collections.Counter()
        self.host, self.port = config.listen
        self.media_host = config.media_address or (
            "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)
        self.rtp_ports = (config.rtp_port_min,
                          config.rtp_port_max)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._links: dict[Link, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._nonces: collections.OrderedDict[str, float] = collections.OrderedDict()

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on UDP and TCP; GatewayError (naming [sip] listen) when that is impossible."""
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.host, self.port))
            self._udp = transport  # type: ignore[assignment]
            self.port = transport.get_extra_info("sockname")[1]
            self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port,
                                                   limit=message.MAX_SIZE + 1)
        except OSError as exc:
            if self._udp is not None:
                self._udp.close()
            raise GatewayError(f"cannot listen for SIP on {self.host}:{self.port} "
                               f"([sip] listen): {exc.strerror or exc}") from None
        self.pool.subscribe(self._on_link)
        log.info("SIP gateway on %s:%d (UDP and TCP) for sip:%s@%s", self.host, self.port,
                 self.account, self.domain)

    async def stop(self) -> None:
        self.b2bua.end_all("Gateway shutting down")
        self.flush()
        await asyncio.sleep(0)
        if self._timer is not None:
            self._timer.cancel()
        for task in [*self._links.values(), *self._tasks]:
            task.cancel()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._tcp_writers):
            writer.close()
        if self._udp is not None:
            self._udp.close()

    def softphone_settings(self) -> str:
        """What to type into a softphone, printed by `sipdht run` at start."""
        proxy = f"{self.host}:{self.port}"
        example = next(iter(self.contacts), self.account)
        lines = [
            f"account id: {self.account}",
            "softphone settings:",
            f"  SIP address / user:  sip:me@{self.domain}  (any user name; all registered "
            "phones ring)",
            f"  registrar and outbound proxy:  sip:{proxy}  (UDP or TCP)",
            "  password:  " + ("[sip] password, for phones on other hosts"
                               if self.config.username else "none"),
            f"  call:  sip:<account id>@{self.domain} or an alias from [contacts], "
            f"e.g. sip:{example}@{self.domain}",
            f"  your callers dial:  sip:{self.account}@{self.domain}",
        ]
        return "\n".join(lines)

    # --- services for the B2BUA --------------------------------------------------------

    @property
    def sip_host(self) -> str:
        """Our address as SIP writes it in Via and Contact ([v6] in brackets)."""
        return f"[{self.media_host}]" if ":" in self.media_host else self.media_host

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def resolve(self, user: str) -> str | None:
        """Request-URI user -> account id (an alias from [contacts] or 40 hex digits)."""
        if user in self.contacts:
            return self.contacts[user]
        lowered = user.lower()
        if len(lowered) == 40 and all(c in "0123456789abcdef" for c in lowered):
            return lowered
        return None

    def alias_of(self, account: str) -> str:
        return self.aliases.get(account, "")

    def link_dest(self, link: Link) -> Dest:
        self._watch(link)
        return Dest("link", conn=link)

    def via_host(self, leg: Leg) -> str:
        return self.account + LINK_HOST_SUFFIX if leg.side == "link" else self.sip_host

    def via_port(self, leg: Leg) -> int | None:
        return None if leg.side == "link" else self.port

    def via_transport(self, leg: Leg) -> str:
        return "TCP" if leg.dest.kind == "tcp" else "UDP"

    def contact(self, leg: Leg) -> Address:
        if leg.side == "link":
            return Address(URI("sip", self.account + LINK_HOST_SUFFIX, user=self.account))
        params = Parameters(transport="tcp") if leg.dest.kind == "tcp" else Parameters()
        return Address(URI("sip", self.sip_host, user=self.account, port=self.port,
                           parameters=params))

    def new_relay(self, link: Link) -> Relay:
        return Relay(link, self.media_host, self.rtp_ports)

    def send_request(self, leg: Leg, request: Request, context: Any) -> Any:
        return self.layer.send_request(request, leg.dest, leg.dest.reliable, self.now(), context)

    def respond(self, tx: ServerTransaction, resp: Response) -> None:
        self.layer.respond(tx, resp, self.now())

    def send(self, dest: Dest, data: bytes) -> None:
        self.layer.send(dest, data)

    def ack_received(self, tx: ServerTransaction) -> None:
        self.layer.ack_received(tx, self.now())

    def find_invite(self, cancel: Request) -> ServerTransaction | None:
        return self.layer.find_server(cancel, "INVITE")

    # --- input -------------------------------------------------------------------------

    def receive(self, data: bytes, dest: Dest, *, stream: bool = False) -> None:
        """One SIP message from a softphone or a link; never raises."""
        try:
            self._receive(data, dest, stream)
        except Exception:                      # a bug must not stop the gateway
            self.stats["internal_errors"] += 1
            log.exception("SIP message from %s not handled", dest.addr or dest.kind)
        self.flush()

    def _receive(self, data: bytes, dest: Dest, stream: bool) -> None:
        if not data.strip(b"\r\n"):
            return                                            # CRLF keepalive
        if dest.kind != "link" and not self._allowed(dest.addr[0]):
            self.stats["refused_remote"] += 1
            self._refuse_remote(data, dest)
            return
        try:
            msg = message.parse(data, stream=stream)
        except message.BadMessage as exc:
            self.stats["malformed"] += 1
            answer = message.bad_request(data, str(exc))
            log.info("malformed SIP from %s: %s%s", dest.addr or dest.kind, exc,
                     "" if answer else " (dropped)")
            if answer:
                self._send(dest, answer)
            return
        if isinstance(msg, Response):
            if not self._expected_from(msg, dest):
                self.stats["response_wrong_path"] += 1
                return
            tx = self.layer.receive_response(msg, self.now())
            if tx is not None:
                self.b2bua.on_response(tx, msg)
            return
        self._request(msg, dest)

    def _request(self, req: Request, dest: Dest) -> None:
        if dest.kind == "udp":
            message.stamp_received(req, *dest.addr)
        if req.max_forwards == 0 and req.method not in ("ACK", "REGISTER", "OPTIONS"):
            self.layer.reply(req, dest, 483)
            return
        kind, tx = self.layer.receive_request(req, dest, dest.reliable, self.now())
        if kind == "ack":
            self.b2bua.on_ack(req, dest)
        if kind != "new" or tx is None:
            return
        if req.method == "CANCEL":
            self.b2bua.on_cancel(req, tx)
        elif message.tag_of(req.to_address):
            if not self.b2bua.in_dialog(req, tx, dest):
                self.respond(tx, message.response(req, 481))
        elif dest.kind == "link":
            self._from_link(req, tx, dest.conn)
        else:
            self._from_phone(req, tx, dest)

    def _expected_from(self, resp: Response, dest: Dest) -> bool:
        """A response for a request we sent over a link must come back over that link (a
        peer must not answer for another peer, nor a local process for a peer)."""
        tx = self.layer.find_client(message.branch(resp), resp.cseq.method)
        return tx is None or same_path(tx.dest, dest)

    def _from_phone(self, req: Request, tx: ServerTransaction, dest: Dest) -> None:
        if req.method in ("REGISTER", "INVITE") and not self._authorized(req, tx, dest):
            return
        if req.method == "REGISTER":
            self._register(req, tx, dest)
        elif req.method == "OPTIONS":
            self.respond(tx, self._options(req))
        elif req.method in ("INVITE", "MESSAGE"):
            self.b2bua.outgoing(req, tx)
        else:
            self._unsupported(req, tx)

    def _from_link(self, req: Request, tx: ServerTransaction, link: Link) -> None:
        if req.method in ("INVITE", "MESSAGE"):
            self.b2bua.incoming(req, tx, link)
        elif req.method == "OPTIONS":
            self.respond(tx, self._options(req))
        else:
            self._unsupported(req, tx)

    def _unsupported(self, req: Request, tx: ServerTransaction) -> None:
        if req.method in NOT_ALLOWED:
            resp = message.response(req, 405)
            resp.headers.set("Allow", ALLOW)
        elif req.method in ("BYE", "UPDATE", "INFO", "ACK", "REGISTER"):
            resp = message.response(req, 481 if req.method != "REGISTER" else 403,
                                    "Not here" if req.method == "REGISTER" else "")
        else:
            resp = message.response(req, 501)
            resp.headers.set("Allow", ALLOW)
        self.respond(tx, resp)

    def _options(self, req: Request) -> Response:
        resp = message.response(req, 200, to_tag=message.new_tag())
        resp.headers.set("Allow", ALLOW)
        resp.headers.set("Accept", "application/sdp")
        resp.headers.set("Supported", "timer")
        resp.headers.set("Server", "sipdht")
        return resp

    def _register(self, req: Request, tx: ServerTransaction, dest: Dest) -> None:
        binding_dest = dest
        contacts = req.contact
        if dest.kind == "udp" and contacts:
            uri = contacts[0].uri
            if message.is_address_literal(uri.host):
                binding_dest = Dest("udp", (uri.host.strip("[]"), uri.port or 5060))
        code, reason, bindings = self.registrar.register(req, binding_dest, self.now())
        resp = message.response(req, code, reason, to_tag=message.new_tag())
        if code == 423:
            resp.headers.set("Min-Expires", str(MIN_EXPIRES))
        if bindings:
            now = self.now()
            resp.headers.setlist("Contact", [
                str(Address(b.contact.uri, b.contact.name,
                            b.contact.parameters.replace(expires=str(b.expires_in(now)))))
                for b in bindings])
        self.respond(tx, resp)
        log.info("REGISTER %s from %s: %d (%d binding(s))", req.to_address.uri,
                 dest.addr, code, len(bindings))

    # --- access control ------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        try:
            return ipaddress.ip_address(host).is_loopback or self.config.allow_remote
        except ValueError:
            return False

    def _refuse_remote(self, data: bytes, dest: Dest) -> None:
        with contextlib.suppress(message.BadMessage):
            msg = message.parse(data)
            if isinstance(msg, Request) and msg.method != "ACK":
                out = message.response(msg, 403, "Only local clients may use this gateway")
                self._send(dest, message.serialize(out))

    def _authorized(self, req: Request, tx: ServerTransaction, dest: Dest) -> bool:
        """Digest (RFC 2617, MD5) for non-loopback phones when [sip] username is set."""
        username = self.config.username
        if not username or ipaddress.ip_address(dest.addr[0]).is_loopback:
            return True
        try:
            creds = req.authorization
        except ValueError:
            creds = None
        if creds is not None and self._digest_ok(req, creds.parameters, username):
            return True
        nonce = secrets.token_hex(16)
        self._nonces[nonce] = self.now()
        while len(self._nonces) > 256:
            self._nonces.popitem(last=False)
        resp = message.response(req, 401, to_tag=message.new_tag())
        resp.www_authenticate = AuthChallenge(
            "Digest", AuthParameters(realm=REALM, nonce=nonce, algorithm="MD5"))
        self.respond(tx, resp)
        return False

    def _digest_ok(self, req: Request, params: Any, username: str) -> bool:
        password = self.config.password
        nonce = params.get("nonce", "")
        if params.get("username") != username or nonce not in self._nonces:
            return False

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        ha1 = md5(f"{username}:{REALM}:{password}")
        ha2 = md5(f"{req.method}:{params.get('uri', '')}")
        if params.get("qop"):
            expected = md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:"
                           f"{params.get('qop')}:{ha2}")
        else:
            expected = md5(f"{ha1}:{nonce}:{ha2}")
        return secrets.compare_digest(expected, params.get("response", ""))

    # --- output and timers ---------------------------------------------------------------

    def flush(self) -> None:
        """Send what the transaction layer queued, hand timeouts to the B2BUA, re-arm."""
        for _ in range(64):                       # timeouts may queue more output
            for out in self.layer.datagrams_to_send():
                self._send(out.dest, out.data)
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

    def _send(self, dest: Dest, data: bytes) -> None:
        if dest.kind == "udp" and self._udp is not None:
            self._udp.sendto(data, dest.addr)
        elif dest.kind == "tcp":
            writer: asyncio.StreamWriter = dest.conn
            if not writer.is_closing():
                writer.write(data)
        elif dest.kind == "link":
            send_nowait = getattr(dest.conn, "send_nowait", None)   # PeerLink: no task
            if send_nowait is None:
                self._spawn(self._link_send(dest.conn, data))
                return
            try:
                send_nowait(CHANNEL_SIP, data)
            except (LinkClosed, ConnectionError):
                self.stats["link_send_failed"] += 1     # retransmission or link loss handles it

    async def _link_send(self, link: Link, data: bytes) -> None:
        with contextlib.suppress(LinkClosed, ConnectionError):
            await link.send(CHANNEL_SIP, data)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- TCP -----------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[:2]
        if len(self._tcp_writers) >= MAX_TCP_CONNECTIONS or not self._allowed(peer[0]):
            self.stats["refused_remote" if len(self._tcp_writers) < MAX_TCP_CONNECTIONS
                       else "refused_tcp"] += 1
            writer.close()
            return
        self._tcp_writers.add(writer)
        dest = Dest("tcp", peer, writer)
        try:
            while True:
                data = await self._read_frame(reader)
                if data is None:
                    break
                self.receive(data, dest, stream=True)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except message.BadMessage as exc:
            self.stats["malformed"] += 1
            log.info("malformed SIP over TCP from %s: %s (connection closed)", peer, exc)
        finally:
            self._tcp_writers.discard(writer)
            self.registrar.forget(lambda b: b.dest is dest)
            writer.close()

    async def _read_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        """One message framed by Content-Length (required on streams, RFC 3261 18.3)."""
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"\r\n"):
            head = head[2:]
        if not head:
            return b""
        lines, _ = message._normalise(head)
        length = message._content_length(lines)
        if length is None:
            raise message.BadMessage("Missing Content-Length on a stream")
        if length > message.MAX_SIZE:
            raise message.BadMessage("Message too large")
        return head + await reader.readexactly(length)

    # --- links ---------------------------------------------------------------------------

    def _on_link(self, link: Link, incoming: Any) -> None:
        self._watch(link)

    def _watch(self, link: Link) -> None:
        if link in self._links:
            return
        self._links[link] = asyncio.get_running_loop().create_task(self._link_loop(link))

    async def _link_loop(self, link: Link) -> None:
        reason = "closed"
        try:
            while True:
                data = await link.recv(CHANNEL_SIP)
                self.receive(data, Dest("link", conn=link))
        except LinkClosed as exc:
            reason = str(exc) or reason
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._links.pop(link, None)
        self.b2bua.link_closed(link, reason)
        self.flush()
