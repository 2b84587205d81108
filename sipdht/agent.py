"""Composition root: config -> identity -> DHT node -> account types -> link pool -> SIP
gateway. The agent owns no protocol sequence: each account type (protocol v1 today) does
its own set-up behind sipdht.account's interfaces, the pool shares links per peer, and the
gateway (only with `sip=True`, as in `sipdht run`) talks to softphones.
"""

from __future__ import annotations

import asyncio
import logging

from .account import Link, Lookup
from .config import Config
from .dht.node import DhtNode, NodeConfig
from .dht.secure import SecureDht
from .identity import Identity
from .links import LinkPool
from .sip.gateway import Gateway
from .tasks import Supervisor
from .v1.account import V1Account, ice_config
from .v1.locator import device_id_for

log = logging.getLogger(__name__)

PRESENCE_INTERVAL = 1.0     # seconds between two looks at the registrar


class Agent:
    def __init__(self, config: Config, identity: Identity, node_config: NodeConfig,
                 serve: bool = True, sip: bool = False) -> None:
        self.config = config
        self.identity = identity
        self.serve = serve             # publish a contact record and accept calls
        self.tasks = Supervisor("agent")
        self.node = DhtNode(node_config)
        self.secure = SecureDht(self.node, identity)
        path = config.identity_path
        device = device_id_for(path.with_name(path.name + ".device")) if serve else None
        self.v1 = V1Account(self.secure, ice_config(config), config.policy, self.tasks,
                            device, serve)
        self.pool = LinkPool([self.v1], config.ice.idle_timeout, self.tasks)
        self.gateway: Gateway | None = None
        self._publish_when_registered = sip and serve and config.sip.publish == "registered"
        if sip:
            self.gateway = Gateway(config.sip, config.contacts, self.pool, self.account,
                                   config.sip.domain)

    @property
    def account(self) -> str:
        return self.identity.account_id

    async def start(self, join_timeout: float = 10.0) -> bool:
        """Start everything; the gateway first, so a busy SIP port fails before any DHT work
        (raises sipdht.sip.gateway.GatewayError)."""
        if self.gateway is not None:
            await self.gateway.start()
        await self.node.start()
        joined = await self.node.wait_connected(join_timeout)
        await self.v1.start(online=not self._publish_when_registered)
        await self.pool.start()
        if self._publish_when_registered:
            self.tasks.forever("presence", self._presence_loop)
        if self.serve:
            self.tasks.spawn(self._certificate(), "certificate")
        return joined

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()      # BYE / 503 to the calls in progress
        await self.pool.stop()
        await self.tasks.stop()            # nothing may publish again once we say offline
        await self.v1.stop()
        await self.node.stop()

    async def _presence_loop(self) -> None:
        """[sip] publish = registered: online while at least one softphone is registered."""
        assert self.gateway is not None
        while True:
            registered = bool(self.gateway.registrar.bindings(self.gateway.now()))
            if registered != self.v1.locator.publishing:
                log.info("%s softphone registered: contact record %s", "a" if registered
                         else "no", "published" if registered else "set offline")
                await self.v1.set_online(registered)
            await asyncio.sleep(PRESENCE_INTERVAL)

    async def _certificate(self) -> None:
        while not await self.node.wait_connected(60):
            pass
        stored = await self.secure.publish_certificate()
        log.info("certificate published on %d node(s)", stored)

    async def lookup(self, account: str) -> Lookup:
        """The account's devices, from every account type that can reach accounts."""
        devices = [dev for acct in self.pool.accounts for dev in await acct.resolve(account)]
        return Lookup(account, tuple(devices))

    async def connect(self, account: str, timeout: float | None = None) -> Link:
        """A link to the account (reused when one is up); raises sipdht.account.CallFailure."""
        return await self.pool.get(account, uri=f"sip:{account}@{self.config.sip.domain}",
                                   timeout=timeout)
