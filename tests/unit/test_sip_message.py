"""The guarded SIP parser: what a gateway must answer 400 to, and what it must accept."""

import pytest

from sipdht.sip import message as m

OPTIONS = (b"OPTIONS sip:gw@127.0.0.1 SIP/2.0\r\n"
           b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKabc;rport\r\n"
           b"Max-Forwards: 70\r\n"
           b"From: \"A \\\"q\\\"\" <sip:alice@dht>;tag=1\r\n"
           b"To: <sip:gw@dht>\r\n"
           b"Call-ID: c1\r\n"
           b"CSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")


def test_valid_request_round_trips():
    req = m.parse(OPTIONS)
    assert req.method == "OPTIONS" and req.from_address.name == 'A "q"'
    again = m.parse(m.serialize(req))
    assert again.call_id == "c1" and again.cseq.sequence == 1


def test_bare_lf_and_folding_accepted():
    data = OPTIONS.replace(b"\r\n", b"\n").replace(b"Call-ID: c1", b"Subject: a\n  b\nCall-ID: c1")
    req = m.parse(data)
    assert req.headers["Subject"] == "a b"


@pytest.mark.parametrize("data, reason", [
    (OPTIONS[:60], "Truncated"),
    (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: abc"), "Content-Length"),
    (OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 40"), "Content-Length larger"),
    (OPTIONS.replace(b"Call-ID: c1\r\n", b"Call-ID: c1\r\n" + b"X-H: v\r\n" * 1000), "Too many"),
    (OPTIONS.replace(b"To: <sip:gw@dht>", b"To: <sip:\xff\xfe@dht>"), "UTF-8"),
    (bytes(range(256)) * 4, ""),
    (OPTIONS.replace(b"Call-ID: c1\r\n", b""), "Call-ID"),
    (OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), "CSeq"),
    (OPTIONS.replace(b"Via: SIP/2.0/UDP", b"Via: SIP/9/UDP"), "Malformed"),
    (b"\r\n\r\n", ""),
    (OPTIONS.replace(b"To: <sip:gw@dht>\r\n", b"To <sip:gw@dht>\r\n"), "To"),
])
def test_malformed_is_bad_message_with_reason(data, reason):
    with pytest.raises(m.BadMessage) as exc:
        m.parse(data)
    assert reason in str(exc.value)
    assert str(exc.value)


def test_body_trimmed_to_content_length_and_length_fixed_on_serialize():
    data = OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 3") + b"abcdef"
    req = m.parse(data)
    assert req.body == b"abc"
    req.body = b"hello"
    assert b"Content-Length: 5\r\n" in m.serialize(req)


def test_too_large_rejected_before_parsing():
    with pytest.raises(m.BadMessage, match="too large"):
        m.parse(OPTIONS + b"x" * 70000)


def test_response_copies_transaction_headers_and_adds_to_tag():
    req = m.parse(OPTIONS)
    m.stamp_received(req, "127.0.0.1", 5999)
    resp = m.parse(m.serialize(m.response(req, 200, to_tag="t9")))
    assert resp.code == 200
    via = resp.via[0]
    assert via.parameters["rport"] == "5999" and via.parameters["received"] == "127.0.0.1"
    assert resp.to_address.parameters["tag"] == "t9"
    assert resp.from_address.parameters["tag"] == "1"


def test_received_for_an_ipv6_source_stays_parseable():
    req = m.parse(OPTIONS.replace(b"127.0.0.1:5061", b"[::1]:5061"))
    m.stamp_received(req, "::1", 5999)
    assert ";rport=5999;received=[::1]" in req.headers["Via"]
    assert m.parse(m.serialize(req)).via[0].parameters["rport"] == "5999"
