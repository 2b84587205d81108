"""The gateway's wire: a UDP socket and a TCP listener for softphones, the SIP channel of
every peer link, and the send path by `Dest.kind`.

Everything received goes to one `TransportUser` as whole messages; on TCP a message is framed
by its Content-Length (`message.frame_length`). A TCP connection that breaks the framing is
closed, since nothing after it can be trusted to start a message.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Protocol

from ..account import CHANNEL_SIP, Link, LinkClosed
from . import message
from .dest import Dest, DestKind

log = logging.getLogger(__name__)

MAX_TCP_CONNECTIONS = 64


class TransportUser(Protocol):
    def receive(self, data: bytes, source: Dest, *, stream: bool = False) -> None:
        """One message (or a keepalive) from `source`; must not raise."""

    def tcp_closed(self, source: Dest) -> None:
        """A TCP connection ended: nothing can be sent to `source` any more."""

    def link_closed(self, link: Link, reason: str) -> None:
        """A link's SIP channel ended (after its last message was received)."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, user: TransportUser) -> None:
        self.user = user

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.user.receive(data, Dest.udp(addr[:2]))

    def error_received(self, exc: Exception) -> None:
        log.debug("sip udp error: %s", exc)


class Transport:
    def __init__(self, user: TransportUser, host: str, port: int, *,
                 admit: Callable[[str], bool], stats: collections.Counter[str]) -> None:
        self.user = user
        self.host = host
        self.port = port                     # 0 until bound: then the port both listen on
        self.admit = admit                   # may a TCP client at this host connect?
        self.stats = stats
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_writers: set[asyncio.StreamWriter] = set()
        self._links: dict[Link, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Bind UDP, then TCP on the same port; OSError when either cannot be."""
        loop = asyncio.get_running_loop()
        try:
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self.user), local_addr=(self.host, self.port))
            self.port = self._udp.get_extra_info("sockname")[1]
            self._tcp = await asyncio.start_server(self._tcp_client, self.host, self.port,
                                                   limit=message.MAX_SIZE + 1)
        except OSError:
            if self._udp is not None:
                self._udp.close()
            raise

    def stop(self) -> None:
        for task in self._links.values():
            task.cancel()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._tcp_writers):
            writer.close()
        if self._udp is not None:
            self._udp.close()

    # --- sending ---------------------------------------------------------------------------

    def send(self, dest: Dest, data: bytes) -> None:
        """Send now; a loss is left to retransmission (or to the link's closing)."""
        if dest.kind is DestKind.UDP:
            if self._udp is not None:
                self._udp.sendto(data, dest.addr)
        elif dest.kind is DestKind.TCP:
            if dest.writer is not None and not dest.writer.is_closing():
                dest.writer.write(data)
        elif dest.link is not None:
            try:
                dest.link.send_nowait(CHANNEL_SIP, data)
            except (LinkClosed, ConnectionError):
                self.stats["link_send_failed"] += 1

    # --- links -----------------------------------------------------------------------------

    def reach(self, link: Link) -> Dest:
        """Where to send over `link`, whose SIP channel is read from now on (if it was not
        already: a link may have been announced before we listened, or have just closed)."""
        self.watch(link)
        return Dest.over(link)

    def watch(self, link: Link) -> None:
        if link not in self._links:
            self._links[link] = asyncio.get_running_loop().create_task(self._link_loop(link))

    async def _link_loop(self, link: Link) -> None:
        reason = "closed"
        try:
            while True:
                data = await link.recv(CHANNEL_SIP)
                self.user.receive(data, Dest.over(link))
        except LinkClosed as exc:
            reason = str(exc) or reason
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        finally:
            self._links.pop(link, None)
        self.user.link_closed(link, reason)

    # --- TCP -------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer: tuple[str, int] = writer.get_extra_info("peername")[:2]
        full = len(self._tcp_writers) >= MAX_TCP_CONNECTIONS
        if full or not self.admit(peer[0]):
            self.stats["refused_tcp" if full else "refused_remote"] += 1
            writer.close()
            return
        self._tcp_writers.add(writer)
        source = Dest.tcp(peer, writer)
        try:
            while True:
                self.user.receive(await read_frame(reader), source, stream=True)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except message.BadMessage as exc:
            self.stats["malformed"] += 1
            log.info("malformed SIP over TCP from %s: %s (connection closed)", peer, exc)
        finally:
            self._tcp_writers.discard(writer)
            self.user.tcp_closed(source)
            writer.close()


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One message framed by Content-Length; b"" for a CRLF keepalive. The end of the stream
    raises IncompleteReadError."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"\r\n"):
        head = head[2:]
    if not head:
        return b""
    return head + await reader.readexactly(message.frame_length(head))
