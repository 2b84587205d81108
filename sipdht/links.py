"""Links per peer account, shared by every call to that account.

A second call to an account while a link is up uses it at once (no DHT, no ICE);
concurrent calls to an account share one set-up; links that carry no dialog (no
holds) and have been quiet for `idle_timeout` are closed. Every new link, outgoing
or incoming, is announced to subscribers (the SIP gateway reads its SIP channel).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence

from .account import (
    AccountType,
    CallFailure,
    IncomingLink,
    Link,
    NoAnswer,
    NoPath,
    Offline,
    Refused,
    UnknownAccount,
)
from .tasks import Supervisor

log = logging.getLogger(__name__)

IDLE_CHECK_MIN = 1.0         # seconds between two idle checks, at least

Subscriber = Callable[[Link, IncomingLink | None], None]


class LinkPool:
    def __init__(self, accounts: Sequence[AccountType], idle_timeout: float = 300.0,
                 tasks: Supervisor | None = None) -> None:
        self.accounts = list(accounts)
        self.idle_timeout = idle_timeout
        self.tasks = tasks or Supervisor("links")
        self.stats: Counter[str] = Counter()
        self._links: dict[str, list[Link]] = {}
        self._connecting: dict[str, asyncio.Future[Link]] = {}
        self._holds: dict[int, int] = {}
        self._subscribers: list[Subscriber] = []

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        for acct in self.accounts:
            self.tasks.forever(f"incoming {acct.name}", functools.partial(self._take_incoming, acct))
        if self.idle_timeout > 0:
            self.tasks.forever("idle links", self._idle_loop)

    async def stop(self) -> None:
        for link in self.all():
            await link.close("agent stopping")

    def subscribe(self, callback: Subscriber) -> None:
        self._subscribers.append(callback)

    # --- lookup -----------------------------------------------------------------------------

    def all(self) -> list[Link]:
        return [link for links in self._links.values() for link in links]

    def find(self, account: str) -> Link | None:
        live = [ln for ln in self._links.get(account, []) if not ln.closed.done()]
        return live[-1] if live else None

    async def get(self, account: str, *, uri: str = "", timeout: float | None = None) -> Link:
        """A live link to `account`, or a new one; raises CallFailure."""
        link = self.find(account)
        if link is not None:
            self.stats["reused"] += 1
            return link
        pending = self._connecting.get(account)
        if pending is None:
            pending = asyncio.ensure_future(self._connect(account, uri, timeout))
            self._connecting[account] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(account, None))
        return await asyncio.shield(pending)

    async def _connect(self, account: str, uri: str, timeout: float | None) -> Link:
        failure: CallFailure = UnknownAccount(account, f"{account}: no account type can reach it")
        for acct in self.accounts:
            try:
                link = await acct.connect(account, uri=uri, timeout=timeout)
            except CallFailure as exc:
                failure = exc if _more_telling(exc, failure) else failure
                continue
            self.stats["connected"] += 1
            self._add(link, None)
            return link
        self.stats[f"failed_{type(failure).__name__}"] += 1
        raise failure

    # --- holds and idleness -----------------------------------------------------------------

    def hold(self, link: Link) -> None:
        self._holds[id(link)] = self._holds.get(id(link), 0) + 1

    def release(self, link: Link) -> None:
        n = self._holds.get(id(link), 0) - 1
        if n > 0:
            self._holds[id(link)] = n
        else:
            self._holds.pop(id(link), None)

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(max(IDLE_CHECK_MIN, min(30.0, self.idle_timeout / 4)))
            now = time.monotonic()
            for link in self.all():
                quiet = now - link.last_used
                if id(link) not in self._holds and quiet >= self.idle_timeout:
                    self.stats["closed_idle"] += 1
                    log.info("closing the idle link with %s (%.0f s without traffic)",
                             link.peer, quiet)
                    await link.close("idle")

    # --- incoming ---------------------------------------------------------------------------

    async def _take_incoming(self, acct: AccountType) -> None:
        async for incoming in acct.incoming():
            self.stats["incoming"] += 1
            self._add(incoming.link, incoming)

    def _add(self, link: Link, incoming: IncomingLink | None) -> None:
        log.info("link %s %s up over %s", "from" if incoming else "to", link.peer, link.path)
        self._links.setdefault(link.peer, []).append(link)
        self.tasks.spawn(self._forget_when_closed(link), f"link {link.peer[:8]}")
        for callback in self._subscribers:
            try:
                callback(link, incoming)
            except Exception:
                log.exception("link subscriber failed")

    async def _forget_when_closed(self, link: Link) -> None:
        reason = await link.closed
        links = self._links.get(link.peer, [])
        if link in links:
            links.remove(link)
        if not links:
            self._links.pop(link.peer, None)
        self._holds.pop(id(link), None)
        log.info("link with %s closed: %s", link.peer, reason)


_RANK: dict[type[CallFailure], int] = {UnknownAccount: 1, Offline: 3, NoAnswer: 4, NoPath: 5,
                                        Refused: 6}


def _more_telling(new: CallFailure, old: CallFailure) -> bool:
    """Which failure to report when several account types fail: the one that got furthest."""
    return _RANK.get(type(new), 2) >= _RANK.get(type(old), 2)
