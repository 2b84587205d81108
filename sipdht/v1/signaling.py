"""Call signalling (protocol v1): offer / answer / decline as signed, encrypted DHT values.

An offer goes to the callee's inbox, SHA1("callto:" + account id), signed by the
caller and encrypted to the callee; the answer or decline comes back the same way
on the caller's inbox, correlated by a random 64-bit id. Nothing reaches ICE
before the signer, freshness, replay and caller policy checks pass. A decline
carries a refusal code (sipdht.account.RefusalCode) beside its text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric import rsa

from ..account import RefusalCode, Refused
from ..config import PolicyConfig
from ..dht.crypto import load_public_key
from ..dht.infohash import InfoHash
from ..dht.secure import SecureDht, SecureValue
from ..dht.values import ValueType, register_type
from .ice import IceParams
from .sealing import BadKey, check_public_key

log = logging.getLogger(__name__)

CALL_TYPE = 9001
register_type(ValueType(CALL_TYPE, "sipdht call signalling", 60))
MAX_SEEN = 10000
MAX_CANDIDATES = 16         # accepted from a peer: more only amplifies our STUN checks
START_GRACE = 10.0          # seconds before our start from which an offer still counts
DECLINE_BURST, DECLINE_RATE = 5.0, 1.0   # declines per signer: burst, then per second


class SignalError(ValueError):
    """A signalling payload that is malformed or must be refused."""


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
    device: str = ""      # the callee device asked for ("": any device of the account)


@dataclass(frozen=True)
class Answer:
    id: int
    caller: str
    callee: str
    ice: IceParams
    key: bytes
    ts: float
    device: str = ""      # the answering device


@dataclass(frozen=True)
class Decline:
    id: int
    reason: str
    ts: float
    code: RefusalCode = RefusalCode.DECLINED


Signal = Offer | Answer | Decline


def encode(msg: Signal) -> bytes:
    out: dict[str, Any] = {"v": 1, "id": msg.id, "ts": msg.ts}
    if isinstance(msg, Decline):
        out.update(k="decline", reason=msg.reason, code=int(msg.code))
    else:
        out.update(k="offer" if isinstance(msg, Offer) else "answer", caller=msg.caller,
                   callee=msg.callee, ufrag=msg.ice.ufrag, pwd=msg.ice.pwd,
                   cands=msg.ice.candidates, x25519=msg.key)
        if isinstance(msg, Offer):
            out["uri"] = msg.uri
        if msg.device:
            out["dev"] = msg.device
    packed: bytes = msgpack.packb(out, use_bin_type=True)
    return packed


def _field(obj: dict[str, Any], name: str, *kinds: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise SignalError(f"{name}: expected {' or '.join(k.__name__ for k in kinds)}")
    return value


def _timestamp(obj: dict[str, Any]) -> float:
    ts = float(_field(obj, "ts", int, float))
    if not math.isfinite(ts):
        raise SignalError("ts: expected a finite number")
    return ts


def _code(obj: dict[str, Any]) -> RefusalCode:
    try:
        return RefusalCode(obj.get("code", RefusalCode.DECLINED))
    except ValueError:
        return RefusalCode.DECLINED     # a newer peer's code we do not know yet


def decode(data: bytes) -> Signal:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types on garbage
        raise SignalError("not msgpack") from None
    if not isinstance(obj, dict) or obj.get("v") != 1:
        raise SignalError("not a sipdht v1 signal")
    kind, cid, ts = obj.get("k"), _field(obj, "id", int), _timestamp(obj)
    if kind == "decline":
        return Decline(cid, str(obj.get("reason", ""))[:200], ts, _code(obj))
    if kind not in ("offer", "answer"):
        raise SignalError(f"unknown signal kind {kind!r}")
    cands = _field(obj, "cands", list)
    if len(cands) > 64 or not all(isinstance(c, str) and len(c) < 512 for c in cands):
        raise SignalError("cands: expected at most 64 candidate strings")
    ice = IceParams(_field(obj, "ufrag", str), _field(obj, "pwd", str), cands[:MAX_CANDIDATES])
    key = _field(obj, "x25519", bytes)
    try:
        check_public_key(key)
    except BadKey as exc:
        raise SignalError(str(exc)) from None
    common = dict(id=cid, caller=_field(obj, "caller", str), callee=_field(obj, "callee", str),
                  ice=ice, key=key, ts=ts, device=str(obj.get("dev", ""))[:64])
    if kind == "offer":
        return Offer(**common, uri=str(obj.get("uri", ""))[:256])
    return Answer(**common)


@dataclass
class IncomingCall:
    offer: Offer
    caller_key: rsa.RSAPublicKey


@dataclass(frozen=True)
class Refusal:
    counter: str        # stats name
    reason: str         # told to the caller
    code: RefusalCode


@dataclass(frozen=True)
class RefusedOffer:
    signer: str
    offer: Offer
    refusal: Refusal
    owner: bytes        # the signer's public key (DER), to encrypt the decline to


class Signaling:
    def __init__(self, secure: SecureDht, policy: PolicyConfig,
                 not_before: float | None = None, device: str = "") -> None:
        self.secure = secure
        self.policy = policy
        self.device = device
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
                   uri: str, timeout: float, device: str = "") -> Answer:
        """Send an offer and wait for the answer; raises Refused or TimeoutError."""
        offer = Offer(new_call_id(), self.me, callee, ice, key, time.time(), uri, device)
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._pending[offer.id] = (callee, fut)
        # The answer can come back before every storer has acknowledged the offer: do not
        # wait for the put, only notice when no node at all took it.
        put = asyncio.ensure_future(self.send(callee, callee_key, offer))
        put.add_done_callback(lambda p: self._offer_stored(p, fut, callee))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(offer.id, None)
            if not put.done():
                put.cancel()

    @staticmethod
    def _offer_stored(put: asyncio.Future[int], fut: asyncio.Future[Answer], callee: str) -> None:
        if fut.done() or put.cancelled():
            return
        error = put.exception()
        if error is not None:
            fut.set_exception(TimeoutError(f"the offer could not be sent: {error}"))
        elif put.result() == 0:
            fut.set_exception(TimeoutError("the offer was stored on no DHT node"))

    async def send(self, to: str, to_key: rsa.RSAPublicKey, msg: Signal) -> int:
        _, stored = await self.secure.put_encrypted(inbox_key(to), encode(msg), to=to,
                                                    type=CALL_TYPE, recipient_key=to_key)
        return stored

    # --- inbox ------------------------------------------------------------------------------

    async def handle(self, sv: SecureValue) -> IncomingCall | RefusedOffer | None:
        """One value from our inbox: resolves a pending call, returns an accepted offer, or a
        refused one the caller should be told about."""
        if not sv.encrypted or sv.signer is None:
            self.stats["inbox_not_encrypted"] += 1
            return None
        try:
            msg = decode(sv.value.data)
        except SignalError as exc:
            self.stats["inbox_malformed"] += 1
            log.debug("ignoring malformed signal from %s: %s", sv.signer, exc)
            return None
        if isinstance(msg, Offer):
            return self._offer(msg, sv.signer, bytes(sv.value.owner or b""))
        self._reply(msg, sv.signer)
        return None

    def _reply(self, msg: Answer | Decline, signer: str) -> None:
        callee, fut = self._pending.get(msg.id, (None, None))
        if fut is None or fut.done():
            self.stats["reply_unknown_id"] += 1
            return
        if signer != callee or (isinstance(msg, Answer) and (msg.callee, msg.caller) != (callee, self.me)):
            self.stats["reply_wrong_signer"] += 1
            log.debug("ignoring a reply to call %016x signed by %s, not by %s", msg.id, signer, callee)
            return
        if isinstance(msg, Decline):
            fut.set_exception(Refused(signer, msg.reason, msg.code))
        else:
            fut.set_result(msg)

    def _offer(self, offer: Offer, signer: str, owner: bytes) -> IncomingCall | RefusedOffer | None:
        if offer.ts < self.not_before:
            self.stats["ignored_before_start"] += 1
            return None
        if offer.device and offer.device != self.device:
            self.stats["ignored_other_device"] += 1      # another device of ours answers
            return None
        refused = self.refusal(offer, signer)
        if refused is not None:
            self.stats[f"refused_{refused.counter}"] += 1
            return RefusedOffer(signer, offer, refused, owner)
        self._remember(offer.id)
        return IncomingCall(offer, load_public_key(owner))

    def refusal(self, offer: Offer, signer: str) -> Refusal | None:
        """Why an offer must be refused, else None. Order: identity, freshness, replay,
        policy. A denied caller hears a plain decline, not that it is on a deny list."""
        bad = RefusalCode.MALFORMED
        if offer.caller != signer:
            return Refusal("forged", f"forged offer: signed by {signer}, claims {offer.caller}", bad)
        if offer.callee != self.me:
            return Refusal("wrong_callee", "offer addressed to another account", bad)
        if abs(time.time() - offer.ts) > self.policy.offer_window:
            return Refusal("stale", f"stale offer (outside the {self.policy.offer_window:g} s window)", bad)
        if offer.id in self._seen:
            return Refusal("replayed", "replayed offer", bad)
        if signer in self.policy.deny:
            return Refusal("denied", "declined", RefusalCode.DECLINED)
        if signer not in self.policy.allow and self.policy.unknown == "reject":
            return Refusal("unknown_caller", "unknown callers are not accepted", RefusalCode.POLICY)
        return None

    def _remember(self, call_id: int) -> None:
        self._seen[call_id] = time.time()
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)

    async def decline(self, refused: RefusedOffer) -> bool:
        """Tell the caller (within a small budget per signer); False when not sent."""
        if not self._may_decline(refused.signer):
            self.stats["decline_rate_limited"] += 1
            return False
        r = refused.refusal
        await self.send(refused.signer, load_public_key(refused.owner),
                        Decline(refused.offer.id, r.reason, time.time(), r.code))
        return True

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
        answer = Answer(offer.id, offer.caller, self.me, ice, key, time.time(), self.device)
        await self.send(offer.caller, call.caller_key, answer)
