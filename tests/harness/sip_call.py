"""An established call between two raw SIP phones through two gateways, and the SDP and
in-dialog requests those phones write, so a test can check every header and RTP datagram."""

from __future__ import annotations

import asyncio
import socket

from sipmessage import Address

from sipdht.sip import message
from tests.harness.sip import SipClient, is_request, is_response, register, request


def rtp_pair() -> tuple[socket.socket, socket.socket]:
    for port in range(47000, 48000, 2):
        a, b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            a.bind(("127.0.0.1", port))
            b.bind(("127.0.0.1", port + 1))
        except OSError:
            a.close()
            b.close()
            continue
        a.settimeout(2)
        b.settimeout(2)
        return a, b
    raise RuntimeError("no port pair")


def offer(port: int, direction: str = "sendrecv") -> str:
    return ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
            f"a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na={direction}\r\n")


def answer_for(req, code: int, tag: str, port: int, body: str = "", ctype: str = "application/sdp"):
    resp = message.response(req, code, to_tag=tag, body=body.encode(),
                            content_type=ctype if body else "")
    resp.contact = [Address.parse(f"<sip:bob@127.0.0.1:{port}>")]
    return message.serialize(resp)


def in_dialog(method: str, resp_or_req, port: int, gw_port: int, cseq: int, *, remote_tag: str,
              local_tag: str, call_id: str, target: str, body: str = "", extra: str = "",
              ctype: str = "application/sdp") -> str:
    text = (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{method}{cseq}{port}\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:me@dht>;tag={local_tag}\r\n"
            f"To: <sip:you@dht>;tag={remote_tag}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:me@127.0.0.1:{port}>\r\n{extra}")
    if body:
        text += f"Content-Type: {ctype}\r\n"
    return text + f"Content-Length: {len(body)}\r\n\r\n" + body


class PhoneCall:
    """A call between raw phone a (on gw_a) and phone b (on gw_b): `setup` rings b, `answer`
    makes it established (180, 200, ACK checked on the way)."""

    a = b = None
    rtp_a = rtcp_a = rtp_b = rtcp_b = None

    async def setup(self, gw_a, gw_b, *, b_clients=None):
        self.gw_a, self.gw_b = gw_a, gw_b
        self.a = await SipClient.open()
        self.b = b_clients[0] if b_clients else await SipClient.open()
        self.rtp_a, self.rtcp_a = rtp_pair()
        self.rtp_b, self.rtcp_b = rtp_pair()
        self.a_port = self.rtp_a.getsockname()[1]
        self.b_port = self.rtp_b.getsockname()[1]
        if not b_clients:
            await register(gw_b, "bob", self.b.port)
        self.a.send(request("INVITE", f"sip:bob@127.0.0.1:{gw_a.port}", self.a.port,
                            call_id="call-1", body=offer(self.a_port)), gw_a.port)
        self.invite_b = await self.b.expect(is_request("INVITE"))
        return self

    async def answer(self):
        b, inv = self.b, self.invite_b
        b.send(answer_for(inv, 180, "btag", b.port), self.gw_b.port)
        ringing = await self.a.expect(is_response(code=180))
        assert ringing.to_address.parameters["tag"]
        b.send(answer_for(inv, 200, "btag", b.port, offer(self.b_port)), self.gw_b.port)
        self.ok_a = await self.a.expect(is_response(code=200))
        self.a_remote_tag = self.ok_a.to_address.parameters["tag"]
        self.a.send(in_dialog("ACK", None, self.a.port, self.gw_a.port, 1,
                              remote_tag=self.a_remote_tag, local_tag="fcall-1",
                              call_id="call-1", target=str(self.ok_a.contact[0].uri))
                    .replace("ACK sip", "ACK sip").replace("CSeq: 1 ACK", "CSeq: 1 ACK"),
                    self.gw_a.port)
        ack = await b.expect(is_request("ACK"))
        assert ack.cseq.sequence == inv.cseq.sequence
        return self

    def close(self):
        for s in (self.rtp_a, self.rtcp_a, self.rtp_b, self.rtcp_b, self.a, self.b):
            if s is not None:
                s.close()


async def recv_udp(sock: socket.socket) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048), 2)
