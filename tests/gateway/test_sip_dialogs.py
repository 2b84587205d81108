"""Dialogs through two gateways, driven by raw SIP "softphones" so every header and every
RTP datagram can be checked: identity assertion, SDP rewrite and media relay, INFO,
MESSAGE, re-INVITE (hold), BYE from either side, CANCEL, forking, link loss."""

from __future__ import annotations

import asyncio
import socket

from sipmessage import Address

from sipdht.account import CHANNEL_SIP
from sipdht.sip import message, sdp
from tests.harness.memlink import MemPool
from tests.harness.sip import (
    ALICE,
    BOB,
    SipClient,
    is_request,
    is_response,
    register,
    request,
    start_gateway,
)
from tests.harness.sip_call import answer_for, in_dialog, offer, recv_udp

CARRIER = "c" * 40


async def test_identity_sdp_media_info_message_hold_and_bye_from_callee(gateways, call) -> None:
    gw_a, gw_b = gateways
    await call.setup(gw_a, gw_b)
    inv = call.invite_b
    # identity: the link's verified account, with the [contacts] alias, and PAI
    assert inv.from_address.uri.user == ALICE and inv.from_address.name == "alice"
    assert Address.parse(inv.headers["P-Asserted-Identity"]).uri.user == ALICE
    # SDP towards the callee: the local relay, no ICE, codecs and crypto kept
    [stream] = sdp.streams(inv.body)
    relay_b = stream.port
    assert stream.address == "127.0.0.1" and relay_b != call.a_port
    for kept in (b"a=crypto:1 AES_CM_128_HMAC_SHA1_80", b"RTP/SAVP 0 101",
                 b"telephone-event"):
        assert kept in inv.body
    assert b"ice-" not in inv.body and b"candidate" not in inv.body
    await call.answer()
    [stream_a] = sdp.streams(call.ok_a.body)
    relay_a = stream_a.port
    # media both ways, RTP to RTP ports and RTCP to RTCP ports
    for sock in (call.rtp_a, call.rtcp_a, call.rtp_b, call.rtcp_b):
        sock.setblocking(False)
    rtp = bytes([0x80, 0x00]) + b"\x00\x01" + b"x" * 160
    rtcp = bytes([0x80, 200]) + b"\x00\x06" + b"r" * 24
    call.rtp_a.sendto(rtp, ("127.0.0.1", relay_a))
    assert await recv_udp(call.rtp_b) == rtp
    call.rtcp_a.sendto(rtcp, ("127.0.0.1", relay_a + 1))
    assert await recv_udp(call.rtcp_b) == rtcp
    call.rtp_b.sendto(rtp[::-1][:10] + rtp, ("127.0.0.1", relay_b))
    got = await recv_udp(call.rtp_a)
    assert got.endswith(rtp)
    # INFO (DTMF) from the caller
    call.a.send(in_dialog("INFO", None, call.a.port, gw_a.port, 2,
                          remote_tag=call.a_remote_tag, local_tag="fcall-1",
                          call_id="call-1", target=str(call.ok_a.contact[0].uri),
                          body="Signal=5\r\nDuration=160\r\n",
                          ctype="application/dtmf-relay"), gw_a.port)
    info = await call.b.expect(is_request("INFO"))
    assert info.body == b"Signal=5\r\nDuration=160\r\n"
    assert info.headers["Content-Type"] == "application/dtmf-relay"
    call.b.send(message.serialize(message.response(info, 200)), gw_b.port)
    assert (await call.a.expect(is_response("INFO"))).code == 200
    # MESSAGE in the dialog from the callee
    b_tag, b_call = inv.to_address.parameters.get("tag") or "btag", inv.call_id
    target_b = str(inv.contact[0].uri)
    call.b.send(in_dialog("MESSAGE", None, call.b.port, gw_b.port, 1, remote_tag=inv.from_address.parameters["tag"],
                          local_tag=b_tag, call_id=b_call, target=target_b,
                          body="hello", ctype="text/plain"), gw_b.port)
    msg = await call.a.expect(is_request("MESSAGE"))
    assert msg.body == b"hello" and msg.call_id == "call-1"
    call.a.send(message.serialize(message.response(msg, 200)), gw_a.port)
    assert (await call.b.expect(is_response("MESSAGE"))).code == 200
    # re-INVITE (hold) from the callee; the caller sees a=sendonly at its relay port
    call.b.send(in_dialog("INVITE", None, call.b.port, gw_b.port, 2, remote_tag=inv.from_address.parameters["tag"],
                          local_tag=b_tag, call_id=b_call, target=target_b,
                          body=offer(call.b_port, "sendonly")), gw_b.port)
    reinv = await call.a.expect(is_request("INVITE"))
    assert b"a=sendonly" in reinv.body and sdp.streams(reinv.body)[0].port == relay_a
    call.a.send(answer_for(reinv, 200, "fcall-1", call.a.port, offer(call.a_port, "recvonly")), gw_a.port)
    ok = await call.b.expect(is_response("INVITE", 200))
    assert b"a=recvonly" in ok.body and sdp.streams(ok.body)[0].port == relay_b
    call.b.send(in_dialog("ACK", None, call.b.port, gw_b.port, 2, remote_tag=inv.from_address.parameters["tag"],
                          local_tag=b_tag, call_id=b_call, target=target_b), gw_b.port)
    ack = await call.a.expect(is_request("ACK"))
    assert ack.cseq.sequence == reinv.cseq.sequence
    # BYE from the callee: answered locally, the caller gets a BYE
    call.b.send(in_dialog("BYE", None, call.b.port, gw_b.port, 3, remote_tag=inv.from_address.parameters["tag"],
                          local_tag=b_tag, call_id=b_call, target=target_b), gw_b.port)
    assert (await call.b.expect(is_response("BYE", 200)))
    bye = await call.a.expect(is_request("BYE"))
    call.a.send(message.serialize(message.response(bye, 200)), gw_a.port)
    await asyncio.sleep(0.2)
    assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
    assert all(v == 0 for v in gw_a.pool.holds.values())
    assert all(v == 0 for v in gw_b.pool.holds.values())
    call.rtp_a.sendto(rtp, ("127.0.0.1", relay_a))      # the relays ended with the call
    try:
        await asyncio.wait_for(recv_udp(call.rtp_b), 0.3)
        raise AssertionError("media still relayed after BYE")
    except TimeoutError:
        pass


async def test_bye_from_caller_and_link_loss_ends_both_sides(gateways, call) -> None:
    gw_a, gw_b = gateways
    await (await call.setup(gw_a, gw_b)).answer()
    await gw_a.pool.links[BOB].close("ICE consent lost")
    bye_a = await call.a.expect(is_request("BYE"))
    bye_b = await call.b.expect(is_request("BYE"))
    assert bye_a.call_id == "call-1" and bye_b.call_id == call.invite_b.call_id
    call.a.send(message.serialize(message.response(bye_a, 200)), gw_a.port)
    call.b.send(message.serialize(message.response(bye_b, 200)), gw_b.port)
    await asyncio.sleep(0.1)
    assert not gw_a.b2bua.calls and not gw_b.b2bua.calls


async def test_cancel_before_answer(gateways, call) -> None:
    gw_a, gw_b = gateways
    await call.setup(gw_a, gw_b)
    inv = call.invite_b
    call.b.send(answer_for(inv, 180, "btag", call.b.port), gw_b.port)
    await call.a.expect(is_response(code=180))
    cancel = request("CANCEL", f"sip:bob@127.0.0.1:{gw_a.port}", call.a.port,
                     call_id="call-1").replace("CSeq: 1 CANCEL", "CSeq: 1 CANCEL")
    call.a.send(cancel, gw_a.port)
    assert (await call.a.expect(is_response("CANCEL"))).code == 200
    assert (await call.a.expect(is_response(at_least=300))).code == 487
    got = await call.b.expect(is_request("CANCEL"))
    assert m_branch(got) == m_branch(inv)
    call.b.send(message.serialize(message.response(got, 200)), gw_b.port)
    call.b.send(answer_for(inv, 487, "btag", call.b.port), gw_b.port)
    ack = await call.b.expect(is_request("ACK"))
    assert m_branch(ack) == m_branch(inv)
    await asyncio.sleep(0.1)
    assert not gw_a.b2bua.calls and not gw_b.b2bua.calls


def m_branch(msg) -> str:
    return message.branch(msg)


async def test_all_registered_phones_ring_first_200_wins_others_cancelled(gateways, call) -> None:
    gw_a, gw_b = gateways
    b1, b2 = await SipClient.open(), await SipClient.open()
    await register(gw_b, "bob", b1.port)
    await register(gw_b, "bob", b2.port)
    try:
        await call.setup(gw_a, gw_b, b_clients=[b1])
        inv2 = await b2.expect(is_request("INVITE"))
        assert inv2.call_id != call.invite_b.call_id
        await call.answer()                       # b1 answers
        cancel = await b2.expect(is_request("CANCEL"))
        b2.send(message.serialize(message.response(cancel, 200)), gw_b.port)
        b2.send(answer_for(inv2, 487, "b2tag", b2.port), gw_b.port)
        await b2.expect(is_request("ACK"))
    finally:
        b2.close()


async def test_peer_cannot_claim_another_identity(gateways) -> None:
    """A peer gateway writes another account in From and P-Asserted-Identity: the callee's
    softphone still sees the link's verified account."""

    gw_a, gw_b = gateways
    phone = await SipClient.open()
    try:
        await register(gw_b, "bob", phone.port)
        link = await gw_a.pool.get(BOB)
        forged = (f"INVITE sip:{BOB}@dht SIP/2.0\r\nVia: SIP/2.0/UDP x.invalid;branch=z9hG4bKforged\r\n"
                  f"Max-Forwards: 70\r\nFrom: \"Carrier\" <sip:{CARRIER}@dht>;tag=evil\r\n"
                  f"To: <sip:{BOB}@dht>\r\nCall-ID: forged\r\nCSeq: 1 INVITE\r\n"
                  f"P-Asserted-Identity: <sip:{CARRIER}@dht>\r\nRemote-Party-ID: <sip:{CARRIER}@dht>\r\n"
                  f"Contact: <sip:{CARRIER}@x.invalid>\r\nContent-Length: 0\r\n\r\n")
        await link.send(CHANNEL_SIP, forged.encode())
        inv = await phone.expect(is_request("INVITE"))
        raw = message.serialize(inv)
        assert inv.from_address.uri.user == ALICE and inv.from_address.name == "alice"
        assert Address.parse(inv.headers["P-Asserted-Identity"]).uri.user == ALICE
        assert CARRIER.encode() not in raw and b"Carrier" not in raw
    finally:
        phone.close()


async def test_message_outside_a_dialog_reaches_every_phone_of_the_peer(gateways) -> None:
    """Pager-mode MESSAGE while the peer is online: over the link, From asserted."""

    gw_a, gw_b = gateways
    sender, phone = await SipClient.open(), await SipClient.open()
    try:
        await register(gw_b, "bob", phone.port)
        sender.send(request("MESSAGE", f"sip:bob@127.0.0.1:{gw_a.port}", sender.port,
                            call_id="im-1", body="hi bob").replace(
            "Content-Type: application/sdp", "Content-Type: text/plain"), gw_a.port)
        got = await phone.expect(is_request("MESSAGE"))
        assert got.body == b"hi bob" and got.headers["Content-Type"] == "text/plain"
        assert got.from_address.uri.user == ALICE and got.from_address.name == "alice"
        phone.send(message.serialize(message.response(got, 200, to_tag="x")), gw_b.port)
        ok = await sender.expect(is_response(at_least=200))
        assert ok.code == 200 and ok.call_id == "im-1"
        await asyncio.sleep(0.1)
        assert not gw_a.b2bua.calls and not gw_b.b2bua.calls
        assert all(v == 0 for v in gw_a.pool.holds.values())
    finally:
        sender.close()
        phone.close()


async def read_sip(reader: asyncio.StreamReader):
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    return message.parse(head + await reader.readexactly(length), stream=True)


async def test_phone_registered_over_tcp_gets_calls_on_its_connection(gateways) -> None:
    gw_a, gw_b = gateways
    caller = await SipClient.open()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw_b.port)
        port = writer.get_extra_info("sockname")[1]
        reg = request("REGISTER", f"sip:bob@127.0.0.1:{gw_b.port}", port, call_id="tcp-reg",
                      extra="Expires: 300\r\n").replace("SIP/2.0/UDP", "SIP/2.0/TCP").replace(
            f"127.0.0.1:{port}>", f"127.0.0.1:{port};transport=tcp>")
        writer.write(reg.encode())
        assert (await read_sip(reader)).code == 200
        caller.send(request("INVITE", f"sip:bob@127.0.0.1:{gw_a.port}", caller.port,
                            call_id="tcp-call", body=offer(4000)), gw_a.port)
        inv = await read_sip(reader)
        assert inv.method == "INVITE" and inv.via[0].transport == "TCP"
        assert "transport=tcp" in inv.headers["Contact"]
        writer.write(message.serialize(message.response(inv, 486, to_tag="busy")))
        final = await caller.expect(is_response(at_least=200))
        assert final.code == 486
        writer.close()
        for _ in range(20):
            if not gw_b.registrar.bindings(gw_b.now()):
                break
            await asyncio.sleep(0.05)
        assert gw_b.registrar.bindings(gw_b.now()) == []       # connection gone: unreachable
    finally:
        caller.close()


async def test_a_peer_cannot_end_or_answer_another_peers_dialog(call) -> None:
    """A third account that learnt a dialog's identifiers sends BYE over its own link: 481,
    and the call between alice and bob goes on."""

    network: dict = {}
    gw_a = await start_gateway(MemPool(ALICE, network), ALICE, {"bob": BOB})
    gw_b = await start_gateway(MemPool(BOB, network), BOB, {"alice": ALICE})
    carrier_pool = MemPool(CARRIER, network)
    try:
        await (await call.setup(gw_a, gw_b)).answer()
        [bob_call] = gw_b.b2bua.calls
        a_leg = bob_call.a.dialog
        link = await carrier_pool.get(BOB)
        bye = (f"BYE sip:{BOB}@dht SIP/2.0\r\nVia: SIP/2.0/UDP x.invalid;branch=z9hG4bKevil\r\n"
               f"Max-Forwards: 70\r\nFrom: <sip:{ALICE}@dht>;tag={a_leg.remote_tag}\r\n"
               f"To: <sip:{BOB}@dht>;tag={a_leg.local_tag}\r\nCall-ID: {a_leg.call_id}\r\n"
               f"CSeq: 99 BYE\r\nContent-Length: 0\r\n\r\n")
        await link.send(CHANNEL_SIP, bye.encode())
        answer = message.parse(await link.recv(CHANNEL_SIP, timeout=2))
        assert answer.code == 481
        await asyncio.sleep(0.2)
        assert gw_b.b2bua.calls == {bob_call} and call.b.queue.empty()
    finally:
        await gw_a.stop()
        await gw_b.stop()


async def test_peer_sdp_pointing_at_a_non_media_channel_is_refused(gateways) -> None:
    gw_a, gw_b = gateways
    phone = await SipClient.open()
    try:
        await register(gw_b, "bob", phone.port)
        link = await gw_a.pool.get(BOB)
        body = offer(1)                                  # channel 1 is the SIP channel
        invite = (f"INVITE sip:{BOB}@dht SIP/2.0\r\nVia: SIP/2.0/UDP x.invalid;branch=z9hG4bKch1\r\n"
                  f"Max-Forwards: 70\r\nFrom: <sip:{ALICE}@dht>;tag=a\r\nTo: <sip:{BOB}@dht>\r\n"
                  f"Call-ID: ch1\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n"
                  f"Content-Length: {len(body)}\r\n\r\n{body}")
        await link.send(CHANNEL_SIP, invite.encode())
        codes = [message.parse(await link.recv(CHANNEL_SIP, timeout=2)).code for _ in range(2)]
        assert codes == [100, 488]
        await asyncio.sleep(0.1)
        assert phone.queue.empty() and not gw_b.b2bua.calls
    finally:
        phone.close()


async def test_early_media_update_and_dtmf_events(gateways, call) -> None:
    """183 with SDP: media flows before the answer; UPDATE in the early/confirmed dialog is
    forwarded; RFC 4733 telephone-event packets (PT 101) are relayed like any RTP."""

    gw_a, gw_b = gateways
    await call.setup(gw_a, gw_b)
    inv = call.invite_b
    call.b.send(answer_for(inv, 183, "btag", call.b.port, offer(call.b_port)), gw_b.port)
    early = await call.a.expect(is_response(code=183))
    [stream] = sdp.streams(early.body)
    relay_a = stream.port
    call.rtp_b.setblocking(False)
    call.rtp_a.setblocking(False)
    tone = bytes([0x80, 0x00, 0, 1]) + b"t" * 160
    relay_b = sdp.streams(inv.body)[0].port
    call.rtp_b.sendto(tone, ("127.0.0.1", relay_b))          # ringback from the callee
    assert await recv_udp(call.rtp_a) == tone
    await call.answer()
    dtmf = bytes([0x80, 101, 0, 2]) + b"\x00" * 8 + bytes([5, 0x0a, 0, 160])
    call.rtp_a.sendto(dtmf, ("127.0.0.1", relay_a))
    assert await recv_udp(call.rtp_b) == dtmf
    call.a.send(in_dialog("UPDATE", None, call.a.port, gw_a.port, 2,
                          remote_tag=call.a_remote_tag, local_tag="fcall-1",
                          call_id="call-1", target=str(call.ok_a.contact[0].uri),
                          body=offer(call.a_port, "sendonly")), gw_a.port)
    update = await call.b.expect(is_request("UPDATE"))
    assert b"a=sendonly" in update.body and sdp.streams(update.body)[0].port == relay_b
    call.b.send(answer_for(update, 200, "btag", call.b.port,
                           offer(call.b_port, "recvonly")), gw_b.port)
    ok = await call.a.expect(is_response("UPDATE", 200))
    assert b"a=recvonly" in ok.body and sdp.streams(ok.body)[0].port == relay_a


async def test_busy_phone_is_not_held_up_by_a_stale_registration(gateways) -> None:
    """Two bindings, one of them a phone that is gone (nothing listens): the live phone's 486
    reaches the caller after the short grace, not after Timer B (32 s)."""

    gw_a, gw_b = gateways
    live = await SipClient.open()
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))                 # a port nobody reads (no ICMP either)
    caller = await SipClient.open()
    try:
        await register(gw_b, "bob", gone.getsockname()[1])
        await register(gw_b, "bob", live.port)
        caller.send(request("INVITE", f"sip:bob@127.0.0.1:{gw_a.port}", caller.port,
                            call_id="busy-1", body=offer(4000)), gw_a.port)
        inv = await live.expect(is_request("INVITE"))
        live.send(answer_for(inv, 100, "", live.port), gw_b.port)
        live.send(answer_for(inv, 486, "lt", live.port), gw_b.port)
        start = asyncio.get_running_loop().time()
        final = await caller.expect(is_response(at_least=200), timeout=10)
        assert final.code == 486
        assert asyncio.get_running_loop().time() - start < 10
    finally:
        gone.close()
        live.close()
        caller.close()


async def test_ipv6_loopback_gateways_and_phones() -> None:
    network: dict = {}
    gw_a = await start_gateway(MemPool(ALICE, network), ALICE, {"bob": BOB}, host="::1")
    gw_b = await start_gateway(MemPool(BOB, network), BOB, {"alice": ALICE}, host="::1")
    caller, phone = await SipClient.open("::1"), await SipClient.open("::1")
    try:
        reg = request("REGISTER", f"sip:bob@[::1]:{gw_b.port}", phone.port,
                      extra="Expires: 300\r\n").replace("127.0.0.1", "[::1]")
        phone.send(reg, gw_b.port)
        assert (await phone.recv()).code == 200
        body = offer(4000).replace("IN IP4 127.0.0.1", "IN IP6 ::1")
        caller.send(request("INVITE", f"sip:bob@[::1]:{gw_a.port}", caller.port,
                            body=body).replace("127.0.0.1", "[::1]"), gw_a.port)
        inv = await phone.expect(is_request("INVITE"))
        assert inv.via[0].host == "[::1]" and inv.contact[0].uri.host == "[::1]"
        assert b"c=IN IP6 ::1" in inv.body
        phone.send(message.serialize(message.response(inv, 486, to_tag="x")), gw_b.port)
        assert (await caller.expect(is_response(at_least=200))).code == 486
    finally:
        caller.close()
        phone.close()
        await gw_a.stop()
        await gw_b.stop()
