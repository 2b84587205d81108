"""The gateway as a softphone sees it: REGISTER, OPTIONS, errors, malformed input.

sipsak is the real peer for REGISTER and OPTIONS; malformed datagrams come from a raw socket.
"""

import asyncio

import pytest

from tests.harness.memlink import MemPool
from tests.harness.requirements import require_binary
from tests.harness.sip import ALICE, SipClient, is_response, request, run, start_gateway


async def _gateway(**options):
    return await start_gateway(MemPool(ALICE, {}), ALICE, **options)


@pytest.mark.interop
async def test_sipsak_options_and_register() -> None:
    require_binary("sipsak")

    gw = await _gateway()
    try:
        rc, out = await run(["sipsak", "-vv", "-s", f"sip:gw@127.0.0.1:{gw.port}"], 10)
        assert rc == 0 and "200 OK" in out, out
        rc, out = await run(["sipsak", "-U", "-vv", "-C", "sip:alice@127.0.0.1:5999",
                             "-x", "300", "-s", f"sip:alice@127.0.0.1:{gw.port}"], 10)
        assert rc == 0, out
        bindings = gw.registrar.bindings(gw.now())
        assert [str(b.contact.uri) for b in bindings] == ["sip:alice@127.0.0.1:5999"]
        assert bindings[0].dest.addr == ("127.0.0.1", 5999)
        assert 290 <= bindings[0].expires_in(gw.now()) <= 300
    finally:
        await gw.stop()


async def test_register_refresh_and_unregister() -> None:
    gw = await _gateway()
    phone = await SipClient.open()
    try:
        uri = f"sip:alice@127.0.0.1:{gw.port}"
        phone.send(request("REGISTER", uri, phone.port, extra="Expires: 120\r\n"), gw.port)
        ok = await phone.recv()
        assert ok.code == 200 and ok.contact[0].parameters["expires"] == "120"
        assert ok.to_address.parameters.get("tag")
        phone.send(request("REGISTER", uri, phone.port, cseq=2, branch="z9hG4bKt2",
                           extra="Expires: 0\r\n"), gw.port)
        assert (await phone.recv()).code == 200
        assert gw.registrar.bindings(gw.now()) == []
    finally:
        phone.close()
        await gw.stop()


@pytest.mark.parametrize("name", ["truncated", "truncated_early", "bad_content_length", "cl_too_big",
                                  "thousand_headers", "non_utf8", "binary", "no_call_id",
                                  "bad_via", "huge_header"])
async def test_malformed_gets_400_or_is_dropped_and_gateway_keeps_working(name) -> None:
    gw = await _gateway()
    phone = await SipClient.open()
    try:
        good = request("OPTIONS", f"sip:gw@127.0.0.1:{gw.port}", phone.port)
        cases = {
            "truncated": good[:good.index("Contact:") + 12],
            "truncated_early": good[:len(good) // 3],
            "bad_content_length": good.replace("Content-Length: 0", "Content-Length: x"),
            "cl_too_big": good.replace("Content-Length: 0", "Content-Length: 500"),
            "thousand_headers": good.replace("Max-Forwards: 70\r\n",
                                             "Max-Forwards: 70\r\n" + "X-A: b\r\n" * 1000),
            "non_utf8": good.encode().replace(b"To: <sip:gw", b"To: <sip:\xff\xfegw"),
            "binary": bytes(range(256)) * 8,
            "no_call_id": good.replace("Call-ID: c1\r\n", ""),
            "bad_via": good.replace("SIP/2.0/UDP 127.0.0.1", "SIP/2.0/UDP @@@"),
            "huge_header": good.replace("Max-Forwards: 70", "X-Big: " + "x" * 20000),
        }
        data = cases[name]
        phone.send(data if isinstance(data, bytes) else data.encode(), gw.port)
        try:
            answer = await phone.recv_raw(0.5)
            assert answer.startswith(b"SIP/2.0 400 ") and len(answer.split(b"\r\n")[0]) > 16
            assert b"\r\nCall-ID: c1\r\n" in answer and b"branch=z9hG4bKt1" in answer
        except TimeoutError:
            assert name in ("binary", "no_call_id", "truncated_early"), "no 400 for a request we could answer"
        assert gw.stats["malformed"] == 1
        phone.send(request("OPTIONS", f"sip:gw@127.0.0.1:{gw.port}", phone.port,
                           call_id="c2", branch="z9hG4bKnext"), gw.port)
        ok = await phone.expect(lambda m: getattr(m, "code", 0) and m.call_id == "c2")
        assert ok.code == 200 and "INVITE" in ok.headers["Allow"]
    finally:
        phone.close()
        await gw.stop()


@pytest.mark.parametrize("method, extra, code", [
    ("SUBSCRIBE", "", 405), ("FOO", "", 501), ("BYE", "", 481), ("INFO", "", 481),
    ("INVITE", "Require: 100rel\r\n", 420), ("INVITE", "", 404), ("INVITE", "own", 482),
])
async def test_unsupported_and_unknown(method, extra, code) -> None:
    gw = await _gateway()
    phone = await SipClient.open()
    try:
        headers = "" if extra == "own" else extra
        user = {"own": ALICE, "": "nobody"}.get(extra, "b" * 40) if method == "INVITE" \
            else "b" * 40
        uri = f"sip:{user}@127.0.0.1:{gw.port}"
        phone.send(request(method, uri, phone.port, extra=headers), gw.port)
        resp = await phone.expect(is_response(at_least=200))
        assert resp.code == code
        if code == 405:
            assert "INVITE" in resp.headers["Allow"]
        if code == 404:
            assert "nobody" in resp.phrase
    finally:
        phone.close()
        await gw.stop()


async def test_max_forwards_zero_is_483() -> None:
    gw = await _gateway()
    phone = await SipClient.open()
    try:
        data = request("INVITE", f"sip:{'b' * 40}@127.0.0.1:{gw.port}", phone.port)
        phone.send(data.replace("Max-Forwards: 70", "Max-Forwards: 0"), gw.port)
        assert (await phone.recv()).code == 483
    finally:
        phone.close()
        await gw.stop()


async def test_tcp_register_and_options() -> None:
    gw = await _gateway()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        port = writer.get_extra_info("sockname")[1]
        data = request("OPTIONS", f"sip:gw@127.0.0.1:{gw.port}", port).replace(
            "SIP/2.0/UDP", "SIP/2.0/TCP")
        writer.write(b"\r\n\r\n" + data.encode() * 2)          # keepalive, two pipelined
        for _ in range(2):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
            assert head.startswith(b"SIP/2.0 200 OK") or b"200 OK" in head
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""     # no Content-Length: closed
        writer.close()
    finally:
        await gw.stop()


async def test_port_in_use_is_a_clear_error() -> None:
    gw = await _gateway()
    try:
        from sipdht.config import SipConfig
        from sipdht.sip.gateway import Gateway, GatewayError
        other = Gateway(SipConfig(listen=("127.0.0.1", gw.port)), {}, gw.pool, ALICE, "dht")
        with pytest.raises(GatewayError, match=r"\[sip\] listen"):
            await other.start()
    finally:
        await gw.stop()
