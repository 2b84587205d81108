"""Call signalling refuses what it must, fast, and the link drops tampered datagrams.

Agents run in-process on loopback (ICE host candidates on 127.0.0.1) with a real
dhtnode as the DHT; NAT traversal itself is covered by tests/netns.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sipdht.account import Refused
from sipdht.agent import Agent
from sipdht.v1.framing import split
from sipdht.v1.ice import IceParams
from sipdht.v1.link import CHANNEL_ECHO
from sipdht.v1.signaling import Offer, new_call_id
from tests.harness.agents import make_agent, started

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]


async def refused_within(coro, seconds: float) -> str:
    """The refusal's reason; the bound (asyncio.wait_for) is the "in bounded time" a caller
    is promised, not a performance figure."""
    with pytest.raises(Refused) as err:
        await asyncio.wait_for(coro, seconds)
    return str(err.value)


async def send_raw_offer(agent: Agent, bob: Agent, offer: Offer) -> str:
    """Send a hand-made offer with the caller's machinery and wait for the verdict."""
    fut = asyncio.get_running_loop().create_future()
    agent.v1.signaling._pending[offer.id] = (bob.account, fut)
    key = (await agent.v1.locator.resolve(bob.account)).public_key
    await agent.v1.signaling.send(bob.account, key, offer)
    return await refused_within(fut, 5)


def an_offer(caller: str, callee: str, **kw) -> Offer:
    fields = dict(id=new_call_id(), caller=caller, callee=callee,
                  ice=IceParams("abcd", "p" * 22, []), key=b"k" * 32, ts=time.time())
    fields.update(kw)
    return Offer(**fields)


@pytest.mark.slow
async def test_forged_stale_replayed_and_denied_offers(dht, idents, tmp_path):
    bob = make_agent(dht, idents["bob"], serve=True, deny=[idents["carol"].account_id],
                     home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    mallory = make_agent(dht, idents["mallory"], serve=False)
    carol = make_agent(dht, idents["carol"], serve=False)
    await started(bob, alice, mallory, carol)
    try:
        # forged: signed by mallory, claiming to be alice
        reason = await send_raw_offer(mallory, bob, an_offer(alice.account, bob.account))
        assert "forged offer" in reason and mallory.account in reason
        # stale: outside the offer window (a caller whose clock is 10 minutes ahead)
        reason = await send_raw_offer(alice, bob, an_offer(alice.account, bob.account,
                                                          ts=time.time() + 600))
        assert "stale offer" in reason
        # older than bob's agent itself: old inbox content, ignored without a decline
        with pytest.raises(TimeoutError):
            await send_raw_offer(alice, bob, an_offer(alice.account, bob.account,
                                                      ts=time.time() - 3600))
        assert bob.v1.signaling.stats["ignored_before_start"] == 1
        # a real call, then the same offer (same id) again: replay
        link = await alice.connect(bob.account)
        await link.close("done")
        call_id = next(iter(bob.v1.signaling._seen))
        reason = await send_raw_offer(alice, bob, an_offer(alice.account, bob.account, id=call_id))
        assert reason == "replayed offer"
        # deny list: the caller's connect fails well before its timeout, with a plain decline
        # (603), not told it is on a deny list
        with pytest.raises(Refused, match="declined") as err:
            await asyncio.wait_for(carol.connect(bob.account, timeout=30), 10)
        assert err.value.sip_status == 603 and err.value.account == bob.account
        refused = {k: n for k, n in bob.v1.signaling.stats.items() if k.startswith("refused_")}
        assert refused == {"refused_forged": 1, "refused_stale": 1, "refused_replayed": 1,
                           "refused_denied": 1}
        # no ICE work was done for any refused offer: one set-up only (the real call)
        assert bob.pool.stats["incoming"] == 1
    finally:
        for a in (alice, mallory, carol, bob):
            await a.stop()


async def test_link_integrity_tamper_and_replay(dht, idents, tmp_path):
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)
    try:
        link = await alice.connect(bob.account)
        bd = link.setup
        assert bd.path == "host" and bd.ice_ms > 0 and bd.lookup_ms > 0
        payload = bytes(range(256)) * 8
        await link.send(CHANNEL_ECHO, payload)
        assert await link.recv(CHANNEL_ECHO, timeout=5) == payload
        (served,) = bob.pool.all()
        sealed = link.crypto.seal(CHANNEL_ECHO, split(b"once", 0)[0])
        tampered = bytearray(link.crypto.seal(CHANNEL_ECHO, split(b"evil", 0)[0]))
        tampered[-1] ^= 0x01
        for raw in (sealed, sealed, bytes(tampered)):
            await link.ice.conn.send(raw)
        assert await link.recv(CHANNEL_ECHO, timeout=5) == b"once"      # delivered once
        await asyncio.sleep(0.3)
        assert served.stats["dropped_replay"] == 1
        assert served.stats["dropped_auth"] == 1
        with pytest.raises(TimeoutError):
            await link.recv(CHANNEL_ECHO, timeout=0.5)                 # nothing else came back
        assert await link.ping() > 0
        await link.close("test done")
        assert await asyncio.wait_for(served.closed, 5) == "peer closed: test done"
    finally:
        await alice.stop()
        await bob.stop()


async def test_links_are_reused_per_peer_and_carry_64_kib_messages(dht, idents, tmp_path):
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)
    try:
        link = await alice.connect(bob.account)
        again = await alice.connect(bob.account)         # a second call: no DHT, no ICE
        assert again is link and alice.pool.stats["reused"] == 1
        big = bytes(i % 253 for i in range(65536))        # > one datagram on any path
        await link.send(CHANNEL_ECHO, big)
        assert await link.recv(CHANNEL_ECHO, timeout=5) == big
        await link.send(4242, b"nobody reads this channel")
        await link.send(CHANNEL_ECHO, b"marker")
        assert await link.recv(CHANNEL_ECHO, timeout=5) == b"marker"
        (served,) = bob.pool.all()
        assert served.stats["dropped_no_channel"] == 1     # dropped and counted, not queued
        assert bob.pool.stats["incoming"] == 1
    finally:
        await alice.stop()
        await bob.stop()


async def test_one_malformed_inbox_value_does_not_stop_incoming_calls(dht, idents, tmp_path):
    """Before: an offer whose `ts` was not a number raised AttributeError in the inbox loop,
    which ended it silently: every later call went unanswered."""
    import msgpack

    from sipdht.v1.signaling import CALL_TYPE, inbox_key

    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    mallory = make_agent(dht, idents["mallory"], serve=False)
    await started(bob, alice, mallory)
    try:
        for ts in ("x", None):
            bad = {"v": 1, "k": "offer", "id": new_call_id(), "caller": mallory.account,
                   "callee": bob.account, "ufrag": "abcd", "pwd": "p" * 22, "cands": [],
                   "x25519": b"k" * 32}
            if ts is not None:
                bad["ts"] = ts
            await mallory.secure.put_encrypted(inbox_key(bob.account), msgpack.packb(bad),
                                               to=bob.account, type=CALL_TYPE)
        await asyncio.sleep(0.5)
        assert bob.v1.signaling.stats["inbox_malformed"] == 2
        link = await asyncio.wait_for(alice.connect(bob.account, timeout=10), 15)
        assert await link.ping() > 0
    finally:
        for a in (alice, mallory, bob):
            await a.stop()


async def test_an_owner_key_of_an_unknown_algorithm_does_not_stop_incoming_calls(
        dht, idents, tmp_path):
    """Before: an inbox value signed with a key cryptography cannot load raised
    UnsupportedAlgorithm out of the signature check, which ended the inbox loop silently."""
    from types import SimpleNamespace

    from sipdht.dht.crypto import encrypt_value
    from sipdht.dht.values import Value
    from sipdht.v1.signaling import CALL_TYPE, inbox_key

    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)
    try:
        unknown_spki = bytes.fromhex("300c300506032a03040303000102")    # OID 1.2.3.4
        forger = SimpleNamespace(public_key_der=unknown_spki, sign=lambda data: b"s" * 64)
        bob_key = (await alice.v1.locator.resolve(bob.account)).public_key
        bad = encrypt_value(forger, Value(id=new_call_id(), type=CALL_TYPE, data=b"x"), bob_key)
        assert await alice.node.put(inbox_key(bob.account), bad) > 0
        await asyncio.sleep(0.5)
        link = await asyncio.wait_for(alice.connect(bob.account, timeout=10), 15)
        assert await link.ping() > 0
        assert bob.secure.stats["bad_encrypted"] + bob.secure.stats["bad_signature"] \
            + bob.v1.stats["inbox_value_failed"] >= 1
    finally:
        await alice.stop()
        await bob.stop()

