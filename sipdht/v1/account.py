"""Protocol v1 as an account type (sipdht.account.AccountType): contact records on the DHT,
offer/answer on the call inbox, an aioice + AEAD link.

Every inbox value is handled in isolation (whatever it raises is counted and logged,
rate-limited), the inbox loop is supervised and restarted, declines are sent from their
own task, and concurrent incoming set-ups are capped, so strangers cannot stop calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..account import (
    Breakdown,
    CallFailure,
    Device,
    IncomingLink,
    NoAnswer,
    NoPath,
    Offline,
    Refused,
    UnknownAccount,
)
from ..config import Config, PolicyConfig
from ..dht.secure import SecureDht, SecureValue
from ..dht.values import Value
from ..tasks import Supervisor
from .ice import IceConfig, IceParams, IceSession
from .link import PeerLink
from .locator import Locator, Resolution
from .sealing import EphemeralKey, LinkCrypto, derive_keys
from .signaling import Answer, IncomingCall, RefusedOffer, Signaling, inbox_key

log = logging.getLogger(__name__)
T = TypeVar("T")

NAME = "sipdht/1"
MAX_SETUPS = 8              # incoming link set-ups (ICE sessions) at a time
MAX_INBOX_QUEUE = 256       # inbox values waiting for their (RSA) decryption
MAX_DIGESTS = 4096          # ciphertexts already seen (decrypted at most once)
MAX_WAITING = 32            # accepted links nobody has taken yet
LOG_EVERY = 10.0            # seconds between two log lines about bad inbox values


def ice_config(config: Config) -> IceConfig:
    ice = config.ice
    return IceConfig(stun=list(ice.stun), turn=list(ice.turn),
                     turn_username=ice.turn_username or None,
                     turn_password=ice.turn_password or None,
                     host_addresses=ice.host_addresses or None, timeout=ice.timeout)


class V1Account:
    """Our account on protocol v1. `serve`: publish a contact record and accept calls."""

    name = NAME

    def __init__(self, secure: SecureDht, ice: IceConfig, policy: PolicyConfig,
                 tasks: Supervisor, device_id: str | None = None, serve: bool = True) -> None:
        self.secure, self.ice, self.tasks, self.serve = secure, ice, tasks, serve
        self.locator = Locator(secure, device_id)
        self.signaling = Signaling(secure, policy, device=self.locator.device_id)
        self.stats: Counter[str] = Counter()
        self._incoming: asyncio.Queue[IncomingLink] = asyncio.Queue(MAX_WAITING)
        self._setups: set[int] = set()
        self._last_log = 0.0
        self._work: asyncio.Queue[Value] = asyncio.Queue(MAX_INBOX_QUEUE)
        self._digests: OrderedDict[bytes, None] = OrderedDict()

    @property
    def account(self) -> str:
        return self.secure.account_id

    async def start(self, online: bool = True) -> None:
        self.tasks.forever("v1 inbox", self._inbox_loop)
        self.tasks.forever("v1 inbox worker", self._inbox_worker)
        if self.serve and online:
            self.locator.start()

    async def stop(self) -> None:
        if self.serve:
            await self.locator.stop()

    async def set_online(self, online: bool) -> None:
        """Publish the contact record (and keep it fresh), or replace it by an offline one."""
        if not self.serve or online == self.locator.publishing:
            return
        if online:
            self.locator.start()
        else:
            await self.locator.stop()

    # --- resolve ----------------------------------------------------------------------------

    async def resolve(self, account: str) -> list[Device]:
        found = await self.locator.resolve(account)
        return _devices(found)

    # --- outgoing ---------------------------------------------------------------------------

    async def connect(self, account: str, *, device: str | None = None, uri: str = "",
                      timeout: float | None = None) -> PeerLink:
        """Lookup -> gather -> offer/answer -> ICE; raises a CallFailure subclass."""
        bd = Breakdown()
        try:
            link = await self._connect(account, device, uri, timeout, bd)
        except CallFailure as exc:
            log.warning("link to %s failed (lookup %.0f ms, gather %.0f ms, signalling %.0f ms, "
                        "ICE %.0f ms): %s", account, bd.lookup_ms, bd.gather_ms,
                        bd.signalling_ms, bd.ice_ms, exc)
            raise
        log.info("link to %s: lookup %.0f ms, gather %.0f ms, signalling %.0f ms, ICE %.0f ms, "
                 "path %s", account, bd.lookup_ms, bd.gather_ms, bd.signalling_ms, bd.ice_ms,
                 bd.path)
        return link

    async def _connect(self, account: str, device: str | None, uri: str,
                       timeout: float | None, bd: Breakdown) -> PeerLink:
        deadline = time.monotonic() + (timeout or self.ice.timeout)
        t = time.monotonic()
        found = await self.locator.resolve(account, first_online=device is None)
        bd.lookup_ms = _ms(t)
        key = _usable(found, account, device)
        t = time.monotonic()
        ice = IceSession(self.ice, controlling=True)
        ok = False
        try:
            params = await _named(ice.gather(), account)
            bd.gather_ms = _ms(t)
            mine, t = EphemeralKey(), time.monotonic()
            answer = await self._call(account, key, params, mine, uri or f"sip:{account}@dht",
                                      deadline, device or "")
            bd.signalling_ms, t = _ms(t), time.monotonic()
            await _named(ice.connect(answer.ice, _left(deadline)), account)
            bd.ice_ms = _ms(t)
            to_callee, to_caller = derive_keys(mine, answer.key, answer.id, self.account, account)
            link = PeerLink(ice, LinkCrypto(send_key=to_callee, recv_key=to_caller), account,
                            answer.device, initiator=True)
            ok = True
        finally:
            if not ok:
                await ice.close()
        bd.path = link.path
        link.setup = bd                 # shown by `sipdht ping`
        return link

    async def _call(self, account: str, key: rsa.RSAPublicKey, params: IceParams,
                    mine: EphemeralKey, uri: str, deadline: float, device: str) -> Answer:
        try:
            return await self.signaling.call(account, key, params, mine.public, uri,
                                             _left(deadline), device)
        except Refused as exc:
            raise Refused(account, f"refused by {account}: {exc.reason}", exc.code) from None
        except TimeoutError as exc:
            detail = str(exc) or f"within {_left(deadline, 0):.0f} s"
            raise NoAnswer(account, f"no answer from {account}: {detail}") from None

    # --- incoming ---------------------------------------------------------------------------

    async def incoming(self) -> AsyncIterator[IncomingLink]:
        while True:
            yield await self._incoming.get()

    async def _inbox_loop(self) -> None:
        """Raw inbox values into a bounded queue: each ciphertext is decrypted at most once,
        and a flood costs a bounded queue, not an unbounded backlog of RSA work."""
        listen = self.secure.node.listen(inbox_key(self.account))
        try:
            async for kind, value in listen:
                if kind == "add":
                    self._enqueue(value)
        finally:
            listen.cancel()

    def _enqueue(self, value: Value) -> None:
        if not self._first_time(value):
            return
        try:
            self._work.put_nowait(value)
        except asyncio.QueueFull:
            self.stats["inbox_overflow"] += 1

    def _first_time(self, value: Value) -> bool:
        digest = hashlib.sha256(value.cypher or value.signature or value.data).digest()
        if digest in self._digests:
            self.stats["inbox_duplicate"] += 1
            return False
        self._digests[digest] = None
        while len(self._digests) > MAX_DIGESTS:
            self._digests.popitem(last=False)
        return True

    async def _inbox_worker(self) -> None:
        while True:
            value = await self._work.get()
            try:
                sv = self.secure.check(value)
            except Exception as exc:    # a value that breaks verification is one bad value
                self.stats["inbox_value_failed"] += 1
                self._log_rate_limited("inbox value could not be checked: %r", exc)
                continue
            if sv is not None:
                await self._inbox_value(sv)
            await asyncio.sleep(0)      # let calls and media run between two decryptions

    async def _inbox_value(self, sv: SecureValue) -> None:
        try:
            result = await self.signaling.handle(sv)
        except Exception as exc:    # one value never stops the inbox
            self.stats["inbox_value_failed"] += 1
            self._log_rate_limited("inbox value from %s failed: %r", sv.signer, exc)
            return
        if isinstance(result, RefusedOffer):
            self._log_rate_limited("refused call %016x from %s: %s", result.offer.id,
                                   result.signer, result.refusal.reason)
            self.tasks.spawn(self._decline(result), "v1 decline")
        elif isinstance(result, IncomingCall) and self.serve:
            if len(self._setups) >= MAX_SETUPS:
                self.stats["incoming_over_capacity"] += 1
                self._log_rate_limited("call %016x from %s dropped: %d set-ups in progress",
                                       result.offer.id, result.offer.caller, len(self._setups))
                return
            self.tasks.spawn(self._accept(result), "v1 accept")

    async def _decline(self, refused: RefusedOffer) -> None:
        try:
            await self.signaling.decline(refused)
        except Exception as exc:   # best effort: the refusal itself already happened
            self.stats["decline_failed"] += 1
            log.info("could not send the decline to %s: %s", refused.signer, exc)

    async def _accept(self, call: IncomingCall) -> None:
        offer = call.offer
        self._setups.add(offer.id)
        log.info("call %016x from %s: answering", offer.id, offer.caller)
        ice = IceSession(self.ice, controlling=False)
        link: PeerLink | None = None
        try:
            link = await self._answer(call, ice)
        except (CallFailure, OSError) as exc:
            log.warning("call %016x from %s failed: %s", offer.id, offer.caller, exc)
            return
        finally:
            self._setups.discard(offer.id)
            if link is None:           # failed or cancelled (agent stopping): no leaked ICE
                await ice.close()
        try:
            self._incoming.put_nowait(IncomingLink(link, offer.caller, offer.uri))
        except asyncio.QueueFull:
            self.stats["incoming_not_taken"] += 1
            await link.close("busy")

    async def _answer(self, call: IncomingCall, ice: IceSession) -> PeerLink:
        offer = call.offer
        params = await ice.gather()
        key = EphemeralKey()
        # ICE starts while the answer is still being stored: the caller may already have it.
        self.tasks.spawn(self.signaling.answer(call, params, key.public), "v1 answer")
        await ice.connect(offer.ice)
        to_callee, to_caller = derive_keys(key, offer.key, offer.id, offer.caller, self.account)
        return PeerLink(ice, LinkCrypto(send_key=to_caller, recv_key=to_callee), offer.caller)

    def _log_rate_limited(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning(fmt, *args)
        else:
            log.debug(fmt, *args)


# --- helpers ----------------------------------------------------------------------------------


def _devices(found: Resolution) -> list[Device]:
    der = b""
    if found.public_key is not None:
        der = found.public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return [Device(found.account, d.id, d.online and d in found.online_devices, d.age, der,
                   d.protocols) for d in found.devices]


def _usable(found: Resolution, account: str, device: str | None) -> rsa.RSAPublicKey:
    """The key to encrypt the offer to, or the failure that says why there is none."""
    if not found.devices or found.public_key is None:
        raise UnknownAccount(account, f"{account} is unknown (no contact record on the DHT)")
    online = found.online_devices
    if device is not None:
        online = [d for d in online if d.id == device]
    if not online:
        raise Offline(account, f"{account} is offline (its contact record says so)")
    return found.public_key


async def _named(coro: Awaitable[T], account: str) -> T:
    """Name the account in a NoPath raised by the ICE layer."""
    try:
        return await coro
    except NoPath as exc:
        raise NoPath(account, exc.reason) from None


def _left(deadline: float, floor: float = 0.5) -> float:
    return max(floor, deadline - time.monotonic())


def _ms(since: float) -> float:
    return (time.monotonic() - since) * 1000
