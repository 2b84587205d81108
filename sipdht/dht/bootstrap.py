"""Joining through named bootstrap hosts, and saying so when they cannot be reached.

Name resolution is I/O, so it lives here and not in the sans-IO engine. The engine re-pings the
addresses it was given (backing off) while it knows no good node; this module adds what the
engine cannot do: resolving the names again while DNS fails or answers nothing (no network yet,
a typo, a host that moved), and one clear log line per attempt naming the host that could not
be resolved or did not answer, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .addresses import family_of
from .messages import Addr

log = logging.getLogger(__name__)

# Seconds between attempts: the first, doubling up to the maximum (as the engine's pings).
RETRY_FIRST, RETRY_MAX = 10.0, 300.0
RESOLVE_TIMEOUT = 10.0     # a DNS server that does not answer must not stall the node
CHECK_CONNECTED = 30.0     # while joined: how often to look whether every node was lost
POLL = 0.25                # while joining: how often to look whether a node answered
MAX_ADDRESSES = 32         # bootstrap addresses kept across re-resolutions (round-robin DNS)

Resolver = Callable[[str, int, Sequence[int]], Awaitable[list[Addr]]]


class JoiningNode(Protocol):
    """What the joiner needs of DhtNode (a Protocol: node.py imports this module)."""

    @property
    def connected(self) -> bool: ...

    def bootstrap(self, *addrs: Addr) -> None: ...


async def resolve(host: str, port: int, families: Sequence[int]) -> list[Addr]:
    """The host's addresses in the families we have a socket for (raises OSError, TimeoutError)."""
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM),
                                   RESOLVE_TIMEOUT)
    out: list[Addr] = []
    for info in infos:
        addr = (str(info[4][0]), int(info[4][1]))
        if family_of(addr) in families and addr not in out:
            out.append(addr)
    return out


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no DNS answer within {RESOLVE_TIMEOUT:g} s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class Joiner:
    """Resolves the bootstrap hosts, hands new addresses to the node, retries with backoff."""

    def __init__(self, node: JoiningNode, hosts: Sequence[tuple[str, int]],
                 families: Sequence[int], resolver: Resolver | None = None) -> None:
        self.node, self.hosts, self.families = node, list(hosts), tuple(families)
        self.resolver = resolver or resolve
        self.known: list[Addr] = []
        self.answering: dict[str, list[Addr]] = {}   # "host:port" -> its addresses
        self._warned = False

    async def attempt(self, retry_in: float | None = None) -> None:
        """Resolve every host once; a host that fails is named in one warning line."""
        retry_in = RETRY_FIRST if retry_in is None else retry_in
        new: list[Addr] = []
        for host, port in self.hosts:
            name = host_port(host, port)
            try:
                addrs = await self.resolver(host, port, self.families)
            except (OSError, TimeoutError) as exc:
                self._warn("bootstrap %s: cannot resolve the name (%s); retrying in %g s",
                           name, _why(exc), retry_in)
                continue
            if not addrs:
                self._warn("bootstrap %s: no address in an enabled family (IPv4/IPv6); "
                           "retrying in %g s", name, retry_in)
                continue
            self.answering[name] = addrs
            new += [a for a in addrs if a not in self.known and a not in new]
        if new:
            self.known = (self.known + new)[-MAX_ADDRESSES:]
            self.node.bootstrap(*self.known)

    async def run(self) -> None:
        """After a first attempt: until cancelled, retry (backing off) while no node answers,
        and resolve again whenever every node was lost."""
        if not self.hosts:
            return
        wait = RETRY_FIRST
        while True:
            if await self._connected_within(wait):
                if self._warned:
                    log.info("bootstrap: the DHT answered after all")
                    self._warned = False
                wait = RETRY_FIRST
                while self.node.connected:
                    await asyncio.sleep(CHECK_CONNECTED)
            else:
                next_wait = min(wait * 2, RETRY_MAX)
                for name, addrs in self.answering.items():
                    self._warn("bootstrap %s (%s): no answer within %g s; retrying in %g s",
                               name, ", ".join(host_port(*a) for a in addrs), wait, next_wait)
                wait = next_wait
            await self.attempt(wait)

    async def _connected_within(self, timeout: float) -> bool:
        """Polls instead of awaiting the node's event through wait_for: on Python 3.11 a
        cancel that races the event being set is lost inside wait_for (gh-86296), and the
        node's stop(), which cancels this task and waits for it, would never return."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.node.connected:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, POLL))
        return True

    def _warn(self, fmt: str, *args: object) -> None:
        self._warned = True
        log.warning(fmt, *args)
