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
from .values import MAX_VALUE_SIZE, MalformedValue, Value, pack, unpackb

MAX_INLINE_SIZE = 600     # OpenDHT's MAX_PACKET_VALUE_SIZE
MAX_INLINE_COUNT = 50
MTU = 1280
RX_MAX_PACKET_TIME = 10.0
RX_TIMEOUT = 3.0
MAX_PARTIALS = 256
MAX_PARTIAL_BYTES = 8 * 1024 * 1024


def split_values(values: list[Value]) -> tuple[list[Any], list[bytes]]:
    """-> (what goes in `values`, packed values to send as fragments)."""
    maps = [pack(v) for v in values]
    packed = [msgpack.packb(m, use_bin_type=True) for m in maps]
    if len(values) < MAX_INLINE_COUNT and sum(len(p) for p in packed) < MAX_INLINE_SIZE:
        return maps, []
    return [len(p) for p in packed], packed


def fragment_datagrams(tid: int, packed: list[bytes], network: int = 0) -> list[bytes]:
    out = []
    for index, blob in enumerate(packed):
        for offset in range(0, len(blob), MTU):
            out.append(encode_fragment(tid, index, offset, blob[offset:offset + MTU], network))
    return out


# A stock node answers a get with every value of the key at once (OpenDHT allows 65536 per
# key); memory is bounded by the byte budget below, not by this count.
MAX_VALUES_PER_MESSAGE = 65536


@dataclass
class Partial:
    first: float
    last: float
    message: Message | None = None
    buffers: dict[int, bytearray] = field(default_factory=dict)
    chunks: dict[int, set[int]] = field(default_factory=dict)   # offsets received per value
    got: dict[int, int] = field(default_factory=dict)           # bytes received per value
    early: list[Message] = field(default_factory=list)          # fragments before their header
    size: int = 0                                               # bytes charged to the budget

    def complete(self) -> bool:
        sizes = self.message.value_sizes if self.message else None
        return sizes is not None and all(self.got.get(i, 0) >= n for i, n in enumerate(sizes))


class Reassembler:
    """Bounded reassembly of fragmented messages; everything it gives up on is counted.

    Budget: the announced sizes of every partial (and early fragments) count against
    MAX_PARTIAL_BYTES before any buffer is allocated, so a header cannot reserve memory
    it will never fill.
    """

    def __init__(self) -> None:
        self.partials: dict[tuple[Addr, int], Partial] = {}
        self.total = 0
        self.dropped = 0

    def header(self, msg: Message, addr: Addr, now: float) -> Message | None:
        """A message whose values come as fragments; returns it when already complete."""
        sizes = msg.value_sizes or []
        if len(sizes) > MAX_VALUES_PER_MESSAGE or any(n > MAX_VALUE_SIZE + 32 for n in sizes):
            self.dropped += 1
            return None
        key = (addr, msg.tid)
        part = self._partial(key, now)
        if part is None:
            return None
        early = part.early if part.message is None else []
        self._charge(part, sum(sizes) - part.size)     # early bytes are part of the sizes
        if self.total > MAX_PARTIAL_BYTES:
            return self._give_up(key)
        part.message, part.early = msg, []
        part.buffers, part.chunks, part.got = {}, {}, {}
        for frag in early:
            self._add(part, frag)
        return self._finish(key, part)

    def fragment(self, frag: Message, addr: Addr, now: float) -> Message | None:
        key = (addr, frag.tid)
        part = self.partials.get(key) or self._partial(key, now)
        if part is None:
            return None
        part.last = now
        if part.message is None:
            part.early.append(frag)
            self._charge(part, sum(len(d) for _, d in frag.fragments.values()))
            if self.total > MAX_PARTIAL_BYTES:
                self._give_up(key)
            return None
        self._add(part, frag)
        return self._finish(key, part)

    def expire(self, now: float) -> None:
        for key, part in list(self.partials.items()):
            if now - part.first > RX_MAX_PACKET_TIME or now - part.last > RX_TIMEOUT:
                self._give_up(key)

    def _partial(self, key, now: float) -> Partial | None:
        if key in self.partials:
            return self.partials[key]
        if len(self.partials) >= MAX_PARTIALS:
            self.dropped += 1
            return None
        part = self.partials[key] = Partial(first=now, last=now)
        return part

    def _charge(self, part: Partial, n: int) -> None:
        part.size += n
        self.total += n

    def _add(self, part: Partial, frag: Message) -> None:
        sizes = part.message.value_sizes if part.message else None
        for idx, (offset, chunk) in frag.fragments.items():
            if sizes is None or idx >= len(sizes) or not chunk or offset + len(chunk) > sizes[idx]:
                continue
            seen = part.chunks.setdefault(idx, set())
            if offset in seen:
                continue
            buf = part.buffers.get(idx)
            if buf is None:
                buf = part.buffers[idx] = bytearray(sizes[idx])
            buf[offset:offset + len(chunk)] = chunk
            seen.add(offset)
            part.got[idx] = part.got.get(idx, 0) + len(chunk)

    def _finish(self, key, part: Partial) -> Message | None:
        if not part.complete():
            return None
        self._drop(key)
        msg = part.message
        assert msg is not None
        try:
            msg.values = [unpackb(bytes(part.buffers[i])) for i in range(len(msg.value_sizes or []))]
        except (MalformedValue, KeyError):
            self.dropped += 1
            return None
        msg.value_sizes = None
        return msg

    def _give_up(self, key) -> None:
        self._drop(key)
        self.dropped += 1

    def _drop(self, key) -> None:
        part = self.partials.pop(key, None)
        if part:
            self.total -= part.size
