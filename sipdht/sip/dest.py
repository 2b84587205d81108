"""Where a SIP message goes or came from: a UDP address, a TCP connection or a peer link.

The transaction layer treats it as opaque; the gateway sends by it; the B2BUA uses it to
check that a request in a dialog arrived the way that dialog runs (a peer cannot act in
another peer's dialog).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class Dest:
    """Where a message goes: a UDP address, a TCP connection, or a peer link."""
    kind: str                                  # "udp", "tcp" or "link"
    addr: tuple[str, int] = ("", 0)
    conn: Any = None                           # StreamWriter (tcp) or Link (link)

    @property
    def reliable(self) -> bool:
        return self.kind == "tcp"


def same_path(expected: Dest, got: Dest) -> bool:
    """Did `got` arrive the way `expected` leads: the same link, or any local transport
    (a softphone may answer over UDP what it registered over TCP)?"""
    if expected.kind == "link" or got.kind == "link":
        return expected.kind == got.kind and expected.conn is got.conn
    return True
