"""Composition root: config -> identity -> DHT node -> secure values -> locator ->
signalling -> peer links. The CLI's `run`, `lookup` and `ping` are thin wrappers.

The callee side answers verified offers with ICE (controlled) and serves the link;
the caller side measures each step so `sipdht ping` can show where time goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from .config import Config
from .dht.infohash import InfoHash
from .dht.node import DhtNode, NodeConfig
from .dht.secure import SecureDht
from .identity import Identity
from .link import (
    EphemeralKey,
    IceConfig,
    IceSession,
    LinkCrypto,
    LinkError,
    PeerLink,
    derive_keys,
)
from .locator import Locator, Resolution, device_id_for
from .signaling import CallRefused, IncomingCall, Signaling

log = logging.getLogger(__name__)


class CallFailed(Exception):
    """Setting up a link failed; the message gives the reason for the user."""


def _server(urls: list[str], default_port: int = 3478) -> tuple[str, int] | None:
    if not urls:
        return None
    rest = urls[0].split(":", 1)[1]
    host, _, port = rest.rpartition(":") if rest.count(":") == 1 else (rest, "", "")
    return (host, int(port)) if host else (rest, default_port)


def ice_config(config: Config) -> IceConfig:
    ice = config.ice
    return IceConfig(stun=_server(ice.stun), turn=_server(ice.turn),
                     turn_username=ice.turn_username or None,
                     turn_password=ice.turn_password or None,
                     host_addresses=ice.host_addresses or None, timeout=ice.timeout)


@dataclass
class Breakdown:
    """Where the time of one link setup went (milliseconds)."""
    lookup_ms: float = 0.0
    gather_ms: float = 0.0
    signalling_ms: float = 0.0
    ice_ms: float = 0.0
    rtt_ms: list[float] = field(default_factory=list)
    path: str = ""


class Agent:
    def __init__(self, config: Config, identity: Identity, node_config: NodeConfig,
                 serve: bool = True) -> None:
        self.config = config
        self.identity = identity
        self.node = DhtNode(node_config)
        self.secure = SecureDht(self.node, identity)
        path = config.identity_path
        device = device_id_for(path.with_name(path.name + ".device")) if serve else None
        self.locator = Locator(self.secure, device)
        self.signaling = Signaling(self.secure, config.policy)
        self.ice = ice_config(config)
        self.serve = serve             # publish a contact record and accept calls
        self.links: set[PeerLink] = set()
        self._tasks: list[asyncio.Task] = []

    @property
    def account(self) -> str:
        return self.identity.account_id

    async def start(self, join_timeout: float = 10.0) -> bool:
        await self.node.start()
        joined = await self.node.wait_connected(join_timeout)
        self._tasks.append(asyncio.create_task(self._inbox_loop()))
        if self.serve:
            self.locator.start()
            self._tasks.append(asyncio.create_task(self._certificate()))
        return joined

    async def stop(self) -> None:
        for link in list(self.links):
            await link.close("agent stopping")
        if self.serve:
            await self.locator.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.node.stop()

    async def _certificate(self) -> None:
        while not await self.node.wait_connected(60):
            pass
        stored = await self.secure.publish_certificate()
        log.info("certificate published on %d node(s)", stored)

    # --- incoming ---------------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        async for kind, sv in self.locator.inbox():
            if kind != "add":
                continue
            call = await self.signaling.handle(sv)
            if call is not None and self.serve:
                self._tasks.append(asyncio.create_task(self._accept(call)))

    async def _accept(self, call: IncomingCall) -> None:
        offer = call.offer
        log.info("call %016x from %s: answering", offer.id, offer.caller)
        try:
            ice = IceSession(self.ice, controlling=False)
            params = await ice.gather()
            key = EphemeralKey()
            # ICE starts while the answer is still being stored: the caller may already have it.
            answering = asyncio.create_task(self.signaling.answer(call, params, key.public))
            self._tasks.append(answering)
            await ice.connect(offer.ice)
            to_callee, to_caller = derive_keys(key, offer.key, offer.id, offer.caller, self.account)
            link = PeerLink(ice, LinkCrypto(send_key=to_caller, recv_key=to_callee), offer.caller)
        except (LinkError, OSError) as exc:
            log.warning("call %016x from %s failed: %s", offer.id, offer.caller, exc)
            return
        log.info("link with %s up over %s", offer.caller, link.path)
        self.links.add(link)
        reason = await link.closed
        self.links.discard(link)
        log.info("link with %s closed: %s", offer.caller, reason)

    # --- outgoing ---------------------------------------------------------------------------

    async def lookup(self, account: str) -> Resolution:
        return await self.locator.resolve(account)

    async def connect(self, account: str, timeout: float | None = None
                      ) -> tuple[PeerLink, Breakdown]:
        """Open a link to the account's running agent; raises CallFailed with a reason."""
        timeout = timeout or self.ice.timeout
        deadline = time.monotonic() + timeout
        bd = Breakdown()
        t = time.monotonic()
        found = await self.locator.resolve(account, first_online=True)
        bd.lookup_ms = (time.monotonic() - t) * 1000
        if not found.online:
            state = "offline (its contact record says so)" if found.devices else \
                "offline (no contact record on the DHT)"
            raise CallFailed(f"{account} is {state}")
        t = time.monotonic()
        ice = IceSession(self.ice, controlling=True)
        try:
            params = await ice.gather()
        except LinkError as exc:
            raise CallFailed(str(exc)) from None
        bd.gather_ms = (time.monotonic() - t) * 1000
        key = EphemeralKey()
        t = time.monotonic()
        try:
            answer = await self.signaling.call(account, found.public_key, params, key.public,
                                               f"sip:{account}@{self.config.sip.domain}",
                                               max(0.5, deadline - time.monotonic()))
        except CallRefused as exc:
            await ice.conn.close()
            raise CallFailed(f"refused by {account}: {exc}") from None
        except TimeoutError:
            await ice.conn.close()
            raise CallFailed(f"no answer from {account} within {timeout:g} s") from None
        bd.signalling_ms = (time.monotonic() - t) * 1000
        t = time.monotonic()
        try:
            await ice.connect(answer.ice, max(0.5, deadline - time.monotonic()))
        except LinkError as exc:
            raise CallFailed(str(exc)) from None
        bd.ice_ms = (time.monotonic() - t) * 1000
        to_callee, to_caller = derive_keys(key, answer.key, answer.id, self.account, account)
        link = PeerLink(ice, LinkCrypto(send_key=to_callee, recv_key=to_caller), account,
                        initiator=True)
        bd.path = link.path
        return link, bd


def agent_node_config(base: NodeConfig, identity: Identity) -> NodeConfig:
    base.node_id = InfoHash(identity.node_id)
    return base
