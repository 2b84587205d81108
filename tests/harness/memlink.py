"""An in-memory Link pair and LinkPool for gateway tests (until the real pool is used).

It follows sipdht.account.Link: datagram-like messages on numbered channels, an optional
loss rate (so SIP over the link must retransmit), on_message for media, `closed`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import Callable

from sipdht.account import IncomingLink, LinkClosed, UnknownAccount


class MemLink:
    def __init__(self, peer: str, initiator: bool, loss: float = 0.0) -> None:
        self.peer = peer
        self.device = ""
        self.initiator = initiator
        self.loss = loss
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self.other: MemLink | None = None
        self._queues: defaultdict[int, asyncio.Queue[bytes]] = defaultdict(asyncio.Queue)
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self._next = 2 if initiator else 3
        self.sent: defaultdict[int, int] = defaultdict(int)
        self.dropped = 0

    @property
    def path(self) -> str:
        return "host"

    async def send(self, channel: int, message: bytes) -> None:
        self.send_nowait(channel, message)

    def send_nowait(self, channel: int, message: bytes) -> None:
        if self.closed.done():
            raise LinkClosed(self.closed.result())
        self.sent[channel] += 1
        self.last_used = time.monotonic()
        if self.loss and random.random() < self.loss:
            self.dropped += 1
            return
        assert self.other is not None
        asyncio.get_running_loop().call_soon(self.other._deliver, channel, bytes(message))

    def _deliver(self, channel: int, message: bytes) -> None:
        if self.closed.done():
            return
        self.last_used = time.monotonic()
        handler = self._handlers.get(channel)
        if handler is not None:
            handler(message)
        else:
            self._queues[channel].put_nowait(message)

    async def recv(self, channel: int, timeout: float | None = None) -> bytes:
        if self.closed.done():
            raise LinkClosed(self.closed.result())
        get = asyncio.ensure_future(self._queues[channel].get())
        done, _ = await asyncio.wait({get, self.closed}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if get in done:
            return get.result()
        get.cancel()
        if self.closed.done():
            raise LinkClosed(self.closed.result())
        raise TimeoutError

    def on_message(self, channel: int, handler: Callable[[bytes], None] | None) -> None:
        if handler is None:
            self._handlers.pop(channel, None)
        else:
            self._handlers[channel] = handler

    def new_channel(self) -> int:
        n, self._next = self._next, self._next + 2
        return n

    async def close(self, reason: str = "closed") -> None:
        for link in (self, self.other):
            if link is not None and not link.closed.done():
                link.closed.set_result(reason)


class MemPool:
    """LinkPool's API over MemLinks; `network` maps account ids to pools."""

    def __init__(self, account: str, network: dict[str, MemPool], loss: float = 0.0,
                 failures: dict[str, Exception] | None = None) -> None:
        self.account = account
        self.network = network
        self.loss = loss
        self.failures = failures or {}
        self.links: dict[str, MemLink] = {}
        self.subscribers: list[Callable] = []
        self.holds: defaultdict[int, int] = defaultdict(int)
        self.gets = 0
        network[account] = self

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def get(self, account: str, *, uri: str = "", timeout: float | None = None):
        self.gets += 1
        if account in self.failures:
            raise self.failures[account]
        link = self.find(account)
        if link is not None:
            return link
        peer = self.network.get(account)
        if peer is None:
            raise UnknownAccount(account, "No contact record for this account")
        ours, theirs = MemLink(account, True, self.loss), MemLink(self.account, False, self.loss)
        ours.other, theirs.other = theirs, ours
        self.links[account] = ours
        peer.links[self.account] = theirs
        for cb in peer.subscribers:
            cb(theirs, IncomingLink(theirs, self.account, uri))
        for cb in self.subscribers:
            cb(ours, None)
        return ours

    def find(self, account: str):
        link = self.links.get(account)
        return link if link is not None and not link.closed.done() else None

    def subscribe(self, callback: Callable) -> None:
        self.subscribers.append(callback)

    def hold(self, link) -> None:
        self.holds[id(link)] += 1

    def release(self, link) -> None:
        self.holds[id(link)] -= 1
