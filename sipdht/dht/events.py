"""Events the engine reports to its adapter (one dataclass per kind)."""

from __future__ import annotations

from dataclasses import dataclass

from .values import Value


@dataclass
class GetValues:
    op: int
    values: list[Value]


@dataclass
class GetDone:
    op: int
    ok: bool          # the key's closest nodes were reached
    hops: int = 0     # depth of the iterative lookup (1 = answered from our own table)


@dataclass
class PutDone:
    op: int
    stored: int       # distinct nodes that acknowledged the value


@dataclass
class ListenValues:
    op: int
    kind: str         # "add", "refresh" or "expire"
    values: list[Value]


@dataclass
class Connectivity:
    good_nodes: int   # reported when the node joins (>0) or loses the network (0)


Event = GetValues | GetDone | PutDone | ListenValues | Connectivity
