"""Property tests: whatever bytes arrive, the guarded parser and the SDP rewriter either
succeed or raise their own ValueError subclass (the gateway answers 400 / 488), never
anything else; and the 400 builder never raises."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipdht.sip import message, sdp

VALID = (b"INVITE sip:bob@127.0.0.1 SIP/2.0\r\n"
         b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa;rport\r\n"
         b"Max-Forwards: 70\r\nFrom: \"A\" <sip:a@dht>;tag=1\r\nTo: <sip:b@dht>\r\n"
         b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5070>\r\n"
         b"Content-Type: application/sdp\r\nContent-Length: 60\r\n\r\n"
         b"v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\n")


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    for pos, cut, insert in edits:
        pos %= len(data) + 1
        data = data[:pos] + insert + data[pos + cut:]
    return data


edits = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 8),
                           st.sampled_from([b"", b"\r\n", b"\n", b":", b";", b"<", b">", b",",
                                            b"\xff", b"\x00", b" ", b"\t", b"=", b"@", b"sip:",
                                            b"SIP/2.0", b"9999999999", b"-1", b'"'])),
                 max_size=6)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_mutated_messages_parse_or_raise_bad_message(changes):
    data = _mutate(VALID, changes)
    try:
        msg = message.parse(data)
    except message.BadMessage:
        answer = message.bad_request(data, "x")
        assert answer is None or answer.startswith(b"SIP/2.0 400 ")
        return
    message.serialize(msg)                                  # what we accepted we can send
    try:
        body = msg.body
        sdp.rewrite(body, "127.0.0.1", [s.port for s in sdp.streams(body)])
    except sdp.BadSdp:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    try:
        message.parse(data)
    except message.BadMessage:
        message.bad_request(data, "x")
    try:
        sdp.streams(data)
    except sdp.BadSdp:
        pass


@pytest.mark.parametrize("side", ["phone", "link"])
async def test_gateway_never_fails_internally_on_mutated_requests(side) -> None:
    """Mutated INVITE/REGISTER/BYE/CANCEL through the whole gateway (B2BUA included), from a
    softphone and from a peer link (with a registered phone to ring): no exception escapes
    to the gateway's last-resort handler."""
    import asyncio
    import random

    from sipdht.sip.dest import Dest
    from tests.harness.memlink import MemLink, MemPool
    from tests.harness.sip import ALICE, BOB, start_gateway

    network: dict = {}
    gw = await start_gateway(MemPool(ALICE, network), ALICE, {"bob": BOB})
    MemPool(BOB, network)
    dest = Dest.udp(("127.0.0.1", 9))
    if side == "link":
        reg = VALID.replace(b"INVITE sip:bob@127.0.0.1", b"REGISTER sip:127.0.0.1").replace(
            b"CSeq: 1 INVITE", b"CSeq: 1 REGISTER").replace(b"5070>", b"9>")
        gw.receive(reg, dest)
        assert gw.registrar.bindings(gw.now())
        ours, theirs = MemLink(BOB, False), MemLink(ALICE, True)
        ours.other, theirs.other = theirs, ours
        dest = Dest.over(ours)
    rng = random.Random(7)
    pieces = [b"", b"\r\n", b":", b";", b"<", b">", b",", b"\xff", b" ", b"=", b"@", b"*",
              b"sip:", b"-1", b'"', b"tag=", b"expires=x"]
    try:
        for n in range(3000):
            base = VALID.replace(b"INVITE", rng.choice([b"INVITE", b"REGISTER", b"BYE",
                                                        b"CANCEL", b"OPTIONS", b"ACK"]))
            data = base.replace(b"branch=z9hG4bKa", b"branch=z9hG4bK%d" % n)
            for _ in range(rng.randint(0, 4)):
                pos = rng.randrange(len(data))
                data = data[:pos] + rng.choice(pieces) + data[pos + rng.randint(0, 6):]
            gw.receive(data, dest)
            if n % 200 == 0:
                await asyncio.sleep(0)
        assert gw.stats["internal_errors"] == 0
    finally:
        await gw.stop()
