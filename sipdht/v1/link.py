"""The protocol v1 peer link: an ICE path (aioice) carrying sealed, framed messages on
numbered channels. Keys come from the signed offer/answer, so the first datagram is already
protected; a keepalive on the control channel detects a silent peer.

Channels nobody opened (no recv(), no on_message()) drop their messages and count them, so a
peer cannot fill memory through channels we do not read.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable

from ..account import CHANNEL_CONTROL, CHANNEL_SIP, FIRST_MEDIA_CHANNEL, Breakdown, LinkClosed
from .framing import FrameError, Reassembler, split
from .ice import IceSession, path_type
from .sealing import DropDatagram, LinkCrypto

log = logging.getLogger(__name__)

CHANNEL_ECHO = 0xFFFF       # diagnostics: an accepting agent sends back what arrives here
CTRL_PING, CTRL_PONG, CTRL_CLOSE = 1, 2, 3
KEEPALIVE_INTERVAL = 5.0
CONSENT_TIMEOUT = 20.0
MAX_QUEUED = 256


class PeerLink:
    """Sealed channels over a connected IceSession (implements sipdht.account.Link and
    Diagnosable)."""

    echo_channel = CHANNEL_ECHO

    def __init__(self, ice: IceSession, crypto: LinkCrypto, peer: str, device: str = "",
                 initiator: bool = False) -> None:
        self.ice, self.crypto, self.peer, self.device = ice, crypto, peer, device
        self.initiator = initiator
        self.stats: Counter[str] = Counter()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self.setup = Breakdown()
        self._frames = Reassembler()
        self._queues: dict[int, asyncio.Queue[bytes]] = {CHANNEL_SIP: asyncio.Queue(MAX_QUEUED)}
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._pings: dict[int, asyncio.Future[tuple[int, float]]] = {}
        self._next_channel = FIRST_MEDIA_CHANNEL + (0 if initiator else 1)
        self._last_rx = time.monotonic()
        self._tasks = [asyncio.create_task(self._receive_loop()),
                       asyncio.create_task(self._keepalive_loop())]
        if not initiator:
            self.on_message(CHANNEL_ECHO, lambda m: self.send_nowait(CHANNEL_ECHO, m))

    def __repr__(self) -> str:
        return f"<PeerLink {self.peer[:8]} {self.path}>"

    @property
    def path(self) -> str:
        return path_type(self.ice.path())

    # --- sending ----------------------------------------------------------------------------

    async def send(self, channel: int, message: bytes) -> None:
        self._check_open()
        for frame in split(message, next(self._frames.ids) & 0xFFFFFFFF):
            try:
                await self.ice.conn.send(self.crypto.seal(channel, frame))
            except ConnectionError as exc:
                raise LinkClosed(f"link lost: {exc}") from None
            self.stats["sent"] += 1
        if channel != CHANNEL_CONTROL:
            self.last_used = time.monotonic()

    def send_nowait(self, channel: int, message: bytes) -> None:
        """Send from a synchronous callback (media relay): no task when the path allows it."""
        self._check_open()
        frames = split(message, next(self._frames.ids) & 0xFFFFFFFF)
        datagrams = [self.crypto.seal(channel, f) for f in frames]
        for d in datagrams:
            if not self.ice.send_now(d):
                asyncio.ensure_future(self._send_raw(d))
        self.stats["sent"] += len(datagrams)
        self.last_used = time.monotonic()

    async def _send_raw(self, datagram: bytes) -> None:
        try:
            await self.ice.conn.send(datagram)
        except ConnectionError:
            self.stats["send_failed"] += 1

    def _check_open(self) -> None:
        if self.closed.done():
            raise LinkClosed(f"link closed: {self.closed.result()}")

    # --- receiving --------------------------------------------------------------------------

    def _queue(self, channel: int) -> asyncio.Queue[bytes]:
        return self._queues.setdefault(channel, asyncio.Queue(MAX_QUEUED))

    async def recv(self, channel: int, timeout: float | None = None) -> bytes:
        getter = asyncio.ensure_future(self._queue(channel).get())
        waiting: set[asyncio.Future[bytes] | asyncio.Future[str]] = {getter, self.closed}
        done, _ = await asyncio.wait(waiting, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            self.last_used = time.monotonic()
            return getter.result()
        getter.cancel()
        self._check_open()
        raise TimeoutError

    def on_message(self, channel: int, handler: Callable[[bytes], None] | None) -> None:
        if handler is None:
            self._handlers.pop(channel, None)
            if channel >= FIRST_MEDIA_CHANNEL:
                self._queues.pop(channel, None)
        else:
            self._handlers[channel] = handler

    def new_channel(self) -> int:
        """Initiator: even numbers, acceptor: odd, so both sides allocate without talking."""
        for _ in range(0x8000):
            number = self._next_channel
            self._next_channel += 2
            if self._next_channel >= CHANNEL_ECHO:
                self._next_channel = FIRST_MEDIA_CHANNEL + (0 if self.initiator else 1)
            if number not in self._handlers and number not in self._queues:
                return number
        raise LinkClosed("no free media channel on this link")

    async def _receive_loop(self) -> None:
        while True:
            try:
                data = await self.ice.conn.recv()
            except ConnectionError:
                return await self._shutdown("ICE connection lost (consent expired)")
            self._last_rx = time.monotonic()
            try:
                channel, frame = self.crypto.open(data)
                message = self._frames.receive(channel, frame, self._last_rx)
            except (DropDatagram, FrameError) as exc:
                self.stats[f"dropped_{exc}"] += 1
                continue
            self.stats["received"] += 1
            if message is not None:
                await self._deliver(channel, message)

    async def _deliver(self, channel: int, message: bytes) -> None:
        if channel == CHANNEL_CONTROL:
            return await self._control(message)
        self.last_used = self._last_rx
        handler = self._handlers.get(channel)
        if handler is not None:
            try:
                handler(message)
            except Exception:   # a consumer's bug must not end the link
                self.stats["handler_failed"] += 1
                log.exception("handler of channel %d on %r failed", channel, self)
            return
        queue = self._queues.get(channel)
        if queue is None:
            self.stats["dropped_no_channel"] += 1
        elif queue.full():
            self.stats["dropped_queue_full"] += 1
        else:
            queue.put_nowait(message)

    # --- control ----------------------------------------------------------------------------

    async def ping(self, timeout: float = 3.0, interval: float = 0.5) -> float:
        """Round-trip time in seconds over the sealed control channel, re-sent every
        `interval` (datagrams can be lost, and the peer's ICE may still be finishing)."""
        fut: asyncio.Future[tuple[int, float]] = asyncio.get_running_loop().create_future()
        sent: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        try:
            while True:
                nonce = int.from_bytes(os.urandom(8), "big") or 1
                sent[nonce] = time.monotonic()
                self._pings[nonce] = fut
                await self.send(CHANNEL_CONTROL, bytes([CTRL_PING]) + nonce.to_bytes(8, "big"))
                wait = min(interval, deadline - time.monotonic())
                try:
                    answered, at = await asyncio.wait_for(asyncio.shield(fut), max(wait, 0.001))
                    return at - sent[answered]
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise LinkClosed(f"no answer to a link ping within {timeout:g} s") from None
        finally:
            for nonce in sent:
                self._pings.pop(nonce, None)

    async def close(self, reason: str = "closed") -> None:
        if not self.closed.done():
            try:
                frame = bytes([CTRL_CLOSE]) + reason.encode()[:200]
                await self.ice.conn.send(self.crypto.seal(CHANNEL_CONTROL, split(frame, 0)[0]))
            except (ConnectionError, OSError, AttributeError):
                pass
            await self._shutdown("closed")

    async def _shutdown(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.ice.close()

    async def _control(self, payload: bytes) -> None:
        kind, body = payload[:1], payload[1:]
        if kind == bytes([CTRL_PING]):
            await self.send(CHANNEL_CONTROL, bytes([CTRL_PONG]) + body)
        elif kind == bytes([CTRL_PONG]):
            fut = self._pings.get(int.from_bytes(body, "big"))
            if fut and not fut.done():
                fut.set_result((int.from_bytes(body, "big"), time.monotonic()))
        elif kind == bytes([CTRL_CLOSE]):
            await self._shutdown("peer closed: " + body.decode("utf-8", "replace"))
        else:
            self.stats["dropped_control"] += 1

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            if time.monotonic() - self._last_rx > CONSENT_TIMEOUT:
                return await self._shutdown(f"peer silent for {CONSENT_TIMEOUT:g} s")
            try:
                await self.send(CHANNEL_CONTROL, bytes([CTRL_PING]) + bytes(8))
            except (LinkClosed, ConnectionError):
                return
