"""The relay: RTP and RTCP over one link channel, RTCP told apart by packet type and sent to
the softphone's RTCP port unless both SDPs negotiated rtcp-mux; closed relays stop."""

import asyncio
import socket

import pytest

from sipdht.sip.media import Relay, is_rtcp
from tests.harness.memlink import MemLink
from tests.harness.sip import ALICE, BOB

RTP = bytes([0x80, 0x00, 0, 1]) + b"a" * 20
RTCP = bytes([0x80, 200, 0, 6]) + b"r" * 24


def test_is_rtcp():
    assert is_rtcp(RTCP) and not is_rtcp(RTP) and not is_rtcp(b"\x80")
    assert not is_rtcp(bytes([0x80, 0x80 | 96]))   # RTP PT 96 with the marker bit set: 224


def sock() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


@pytest.mark.parametrize("phone_mux, peer_mux, rtcp_to_port", [
    (True, True, "rtp"), (True, False, "rtcp"), (False, True, "rtcp"), (True, None, "rtp"),
])
async def test_rtcp_goes_where_the_negotiation_says(phone_mux, peer_mux, rtcp_to_port) -> None:
    a, b = MemLink(BOB, True), MemLink(ALICE, False)
    a.other, b.other = b, a
    ra, rb = Relay(a, "127.0.0.1", (40000, 49999)), Relay(b, "127.0.0.1", (40000, 49999))
    ra.peer_channel, rb.peer_channel = rb.channel, ra.channel
    rtp_sink, rtcp_sink = sock(), sock()
    rb.set_phone("127.0.0.1", rtp_sink.getsockname()[1], rtcp_sink.getsockname()[1], phone_mux)
    rb.peer_mux = peer_mux
    sender = sock()
    loop = asyncio.get_running_loop()
    try:
        sender.sendto(RTP, ("127.0.0.1", ra.port))
        assert await asyncio.wait_for(loop.sock_recv(rtp_sink, 100), 2) == RTP
        sender.sendto(RTCP, ("127.0.0.1", ra.port + 1))
        target = rtp_sink if rtcp_to_port == "rtp" else rtcp_sink
        assert await asyncio.wait_for(loop.sock_recv(target, 100), 2) == RTCP
        ra.close()
        rb.close()
        sender.sendto(RTP, ("127.0.0.1", ra.port))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(loop.sock_recv(rtp_sink, 100), 0.2)
    finally:
        for s in (rtp_sink, rtcp_sink, sender):
            s.close()
