"""Calls through two gateways joined by an in-memory link pool: SIPp UAC -> gateway A ->
link -> gateway B -> SIPp UAS, failure codes, identity assertion, CANCEL, link loss.

The link pool is tests/sip/memlink.py (LinkPool's API); the end-to-end test over the real
protocol-v1 pool and dhtnode lives in tests/interop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile

import pytest

from sipdht.account import NoPath, Offline, RefusalCode, Refused
from tests.harness.requirements import require_binary
from tests.sip.harness import ALICE, BOB, SipClient, free_port, request, run, start_gateway
from tests.sip.memlink import MemPool

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
       "a=ice-ufrag:abcd\r\na=candidate:1 1 UDP 1 10.9.9.9 {port} typ host\r\n")


async def two_gateways(loss: float = 0.0, failures=None, contacts_b=None):
    network: dict = {}
    pool_a = MemPool(ALICE, network, loss=loss, failures=failures)
    pool_b = MemPool(BOB, network, loss=loss)
    gw_a = await start_gateway(pool_a, ALICE, {"bob": BOB})
    gw_b = await start_gateway(pool_b, BOB, contacts_b if contacts_b is not None else {"alice": ALICE})
    return gw_a, gw_b


async def register(gw, user: str, contact_port: int, client: SipClient | None = None,
                   expires: int = 300) -> None:
    own = client is None
    client = client or await SipClient.open()
    client.send(request("REGISTER", f"sip:{user}@127.0.0.1:{gw.port}", client.port,
                        call_id=f"reg-{user}-{contact_port}", cseq=2 if expires == 0 else 1,
                        branch=f"z9hG4bKreg{contact_port}x{expires}",
                        from_user=user, extra=f"Expires: {expires}\r\n").replace(
        f"<sip:{user}@127.0.0.1:{client.port}>", f"<sip:{user}@127.0.0.1:{contact_port}>"), gw.port)
    assert (await client.expect(lambda m: m.cseq.method == "REGISTER")).code == 200
    if own:
        client.close()


@contextlib.asynccontextmanager
async def spawn(argv: list[str], cwd: str):
    proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL,
                                                stdin=asyncio.subprocess.DEVNULL,
                                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def registered(gw, user: str, port: int):
    """A binding for the test's softphone, removed afterwards (a stale binding would be one
    more fork that never answers)."""
    await register(gw, user, port)
    try:
        yield
    finally:
        await register(gw, user, port, expires=0)


def _screen(cwd: str) -> str:
    out = []
    for name in sorted(os.listdir(cwd)):
        if name.endswith(("_screen.log", "_errors.log")):
            with open(os.path.join(cwd, name), errors="replace") as fh:
                out.append(name + ":\n" + fh.read()[-3000:])
    return "\n".join(out)


async def sipp_call(gw_a, gw_b, calls: int, rate: int = 10, limit: int = 20,
                    uac_scenario: str = "uac", uas_scenario: str = "uas",
                    timeout: float = 60, callee: str = BOB) -> tuple[int, str]:
    uas_port = free_port()
    with tempfile.TemporaryDirectory() as cwd:
        uas = ["sipp", "-i", "127.0.0.1", "-p", str(uas_port), "-m", str(calls), "-nostdin",
               "-trace_screen", "-trace_err"] + _scenario(uas_scenario, cwd)
        async with spawn(uas, cwd), registered(gw_b, "bob", uas_port):
            await asyncio.sleep(0.3)
            uac = ["sipp", f"127.0.0.1:{gw_a.port}", "-s", callee, "-i", "127.0.0.1",
                   "-p", str(free_port()), "-m", str(calls), "-r", str(rate), "-l", str(limit),
                   "-nostdin", "-timeout", f"{int(timeout)}s", "-timeout_error",
                   "-trace_screen", "-trace_err"] + _scenario(uac_scenario, cwd)
            rc, out = await run(uac, timeout + 10, cwd=cwd)
            return rc, out + _screen(cwd)


def _scenario(name: str, cwd: str) -> list[str]:
    if name in ("uac", "uas"):
        return ["-sn", name]
    from tests.sip import scenarios
    path = os.path.join(cwd, name + ".xml")
    with open(path, "w") as fh:
        fh.write(getattr(scenarios, name))
    return ["-sf", path]


@pytest.mark.slow
@pytest.mark.interop
def test_sipp_calls_through_two_gateways_reuse_one_link():
    require_binary("sipp")

    async def main():
        gw_a, gw_b = await two_gateways()
        try:
            rc, out = await sipp_call(gw_a, gw_b, calls=200, rate=10, limit=20)
            assert rc == 0, out
            assert len(gw_a.pool.links) == 1 and gw_a.pool.gets == 200
            assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
            assert all(v == 0 for v in gw_a.pool.holds.values())
            assert gw_a.stats["malformed"] == gw_b.stats["malformed"] == 0
        finally:
            await gw_a.stop()
            await gw_b.stop()

    asyncio.run(main())


@pytest.mark.slow
@pytest.mark.interop
def test_sipp_calls_over_a_lossy_link_still_succeed():
    """20 % of link messages are lost each way: SIP over the link is retransmitted."""
    require_binary("sipp")

    async def main():
        gw_a, gw_b = await two_gateways(loss=0.2)
        try:
            rc, out = await sipp_call(gw_a, gw_b, calls=10, rate=5, limit=5, timeout=90)
            assert rc == 0, out
            assert gw_a.pool.links[BOB].dropped > 0
        finally:
            await gw_a.stop()
            await gw_b.stop()

    asyncio.run(main())


@pytest.mark.parametrize("failure, code", [
    (None, 404),
    (Offline(BOB, "Account is offline"), 480),
    (Refused(BOB, "Caller not allowed", RefusalCode.POLICY), 403),
    (Refused(BOB, "Declined"), 603),
    (NoPath(BOB, "ICE failed"), 503),
])
def test_call_failures_reach_the_softphone(failure, code):
    async def main():
        network: dict = {}
        pool = MemPool(ALICE, network, failures={BOB: failure} if failure else {})
        gw = await start_gateway(pool, ALICE, {"bob": BOB})
        phone = await SipClient.open()
        try:
            phone.send(request("INVITE", f"sip:bob@127.0.0.1:{gw.port}", phone.port,
                               body=SDP.format(port=4000)), gw.port)
            trying = await phone.recv()
            assert trying.code == 100
            final = await phone.expect(lambda m: m.code >= 200)
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

    asyncio.run(main())


def test_no_softphone_registered_at_callee_is_480():
    async def main():
        gw_a, gw_b = await two_gateways()
        phone = await SipClient.open()
        try:
            phone.send(request("INVITE", f"sip:{BOB}@127.0.0.1:{gw_a.port}", phone.port,
                               body=SDP.format(port=4000)), gw_a.port)
            final = await phone.expect(lambda m: m.code >= 200)
            assert final.code == 480 and "registered" in final.phrase
        finally:
            phone.close()
            await gw_a.stop()
            await gw_b.stop()

    asyncio.run(main())


@pytest.mark.interop
@pytest.mark.parametrize("uac, uas", [
    ("uac_cancel", "uas_cancel"),
    ("uac_busy", "uas_busy"),
    ("uac_callee_hangs_up", "uas_hangs_up"),
    ("uac_hold_resume", "uas_hold_resume"),
])
def test_sipp_scenarios_through_two_gateways(uac, uas):
    """CANCEL before answer, 486 passed back, BYE from the callee, re-INVITE hold/resume."""
    require_binary("sipp")

    async def main():
        gw_a, gw_b = await two_gateways()
        try:
            rc, out = await sipp_call(gw_a, gw_b, calls=5, rate=5, limit=5,
                                      uac_scenario=uac, uas_scenario=uas, timeout=30)
            assert rc == 0, out
            await asyncio.sleep(0.2)
            assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
        finally:
            await gw_a.stop()
            await gw_b.stop()

    asyncio.run(main())
