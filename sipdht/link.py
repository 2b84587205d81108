"""The peer link: an ICE path (aioice) carrying AEAD-sealed, multiplexed datagrams.

Keys come from the X25519 keys exchanged in the signed, encrypted offer/answer,
so no handshake is needed after ICE: the first datagram is already protected.
Each direction has its own ChaCha20-Poly1305 key and a counter nonce; a sliding
replay window drops duplicates. Tampered and replayed datagrams are counted.

Wire format of one datagram: version (1 byte) | channel (1) | counter (8, big endian)
| ciphertext + tag; the 10-byte header is the associated data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections import Counter
from dataclasses import dataclass, field

import aioice
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

VERSION = 1
HEADER = struct.Struct("!BBQ")
REPLAY_WINDOW = 1024
CHANNEL_CONTROL, CHANNEL_SIP, CHANNEL_MEDIA = 0, 1, 2
CHANNEL_ECHO = 255          # diagnostics: every agent sends back what arrives here
CTRL_PING, CTRL_PONG, CTRL_CLOSE = 1, 2, 3
KEEPALIVE_INTERVAL = 5.0
CONSENT_TIMEOUT = 20.0
MAX_QUEUED = 1024


class LinkError(Exception):
    """The link could not be set up or was lost; the message says why."""


class DropDatagram(ValueError):
    """A received datagram that must be dropped (and counted)."""


# --- keys -----------------------------------------------------------------------------------


@dataclass
class EphemeralKey:
    """One side's X25519 key for one call."""
    private: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)

    @property
    def public(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def derive_keys(mine: EphemeralKey, peer_public: bytes, call_id: int, caller: str,
                callee: str) -> tuple[bytes, bytes]:
    """-> (caller-to-callee key, callee-to-caller key), bound to the call and both accounts."""
    try:
        shared = mine.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise LinkError(f"bad peer key: {exc}") from None
    okm = HKDF(hashes.SHA256(), 64, salt=call_id.to_bytes(8, "big"),
               info=b"sipdht link v1 " + caller.encode() + b" " + callee.encode()).derive(shared)
    return okm[:32], okm[32:]


# --- sans-IO sealing ------------------------------------------------------------------------


class ReplayWindow:
    """Accepts each counter once, within REPLAY_WINDOW of the highest seen (as IPsec)."""

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.size = size
        self.highest = -1
        self.bits = 0

    def check(self, counter: int) -> bool:
        if counter > self.highest:
            return True
        offset = self.highest - counter
        return offset < self.size and not (self.bits >> offset) & 1

    def update(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.bits = ((self.bits << shift) | 1) & ((1 << self.size) - 1)
            self.highest = counter
        else:
            self.bits |= 1 << (self.highest - counter)


class LinkCrypto:
    def __init__(self, send_key: bytes, recv_key: bytes) -> None:
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._counter = 0
        self.window = ReplayWindow()

    def seal(self, channel: int, payload: bytes) -> bytes:
        if not 0 <= channel < 256:
            raise ValueError("channel must be 0-255")
        self._counter += 1
        header = HEADER.pack(VERSION, channel, self._counter)
        return header + self._send.encrypt(b"\0\0\0\0" + header[2:], payload, header)

    def open(self, datagram: bytes) -> tuple[int, bytes]:
        if len(datagram) < HEADER.size + 16:
            raise DropDatagram("short")
        version, channel, counter = HEADER.unpack_from(datagram)
        if version != VERSION:
            raise DropDatagram("version")
        if not self.window.check(counter):
            raise DropDatagram("replay")
        header = datagram[:HEADER.size]
        try:
            payload = self._recv.decrypt(b"\0\0\0\0" + header[2:], datagram[HEADER.size:], header)
        except InvalidTag:
            raise DropDatagram("auth") from None
        self.window.update(counter)
        return channel, payload


# --- ICE ------------------------------------------------------------------------------------


@dataclass
class IceConfig:
    stun: tuple[str, int] | None = None
    turn: tuple[str, int] | None = None
    turn_username: str | None = None
    turn_password: str | None = None
    host_addresses: list[str] | None = None   # None: every interface aioice finds
    timeout: float = 15.0
    relay_only: bool = False


@dataclass
class IceParams:
    ufrag: str
    pwd: str
    candidates: list[str]


class _Connection(aioice.Connection):
    """aioice with an explicit list of host addresses (it skips loopback on its own)."""

    def __init__(self, host_addresses: list[str] | None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._host_addresses = host_addresses

    async def gather_candidates(self) -> None:
        if self._host_addresses is None:
            return await super().gather_candidates()
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        addresses = self._host_addresses if self._transport_policy == aioice.TransportPolicy.ALL else []
        self._local_candidates += await self.get_component_candidates(component=1, addresses=addresses)
        self._local_candidates_end = True


class IceSession:
    """One ICE agent for one call; the caller is controlling."""

    def __init__(self, config: IceConfig, controlling: bool) -> None:
        self.config = config
        self.conn = _Connection(
            config.host_addresses, ice_controlling=controlling, stun_server=config.stun,
            turn_server=config.turn, turn_username=config.turn_username,
            turn_password=config.turn_password, use_ipv6=False,
            transport_policy=(aioice.TransportPolicy.RELAY if config.relay_only
                              else aioice.TransportPolicy.ALL),
        )

    async def gather(self) -> IceParams:
        await self.conn.gather_candidates()
        cands = [c.to_sdp() for c in self.conn.local_candidates]
        if not cands:
            raise LinkError("no ICE candidates: no usable address, STUN or TURN server")
        return IceParams(self.conn.local_username, self.conn.local_password, cands)

    async def connect(self, remote: IceParams, timeout: float | None = None) -> None:
        """Connect within `timeout` (default [ice] timeout): aioice alone takes 63 s to fail."""
        timeout = timeout or self.config.timeout
        self.conn.remote_username, self.conn.remote_password = remote.ufrag, remote.pwd
        try:
            for sdp in remote.candidates[:64]:
                await self.conn.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
            await self.conn.add_remote_candidate(None)
            await asyncio.wait_for(self.conn.connect(), timeout)
        except TimeoutError:
            await self.conn.close()
            raise LinkError(f"ICE: no path to the peer within {timeout:g} s") from None
        except (ConnectionError, ValueError) as exc:
            await self.conn.close()
            raise LinkError(f"ICE: {exc or 'negotiation failed'}") from None

    def path(self) -> tuple[str, str]:
        """(local candidate type, remote candidate type) of the selected pair."""
        pair = self.conn._nominated.get(1)   # aioice has no public getter for it
        if pair is None:
            return ("none", "none")
        return (pair.local_candidate.type, pair.remote_candidate.type)


def path_type(path: tuple[str, str]) -> str:
    """The kind of path as a user sees it: relay, srflx (NAT traversed) or host."""
    if "relay" in path:
        return "relay"
    if "srflx" in path or "prflx" in path:
        return "srflx"
    return "host"


# --- the link -------------------------------------------------------------------------------


class PeerLink:
    """Sealed channels over a connected IceSession, with keepalive and clean close."""

    def __init__(self, ice: IceSession, crypto: LinkCrypto, peer: str,
                 initiator: bool = False) -> None:
        self.ice, self.crypto, self.peer, self.initiator = ice, crypto, peer, initiator
        self.stats: Counter[str] = Counter()
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queues: dict[int, asyncio.Queue[bytes]] = {}
        self._pings: dict[int, asyncio.Future[tuple[int, float]]] = {}
        self._last_rx = time.monotonic()
        self._tasks = [asyncio.create_task(self._receive_loop()),
                       asyncio.create_task(self._keepalive_loop())]

    @property
    def path(self) -> str:
        return path_type(self.ice.path())

    def channel(self, number: int) -> asyncio.Queue[bytes]:
        return self._queues.setdefault(number, asyncio.Queue(MAX_QUEUED))

    async def send(self, channel: int, payload: bytes) -> None:
        if self.closed.done():
            raise LinkError(f"link closed: {self.closed.result()}")
        await self.ice.conn.send(self.crypto.seal(channel, payload))
        self.stats["sent"] += 1

    async def recv(self, channel: int, timeout: float | None = None) -> bytes:
        getter = asyncio.ensure_future(self.channel(channel).get())
        done, _ = await asyncio.wait({getter, self.closed}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.closed.done():
            raise LinkError(f"link closed: {self.closed.result()}")
        raise TimeoutError

    async def ping(self, timeout: float = 3.0, interval: float = 0.5) -> float:
        """Round-trip time in seconds over the sealed control channel. Datagrams can be lost
        (and the callee's side of ICE may still be finishing), so the ping is re-sent every
        `interval` until a pong comes back or `timeout` passes."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, float]] = loop.create_future()
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
                        raise LinkError(f"no answer to a link ping within {timeout:g} s") from None
        finally:
            for nonce in sent:
                self._pings.pop(nonce, None)

    async def close(self, reason: str = "closed by peer") -> None:
        if not self.closed.done():
            try:
                await self.ice.conn.send(self.crypto.seal(CHANNEL_CONTROL, bytes([CTRL_CLOSE]) + reason.encode()[:200]))
            except (ConnectionError, OSError, AttributeError):
                pass
            await self._shutdown("closed")

    async def _shutdown(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await self.ice.conn.close()

    async def _receive_loop(self) -> None:
        while True:
            try:
                data = await self.ice.conn.recv()
            except ConnectionError:
                return await self._shutdown("ICE connection lost (consent expired)")
            self._last_rx = time.monotonic()
            try:
                channel, payload = self.crypto.open(data)
            except DropDatagram as exc:
                self.stats[f"dropped_{exc}"] += 1
                continue
            self.stats["received"] += 1
            if channel == CHANNEL_CONTROL:
                await self._control(payload)
            elif channel == CHANNEL_ECHO and not self.initiator:
                await self.send(CHANNEL_ECHO, payload)
            else:
                queue = self.channel(channel)
                if queue.full():
                    self.stats["dropped_queue_full"] += 1
                else:
                    queue.put_nowait(payload)

    async def _control(self, payload: bytes) -> None:
        kind, body = payload[:1], payload[1:]
        if kind == bytes([CTRL_PING]):
            await self.send(CHANNEL_CONTROL, bytes([CTRL_PONG]) + body)
        elif kind == bytes([CTRL_PONG]):
            nonce = int.from_bytes(body, "big")
            fut = self._pings.get(nonce)
            if fut and not fut.done():
                fut.set_result((nonce, time.monotonic()))
        elif kind == bytes([CTRL_CLOSE]):
            await self._shutdown("peer closed: " + body.decode("utf-8", "replace"))

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_INTERVAL)
            if time.monotonic() - self._last_rx > CONSENT_TIMEOUT:
                return await self._shutdown(f"peer silent for {CONSENT_TIMEOUT:g} s")
            try:
                await self.send(CHANNEL_CONTROL, bytes([CTRL_PING]) + bytes(8))
            except (LinkError, ConnectionError):
                return
