"""Messages up to 64 KiB over datagrams (sans-IO): split below the path MTU, reassembled with
bounds. Every sealed datagram's plaintext starts with a frame header:

    0x00 | message                          a whole message
    0x01 | id (4) | index (2) | count (2) | chunk     one fragment of message `id`

Loss of one fragment loses the message (the sender's protocol retransmits, as SIP over UDP
does); partial messages expire, are capped in number and bytes, and every drop is counted.
"""

from __future__ import annotations

import itertools
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ..account import MAX_MESSAGE

WHOLE, FRAGMENT = 0, 1
FRAG = struct.Struct("!BIHH")
MAX_DATAGRAM = 1200           # sealed datagram: safe below common path MTUs, TURN included
OVERHEAD = 11 + 16            # link header + AEAD tag (sealing.py)
CHUNK = MAX_DATAGRAM - OVERHEAD - FRAG.size
MAX_PARTIAL = 32              # partial messages per link
MAX_PARTIAL_BYTES = 256 * 1024
PARTIAL_TIMEOUT = 5.0


class FrameError(ValueError):
    """A frame that is malformed or over a limit; dropped and counted by its message."""


def split(message: bytes, msg_id: int) -> list[bytes]:
    """The frames (plaintexts) of one message."""
    if len(message) > MAX_MESSAGE:
        raise ValueError(f"message of {len(message)} bytes: the limit is {MAX_MESSAGE}")
    if len(message) + 1 <= MAX_DATAGRAM - OVERHEAD:
        return [bytes([WHOLE]) + message]
    chunks = [message[i:i + CHUNK] for i in range(0, len(message), CHUNK)]
    return [FRAG.pack(FRAGMENT, msg_id, i, len(chunks)) + c for i, c in enumerate(chunks)]


@dataclass
class _Partial:
    count: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self._partial: OrderedDict[tuple[int, int], _Partial] = OrderedDict()
        self._bytes = 0
        self.ids = itertools.count(1)

    def receive(self, channel: int, frame: bytes, now: float) -> bytes | None:
        """A whole message when `frame` completes one, else None; raises FrameError."""
        if not frame:
            raise FrameError("empty")
        if frame[0] == WHOLE:
            return frame[1:]
        if frame[0] != FRAGMENT or len(frame) < FRAG.size:
            raise FrameError("bad_frame")
        _, msg_id, index, count = FRAG.unpack_from(frame)
        chunk = frame[FRAG.size:]
        if not 1 < count <= MAX_MESSAGE // CHUNK + 1 or index >= count or len(chunk) > CHUNK:
            raise FrameError("bad_fragment")
        self.expire(now)
        part = self._partial.get((channel, msg_id)) or self._start(channel, msg_id, count, now)
        if part.count != count:
            raise FrameError("bad_fragment")
        if index in part.chunks:
            self.stats["duplicate_fragment"] += 1
            return None
        part.chunks[index] = chunk
        part.size += len(chunk)
        self._bytes += len(chunk)
        if len(part.chunks) < count:
            return None
        self._drop((channel, msg_id))
        return b"".join(part.chunks[i] for i in range(count))

    def _start(self, channel: int, msg_id: int, count: int, now: float) -> _Partial:
        while self._partial and (len(self._partial) >= MAX_PARTIAL
                                 or self._bytes + count * CHUNK > MAX_PARTIAL_BYTES):
            self._drop(next(iter(self._partial)))
            self.stats["dropped_partial_evicted"] += 1
        part = self._partial[(channel, msg_id)] = _Partial(count, now)
        return part

    def expire(self, now: float) -> None:
        while self._partial:
            key, part = next(iter(self._partial.items()))
            if now - part.started < PARTIAL_TIMEOUT:
                return
            self._drop(key)
            self.stats["dropped_partial_expired"] += 1

    def _drop(self, key: tuple[int, int]) -> None:
        part = self._partial.pop(key)
        self._bytes -= part.size
