"""End to end over protocol v1: SIPp UAC -> gateway A -> agent A's LinkPool -> DHT
(real dhtnode) + ICE + sealed link -> agent B -> gateway B -> SIPp UAS, on loopback.
Failure codes come from the real account type: unknown account 404, offline 480, a callee
whose deny list has the caller 603 (v1 does not reveal a deny list), a callee that rejects
unknown callers 403. Then the SIPp scenarios (CANCEL, 486, BYE from the callee, hold/resume)
over the same real link."""

from __future__ import annotations

import pytest

from sipdht import identity
from sipdht.config import SipConfig
from sipdht.sip.gateway import Gateway
from tests.harness.agents import make_agent, started
from tests.harness.dhtnode import Dhtnode
from tests.harness.requirements import require_binary
from tests.harness.sip import SipClient, free_port, is_response, request, sipp_call

pytestmark = pytest.mark.interop

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


@pytest.fixture(scope="module")
def idents():
    return {who: identity.generate(2048) for who in ("alice", "bob", "carol", "dora", "erin")}


@pytest.fixture
def dht(dhtnode_bin):
    with Dhtnode() as d:
        yield d


async def gateway(agent, contacts: dict[str, str]) -> Gateway:
    gw = Gateway(SipConfig(listen=("127.0.0.1", free_port())), contacts, agent.pool,
                 agent.account, "dht")
    await gw.start()
    return gw


async def final_for(gw: Gateway, user: str) -> tuple[int, str]:
    phone = await SipClient.open()
    try:
        phone.send(request("INVITE", f"sip:{user}@127.0.0.1:{gw.port}", phone.port,
                           call_id=f"fail-{user[:6]}", body=SDP), gw.port)
        final = await phone.expect(is_response(at_least=200), timeout=30)
        return final.code, final.phrase
    finally:
        phone.close()


@pytest.mark.slow
@pytest.mark.async_timeout(300)
async def test_sipp_calls_through_two_agents_and_failure_codes(dht, idents, tmp_path):
    require_binary("sipp")
    bob = make_agent(dht, idents["bob"], serve=True, home=tmp_path)
    alice = make_agent(dht, idents["alice"], serve=True, home=tmp_path)
    carol = make_agent(dht, idents["carol"], serve=True, home=tmp_path)
    dora = make_agent(dht, idents["dora"], serve=True, home=tmp_path,
                      deny=[idents["alice"].account_id])
    erin = make_agent(dht, idents["erin"], serve=True, home=tmp_path)
    erin.config.policy.unknown = "reject"        # alice is in neither list
    await started(bob, alice, carol, dora, erin)
    await carol.stop()                          # publishes its "offline" record
    gw_a = await gateway(alice, {"bob": bob.account, "carol": carol.account})
    gw_b = await gateway(bob, {"alice": alice.account})
    try:
        rc, out = await sipp_call(gw_a, gw_b, calls=200, rate=10, limit=20,
                                  callee=bob.account, timeout=60)
        assert rc == 0, out
        assert alice.pool.stats["connected"] == 1 and alice.pool.stats["reused"] >= 199
        assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
        code, phrase = await final_for(gw_a, "1234567890" * 4)
        assert code == 404, phrase
        code, phrase = await final_for(gw_a, "carol")
        assert code == 480 and "offline" in phrase, phrase
        code, phrase = await final_for(gw_a, dora.account)
        assert code == 603 and "declined" in phrase, phrase   # a deny list is not revealed
        code, phrase = await final_for(gw_a, erin.account)
        assert code == 403 and "unknown callers" in phrase, phrase
        for uac, uas in (("uac_cancel", "uas_cancel"), ("uac_busy", "uas_busy"),
                         ("uac_callee_hangs_up", "uas_hangs_up"),
                         ("uac_hold_resume", "uas_hold_resume")):
            rc, out = await sipp_call(gw_a, gw_b, calls=3, rate=5, limit=3, uac_scenario=uac,
                                      uas_scenario=uas, callee=bob.account, timeout=30)
            assert rc == 0, f"{uac}: {out}"
        await malformed_then_a_call_still_works(gw_a, gw_b, bob.account)
    finally:
        await gw_a.stop()
        await gw_b.stop()
        await alice.stop()
        await bob.stop()
        await dora.stop()
        await erin.stop()


async def malformed_then_a_call_still_works(gw_a: Gateway, gw_b: Gateway, callee: str) -> None:
    """Junk from a local client (truncated, bad Content-Length, 1,000 headers, non-UTF-8,
    binary) gets a 400 or is dropped, and the next SIPp calls through both agents work."""
    phone = await SipClient.open()
    try:
        good = request("OPTIONS", f"sip:gw@127.0.0.1:{gw_a.port}", phone.port)
        for junk in (good[:len(good) // 2].encode(),
                     good.replace("Content-Length: 0", "Content-Length: x").encode(),
                     good.replace("Max-Forwards: 70\r\n",
                                  "Max-Forwards: 70\r\n" + "X-A: b\r\n" * 1000).encode(),
                     good.encode().replace(b"To: <sip:gw", b"To: <sip:\xff\xfegw"),
                     bytes(range(256)) * 8):
            phone.send(junk, gw_a.port)
        for _ in range(5):
            try:
                answer = await phone.recv_raw(0.5)
            except TimeoutError:
                break
            assert answer.startswith(b"SIP/2.0 400 "), answer[:80]
    finally:
        phone.close()
    assert gw_a.stats["malformed"] >= 5
    rc, out = await sipp_call(gw_a, gw_b, calls=5, rate=5, limit=5, callee=callee, timeout=30)
    assert rc == 0, out
