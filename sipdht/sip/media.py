"""RTP/RTCP relay between a local softphone and a peer link, one `Relay` per media stream.

The softphone sends RTP to a local even port P and RTCP to P+1 (or P with rtcp-mux); both go
over one link channel, the peer's receive channel (learnt from the m= port of the peer's SDP,
where our SDP puts our own channel). Coming back, RTCP is told from RTP by its packet type
(RFC 5761: 192-223), so non-muxed RTCP reaches the softphone's RTCP port. Each datagram is
forwarded as it arrives (no batching, no queue); sockets are read with add_reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable

from ..account import Link, LinkClosed

log = logging.getLogger(__name__)

MAX_DATAGRAM = 2048
BIND_ATTEMPTS = 64


def is_rtcp(packet: bytes) -> bool:
    return len(packet) >= 2 and 192 <= packet[1] <= 223


def _bind_pair(host: str, ports: tuple[int, int]) -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on an even port and the next one, inside `ports`."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    lo, hi = ports
    for _ in range(BIND_ATTEMPTS):
        port = random.randrange(lo + (lo % 2), hi - 1, 2)
        pair: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                pair.append(sock)
                sock.setblocking(False)
                sock.bind((host, p))
            return pair[0], pair[1]
        except OSError:
            for sock in pair:
                sock.close()
    raise OSError(f"no free RTP port pair in {lo}-{hi}")


class Relay:
    """One stream: local sockets <-> a link channel. `channel` is ours (the peer sends on it);
    `peer_channel` is the peer's; `phone` / `phone_rtcp` are the softphone's addresses."""

    def __init__(self, link: Link, host: str, ports: tuple[int, int]) -> None:
        self.link = link
        self.host = host
        self.rtp, self.rtcp = _bind_pair(host, ports)
        self.port: int = self.rtp.getsockname()[1]
        self.channel = link.new_channel()
        self.peer_channel: int | None = None
        self.phone: tuple[str, int] | None = None
        self.phone_rtcp: tuple[str, int] | None = None
        self.phone_mux = False                  # the softphone's SDP has a=rtcp-mux
        self.peer_mux: bool | None = None       # the peer's SDP has it (None: not seen yet)
        self.sent = self.received = self.dropped = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.rtp.fileno(), self._readable, self.rtp)
        self._loop.add_reader(self.rtcp.fileno(), self._readable, self.rtcp)
        link.on_message(self.channel, self._from_link)
        self._closed = False

    def set_phone(self, address: str, port: int, rtcp_port: int, mux: bool) -> None:
        """Where the softphone said (in its SDP) it receives this stream."""
        if port:
            self.phone = (address, port)
            self.phone_rtcp = (address, rtcp_port)
            self.phone_mux = mux

    @property
    def rtcp_mux(self) -> bool:
        """RFC 5761: RTCP shares the RTP port only when both SDPs say so (before the peer's
        answer, as the softphone offered)."""
        return self.phone_mux and self.peer_mux is not False

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(64):                       # bounded: let other callbacks run
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if sock is self.rtp and self.phone is None:
                self.phone = self.phone_rtcp = addr[:2]   # symmetric RTP when SDP said nothing
            if self.peer_channel is None or self._closed:
                self.dropped += 1
                continue
            self.sent += 1
            try:                                  # no task per packet: sent from here
                self.link.send_nowait(self.peer_channel, data)
            except (LinkClosed, ConnectionError):
                self.dropped += 1

    def _from_link(self, data: bytes) -> None:
        if self._closed:
            return
        rtcp = is_rtcp(data) and not self.rtcp_mux
        target = self.phone_rtcp if rtcp else self.phone
        if target is None:
            self.dropped += 1
            return
        self.received += 1
        with contextlib.suppress(OSError):
            (self.rtcp if rtcp else self.rtp).sendto(data, target)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self.rtp, self.rtcp):
            self._loop.remove_reader(sock.fileno())
            sock.close()
        with contextlib.suppress(Exception):
            self.link.on_message(self.channel, None)


RelayFactory = Callable[[Link], Relay]
