"""Values too big for one datagram travel as `y="p"` fragments after their message.

The sender announces each value's packed size in `values` and then sends the
bytes in order, in chunks of at most MTU. The receiver keeps bounded partial
messages keyed by (address, tid) and gives up on them after a few seconds.

Bounds (a spoofed source can open partials at will, so every one is charged what it
really costs and no source can crowd out the others): partials per source IP and in all,
charged bytes per source IP and in all, each chunk charged at least CHUNK_OVERHEAD, and
the fragments that come before their header capped per partial as in OpenDHT. When a
bound is hit the oldest partial goes (of that IP, then of the node), so a flood delays
honest messages by at most its own churn instead of locking them out.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .messages import Addr, Message, encode_fragment
from .values import MAX_VALUE_SIZE, MalformedValue, Value, pack, packb, unpackb

MAX_INLINE_SIZE = 600     # OpenDHT's MAX_PACKET_VALUE_SIZE
MAX_INLINE_COUNT = 50
MTU = 1280
RX_MAX_PACKET_TIME = 10.0
RX_TIMEOUT = 3.0
MAX_PARTIALS = 4096
MAX_PARTIALS_PER_IP = 32
MAX_PARTIAL_BYTES = 8 * 1024 * 1024
MAX_PARTIAL_BYTES_PER_IP = MAX_PARTIAL_BYTES // 2
# A decoded chunk held in memory (dict entry, tuple, bytes object, offset) costs ~250 B in
# CPython 3.11 whatever its length, so a 1-byte chunk is charged this much.
CHUNK_OVERHEAD = 256
# Fragments before their header, per partial: OpenDHT's RX_MAX_EARLY_BYTES (it caps raw
# bytes at this and parts at ~96; we cap charged bytes, which bounds both).
RX_MAX_EARLY_BYTES = 56 * 1024 + MAX_VALUE_SIZE + 32


def split_values(values: list[Value]) -> tuple[list[Any], list[bytes]]:
    """-> (what goes in `values`, packed values to send as fragments)."""
    packed = [packb(v) for v in values]
    if fits_inline(packed):
        return [pack(v) for v in values], []
    return [len(p) for p in packed], packed


def fits_inline(packed: list[bytes]) -> bool:
    """Whether these packed values go in the message itself (else sizes, then fragments)."""
    return len(packed) < MAX_INLINE_COUNT and sum(map(len, packed)) < MAX_INLINE_SIZE


def fragment_datagrams(tid: int, packed: list[bytes], network: int = 0) -> list[bytes]:
    out = []
    for index, blob in enumerate(packed):
        for offset in range(0, len(blob), MTU):
            out.append(encode_fragment(tid, index, offset, blob[offset:offset + MTU], network))
    return out


# A stock node answers a get with every value of the key at once (OpenDHT allows 65536 per
# key); memory is bounded by the byte budgets below, not by this count.
MAX_VALUES_PER_MESSAGE = 65536
SIZE_SLOT = 8          # charged per announced value (its slot in the decoded size list)

PartialKey = tuple[Addr, int]


@dataclass
class _Parts:
    """The chunks of one value: non-overlapping, as OpenDHT keeps them."""
    size: int
    starts: list[int] = field(default_factory=list)     # sorted chunk offsets
    chunks: dict[int, bytes] = field(default_factory=dict)
    got: int = 0

    def add(self, offset: int, chunk: bytes) -> bool:
        """Keep the chunk unless it is empty, too long or overlaps one already kept."""
        if not chunk or offset + len(chunk) > self.size or self.got >= self.size:
            return False
        i = bisect.bisect_left(self.starts, offset)
        if i < len(self.starts) and self.starts[i] < offset + len(chunk):
            return False
        if i > 0 and self.starts[i - 1] + len(self.chunks[self.starts[i - 1]]) > offset:
            return False
        self.starts.insert(i, offset)
        self.chunks[offset] = chunk
        self.got += len(chunk)
        return True

    def data(self) -> bytes:
        return b"".join(self.chunks[o] for o in self.starts)


@dataclass
class Partial:
    first: float
    last: float
    message: Message | None = None
    values: dict[int, _Parts] = field(default_factory=dict)    # created on a first chunk
    remaining: int = 0                                          # values not yet complete
    early: list[Message] = field(default_factory=list)         # fragments before their header
    early_size: int = 0
    size: int = 0                                               # bytes charged to the budgets


class Reassembler:
    """Bounded reassembly of fragmented messages; everything it gives up on is counted."""

    def __init__(self) -> None:
        self.partials: dict[PartialKey, Partial] = {}         # oldest first
        self.by_ip: dict[str, dict[PartialKey, None]] = {}    # oldest first, per source IP
        self.ip_bytes: dict[str, int] = {}
        self.total = 0
        self.dropped = 0

    def has(self, addr: Addr, tid: int) -> bool:
        return (addr, tid) in self.partials

    def awaiting_header(self, addr: Addr, tid: int) -> bool:
        """Fragments came first for this message (and were charged to the rate limiter)."""
        part = self.partials.get((addr, tid))
        return part is not None and part.message is None

    def header(self, msg: Message, addr: Addr, now: float) -> Message | None:
        """A message whose values come as fragments; returns it when already complete."""
        sizes = msg.value_sizes or []
        if len(sizes) > MAX_VALUES_PER_MESSAGE or any(n > MAX_VALUE_SIZE + 32 for n in sizes):
            self.dropped += 1
            return None
        key = (addr, msg.tid)
        part = self.partials.get(key)
        if part is not None and part.message is not None:
            return None                  # a retransmitted header: keep what we have
        part = part or self._open(key, now)
        early, part.early, part.message = part.early, [], msg
        part.last, part.remaining = now, len(sizes)
        self._charge(key, part, len(sizes) * SIZE_SLOT - part.early_size)
        part.early_size = 0
        for frag in early:
            if key in self.partials:
                self._add(key, part, frag)
        return self._finish(key, part)

    def fragment(self, frag: Message, addr: Addr, now: float) -> Message | None:
        key = (addr, frag.tid)
        if not frag.fragments or any(not d for _, d in frag.fragments.values()):
            self.dropped += 1
            return None
        part = self.partials.get(key) or self._open(key, now)
        part.last = now
        if part.message is not None:
            self._add(key, part, frag)
            return self._finish(key, part)
        cost = sum(len(d) + CHUNK_OVERHEAD for _, d in frag.fragments.values())
        if part.early_size + cost > RX_MAX_EARLY_BYTES:
            self._give_up(key)
            return None
        part.early.append(frag)
        part.early_size += cost
        self._charge(key, part, cost)
        return None

    def expire(self, now: float) -> None:
        for key, part in list(self.partials.items()):
            if now - part.first > RX_MAX_PACKET_TIME or now - part.last > RX_TIMEOUT:
                self._give_up(key)

    def _open(self, key: PartialKey, now: float) -> Partial:
        """A new partial; the oldest of its IP, or of the node, makes room for it."""
        ip = key[0][0]
        mine = self.by_ip.setdefault(ip, {})
        if len(mine) >= MAX_PARTIALS_PER_IP:
            self._give_up(next(iter(mine)))
        if len(self.partials) >= MAX_PARTIALS:
            self._give_up(next(iter(self.partials)))
        part = self.partials[key] = Partial(first=now, last=now)
        self.by_ip.setdefault(ip, {})[key] = None
        return part

    def _charge(self, key: PartialKey, part: Partial, n: int) -> None:
        """Charge n bytes, then evict the oldest partials (maybe this one) over a budget."""
        ip = key[0][0]
        part.size += n
        self.total += n
        self.ip_bytes[ip] = self.ip_bytes.get(ip, 0) + n
        while self.ip_bytes.get(ip, 0) > MAX_PARTIAL_BYTES_PER_IP and key in self.partials:
            self._give_up(next(iter(self.by_ip[ip])))
        while self.total > MAX_PARTIAL_BYTES and key in self.partials:
            self._give_up(next(iter(self.partials)))

    def _add(self, key: PartialKey, part: Partial, frag: Message) -> None:
        sizes = part.message.value_sizes if part.message else None
        if sizes is None:
            return
        cost = 0
        for idx, (offset, chunk) in frag.fragments.items():
            if idx >= len(sizes):
                continue
            parts = part.values.get(idx)
            if parts is None:
                parts = part.values[idx] = _Parts(sizes[idx])
            if parts.add(offset, chunk):
                cost += len(chunk) + CHUNK_OVERHEAD
                if parts.got == parts.size:
                    part.remaining -= 1
        if cost:
            self._charge(key, part, cost)

    def _finish(self, key: PartialKey, part: Partial) -> Message | None:
        msg = part.message
        if msg is None or part.remaining > 0 or key not in self.partials:
            return None
        self._drop(key)
        try:
            msg.values = [unpackb(part.values[i].data()) for i in range(len(msg.value_sizes or []))]
        except (MalformedValue, KeyError):
            self.dropped += 1
            return None
        msg.value_sizes = None
        return msg

    def _give_up(self, key: PartialKey) -> None:
        self._drop(key)
        self.dropped += 1

    def _drop(self, key: PartialKey) -> None:
        part = self.partials.pop(key, None)
        if part is None:
            return
        ip = key[0][0]
        self.total -= part.size
        left = self.ip_bytes.get(ip, 0) - part.size
        mine = self.by_ip.get(ip, {})
        mine.pop(key, None)
        if mine:
            self.ip_bytes[ip] = left
        else:
            self.by_ip.pop(ip, None)
            self.ip_bytes.pop(ip, None)
