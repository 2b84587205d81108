"""The two seams between the SIP side and the network: account types and links.

The gateway, the plugins and the CLI only see these. Protocol v1 (`sipdht.v1`) is one
account type; a Jami-compatible one will be another. A link carries whole messages
(up to MAX_MESSAGE bytes, fragmented below the path MTU by the implementation) on
numbered channels; delivery is datagram-like (a message may be lost, never altered),
so SIP over a link retransmits as it does over UDP.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

MAX_MESSAGE = 65536
CHANNEL_CONTROL = 0      # the link's own keepalive / close: not for users
CHANNEL_SIP = 1          # SIP messages, one per link message
FIRST_MEDIA_CHANNEL = 2  # media channels are allocated with Link.new_channel()


# --- typed call failures ----------------------------------------------------------------------


class CallFailure(Exception):
    """A call (link set-up) failed. `sip_status` is what a gateway answers; `str()` is the
    reason phrase a softphone user sees."""

    sip_status: ClassVar[int] = 500

    def __init__(self, account: str, reason: str) -> None:
        super().__init__(reason)
        self.account = account
        self.reason = reason


class UnknownAccount(CallFailure):
    """Not an account anyone published (no contact record, no key)."""
    sip_status = 404


class Offline(CallFailure):
    """The account exists but no device is online (its record says offline or is stale)."""
    sip_status = 480


class RefusalCode(enum.IntEnum):
    """Why a callee refused, carried on the wire (versioned with the signalling)."""
    DECLINED = 1        # the user / device declined
    POLICY = 2          # caller not allowed by the callee's policy
    BUSY = 3
    MALFORMED = 4       # the offer was not acceptable (stale, replayed, wrong callee)


class Refused(CallFailure):
    """The callee refused: 403 when its policy forbids the caller, 603 otherwise."""

    def __init__(self, account: str, reason: str, code: RefusalCode = RefusalCode.DECLINED) -> None:
        super().__init__(account, reason)
        self.code = code

    @property
    def sip_status(self) -> int:  # type: ignore[override]
        return {RefusalCode.POLICY: 403, RefusalCode.BUSY: 486}.get(self.code, 603)


class NoAnswer(CallFailure):
    """Nothing came back from an online device within the time allowed."""
    sip_status = 408


class NoPath(CallFailure):
    """The peer answered but no network path could be opened (ICE failed, no candidates)."""
    sip_status = 503


# --- links ------------------------------------------------------------------------------------


class LinkClosed(ConnectionError):
    """Sending or receiving on a link that is closed; the message says why it closed."""


@runtime_checkable
class Link(Protocol):
    """An authenticated, encrypted datagram path to one device of one account."""

    peer: str                      # the peer's verified account id
    device: str                    # the peer's device id ("" when the account type has none)
    initiator: bool                # True on the side that called connect()
    closed: asyncio.Future[str]    # resolves with the reason when the link ends
    last_used: float               # time.monotonic() of the last message (keepalives excluded)

    @property
    def path(self) -> str:         # "host", "srflx" or "relay", as a user would say it
        ...

    async def send(self, channel: int, message: bytes) -> None:
        """Send one message (<= MAX_MESSAGE bytes); raises LinkClosed."""

    async def recv(self, channel: int, timeout: float | None = None) -> bytes:
        """The next message on `channel`; raises LinkClosed or TimeoutError."""

    def send_nowait(self, channel: int, message: bytes) -> None:
        """Send from a synchronous callback (a media relay): no task when the path allows."""

    def on_message(self, channel: int, handler: Callable[[bytes], None] | None) -> None:
        """Deliver `channel`'s messages to `handler` as they arrive (no queue, for media)."""

    def new_channel(self) -> int:
        """A media channel number that the peer will not allocate for itself."""

    async def close(self, reason: str = "closed") -> None:
        ...


@dataclass
class Breakdown:
    """Where the time of one link set-up went (milliseconds), for `sipdht ping`."""
    lookup_ms: float = 0.0
    gather_ms: float = 0.0
    signalling_ms: float = 0.0
    ice_ms: float = 0.0
    rtt_ms: list[float] = field(default_factory=list)
    path: str = ""


@runtime_checkable
class Diagnosable(Protocol):
    """What `sipdht ping` measures on a link. Optional: an account type whose links cannot
    answer a ping or echo data still carries calls."""

    setup: Breakdown               # how the link was set up
    echo_channel: int              # the accepting peer sends back what arrives here

    async def ping(self, timeout: float = 3.0) -> float:
        """The round-trip time in seconds; raises LinkClosed when nothing answers in time."""


LinkSubscriber = Callable[[Link, "IncomingLink | None"], None]


@runtime_checkable
class LinkSource(Protocol):
    """Where the gateway gets links: shared per peer account, held while a call uses one
    (`sipdht.links.LinkPool`; an in-memory pool in the tests)."""

    async def get(self, account: str, *, uri: str = "", timeout: float | None = None) -> Link:
        """A live link to `account`, or a new one; raises CallFailure."""

    def find(self, account: str) -> Link | None:
        """A live link to `account` if there is one (no set-up)."""

    def subscribe(self, callback: LinkSubscriber) -> None:
        """Call `callback(link, incoming)` for every new link (`incoming` None when ours)."""

    def hold(self, link: Link) -> None:
        """A call uses `link`: it must not be closed as idle."""

    def release(self, link: Link) -> None:
        """One `hold` ended."""


# --- account types ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """One device of an account, as its account type found it."""
    account: str
    id: str
    online: bool
    age: float                       # seconds since its record was published
    public_key: bytes = b""          # DER SubjectPublicKeyInfo of the device (or account) key
    protocols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Lookup:
    """An account's devices as the account types found them, for `sipdht lookup`."""
    account: str
    devices: tuple[Device, ...] = ()

    @property
    def online(self) -> bool:
        return any(d.online for d in self.devices)

    @property
    def record_age(self) -> float | None:
        """Seconds since the newest record was published; None when there is none."""
        return min((d.age for d in self.devices), default=None)


@dataclass
class IncomingLink:
    """A link the peer opened to us: `account` is verified, `uri` is what the peer dialled."""
    link: Link
    account: str
    uri: str


@runtime_checkable
class AccountType(Protocol):
    """One way of being reachable by account id (protocol v1, Jami, ...)."""

    name: str                        # e.g. "sipdht/1"

    @property
    def account(self) -> str:        # our own account id
        ...

    async def resolve(self, account: str) -> list[Device]:
        """The account's devices (online or not); [] when nothing is published."""

    async def connect(self, account: str, *, device: str | None = None, uri: str = "",
                      timeout: float | None = None) -> Link:
        """Open a link to the account (any online device, or `device`); raises CallFailure."""

    def incoming(self) -> AsyncIterator[IncomingLink]:
        """Links other accounts open to us, after their identity and our policy checks."""
