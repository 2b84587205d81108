"""Attacks on protocol v1 reproduced against real agents and a real dhtnode."""

from __future__ import annotations

import asyncio

import pytest

from sipdht.dht.values import Value
from sipdht.v1 import locator as loc
from tests.harness.agents import make_agent, started

pytestmark = [pytest.mark.interop, pytest.mark.async_timeout(300)]


async def test_a_squatted_record_id_is_detected_and_republished(dht, idents, tmp_path,
                                                                monkeypatch):
    """Before: the record's value id was the public device id; one unsigned put under it
    made the account look offline for days while its agent logged "published". Now the id
    is random per run, and a record not found after publishing moves to a fresh id."""
    squatted = 0x5151515151515151
    ids = iter([squatted])
    real = loc._random_vid
    monkeypatch.setattr(loc, "_random_vid", lambda: next(ids, None) or real())
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    bob.node.config.client_only = True      # the storers are the others, as on a real network
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(alice)
    # the attacker's unsigned value sits at bob's contact key under the id bob will use
    assert await alice.node.put(loc.contact_key(bob.account),
                                Value(id=squatted, data=b"squat", type=0)) > 0
    await started(bob)
    try:
        for _ in range(50):
            if bob.v1.locator.stats["record_squatted"]:
                break
            await asyncio.sleep(0.1)
        assert bob.v1.locator.stats["record_squatted"] == 1
        for _ in range(50):
            found = await alice.lookup(bob.account)
            if found.online:
                break
            await asyncio.sleep(0.1)
        assert found.online, found
    finally:
        await alice.stop()
        await bob.stop()


@pytest.mark.slow
async def test_the_node_id_does_not_reveal_the_account(dht, idents, tmp_path):
    """Before: node id = SHA1("node:" + account) let anyone find an agent's address."""
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    await started(bob)
    try:
        assert bob.node.id.hex() != idents["bob"].node_id.hex()
    finally:
        await bob.stop()


async def test_an_inbox_flood_is_decrypted_once_per_ciphertext_and_calls_still_work(
        dht, idents, tmp_path, caplog):
    """Before: every inbox value >= 512 B cost an RSA decryption before any check, repeated
    ciphertexts included, and each refusal logged a warning line."""
    import logging
    import os

    from sipdht.v1.signaling import CALL_TYPE, inbox_key

    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)
    junk = os.urandom(600)
    try:
        with caplog.at_level(logging.INFO):
            for i in range(200):                  # the same ciphertext under 200 value ids
                await alice.node.put(inbox_key(bob.account),
                                     Value(id=1000 + i, type=CALL_TYPE, cypher=junk))
            for i in range(50):                   # and 50 different junk ciphertexts
                await alice.node.put(inbox_key(bob.account),
                                     Value(id=5000 + i, type=CALL_TYPE, cypher=os.urandom(600)))
            for _ in range(100):
                if bob.v1.stats["inbox_duplicate"] >= 199:
                    break
                await asyncio.sleep(0.05)
            link = await asyncio.wait_for(alice.connect(bob.account, timeout=10), 15)
            assert await link.ping() > 0
        assert bob.v1.stats["inbox_duplicate"] >= 199
        assert bob.secure.stats["not_for_us"] + bob.secure.stats["bad_encrypted"] <= 51
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING
                    and r.name.startswith("sipdht")]
        assert len(warnings) < 10, [r.getMessage() for r in warnings]
    finally:
        await alice.stop()
        await bob.stop()


@pytest.mark.slow
async def test_publish_only_while_a_softphone_is_registered(dht, idents, tmp_path, monkeypatch):
    """[sip] publish = registered: callers see the account offline (480 at once) unless a
    phone is registered at its agent. sipsak is the phone."""
    from tests.harness.requirements import require_binary

    require_binary("sipsak")
    monkeypatch.setattr("sipdht.agent.PRESENCE_INTERVAL", 0.1)
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path, sip=True,
                     configure=lambda cfg: setattr(cfg.sip, "publish", "registered"))
    alice = make_agent(dht, idents["alice"], serve=False)
    await started(bob, alice)

    async def sipsak(expires: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            "sipsak", "-U", "-C", "sip:bob@127.0.0.1:5999", "-x", str(expires),
            "-s", f"sip:bob@127.0.0.1:{bob.gateway.port}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        assert await asyncio.wait_for(proc.wait(), 10) == 0

    async def online_within(seconds: float) -> bool:
        for _ in range(int(seconds * 10)):
            found = await alice.lookup(bob.account)
            if found.online:
                return True
            await asyncio.sleep(0.1)
        return False

    try:
        assert not (await alice.lookup(bob.account)).devices      # nothing published yet
        await sipsak(300)
        assert await online_within(5)
        await sipsak(0)                                           # the phone unregisters
        for _ in range(50):
            found = await alice.lookup(bob.account)
            if found.devices and not found.online:
                break
            await asyncio.sleep(0.1)
        assert found.devices and not found.online                 # an offline record: 480
    finally:
        await alice.stop()
        await bob.stop()


async def test_a_burst_of_offers_starts_a_bounded_number_of_ice_sessions(dht, idents, tmp_path):
    """Before: every accepted offer started its own ICE session at once (100 offers = 100
    sessions, +30 MB, each pinging the candidates the stranger chose)."""
    import time

    from sipdht.v1.account import MAX_SETUPS
    from sipdht.v1.ice import IceParams
    from sipdht.v1.sealing import EphemeralKey
    from sipdht.v1.signaling import Offer, new_call_id

    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    mallory = make_agent(dht, idents["mallory"], serve=False)
    await started(bob, mallory)
    try:
        key = (await mallory.v1.locator.resolve(bob.account)).public_key
        # candidates nobody answers: each accepted offer keeps an ICE session busy
        ice = IceParams("abcd", "p" * 22, ["1 1 UDP 2130706431 127.0.0.1 9 typ host"])
        for _ in range(3 * MAX_SETUPS):
            offer = Offer(new_call_id(), mallory.account, bob.account, ice,
                          EphemeralKey().public, time.time())
            await mallory.v1.signaling.send(bob.account, key, offer)
        peak = 0
        for _ in range(30):
            peak = max(peak, len(bob.v1._setups))
            if bob.v1.stats["incoming_over_capacity"] >= MAX_SETUPS:
                break
            await asyncio.sleep(0.1)
        assert 0 < peak <= MAX_SETUPS
        assert bob.v1.stats["incoming_over_capacity"] >= MAX_SETUPS
    finally:
        await mallory.stop()
        await bob.stop()
