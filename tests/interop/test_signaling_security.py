"""Call signalling refuses what it must, fast, and the link drops tampered datagrams.

Agents run in-process on loopback (ICE host candidates on 127.0.0.1) with a real
dhtnode as the DHT; NAT traversal itself is covered by tests/netns.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest

from sipdht import identity
from sipdht.agent import Agent, CallFailed
from sipdht.config import Config
from sipdht.dht.node import NodeConfig
from sipdht.link import CHANNEL_ECHO
from sipdht.signaling import CallRefused, Offer, new_call_id
from tests.harness.dhtnode import Dhtnode
from tests.interop.test_dht_dhtnode import async_test

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def idents():
    return {who: identity.generate(2048) for who in ("alice", "bob", "mallory", "carol")}


@pytest.fixture
def dht(dhtnode_bin):
    with Dhtnode() as d:
        yield d


def make_agent(d: Dhtnode, ident, serve: bool, deny=(), home: Path | None = None) -> Agent:
    cfg = Config()
    cfg.identity.path = (home or Path(tempfile.gettempdir())) / f"id-{ident.account_id[:8]}"
    cfg.ice.host_addresses = ["127.0.0.1"]
    cfg.ice.timeout = 5
    cfg.policy.deny = list(deny)
    node = NodeConfig(bind4="127.0.0.1", ipv6=False, bootstrap=[d.address])
    return Agent(cfg, ident, node, serve=serve)


async def started(*agents: Agent) -> None:
    for a in agents:
        assert await a.start()
    await asyncio.sleep(0.5)          # contact records and certificates on the DHT


async def refused_within(coro, seconds: float) -> str:
    t = time.monotonic()
    with pytest.raises(CallRefused) as err:
        await asyncio.wait_for(coro, seconds)
    assert time.monotonic() - t < seconds
    return str(err.value)


async def send_raw_offer(agent: Agent, bob: Agent, offer: Offer) -> str:
    """Send a hand-made offer with the caller's machinery and wait for the verdict."""
    fut = asyncio.get_running_loop().create_future()
    agent.signaling._pending[offer.id] = (bob.account, fut)
    key = (await agent.lookup(bob.account)).public_key
    await agent.signaling.send(bob.account, key, offer)
    return await refused_within(fut, 5)


def an_offer(caller: str, callee: str, **kw) -> Offer:
    from sipdht.link import IceParams
    fields = dict(id=new_call_id(), caller=caller, callee=callee,
                  ice=IceParams("abcd", "p" * 22, []), key=b"k" * 32, ts=time.time())
    fields.update(kw)
    return Offer(**fields)


@async_test
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
        assert bob.signaling.stats["ignored_before_start"] == 1
        # a real call, then the same offer (same id) again: replay
        link, _ = await alice.connect(bob.account)
        await link.close("done")
        call_id = next(iter(bob.signaling._seen))
        reason = await send_raw_offer(alice, bob, an_offer(alice.account, bob.account, id=call_id))
        assert reason == "replayed offer"
        # deny list: the caller's connect fails fast with the reason
        t = time.monotonic()
        with pytest.raises(CallFailed, match="deny list"):
            await carol.connect(bob.account, timeout=10)
        assert time.monotonic() - t < 5
        refused = {k: n for k, n in bob.signaling.stats.items() if k.startswith("refused_")}
        assert refused == {"refused_forged": 1, "refused_stale": 1, "refused_replayed": 1,
                           "refused_denied": 1}
        assert len(bob.links) == 0          # no ICE work was done for any refused offer
    finally:
        for a in (alice, mallory, carol, bob):
            await a.stop()


@async_test
async def test_link_integrity_tamper_and_replay(dht, idents, tmp_path):
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)
    try:
        link, bd = await alice.connect(bob.account)
        assert bd.path == "host" and bd.ice_ms > 0 and bd.lookup_ms > 0
        payload = bytes(range(256)) * 8
        await link.send(CHANNEL_ECHO, payload)
        assert await link.recv(CHANNEL_ECHO, timeout=5) == payload
        (served,) = bob.links
        sealed = link.crypto.seal(CHANNEL_ECHO, b"once")
        tampered = bytearray(link.crypto.seal(CHANNEL_ECHO, b"evil"))
        tampered[-1] ^= 0x01
        for raw in (sealed, sealed, bytes(tampered)):
            await link.ice.conn.send(raw)
        assert await link.recv(CHANNEL_ECHO, timeout=5) == b"once"      # delivered once
        await asyncio.sleep(0.3)
        assert served.stats["dropped_replay"] == 1
        assert served.stats["dropped_auth"] == 1
        with pytest.raises(TimeoutError):
            await link.recv(CHANNEL_ECHO, timeout=0.5)                 # nothing else came back
        assert await link.ping() < 1.0
        await link.close("test done")
        assert await asyncio.wait_for(served.closed, 5) == "peer closed: test done"
    finally:
        await alice.stop()
        await bob.stop()
