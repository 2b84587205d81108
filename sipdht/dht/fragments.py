"""Values too big for one datagram travel as `y="p"` fragments after their message.

The sender announces each value's packed size in `values` and then sends the
bytes in order, in chunks of at most MTU. The receiver keeps bounded partial
messages keyed by (address, tid) and gives up on them after a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from .messages import Addr, Message, encode_fragment
from .values import MAX_VALUE_SIZE, MalformedValue, Value, packb, unpackb

MAX_INLINE_SIZE = 600     # OpenDHT's MAX_PACKET_VALUE_SIZE
MAX_INLINE_COUNT = 50
MTU = 1280
RX_MAX_PACKET_TIME = 10.0
RX_TIMEOUT = 3.0
MAX_PARTIALS = 256
MAX_PARTIAL_BYTES = 8 * 1024 * 1024


def split_values(values: list[Value]) -> tuple[list[Any], list[bytes]]:
    """-> (what goes in `values`, packed values to send as fragments)."""
    packed = [packb(v) for v in values]
    if len(values) < MAX_INLINE_COUNT and sum(len(p) for p in packed) < MAX_INLINE_SIZE:
        return [msgpack.unpackb(p, raw=False, strict_map_key=False) for p in packed], []
    return [len(p) for p in packed], packed


def fragment_datagrams(tid: int, packed: list[bytes], network: int = 0) -> list[bytes]:
    out = []
    for index, blob in enumerate(packed):
        for offset in range(0, len(blob), MTU):
            out.append(encode_fragment(tid, index, offset, blob[offset:offset + MTU], network))
    return out


@dataclass
class Partial:
    first: float
    last: float
    message: Message | None = None
    buffers: dict[int, bytearray] = field(default_factory=dict)
    received: dict[int, int] = field(default_factory=dict)
    early: list[Message] = field(default_factory=list)  # fragments before their header
    size: int = 0

    def complete(self) -> bool:
        sizes = self.message.value_sizes if self.message else None
        return sizes is not None and all(self.received.get(i, 0) >= n for i, n in enumerate(sizes))


class Reassembler:
    """Bounded reassembly of fragmented messages; everything it gives up on is counted."""

    def __init__(self) -> None:
        self.partials: dict[tuple[Addr, int], Partial] = {}
        self.total = 0
        self.dropped = 0

    def header(self, msg: Message, addr: Addr, now: float) -> Message | None:
        """A message whose values come as fragments; returns it when already complete."""
        sizes = msg.value_sizes or []
        if any(n > MAX_VALUE_SIZE + 32 for n in sizes):
            self.dropped += 1
            return None
        part = self._partial((addr, msg.tid), now)
        if part is None:
            return None
        part.message = msg
        part.buffers = {i: bytearray(n) for i, n in enumerate(sizes)}
        for early in part.early:
            self._add(part, early)
        part.early.clear()
        return self._finish((addr, msg.tid), part)

    def fragment(self, frag: Message, addr: Addr, now: float) -> Message | None:
        key = (addr, frag.tid)
        part = self.partials.get(key) or self._partial(key, now)
        if part is None:
            return None
        part.last = now
        if part.message is None:
            part.early.append(frag)
            self._account(part, sum(len(d) for _, d in frag.fragments.values()))
            return None
        self._add(part, frag)
        return self._finish(key, part)

    def expire(self, now: float) -> None:
        for key, part in list(self.partials.items()):
            if now - part.first > RX_MAX_PACKET_TIME or now - part.last > RX_TIMEOUT:
                self._drop(key)
                self.dropped += 1

    def _partial(self, key, now: float) -> Partial | None:
        if key in self.partials:
            return self.partials[key]
        if len(self.partials) >= MAX_PARTIALS:
            self.dropped += 1
            return None
        part = self.partials[key] = Partial(first=now, last=now)
        return part

    def _account(self, part: Partial, n: int) -> None:
        part.size += n
        self.total += n

    def _add(self, part: Partial, frag: Message) -> None:
        for idx, (offset, chunk) in frag.fragments.items():
            buf = part.buffers.get(idx)
            if buf is None or offset + len(chunk) > len(buf) or not chunk:
                continue
            buf[offset:offset + len(chunk)] = chunk
            part.received[idx] = max(part.received.get(idx, 0), offset + len(chunk))
            self._account(part, len(chunk))

    def _finish(self, key, part: Partial) -> Message | None:
        if self.total > MAX_PARTIAL_BYTES:
            self._drop(key)
            self.dropped += 1
            return None
        if not part.complete():
            return None
        self._drop(key)
        msg = part.message
        assert msg is not None
        try:
            msg.values = [unpackb(bytes(part.buffers[i])) for i in range(len(part.buffers))]
        except MalformedValue:
            self.dropped += 1
            return None
        msg.value_sizes = None
        return msg

    def _drop(self, key) -> None:
        part = self.partials.pop(key, None)
        if part:
            self.total -= part.size
