"""Protocol v1, sans-IO: link keys, AEAD, replay window, framing; signalling payloads and
refusals."""

import asyncio
import math
import time

import msgpack
import pytest

from sipdht.account import MAX_MESSAGE, Breakdown, Diagnosable, Link, RefusalCode
from sipdht.commands.agent import exchange_data
from sipdht.config import PolicyConfig
from sipdht.v1.framing import (
    CHUNK,
    MAX_DATAGRAM,
    MAX_PARTIAL,
    OVERHEAD,
    PARTIAL_TIMEOUT,
    FrameError,
    Reassembler,
    split,
)
from sipdht.v1.ice import IceParams, path_type
from sipdht.v1.link import PeerLink
from sipdht.v1.sealing import (
    BadKey,
    DropDatagram,
    EphemeralKey,
    LinkCrypto,
    ReplayWindow,
    derive_keys,
)
from sipdht.v1.signaling import Decline, Offer, SignalError, Signaling, decode, encode

A, B = "a" * 40, "b" * 40


def pair():
    ka, kb = EphemeralKey(), EphemeralKey()
    a_send, a_recv = derive_keys(ka, kb.public, 42, A, B)
    b_to_a_send, b_recv = derive_keys(kb, ka.public, 42, A, B)
    return LinkCrypto(a_send, a_recv), LinkCrypto(b_recv, b_to_a_send)


def test_both_sides_derive_the_same_directional_keys():
    ka, kb = EphemeralKey(), EphemeralKey()
    assert derive_keys(ka, kb.public, 1, A, B) == derive_keys(kb, ka.public, 1, A, B)
    k1, k2 = derive_keys(ka, kb.public, 1, A, B)
    assert k1 != k2                                               # one key per direction
    assert derive_keys(ka, kb.public, 2, A, B) != (k1, k2)        # bound to the call id
    assert derive_keys(ka, kb.public, 1, B, A) != (k1, k2)        # and to the accounts
    with pytest.raises(BadKey):
        derive_keys(ka, b"\0" * 31, 1, A, B)
    with pytest.raises(BadKey, match="low-order"):
        derive_keys(ka, b"\0" * 32, 1, A, B)


def test_seal_open_round_trip_and_channels():
    a, b = pair()
    for ch, msg in ((1, b"INVITE sip:x"), (2, b"\x80" * 172), (255, b""), (65535, b"x")):
        assert b.open(a.seal(ch, msg)) == (ch, msg)
    assert a.open(b.seal(1, b"200 OK")) == (1, b"200 OK")


def test_tampered_datagrams_are_dropped():
    a, b = pair()
    d = bytearray(a.seal(1, b"hello"))
    for i in (0, 1, 5, 12, len(d) - 1):
        bad = bytearray(d)
        bad[i] ^= 1
        with pytest.raises(DropDatagram):
            b.open(bytes(bad))
    with pytest.raises(DropDatagram, match="short"):
        b.open(bytes(d[:20]))
    assert b.open(bytes(d)) == (1, b"hello")      # the untouched one still opens


def test_replayed_and_reflected_datagrams_are_dropped():
    a, b = pair()
    d1, d2 = a.seal(1, b"one"), a.seal(1, b"two")
    assert b.open(d2) == (1, b"two")
    assert b.open(d1) == (1, b"one")                # reordering inside the window is fine
    for d in (d1, d2):
        with pytest.raises(DropDatagram, match="replay"):
            b.open(d)
    with pytest.raises(DropDatagram):               # a's own datagram sent back to a
        a.open(a.seal(1, b"x"))


def test_replay_window_edges():
    w = ReplayWindow(64)
    for c in (1, 2, 100):
        assert w.check(c)
        w.update(c)
    assert not w.check(100) and not w.check(2)
    assert not w.check(36)            # older than the window
    assert w.check(37) and w.check(99)
    w.update(99)
    assert not w.check(99)


def test_path_type():
    assert path_type(("host", "host")) == "host"
    assert path_type(("host", "srflx")) == "srflx"
    assert path_type(("prflx", "host")) == "srflx"
    assert path_type(("relay", "srflx")) == "relay"


ICE = IceParams("abcd", "p" * 22, ["1 1 UDP 2130706431 10.200.1.2 5000 typ host"])


def test_signal_round_trip_and_malformed():
    offer = Offer(7, A, B, ICE, b"k" * 32, 123.5, "sip:b@dht")
    assert decode(encode(offer)) == offer
    assert decode(encode(Decline(7, "busy", 1.0))) == Decline(7, "busy", 1.0)
    for junk in (b"", b"\xc1", encode(offer)[:-3]):
        with pytest.raises(SignalError):
            decode(junk)
    import msgpack
    bad_key = msgpack.unpackb(encode(offer))
    bad_key["x25519"] = b"short"
    with pytest.raises(SignalError, match="x25519"):
        decode(msgpack.packb(bad_key))


class _Secure:
    account_id = B


def test_refusals_in_order():
    sig = Signaling(_Secure(), PolicyConfig(deny=["d" * 40], offer_window=60))
    now = time.time()

    def offer(caller=A, callee=B, ts=now, cid=1):
        return Offer(cid, caller, callee, ICE, b"k" * 32, ts)

    assert sig.refusal(offer(), A) is None
    assert sig.refusal(offer(), "c" * 40).counter == "forged"
    assert sig.refusal(offer(callee=A), A).counter == "wrong_callee"
    assert sig.refusal(offer(ts=now - 120), A).counter == "stale"
    assert sig.refusal(offer(ts=now + 120), A).counter == "stale"
    sig._remember(1)
    assert sig.refusal(offer(), A).reason == "replayed offer"
    denied = sig.refusal(offer(caller="d" * 40, cid=2), "d" * 40)
    # a denied caller hears a plain decline (603), not that it is on a deny list
    assert (denied.counter, denied.reason, denied.code) == ("denied", "declined", RefusalCode.DECLINED)
    strict = Signaling(_Secure(), PolicyConfig(allow=[A], unknown="reject"))
    assert strict.refusal(offer(cid=3), A) is None
    unknown = strict.refusal(offer(caller="e" * 40, cid=4), "e" * 40)
    assert (unknown.counter, unknown.code) == ("unknown_caller", RefusalCode.POLICY)


async def test_offers_from_before_the_agent_started_are_ignored_silently():
    from types import SimpleNamespace

    sig = Signaling(_Secure(), PolicyConfig(), not_before=time.time())
    old = Offer(9, A, B, ICE, b"k" * 32, time.time() - 30)
    sv = SimpleNamespace(encrypted=True, signer=A,
                         value=SimpleNamespace(data=encode(old), owner=None))
    assert await sig.handle(sv) is None
    assert sig.stats == {"ignored_before_start": 1}     # no decline, no refusal counted


# --- defects found in review: each of these failed before its fix ----------------------------


def _offer_fields(**changes):
    obj = msgpack.unpackb(encode(Offer(7, A, B, ICE, EphemeralKey().public, time.time())))
    obj.update(changes)
    return msgpack.packb(obj, use_bin_type=True)


@pytest.mark.parametrize("ts", [None, "soon", [1], math.nan, math.inf, True])
def test_bad_timestamps_are_malformed_signals_not_crashes(ts):
    data = _offer_fields(ts=ts) if ts is not None else _offer_fields()
    if ts is None:
        obj = msgpack.unpackb(data)
        del obj["ts"]
        data = msgpack.packb(obj)
    with pytest.raises(SignalError, match="ts"):
        decode(data)


@pytest.mark.parametrize("key", [b"\0" * 32, b"\1" + b"\0" * 31, b"\xe0\xeb\x7a\x7c\x3b\x41\xb8\xae"
                                 b"\x16\x56\xe3\xfa\xf1\x9f\xc4\x6a\xda\x09\x8d\xeb\x9c\x32\xb1\xfd"
                                 b"\x86\x62\x05\x16\x5f\x49\xb8\x00"])
def test_low_order_x25519_keys_are_refused_at_decode(key):
    with pytest.raises(SignalError, match="low-order"):
        decode(_offer_fields(x25519=key))


def test_decline_carries_its_refusal_code_and_old_declines_still_decode():
    d = decode(encode(Decline(7, "not allowed", 1.0, RefusalCode.POLICY)))
    assert d.code is RefusalCode.POLICY and d.reason == "not allowed"
    old = msgpack.packb({"v": 1, "k": "decline", "id": 7, "ts": 1.0, "reason": "busy"})
    assert decode(old).code is RefusalCode.DECLINED
    future = msgpack.packb({"v": 1, "k": "decline", "id": 7, "ts": 1.0, "code": 99})
    assert decode(future).code is RefusalCode.DECLINED


def test_peer_candidates_are_capped():
    many = [f"1 1 UDP 2130706431 10.200.1.2 {5000 + i} typ host" for i in range(64)]
    assert len(decode(_offer_fields(cands=many)).ice.candidates) == 16


def test_replay_window_survives_huge_counter_jumps():
    w = ReplayWindow()
    w.update(1)
    w.update(2**33)
    w.update(2**64 - 1)                # before: a 2**64-bit integer (MemoryError)
    assert w.bits.bit_length() <= w.size
    assert not w.check(2**64 - 1) and not w.check(1)
    assert w.check(2**64 - 2)


# --- framing ----------------------------------------------------------------------------------


def test_small_messages_are_one_datagram_and_large_ones_fit_the_mtu():
    assert len(split(b"x" * 100, 1)) == 1
    frames = split(bytes(range(256)) * 256, 9)          # 64 KiB
    assert all(len(f) + OVERHEAD <= MAX_DATAGRAM for f in frames)
    r = Reassembler()
    out = [r.receive(1, f, 0.0) for f in reversed(frames)]     # any order
    assert out[:-1] == [None] * (len(frames) - 1)
    assert out[-1] == bytes(range(256)) * 256
    with pytest.raises(ValueError):
        split(b"x" * (MAX_MESSAGE + 1), 1)


def test_sealed_frames_round_trip_over_the_link_crypto():
    a, b = pair()
    msg = b"INVITE " + b"v=0\r\n" * 900                      # an INVITE with a big SDP
    r = Reassembler()
    got = [r.receive(*b.open(a.seal(1, f)), 0.0) for f in split(msg, 3)]
    assert got[-1] == msg and all(len(a.seal(1, f)) <= MAX_DATAGRAM for f in split(msg, 3))


def test_partial_messages_are_bounded_and_expire():
    r = Reassembler()
    for i in range(MAX_PARTIAL + 10):                   # first fragment of many messages
        assert r.receive(1, split(b"y" * (CHUNK * 3), i)[0], 0.0) is None
    assert len(r._partial) == MAX_PARTIAL
    assert r.stats["dropped_partial_evicted"] == 10
    r.expire(PARTIAL_TIMEOUT + 1)
    assert not r._partial and r._bytes == 0 and r.stats["dropped_partial_expired"] == MAX_PARTIAL
    frames = split(b"z" * (CHUNK * 2), 77)
    assert r.receive(1, frames[0], 0.0) is None
    assert r.receive(1, frames[0], 0.0) is None           # duplicate counted, not doubled
    assert r.stats["duplicate_fragment"] == 1
    assert r.receive(1, frames[1], 0.0) == b"z" * (CHUNK * 2)


@pytest.mark.parametrize("frame", [b"", b"\x07abc", b"\x01\0\0\0\1\0\5\0\2x",
                                   b"\x01\0\0\0\1\0\0\xff\xffx", b"\x01\0\0"])
def test_malformed_frames_are_refused(frame):
    with pytest.raises(FrameError):
        Reassembler().receive(1, frame, 0.0)


class _Wire:
    """One end of an in-memory ICE path: what one end sends, the other receives."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.other: _Wire | None = None
        self.conn = self

    async def send(self, datagram: bytes) -> None:
        self.send_now(datagram)

    def send_now(self, datagram: bytes) -> bool:
        assert self.other is not None
        self.other.inbox.put_nowait(datagram)
        return True

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def path(self) -> tuple[str, str]:
        return ("host", "host")

    async def close(self) -> None:
        pass


async def test_a_peer_link_is_a_link_with_diagnostics_the_cli_can_use() -> None:
    """`sipdht ping` sees the link only through sipdht.account: Link and Diagnosable."""

    a, b = _Wire(), _Wire()
    a.other, b.other = b, a
    to_b, to_a = pair()
    caller, callee = PeerLink(a, to_b, B, initiator=True), PeerLink(b, to_a, A)
    try:
        assert isinstance(caller, Link) and isinstance(caller, Diagnosable)
        assert caller.setup == Breakdown()
        idle_since = caller.last_used
        assert 0 < await caller.ping(timeout=2.0) < 2.0
        assert caller.last_used == idle_since          # control traffic keeps a link idle
        await exchange_data(caller, caller.echo_channel, 5000)   # the callee echoes
        assert caller.last_used > idle_since
    finally:
        await caller.close()
        await callee.close()
