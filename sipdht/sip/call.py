"""What one call through the B2BUA is: its legs (one dialog each), its forks, the winner,
its link and media; and why each request of ours was sent (a client transaction's context),
so its answer or timeout can be handled without guessing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from sipmessage import Request, Response

from ..account import Link
from .dialog import Dialog
from .media_map import MediaMap
from .transaction import ClientTransaction, ServerTransaction


@dataclass(eq=False)
class Leg:
    """One dialog of a call, and what the call needs on it."""
    call: Call
    dialog: Dialog
    invite: ClientTransaction | ServerTransaction | None = None
    pending_ack: dict[int, AwaitedAck] = field(default_factory=dict)   # by the INVITE CSeq
    done: bool = False              # BYE or CANCEL sent, or failed: nothing more to send


@dataclass(frozen=True)
class AwaitedAck:
    """A 2xx passed on to this leg: its ACK is ACK `seq` on `other` (and ends `server`)."""
    server: ServerTransaction
    other: Leg
    seq: int


# Why we sent a request: the context of its client transaction, read when the answer comes.

@dataclass(frozen=True)
class ForkInvite:
    """The INVITE (or MESSAGE) that opens `leg`, one fork of its call."""
    leg: Leg


@dataclass(frozen=True)
class Forwarded:
    """A request in a dialog that came in on `leg` (answered through `server`), re-issued on
    the other leg as CSeq `seq`: its response goes back as ours."""
    leg: Leg
    server: ServerTransaction
    request: Request
    seq: int


@dataclass(frozen=True)
class Ending:
    """Our BYE or CANCEL on `leg`: what comes back (or not) changes nothing."""
    leg: Leg


@dataclass(eq=False)
class Call:
    a_request: Request
    link: Link | None = None
    media: MediaMap | None = None   # with `link`
    a: Leg | None = None
    forks: list[Leg] = field(default_factory=list)
    winner: Leg | None = None
    finals: list[Response] = field(default_factory=list)
    answered: bool = False
    ended: bool = False
    holds_link: bool = False        # a pool hold on `link` is ours to release
    task: asyncio.Task[None] | None = None
    started: float = field(default_factory=time.monotonic)

    def other(self, leg: Leg) -> Leg | None:
        if leg is not self.a:
            return self.a
        if self.winner is not None:
            return self.winner
        live = [f for f in self.forks if not f.done and f.dialog.remote_tag]
        return live[0] if len(live) == 1 else None

    def legs(self) -> list[Leg]:
        return [leg for leg in (self.a, *self.forks) if leg is not None]
