"""LinkPool: one set-up per peer, reuse, typed failures, holds and idle close.

The account type here is a stand-in that counts set-ups (the real one is exercised against
dhtnode in tests/interop/test_signaling_security.py and through NATs in tests/netns)."""

from __future__ import annotations

import asyncio
import time

import pytest

from sipdht.account import AccountType, IncomingLink, Link, NoPath, Offline, UnknownAccount
from sipdht.links import LinkPool

pytestmark = pytest.mark.async_timeout(10)


class _Link:
    def __init__(self, peer: str) -> None:
        self.peer, self.device, self.initiator = peer, "", True
        self.closed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self.path = "host"

    async def close(self, reason: str = "closed") -> None:
        if not self.closed.done():
            self.closed.set_result(reason)


class _Accounts:
    name = "test/1"
    account = "0" * 40

    def __init__(self, fail: dict[str, Exception] | None = None, delay: float = 0.05) -> None:
        self.connects: list[str] = []
        self.fail, self.delay = fail or {}, delay
        self.queue: asyncio.Queue[IncomingLink] = asyncio.Queue()

    async def resolve(self, account: str):
        return []

    async def connect(self, account, *, device=None, uri="", timeout=None):
        self.connects.append(account)
        await asyncio.sleep(self.delay)
        if account in self.fail:
            raise self.fail[account]
        return _Link(account)

    async def incoming(self):
        while True:
            yield await self.queue.get()


def test_the_stand_in_account_type_follows_the_interface():
    assert isinstance(_Accounts(), AccountType)


async def test_concurrent_calls_share_one_setup_and_later_ones_reuse_it():
    acct = _Accounts()
    pool = LinkPool([acct], idle_timeout=0)
    links = await asyncio.gather(*(pool.get("b" * 40) for _ in range(20)))
    assert len({id(ln) for ln in links}) == 1 and acct.connects == ["b" * 40]
    assert await pool.get("b" * 40) is links[0] and pool.stats["reused"] == 1
    await links[0].close("gone")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert pool.find("b" * 40) is None                 # a closed link is never reused
    assert await pool.get("b" * 40) is not links[0] and len(acct.connects) == 2
    await pool.stop()
    await pool.tasks.stop()


async def test_typed_failures_reach_every_waiter():
    acct = _Accounts({"c" * 40: Offline("c" * 40, "offline"),
                      "d" * 40: NoPath("d" * 40, "ICE failed")})
    pool = LinkPool([acct], idle_timeout=0)
    for account, kind, status in (("c" * 40, Offline, 480), ("d" * 40, NoPath, 503)):
        results = await asyncio.gather(pool.get(account), pool.get(account),
                                       return_exceptions=True)
        assert all(isinstance(r, kind) and r.sip_status == status for r in results)
    none = LinkPool([], idle_timeout=0)
    with pytest.raises(UnknownAccount):
        await none.get("e" * 40)
    await pool.tasks.stop()


async def test_idle_links_close_unless_held_and_incoming_ones_are_announced(monkeypatch):
    monkeypatch.setattr("sipdht.links.IDLE_CHECK_MIN", 0.05)
    acct = _Accounts()
    pool = LinkPool([acct], idle_timeout=0.2)
    seen: list[tuple[Link, IncomingLink | None]] = []
    pool.subscribe(lambda link, inc: seen.append((link, inc)))
    await pool.start()
    held, idle = await pool.get("f" * 40), await pool.get("a" * 40)
    pool.hold(held)
    incoming = _Link("9" * 40)
    await acct.queue.put(IncomingLink(incoming, "9" * 40, "sip:me@dht"))
    await asyncio.sleep(0.05)
    assert [inc.uri if inc else None for _, inc in seen] == [None, None, "sip:me@dht"]
    assert pool.find("9" * 40) is incoming
    held.last_used = idle.last_used = incoming.last_used = time.monotonic() - 1
    for _ in range(40):
        if idle.closed.done():
            break
        await asyncio.sleep(0.1)
    assert idle.closed.result() == "idle" and not held.closed.done()
    pool.release(held)
    for _ in range(40):
        if held.closed.done():
            break
        await asyncio.sleep(0.1)
    assert held.closed.result() == "idle"
    await pool.stop()
    await pool.tasks.stop()
