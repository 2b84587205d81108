"""ICE for protocol v1 links (aioice): gather, exchange parameters, connect within a bound.

aioice takes one STUN and one TURN server; `_Connection` asks every configured STUN server
at once (gathering ends soon after each host address has its reflexive candidate, so a dead
server costs nothing) and falls back to the next TURN server when an allocation fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any

import aioice
from aioice.ice import relayed_candidate, server_reflexive_candidate

from ..account import NoPath

log = logging.getLogger(__name__)

MAX_REMOTE_CANDIDATES = 64
GATHER_TIMEOUT = 5
STUN_GRACE = 0.1            # after every host has a srflx candidate, for other servers' answers


@dataclass
class IceConfig:
    stun: list[tuple[str, int]] = field(default_factory=list)
    turn: list[tuple[str, int]] = field(default_factory=list)
    turn_username: str | None = None
    turn_password: str | None = None
    host_addresses: list[str] | None = None   # None: every interface aioice finds
    timeout: float = 15.0
    relay_only: bool = False


@dataclass
class IceParams:
    ufrag: str
    pwd: str
    candidates: list[str]


def _ipv4_or_name(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return True


class _Connection(aioice.Connection):
    """aioice with an explicit list of host addresses and several STUN/TURN servers."""

    def __init__(self, config: IceConfig, **kwargs: Any) -> None:
        # aioice asks STUN over IPv4 only; every server is asked by _srflx, not by aioice
        super().__init__(stun_server=None,
                         turn_server=config.turn[0] if config.turn else None,
                         turn_username=config.turn_username, turn_password=config.turn_password,
                         **kwargs)
        self._host_addresses = config.host_addresses
        self._stun = [s for s in config.stun if _ipv4_or_name(s[0])]
        self._more_turn = config.turn[1:]

    async def gather_candidates(self) -> None:
        if self._host_addresses is None:
            return await super().gather_candidates()
        if self._local_candidates_start:
            return
        self._local_candidates_start = True
        addresses = self._host_addresses if self._transport_policy == aioice.TransportPolicy.ALL else []
        self._local_candidates += await self.get_component_candidates(component=1, addresses=addresses)
        self._local_candidates_end = True

    async def get_component_candidates(self, component: int, addresses: list[str],
                                       timeout: int = GATHER_TIMEOUT) -> list[aioice.Candidate]:
        cands = await super().get_component_candidates(component, addresses, timeout)
        cands += await self._srflx(timeout)
        if self.turn_server and not any(c.type == "relay" for c in cands):
            cands += await self._fallback_relay(component)
        return cands

    async def _srflx(self, timeout: int) -> list[aioice.Candidate]:
        """Reflexive candidates from every STUN server, asked in parallel."""
        hosts = [p for p in self._protocols if p.local_candidate.type == "host"
                 and ipaddress.ip_address(p.local_candidate.host).version == 4]
        pending = {asyncio.ensure_future(server_reflexive_candidate(p, s))
                   for s in self._stun for p in hosts}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: dict[tuple[str, int], aioice.Candidate] = {}
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for task in done:
                if task.exception() is None:
                    cand = task.result()[0]
                    found.setdefault((cand.host, cand.port), cand)
            if {c.related_address for c in found.values()} >= {p.local_candidate.host for p in hosts}:
                deadline = min(deadline, loop.time() + STUN_GRACE)
        for task in pending:
            task.cancel()
        return list(found.values())

    async def _fallback_relay(self, component: int) -> list[aioice.Candidate]:
        for server in self._more_turn:
            try:
                cand, proto = await asyncio.wait_for(relayed_candidate(
                    component=component,
                    hide_related_address=self._transport_policy == aioice.TransportPolicy.RELAY,
                    protocol_factory=lambda: aioice.ice.StunProtocol(self), turn_server=server,
                    turn_username=self.turn_username, turn_password=self.turn_password,
                    turn_ssl=False, turn_transport="udp"), GATHER_TIMEOUT)
            except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                log.info("TURN server %s:%d unusable: %s", server[0], server[1], exc)
                continue
            self._protocols.append(proto)
            return [cand]
        return []


class IceSession:
    """One ICE agent for one call; the caller is controlling. Every failure closes it, so a
    failed call never leaks sockets or a TURN allocation."""

    def __init__(self, config: IceConfig, controlling: bool) -> None:
        self.config = config
        self.conn = _Connection(
            config, ice_controlling=controlling, use_ipv6=False,
            transport_policy=(aioice.TransportPolicy.RELAY if config.relay_only
                              else aioice.TransportPolicy.ALL),
        )
        self._closed = False

    async def gather(self) -> IceParams:
        try:
            await self.conn.gather_candidates()
        except (OSError, ValueError) as exc:
            await self.close()
            raise NoPath("", f"ICE gathering failed: {exc}") from None
        cands = [c.to_sdp() for c in self.conn.local_candidates]
        if not cands:
            await self.close()
            raise NoPath("", "no ICE candidates: no usable address, STUN or TURN server")
        return IceParams(self.conn.local_username, self.conn.local_password, cands)

    async def connect(self, remote: IceParams, timeout: float | None = None) -> None:
        """Connect within `timeout` (default [ice] timeout): aioice alone takes 63 s to fail."""
        timeout = timeout or self.config.timeout
        self.conn.remote_username, self.conn.remote_password = remote.ufrag, remote.pwd
        try:
            for sdp in remote.candidates[:MAX_REMOTE_CANDIDATES]:
                await self.conn.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
            await self.conn.add_remote_candidate(None)
            await asyncio.wait_for(self.conn.connect(), timeout)
        except TimeoutError:
            await self.close()
            raise NoPath("", f"ICE: no path to the peer within {timeout:g} s") from None
        except (ConnectionError, ValueError, IndexError) as exc:
            await self.close()
            raise NoPath("", f"ICE: {exc or 'negotiation failed'}") from None

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.conn.close()

    def path(self) -> tuple[str, str]:
        """(local candidate type, remote candidate type) of the selected pair."""
        pair = self.conn._nominated.get(1)   # aioice has no public getter for it
        if pair is None:
            return ("none", "none")
        return (pair.local_candidate.type, pair.remote_candidate.type)

    def send_now(self, datagram: bytes) -> bool:
        """Send without a task when the selected pair is a plain UDP socket (media relay)."""
        pair = self.conn._nominated.get(1)
        proto = getattr(pair, "protocol", None)
        if pair is not None and type(proto) is aioice.ice.StunProtocol and proto.transport is not None:
            proto.transport.sendto(datagram, pair.remote_addr)
            return True
        return False


def path_type(path: tuple[str, str]) -> str:
    """The kind of path as a user sees it: relay, srflx (NAT traversed) or host."""
    if "relay" in path:
        return "relay"
    if "srflx" in path or "prflx" in path:
        return "srflx"
    return "host"
