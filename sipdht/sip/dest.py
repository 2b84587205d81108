"""Where a SIP message goes or came from: a UDP address, a TCP connection or a peer link.

The transaction layer only stores it and hands it back; the transport sends by it; the B2BUA
uses it to check that a request in a dialog arrived the way that dialog runs (a peer cannot
act in another peer's dialog).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from ..account import Link


class DestKind(enum.StrEnum):
    UDP = "udp"
    TCP = "tcp"
    LINK = "link"


@dataclass(frozen=True, eq=False)
class Dest:
    """Compared by identity: a TCP destination is one connection, not its address."""
    kind: DestKind
    addr: tuple[str, int] = ("", 0)
    writer: asyncio.StreamWriter | None = None     # kind TCP
    link: Link | None = None                       # kind LINK

    @classmethod
    def udp(cls, addr: tuple[str, int]) -> Dest:
        return cls(DestKind.UDP, addr)

    @classmethod
    def tcp(cls, addr: tuple[str, int], writer: asyncio.StreamWriter) -> Dest:
        return cls(DestKind.TCP, addr, writer=writer)

    @classmethod
    def over(cls, link: Link) -> Dest:
        return cls(DestKind.LINK, link=link)

    @property
    def reliable(self) -> bool:
        """Whether the transport delivers or fails (no retransmission timers)."""
        return self.kind is DestKind.TCP


def same_path(expected: Dest, got: Dest) -> bool:
    """Did `got` arrive the way `expected` leads: the same link, or any local transport
    (a softphone may answer over UDP what it registered over TCP)?"""
    if expected.kind is DestKind.LINK or got.kind is DestKind.LINK:
        return expected.kind is got.kind and expected.link is got.link
    return True
