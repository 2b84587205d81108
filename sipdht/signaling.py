"""Call signalling (protocol v1): offer / answer / decline as signed, encrypted DHT values.

An offer goes to the callee's inbox, SHA1("callto:" + account id), signed by the
caller and encrypted to the callee; the answer or decline comes back the same way
on the caller's inbox, correlated by a random 64-bit id. Nothing reaches ICE
before the signer, freshness, replay and caller policy checks pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from .config import PolicyConfig
from .dht.crypto import load_public_key
from .dht.infohash import InfoHash
from .dht.secure import SecureDht, SecureValue
from .dht.values import ValueType, register_type
from .link import IceParams

log = logging.getLogger(__name__)

CALL_TYPE = 9001
register_type(ValueType(CALL_TYPE, "sipdht call signalling", 60))
MAX_SEEN = 10000
START_GRACE = 10.0          # seconds before our start from which an offer still counts
DECLINE_BURST, DECLINE_RATE = 5.0, 1.0   # declines per signer: burst, then per second


class SignalError(ValueError):
    """A signalling payload that is malformed or must be refused."""


class CallRefused(Exception):
    """The callee (or its agent) refused the call; the message says why."""


def inbox_key(account: str) -> InfoHash:
    return InfoHash.get("callto:" + account)


def new_call_id() -> int:
    return int.from_bytes(os.urandom(8), "big") or 1


@dataclass(frozen=True)
class Offer:
    id: int
    caller: str
    callee: str
    ice: IceParams
    key: bytes            # caller's ephemeral X25519 public key
    ts: float
    uri: str = ""


@dataclass(frozen=True)
class Answer:
    id: int
    caller: str
    callee: str
    ice: IceParams
    key: bytes
    ts: float


@dataclass(frozen=True)
class Decline:
    id: int
    reason: str
    ts: float


Signal = Offer | Answer | Decline


def encode(msg: Signal) -> bytes:
    out: dict[str, Any] = {"v": 1, "id": msg.id, "ts": msg.ts}
    if isinstance(msg, Decline):
        out.update(k="decline", reason=msg.reason)
    else:
        out.update(k="offer" if isinstance(msg, Offer) else "answer", caller=msg.caller,
                   callee=msg.callee, ufrag=msg.ice.ufrag, pwd=msg.ice.pwd,
                   cands=msg.ice.candidates, x25519=msg.key)
        if isinstance(msg, Offer):
            out["uri"] = msg.uri
    return msgpack.packb(out, use_bin_type=True)


def _field(obj: dict, name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise SignalError(f"{name}: expected {kind.__name__}")
    return value


def decode(data: bytes) -> Signal:
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception:  # msgpack raises several unrelated types on garbage
        raise SignalError("not msgpack") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise SignalError("not a sipdht v1 signal")
    kind, cid = obj.get("k"), _field(obj, "id", int)
    ts = float(_field(obj, "ts", (int, float)))   # type: ignore[arg-type]
    if kind == "decline":
        return Decline(cid, str(obj.get("reason", ""))[:200], ts)
    if kind not in ("offer", "answer"):
        raise SignalError(f"unknown signal kind {kind!r}")
    cands = _field(obj, "cands", list)
    if len(cands) > 64 or not all(isinstance(c, str) and len(c) < 512 for c in cands):
        raise SignalError("cands: expected at most 64 candidate strings")
    ice = IceParams(_field(obj, "ufrag", str), _field(obj, "pwd", str), cands)
    key = _field(obj, "x25519", bytes)
    if len(key) != 32:
        raise SignalError("x25519: expected 32 bytes")
    common = dict(id=cid, caller=_field(obj, "caller", str), callee=_field(obj, "callee", str),
                  ice=ice, key=key, ts=ts)
    if kind == "offer":
        return Offer(**common, uri=str(obj.get("uri", ""))[:256])
    return Answer(**common)


@dataclass
class IncomingCall:
    offer: Offer
    caller_key: rsa.RSAPublicKey


class Signaling:
    def __init__(self, secure: SecureDht, policy: PolicyConfig,
                 not_before: float | None = None) -> None:
        self.secure = secure
        self.policy = policy
        # Offers made before we started are old inbox contents (they live 10 min on storers),
        # not calls: without this a restarted agent would answer them all again.
        self.not_before = time.time() - START_GRACE if not_before is None else not_before
        self.stats: Counter[str] = Counter()
        self._seen: OrderedDict[int, float] = OrderedDict()
        self._pending: dict[int, tuple[str, asyncio.Future[Answer]]] = {}
        self._decline_budget: dict[str, tuple[float, float]] = {}   # signer -> (tokens, time)

    @property
    def me(self) -> str:
        return self.secure.account_id

    # --- caller side ------------------------------------------------------------------------

    async def call(self, callee: str, callee_key: rsa.RSAPublicKey, ice: IceParams, key: bytes,
                   uri: str, timeout: float) -> Answer:
        """Send an offer and wait for the answer; raises CallRefused or TimeoutError."""
        offer = Offer(new_call_id(), self.me, callee, ice, key, time.time(), uri)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[offer.id] = (callee, fut)
        # The answer can come back before every storer has acknowledged the offer: do not
        # wait for the put, only notice when no node at all took it.
        put = asyncio.ensure_future(self.send(callee, callee_key, offer))
        put.add_done_callback(lambda p: self._offer_stored(p, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(offer.id, None)

    @staticmethod
    def _offer_stored(put: asyncio.Future, fut: asyncio.Future) -> None:
        if fut.done() or put.cancelled():
            return
        error = put.exception()
        if error is not None:
            fut.set_exception(CallRefused(f"the offer could not be sent: {error}"))
        elif put.result() == 0:
            fut.set_exception(CallRefused("the offer was stored on no DHT node"))

    async def send(self, to: str, to_key: rsa.RSAPublicKey, msg: Signal) -> int:
        _, stored = await self.secure.put_encrypted(inbox_key(to), encode(msg), to=to,
                                                    type=CALL_TYPE, recipient_key=to_key)
        return stored

    # --- inbox ------------------------------------------------------------------------------

    async def handle(self, sv: SecureValue) -> IncomingCall | None:
        """One value from our inbox: resolves a pending call, or returns an accepted offer."""
        if not sv.encrypted or sv.signer is None:
            self.stats["inbox_not_encrypted"] += 1
            return None
        try:
            msg = decode(sv.value.data)
        except SignalError as exc:
            self.stats["inbox_malformed"] += 1
            log.info("ignoring malformed signal from %s: %s", sv.signer, exc)
            return None
        if isinstance(msg, Offer):
            return await self._offer(msg, sv)
        self._reply(msg, sv.signer)
        return None

    def _reply(self, msg: Answer | Decline, signer: str) -> None:
        callee, fut = self._pending.get(msg.id, (None, None))
        if fut is None or fut.done():
            self.stats["reply_unknown_id"] += 1
            return
        if signer != callee or (isinstance(msg, Answer) and (msg.callee, msg.caller) != (callee, self.me)):
            self.stats["reply_wrong_signer"] += 1
            log.warning("ignoring a reply to call %016x signed by %s, not by %s", msg.id, signer, callee)
            return
        if isinstance(msg, Decline):
            fut.set_exception(CallRefused(msg.reason))
        else:
            fut.set_result(msg)

    async def _offer(self, offer: Offer, sv: SecureValue) -> IncomingCall | None:
        if offer.ts < self.not_before:
            self.stats["ignored_before_start"] += 1
            return None
        caller_key = load_public_key(bytes(sv.value.owner))
        refused = self.refusal(offer, sv.signer)
        if refused is not None:
            code, reason = refused
            self.stats[f"refused_{code}"] += 1
            log.warning("refused call %016x from %s: %s", offer.id, sv.signer, reason)
            await self.decline(sv.signer, caller_key, offer.id, reason)
            return None
        self._remember(offer.id)
        return IncomingCall(offer, caller_key)

    def refusal(self, offer: Offer, signer: str) -> tuple[str, str] | None:
        """(counter name, reason for the caller) when an offer must be refused, else None.
        Order: identity, freshness, replay, policy."""
        if offer.caller != signer:
            return "forged", f"forged offer: signed by {signer}, claims {offer.caller}"
        if offer.callee != self.me:
            return "wrong_callee", "offer addressed to another account"
        if abs(time.time() - offer.ts) > self.policy.offer_window:
            return "stale", f"stale offer (outside the {self.policy.offer_window:g} s window)"
        if offer.id in self._seen:
            return "replayed", "replayed offer"
        if signer in self.policy.deny:
            return "denied", "caller is on the deny list"
        if signer not in self.policy.allow and self.policy.unknown == "reject":
            return "unknown_caller", "unknown callers are not accepted"
        return None

    def _remember(self, call_id: int) -> None:
        self._seen[call_id] = time.time()
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)

    async def decline(self, to: str, to_key: rsa.RSAPublicKey, call_id: int, reason: str) -> None:
        if not self._may_decline(to):
            self.stats["decline_rate_limited"] += 1
            return
        try:
            await self.send(to, to_key, Decline(call_id, reason, time.time()))
        except Exception as exc:  # best effort: the refusal itself already happened
            log.info("could not send the decline to %s: %s", to, exc)

    def _may_decline(self, to: str) -> bool:
        """A small budget per signer, so refused offers cannot turn us into a reflector."""
        now = time.monotonic()
        tokens, last = self._decline_budget.get(to, (DECLINE_BURST, now))
        tokens = min(DECLINE_BURST, tokens + (now - last) * DECLINE_RATE)
        if len(self._decline_budget) > MAX_SEEN:
            self._decline_budget.clear()
        if tokens < 1.0:
            self._decline_budget[to] = (tokens, now)
            return False
        self._decline_budget[to] = (tokens - 1.0, now)
        return True

    async def answer(self, call: IncomingCall, ice: IceParams, key: bytes) -> None:
        offer = call.offer
        answer = Answer(offer.id, offer.caller, self.me, ice, key, time.time())
        await self.send(offer.caller, call.caller_key, answer)
