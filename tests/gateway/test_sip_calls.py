"""Calls through two gateways joined by an in-memory link pool: SIPp UAC -> gateway A ->
link -> gateway B -> SIPp UAS, failure codes, identity assertion, CANCEL, link loss.

The link pool is tests/harness/memlink.py (LinkPool's API); the end-to-end test over the real
protocol-v1 pool and dhtnode lives in tests/interop.
"""

from __future__ import annotations

import asyncio

import pytest

from sipdht.account import NoPath, Offline, RefusalCode, Refused
from tests.harness.memlink import MemPool
from tests.harness.requirements import require_binary
from tests.harness.sip import (
    ALICE,
    BOB,
    SipClient,
    is_response,
    request,
    sipp_call,
    start_gateway,
    two_gateways,
)

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
       "a=ice-ufrag:abcd\r\na=candidate:1 1 UDP 1 10.9.9.9 {port} typ host\r\n")


@pytest.mark.slow
@pytest.mark.interop
async def test_sipp_calls_through_two_gateways_reuse_one_link(gateways) -> None:
    require_binary("sipp")

    gw_a, gw_b = gateways
    rc, out = await sipp_call(gw_a, gw_b, calls=200, rate=10, limit=20)
    assert rc == 0, out
    assert len(gw_a.pool.links) == 1 and gw_a.pool.gets == 200
    assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
    assert all(v == 0 for v in gw_a.pool.holds.values())
    assert gw_a.stats["malformed"] == gw_b.stats["malformed"] == 0


@pytest.mark.slow
@pytest.mark.interop
async def test_sipp_calls_over_a_lossy_link_still_succeed() -> None:
    """20 % of link messages are lost each way: SIP over the link is retransmitted."""
    require_binary("sipp")

    gw_a, gw_b = await two_gateways(loss=0.2)
    try:
        rc, out = await sipp_call(gw_a, gw_b, calls=10, rate=5, limit=5, timeout=90)
        assert rc == 0, out
        assert gw_a.pool.links[BOB].dropped > 0
    finally:
        await gw_a.stop()
        await gw_b.stop()


@pytest.mark.parametrize("failure, code", [
    (None, 404),
    (Offline(BOB, "Account is offline"), 480),
    (Refused(BOB, "Caller not allowed", RefusalCode.POLICY), 403),
    (Refused(BOB, "Declined"), 603),
    (NoPath(BOB, "ICE failed"), 503),
])
async def test_call_failures_reach_the_softphone(failure, code) -> None:
    network: dict = {}
    pool = MemPool(ALICE, network, failures={BOB: failure} if failure else {})
    gw = await start_gateway(pool, ALICE, {"bob": BOB})
    phone = await SipClient.open()
    try:
        phone.send(request("INVITE", f"sip:bob@127.0.0.1:{gw.port}", phone.port,
                           body=SDP.format(port=4000)), gw.port)
        trying = await phone.recv()
        assert trying.code == 100
        final = await phone.expect(is_response(at_least=200))
        assert final.code == code
        if failure:
            assert final.phrase == str(failure)
        ack = request("ACK", f"sip:bob@127.0.0.1:{gw.port}", phone.port,
                      to_tag=final.to_address.parameters["tag"]).replace("CSeq: 1 ACK", "CSeq: 1 ACK")
        phone.send(ack, gw.port)
        await asyncio.sleep(0.6)
        assert phone.queue.empty()          # ACK stopped the retransmissions of the final
        assert not gw.b2bua.calls
    finally:
        phone.close()
        await gw.stop()


async def test_no_softphone_registered_at_callee_is_480(gateways) -> None:
    gw_a, gw_b = gateways
    phone = await SipClient.open()
    try:
        phone.send(request("INVITE", f"sip:{BOB}@127.0.0.1:{gw_a.port}", phone.port,
                           body=SDP.format(port=4000)), gw_a.port)
        final = await phone.expect(is_response(at_least=200))
        assert final.code == 480 and "registered" in final.phrase
    finally:
        phone.close()


@pytest.mark.interop
@pytest.mark.parametrize("uac, uas", [
    ("uac_cancel", "uas_cancel"),
    ("uac_busy", "uas_busy"),
    ("uac_callee_hangs_up", "uas_hangs_up"),
    ("uac_hold_resume", "uas_hold_resume"),
])
async def test_sipp_scenarios_through_two_gateways(uac, uas, gateways) -> None:
    """CANCEL before answer, 486 passed back, BYE from the callee, re-INVITE hold/resume."""
    require_binary("sipp")

    gw_a, gw_b = gateways
    rc, out = await sipp_call(gw_a, gw_b, calls=5, rate=5, limit=5,
                              uac_scenario=uac, uas_scenario=uas, timeout=30)
    assert rc == 0, out
    await asyncio.sleep(0.2)
    assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
