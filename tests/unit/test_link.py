"""Sans-IO link sealing: keys, AEAD, replay window; signalling payloads and refusals."""

import time

import pytest

from sipdht.config import PolicyConfig
from sipdht.link import (
    DropDatagram,
    EphemeralKey,
    LinkCrypto,
    LinkError,
    ReplayWindow,
    derive_keys,
    path_type,
)
from sipdht.signaling import Decline, IceParams, Offer, SignalError, Signaling, decode, encode

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
    with pytest.raises(LinkError):
        derive_keys(ka, b"\0" * 31, 1, A, B)


def test_seal_open_round_trip_and_channels():
    a, b = pair()
    for ch, msg in ((1, b"INVITE sip:x"), (2, b"\x80" * 172), (255, b"")):
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
    assert sig.refusal(offer(), "c" * 40)[0] == "forged"
    assert sig.refusal(offer(callee=A), A)[0] == "wrong_callee"
    assert sig.refusal(offer(ts=now - 120), A)[0] == "stale"
    assert sig.refusal(offer(ts=now + 120), A)[0] == "stale"
    sig._remember(1)
    assert sig.refusal(offer(), A) == ("replayed", "replayed offer")
    assert sig.refusal(offer(caller="d" * 40, cid=2), "d" * 40)[0] == "denied"
    strict = Signaling(_Secure(), PolicyConfig(allow=[A], unknown="reject"))
    assert strict.refusal(offer(cid=3), A) is None
    assert strict.refusal(offer(caller="e" * 40, cid=4), "e" * 40)[0] == "unknown_caller"


def test_offers_from_before_the_agent_started_are_ignored_silently():
    import asyncio
    from types import SimpleNamespace

    from sipdht.signaling import encode

    sig = Signaling(_Secure(), PolicyConfig(), not_before=time.time())
    old = Offer(9, A, B, ICE, b"k" * 32, time.time() - 30)
    sv = SimpleNamespace(encrypted=True, signer=A,
                         value=SimpleNamespace(data=encode(old), owner=None))
    assert asyncio.run(sig.handle(sv)) is None
    assert sig.stats == {"ignored_before_start": 1}     # no decline, no refusal counted
