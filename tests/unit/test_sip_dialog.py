"""The sans-IO dialog (sipdht.sip.dialog), stream framing (message.frame_length and
transport.read_frame), how we name ourselves per dialog (local.Local) and the link seams the
gateway depends on: no sockets, no event loop unless a StreamReader needs one."""

import asyncio

import pytest
from sipmessage import URI, Address

from sipdht.account import Link, LinkSource
from sipdht.links import LinkPool
from sipdht.sip import message as m
from sipdht.sip.dest import Dest, DestKind
from sipdht.sip.dialog import Dialog, LocalEnd, Side, cancel
from sipdht.sip.local import Local
from sipdht.sip.transport import read_frame
from tests.harness.memlink import MemLink, MemPool

ALICE = "a" * 40
BOB = "b" * 40
END = LocalEnd("UDP", "127.0.0.1", 5060, Address(URI("sip", "127.0.0.1", user=ALICE, port=5060)))
PHONE = Dest.udp(("127.0.0.1", 5070))


def parse(text: str):
    return m.parse(text.replace("\n", "\r\n").encode())


def invite(extra: str = "") -> str:
    return ("INVITE sip:bob@dht SIP/2.0\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKi1\n"
            "From: \"Al\" <sip:alice@dht>;tag=caller\nTo: <sip:bob@dht>\nCall-ID: cid-1\n"
            f"CSeq: 7 INVITE\nContact: <sip:alice@127.0.0.1:5070>\nMax-Forwards: 70\n{extra}"
            "Content-Length: 0\n\n")


def reply(req, code: int, *, tag: str = "callee", contact: str = "", extra: str = ""):
    resp = m.response(req, code, to_tag=tag)
    if contact:
        resp.headers.set("Contact", contact)
    for line in filter(None, extra.split("\n")):
        name, _, value = line.partition(": ")
        resp.headers.add(name, value)
    return m.parse(m.serialize(resp))


def calling() -> Dialog:
    return Dialog.calling(Side.LOCAL, PHONE, END, Address(URI("sip", "dht", user=BOB)),
                          Address(URI("sip", "dht", user="alice")),
                          target=URI.parse("sip:alice@127.0.0.1:5070"))


# --- building requests: CSeq, tags, Via and Contact -------------------------------------------


def test_requests_in_a_dialog_count_cseq_and_carry_our_tag_and_the_target():
    d = calling()
    first = d.request("INVITE", body=b"v=0\r\n", content_type="application/sdp")
    second = d.request("INFO")
    assert (first.cseq.sequence, first.cseq.method) == (1, "INVITE")
    assert (second.cseq.sequence, second.cseq.method) == (2, "INFO") and d.cseq == 2
    assert str(first.uri) == "sip:alice@127.0.0.1:5070"
    assert first.from_address.parameters["tag"] == d.local_tag and len(d.local_tag) >= 8
    assert "tag" not in first.to_address.parameters          # nothing heard back yet
    assert first.call_id == second.call_id == d.call_id
    via = first.via[0]
    assert (via.transport, via.host, via.port) == ("UDP", "127.0.0.1", 5060)
    assert m.branch(first) != m.branch(second) and m.branch(first).startswith("z9hG4bK")
    assert first.contact == [END.contact] and not second.contact   # only target refreshes
    assert first.headers["Content-Type"] == "application/sdp" and first.max_forwards == 70


def test_ack_takes_the_invites_cseq_and_is_remembered_for_2xx_retransmissions():
    d = calling()
    d.request("INVITE")
    d.establish(reply(d.request("INVITE"), 200))
    data = d.ack(2, b"v=0\r\n", "application/sdp")
    ack = m.parse(data)
    assert (ack.method, ack.cseq.sequence, ack.cseq.method) == ("ACK", 2, "ACK")
    assert ack.to_address.parameters["tag"] == "callee" and d.cseq == 2   # no new CSeq
    assert ack.headers["Content-Type"] == "application/sdp" and ack.body == b"v=0\r\n"
    assert d.acks == {2: data}
    assert m.parse(d.ack(2)).headers.get("Content-Type") is None       # no body, no type


def test_bye_goes_to_the_refreshed_target_with_both_tags():
    d = calling()
    inv = d.request("INVITE")
    d.establish(reply(inv, 200))
    d.on_response(reply(inv, 200, contact="<sip:alice@203.0.113.7:5999>"), "INVITE")
    bye = d.bye()
    assert str(bye.uri) == "sip:alice@203.0.113.7:5999" and bye.cseq.sequence == 2
    assert bye.to_address.parameters["tag"] == "callee"
    assert bye.from_address.parameters["tag"] == d.local_tag


def test_cancel_matches_the_invite_transaction():
    d = calling()
    inv = d.request("INVITE")
    c = cancel(inv)
    assert c.method == "CANCEL" and c.uri == inv.uri
    for name in ("Via", "From", "To", "Call-ID", "Max-Forwards"):
        assert c.headers[name] == inv.headers[name]
    assert (c.cseq.sequence, c.cseq.method) == (inv.cseq.sequence, "CANCEL")


# --- what comes back: tags, route set, target refresh ------------------------------------------


def test_the_first_tag_of_a_1xx_or_2xx_fixes_the_remote_side_and_the_route_set():
    d = calling()
    inv = d.request("INVITE")
    d.establish(reply(inv, 100, tag=""))
    d.establish(reply(inv, 486, tag="busy"))
    assert d.remote_tag == "" and d.route_set == []
    d.establish(reply(inv, 180, extra="Record-Route: <sip:p1.test;lr>, <sip:p2.test;lr>\n"
                                      "Record-Route: <sip:p3.test;lr>"))
    assert d.remote_tag == "callee"
    assert [a.uri.host for a in d.route_set] == ["p3.test", "p2.test", "p1.test"]  # reversed
    d.establish(reply(inv, 200, tag="other", extra="Record-Route: <sip:p9.test;lr>"))
    assert d.remote_tag == "callee" and len(d.route_set) == 3
    assert "Route" not in d.bye().headers.keys()       # stored, not routed by (issue 16)


def test_a_malformed_record_route_leaves_an_empty_route_set():
    d = calling()
    d.establish(reply(d.request("INVITE"), 200, extra="Record-Route: <<<"))
    assert d.remote_tag == "callee" and d.route_set == []


def test_only_invite_and_update_refresh_the_target():
    d = calling()
    inv = d.request("INVITE")
    d.on_response(reply(inv, 100, tag="", contact="<sip:x@203.0.113.1>"), "INVITE")
    d.on_response(reply(inv, 486, contact="<sip:x@203.0.113.2>"), "INVITE")
    info = d.request("INFO")
    d.on_response(reply(info, 200, contact="<sip:x@203.0.113.3>"), "INFO")
    assert str(d.target) == "sip:alice@127.0.0.1:5070"
    d.on_response(reply(inv, 183, contact="<sip:x@203.0.113.4>"), "INVITE")
    assert str(d.target) == "sip:x@203.0.113.4"
    d.on_request(parse(invite().replace("INVITE sip", "INFO sip").replace("7 INVITE", "7 INFO")
                       .replace("127.0.0.1:5070>", "203.0.113.5>")))
    assert str(d.target) == "sip:x@203.0.113.4"
    d.on_request(parse(invite().replace("INVITE", "UPDATE").replace("127.0.0.1:5070>",
                                                                      "203.0.113.6>")))
    assert str(d.target) == "sip:alice@203.0.113.6"


def test_the_answering_side_takes_ids_target_and_route_set_from_the_request():
    req = parse(invite("Record-Route: <sip:p1.test;lr>\nRecord-Route: <sip:p2.test;lr>\n"))
    d = Dialog.answering(req, Side.LINK, PHONE, END)
    assert d.key == ("cid-1", d.local_tag) and d.remote_tag == "caller" and d.local_tag
    assert "tag" not in d.local.parameters and "tag" not in d.remote.parameters
    assert d.remote.name == "Al" and str(d.target) == "sip:alice@127.0.0.1:5070"
    assert [str(a.uri) for a in d.route_set] == ["sip:p1.test;lr", "sip:p2.test;lr"]  # in order
    ok = d.response(req, 200)
    assert ok.to_address.parameters["tag"] == d.local_tag and ok.contact == [END.contact]
    assert not d.response(req, 486).contact and not d.response(req, 100).contact
    assert "tag" not in d.response(req, 100).to_address.parameters
    no_contact = parse(invite().replace("Contact: <sip:alice@127.0.0.1:5070>\n", ""))
    assert str(Dialog.answering(no_contact, Side.LOCAL, PHONE, END).target) == "sip:alice@dht"


# --- our names per dialog ---------------------------------------------------------------------


def test_local_end_hides_our_address_on_the_link_and_names_the_transport_locally():
    local = Local(ALICE, "dht", "::1", 5062, "::1", {"bob": BOB})
    link = local.end(Side.LINK, Dest.udp(("", 0)))
    assert (link.transport, link.host, link.port) == ("UDP", ALICE + ".dht.invalid", None)
    assert str(link.contact.uri) == f"sip:{ALICE}@{ALICE}.dht.invalid"
    udp = local.end(Side.LOCAL, PHONE)
    assert (udp.transport, udp.host, udp.port) == ("UDP", "[::1]", 5062)
    tcp = local.end(Side.LOCAL, Dest(DestKind.TCP))
    assert tcp.transport == "TCP" and tcp.contact.uri.parameters["transport"] == "tcp"
    assert local.resolve("bob") == BOB and local.resolve(BOB.upper()) == BOB
    assert local.resolve("carol") is None and local.alias_of(BOB) == "bob"


# --- stream framing ---------------------------------------------------------------------------


def test_frame_length_reads_content_length_and_refuses_what_cannot_be_framed():
    head = "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n{}\r\n\r\n"
    assert m.frame_length(head.format("Content-Length: 12").encode()) == 12
    assert m.frame_length(head.format("l: 0").encode()) == 0
    for line, reason in [("Subject: x", "Missing Content-Length"),
                         ("Content-Length: 70000", "too large"),
                         ("Content-Length: -1", "Bad Content-Length"),
                         ("Content-Length: ten", "Bad Content-Length")]:
        with pytest.raises(m.BadMessage, match=reason):
            m.frame_length(head.format(line).encode())


async def test_read_frame_splits_pipelined_messages_and_keepalives() -> None:
    one = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 4\r\n\r\nbody"
    two = b"OPTIONS sip:y SIP/2.0\r\nContent-Length: 0\r\n\r\n"
    reader = asyncio.StreamReader()
    reader.feed_data(one + b"\r\n\r\n" + two + b"\r\n\r\n" + two[:10])
    reader.feed_eof()
    frames = [await read_frame(reader) for _ in range(4)]
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)
    assert frames == [one, b"", two, b""]


# --- the link seams ---------------------------------------------------------------------------


async def test_the_pools_and_links_the_gateway_takes_satisfy_the_seams() -> None:
    assert isinstance(MemPool(ALICE, {}), LinkSource)
    assert isinstance(MemLink(BOB, True), Link)
    assert isinstance(LinkPool([]), LinkSource)
