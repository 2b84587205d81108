"""Registrar bindings: add, refresh, expire, remove, '*'."""

from sipdht.sip import message as m
from sipdht.sip.registrar import Registrar


def register(contact: str, expires: str | None = None, cseq: int = 1, call_id: str = "r1"):
    data = (f"REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{cseq}\r\n"
            f"From: <sip:alice@dht>;tag=a\r\nTo: <sip:alice@dht>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} REGISTER\r\nContact: {contact}\r\n"
            + (f"Expires: {expires}\r\n" if expires is not None else "") + "\r\n")
    return m.parse(data.encode())


def test_binding_lifecycle():
    reg = Registrar()
    code, _, bindings = reg.register(register("<sip:alice@127.0.0.1:5070>", "120"), "d", 0.0)
    assert code == 200 and len(bindings) == 1 and bindings[0].expires_in(0.0) == 120
    assert reg.bindings(119.0) and not reg.bindings(121.0)
    reg.register(register("<sip:alice@127.0.0.1:5070>;expires=300", cseq=2), "d", 200.0)
    assert reg.bindings(400.0)
    reg.register(register("<sip:alice@127.0.0.1:5070>", "0", cseq=3), "d", 401.0)
    assert not reg.bindings(401.0)


def test_star_and_too_brief():
    reg = Registrar()
    reg.register(register("<sip:alice@127.0.0.1:5070>"), "d", 0.0)
    reg.register(register("<sip:alice@127.0.0.1:5072>", cseq=2), "d", 0.0)
    assert len(reg.bindings(1.0)) == 2
    assert reg.register(register("*", "5", cseq=3), "d", 1.0)[0] == 400
    assert reg.register(register("<sip:alice@127.0.0.1:5070>", "5", cseq=3), "d", 1.0)[0] == 423
    assert reg.register(register("*", "0", cseq=4), "d", 1.0)[0] == 200
    assert not reg.bindings(1.0)
