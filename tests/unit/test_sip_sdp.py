"""SDP rewrite for the relay: addresses and ports change, codecs and crypto do not."""

import pytest

from sipdht.sip import sdp

OFFER = (b"v=0\r\no=alice 0123 0456 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
         b"a=ice-ufrag:0123\r\na=ice-pwd:secretsecretsecret\r\n"
         b"m=audio 4000 RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
         b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
         b"a=rtcp-mux\r\na=rtcp:4001\r\na=candidate:1 1 UDP 2130706431 10.0.0.5 4000 typ host\r\n"
         b"a=sendrecv\r\n"
         b"m=video 0 RTP/AVP 96\r\n"
         b"m=video 5000 RTP/AVP 97\r\nc=IN IP4 10.0.0.6\r\na=rtpmap:97 H264/90000\r\nA=upper\r\n")


def test_streams():
    s = sdp.streams(OFFER)
    assert [(x.media, x.port, x.address, x.rtcp_mux, x.rtcp_port) for x in s] == [
        ("audio", 4000, "10.0.0.5", True, 4001), ("video", 0, "10.0.0.5", False, 1),
        ("video", 5000, "10.0.0.6", False, 5001)]


def test_rewrite_points_at_relay_keeps_codecs_and_crypto():
    out = sdp.rewrite(OFFER, "127.0.0.1", [30000, 30002, 30004])
    text = out.decode()
    assert "m=audio 30000 RTP/SAVP 0 8 101" in text
    assert "m=video 0 RTP/AVP 96" in text             # a disabled stream stays disabled
    assert "m=video 30004 RTP/AVP 97" in text
    assert "10.0.0" not in text and text.count("c=IN IP4 127.0.0.1") == 2
    assert "o=alice 0123 0456 IN IP4 127.0.0.1" in text
    for kept in (b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
                 b"a=rtcp-mux", b"a=rtpmap:101 telephone-event/8000",
                 b"a=sendrecv", b"A=upper"):
        assert kept in out
    for dropped in (b"ice-ufrag", b"ice-pwd", b"candidate", b"a=rtcp:"):
        assert dropped not in out
    assert [s.port for s in sdp.streams(out)] == [30000, 0, 30004]


def test_not_sdp_rejected():
    with pytest.raises(sdp.BadSdp):
        sdp.streams(b"hello")
    with pytest.raises(sdp.BadSdp):
        sdp.rewrite(b"v=0\r\nm=audio x RTP/AVP 0\r\n", "127.0.0.1", [1])
