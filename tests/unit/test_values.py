"""OpenDHT values: the signed bytes, the wire layout, malformed input and queries.

The expected byte strings are written out by hand (not with msgpack) so they check the
encoder against the OpenDHT layout of docs/opendht-wire.md section 5.1/5.2, not against
itself.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import msgpack
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sipdht.dht.values import (
    FIELD_ID,
    FIELD_OWNER,
    FIELD_SEQ,
    FIELD_TYPE,
    FIELD_UTYPE,
    FieldIndex,
    MalformedValue,
    Query,
    Value,
    pack,
    packb,
    to_encrypt,
    to_sign,
    unpack,
    unpack_fields,
    unpack_query,
    unpackb,
)


def s(text: str) -> bytes:
    """msgpack str as msgpack-c writes it (fixstr / str8)."""
    raw = text.encode()
    if len(raw) < 32:
        return bytes([0xA0 | len(raw)]) + raw
    assert len(raw) < 256
    return b"\xd9" + bytes([len(raw)]) + raw


def b(data: bytes) -> bytes:
    """msgpack bin (bin8 / bin16)."""
    if len(data) < 256:
        return b"\xc4" + bytes([len(data)]) + data
    return b"\xc5" + struct.pack(">H", len(data)) + data


def u(n: int) -> bytes:
    """Shortest msgpack unsigned integer."""
    if n < 128:
        return bytes([n])
    if n < 256:
        return b"\xcc" + bytes([n])
    if n < 65536:
        return b"\xcd" + struct.pack(">H", n)
    if n < 2**32:
        return b"\xce" + struct.pack(">I", n)
    return b"\xcf" + struct.pack(">Q", n)


OWNER = bytes(range(256)) * 2 + bytes(38)   # 550 bytes, like a 4096-bit RSA SPKI
TO = bytes(range(100, 120))
UTYPE40 = "application/x-sipdht-contact-record+msgp"
assert len(UTYPE40) == 40


# --- to_sign: the bytes a signature covers ---------------------------------------------------


def test_to_sign_unsigned_minimal() -> None:
    v = Value(id=1, type=0, data=b"abc")
    assert to_sign(v) == b"\x82" + s("type") + u(0) + s("data") + b(b"abc")


def test_to_sign_unsigned_with_utype_is_map3_and_str8() -> None:
    v = Value(id=1, type=300, data=b"x" * 300, utype=UTYPE40)
    expected = (b"\x83" + s("type") + b"\xcd\x01\x2c" + s("data") + b"\xc5\x01\x2c" + b"x" * 300
                + s("utype") + b"\xd9\x28" + UTYPE40.encode())
    assert to_sign(v) == expected


def test_to_sign_unsigned_short_utype_is_fixstr() -> None:
    v = Value(id=1, type=0, data=b"", utype="text/plain")
    assert to_sign(v) == (b"\x83" + s("type") + u(0) + s("data") + b"\xc4\x00"
                          + s("utype") + b"\xaatext/plain")


def test_to_sign_signed_key_order_and_map_length() -> None:
    v = Value(id=9, type=9, data=b"hello", seq=300, owner=OWNER, signature=b"S" * 512)
    expected = (b"\x84" + s("seq") + b"\xcd\x01\x2c" + s("owner") + b"\xc5\x02\x26" + OWNER
                + s("type") + u(9) + s("data") + b(b"hello"))
    assert to_sign(v) == expected


def test_to_sign_signed_with_recipient_and_utype() -> None:
    v = Value(id=9, type=3, data=b"d", seq=0, owner=OWNER, recipient=TO, utype=UTYPE40,
              signature=b"S")
    expected = (b"\x86" + s("seq") + u(0) + s("owner") + b(OWNER) + s("to") + b"\xc4\x14" + TO
                + s("type") + u(3) + s("data") + b(b"d") + s("utype") + s(UTYPE40))
    assert to_sign(v) == expected
    # the signature, id and priority are not covered
    assert to_sign(Value(id=1, type=3, data=b"d", seq=0, owner=OWNER, recipient=TO,
                         utype=UTYPE40, signature=b"other", priority=7)) == expected


def test_to_sign_signed_max_seq_is_uint16() -> None:
    v = Value(id=1, data=b"", seq=65535, owner=b"K")
    assert to_sign(v).startswith(b"\x84" + s("seq") + b"\xcd\xff\xff" + s("owner") + b"\xc4\x01K")


def test_to_encrypt_layout() -> None:
    v = Value(id=1, type=0, data=b"z", seq=2, owner=b"K", recipient=TO, signature=b"SIG")
    assert to_encrypt(v) == (b"\x82" + s("body") + to_sign(v) + s("sig") + b(b"SIG"))


def test_rsa_signature_over_to_sign_survives_the_wire() -> None:
    """Sign as OpenDHT does (PKCS#1 v1.5, SHA-512); the receiver re-serializes and verifies."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = Value(id=77, type=9, data=b"sip:alice@example.org", seq=4, owner=der,
                     utype=UTYPE40)
    sig = key.sign(to_sign(unsigned), padding.PKCS1v15(), hashes.SHA512())
    wire = packb(replace(unsigned, signature=sig))
    got = unpackb(wire)
    assert got.signature == sig and got.owner == der
    key.public_key().verify(got.signature, to_sign(got), padding.PKCS1v15(), hashes.SHA512())


# --- pack / unpack ---------------------------------------------------------------------------


def wire_roundtrip(v: Value) -> Value:
    return unpackb(msgpack.packb(pack(v), use_bin_type=True))


def test_pack_plain_layout() -> None:
    v = Value(id=2**64 - 1, type=0, data=b"abc", utype="text/plain")
    assert pack(v) == {"id": 2**64 - 1,
                       "dat": {"body": {"type": 0, "data": b"abc", "utype": "text/plain"}}}
    raw = packb(v)
    assert raw.startswith(b"\x82" + s("id") + b"\xcf" + b"\xff" * 8 + s("dat") + b"\x81"
                          + s("body") + to_sign(v))
    assert wire_roundtrip(v) == v


def test_pack_signed_roundtrip() -> None:
    v = Value(id=5, type=9, data=b"\x00\x01", seq=3, owner=OWNER, recipient=TO,
              signature=b"S" * 512, utype=UTYPE40)
    packed = pack(v)
    assert packed["dat"]["sig"] == b"S" * 512
    assert list(packed["dat"]["body"]) == ["seq", "owner", "to", "type", "data", "utype"]
    got = wire_roundtrip(v)
    assert got == v
    assert got.is_signed and not got.is_encrypted
    assert to_sign(got) == to_sign(v)


def test_pack_encrypted_has_only_id_and_cypher() -> None:
    v = Value(id=11, cypher=b"\x99" * 700)
    assert pack(v) == {"id": 11, "dat": b"\x99" * 700}
    raw = packb(v)
    assert raw == b"\x82" + s("id") + u(11) + s("dat") + b(b"\x99" * 700)
    got = wire_roundtrip(v)
    assert got.is_encrypted and got.cypher == b"\x99" * 700 and got.id == 11
    assert not got.is_signed and got.data == b""
    assert got.size() == 700


def test_priority_is_packed_as_p_and_omitted_when_zero() -> None:
    assert "p" not in pack(Value(id=1, data=b"x"))
    v = Value(id=1, data=b"x", priority=3)
    assert pack(v)["p"] == 3
    assert wire_roundtrip(v).priority == 3
    enc = Value(id=1, cypher=b"c", priority=2)
    assert pack(enc) == {"id": 1, "dat": b"c", "p": 2}
    assert wire_roundtrip(enc).priority == 2


def test_push_type_forwarded() -> None:
    v = Value(id=1, data=b"x", push_type="android")
    assert pack(v)["pt"] == "android"
    assert wire_roundtrip(v).push_type == "android"


def test_size_counts_cypher_data_sig_utype() -> None:
    assert Value(id=1, data=b"abc", utype="xy", owner=b"K", signature=b"1234").size() == 9
    assert Value(id=1, cypher=b"c" * 10).size() == 10


@pytest.mark.parametrize("data, expected", [
    (b"raw", b"raw"),
    ("text", b"text"),
    ([104, 105, 0, 255], b"hi\x00\xff"),
    ([], b""),
])
def test_data_accepted_as_bin_str_or_int_array(data, expected) -> None:
    obj = {"id": 3, "dat": {"body": {"type": 0, "data": data}}}
    v = unpackb(msgpack.packb(obj, use_bin_type=True))
    assert v.data == expected
    # the signed bytes are the bin re-encoding, whatever form came in
    assert to_sign(v) == b"\x82" + s("type") + u(0) + s("data") + b(expected)


def test_missing_optional_fields_default() -> None:
    v = unpack({"id": 4, "dat": {"body": {}}})
    assert (v.type, v.data, v.utype, v.owner, v.priority) == (0, b"", "", None, 0)


def body(**kw) -> dict:
    out = {"type": 0, "data": b"x"}
    out.update(kw)
    return out


@pytest.mark.parametrize("obj", [
    pytest.param({"id": "1", "dat": {"body": body()}}, id="id-str"),
    pytest.param({"id": b"\x00" * 8, "dat": {"body": body()}}, id="id-bin"),
    pytest.param({"id": -1, "dat": {"body": body()}}, id="id-negative"),
    pytest.param({"id": 1.5, "dat": {"body": body()}}, id="id-float"),
    pytest.param({"id": True, "dat": {"body": body()}}, id="id-bool"),
    pytest.param({"dat": {"body": body()}}, id="id-missing"),
    pytest.param({"id": 1}, id="dat-missing"),
    pytest.param({"id": 1, "dat": "cypher as str"}, id="dat-str"),
    pytest.param({"id": 1, "dat": {"sig": b"x"}}, id="body-missing"),
    pytest.param({"id": 1, "dat": {"body": [1, 2]}}, id="body-array"),
    pytest.param({"id": 1, "dat": {"body": body(owner="PEM as str", seq=1)}}, id="owner-str"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=1, to=b"x" * 19)}, "sig": b""},
                 id="to-19"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=1, to=b"x" * 21)}}, id="to-21"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=1, to="x" * 20)}}, id="to-str"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=65536)}}, id="seq-65536"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=-1)}}, id="seq-negative"),
    pytest.param({"id": 1, "dat": {"body": body(owner=b"K", seq=1), "sig": "str"}}, id="sig-str"),
    pytest.param({"id": 1, "dat": {"body": body(type=65536)}}, id="type-too-big"),
    pytest.param({"id": 1, "dat": {"body": body(type="0")}}, id="type-str"),
    pytest.param({"id": 1, "dat": {"body": body(data=[1, 256])}}, id="data-array-256"),
    pytest.param({"id": 1, "dat": {"body": body(data=[1, "a"])}}, id="data-array-str"),
    pytest.param({"id": 1, "dat": {"body": body(data=12)}}, id="data-int"),
    pytest.param({"id": 1, "dat": {"body": body(utype=5)}}, id="utype-int"),
    pytest.param({"id": 1, "dat": {"body": body()}, "p": -1}, id="priority-negative"),
    pytest.param({"id": 1, "dat": {"body": body()}, "pt": 1}, id="pt-int"),
    pytest.param([1, 2], id="not-a-map"),
])
def test_malformed_values_rejected(obj) -> None:
    with pytest.raises(MalformedValue):
        unpack(obj)
    with pytest.raises(MalformedValue):
        unpackb(msgpack.packb(obj, use_bin_type=True))


def test_id_above_uint64_rejected() -> None:
    # msgpack cannot even pack it; the decoder must still refuse a Python int that large
    with pytest.raises(MalformedValue):
        unpack({"id": 2**64, "dat": {"body": body()}})


def test_seq_limit_inclusive() -> None:
    v = unpack({"id": 1, "dat": {"body": body(owner=b"K", seq=65535), "sig": b"s"}})
    assert v.seq == 65535


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\x82\xa2id"])
def test_unpackb_garbage(data: bytes) -> None:
    with pytest.raises(MalformedValue):
        unpackb(data)


# --- queries -----------------------------------------------------------------------------


def test_query_where_matching() -> None:
    owner_id = hashlib.sha1(OWNER).digest()
    signed = Value(id=7, type=9, data=b"", owner=OWNER, seq=1, utype="text/plain")
    plain = Value(id=8, type=0, data=b"", utype="x")
    assert Query().matches(signed) and Query().matches(plain)
    assert Query(where=((FIELD_ID, 7),)).matches(signed)
    assert not Query(where=((FIELD_ID, 7),)).matches(plain)
    assert Query(where=((FIELD_TYPE, 0),)).matches(plain)
    assert not Query(where=((FIELD_TYPE, 0),)).matches(signed)
    assert Query(where=((FIELD_UTYPE, b"text/plain"),)).matches(signed)
    assert not Query(where=((FIELD_UTYPE, b"text/plain"),)).matches(plain)
    assert Query(where=((FIELD_OWNER, owner_id),)).matches(signed)
    assert not Query(where=((FIELD_OWNER, owner_id),)).matches(plain)
    assert not Query(where=((FIELD_OWNER, b"\x00" * 20),)).matches(signed)
    both = Query(where=((FIELD_ID, 7), (FIELD_TYPE, 0)))
    assert not both.matches(signed) and not both.matches(plain)


def test_query_select_field_values() -> None:
    v = Value(id=7, type=9, seq=4, owner=b"K", utype="u")
    q = Query(select=(FIELD_ID, FIELD_SEQ, FIELD_TYPE, FIELD_UTYPE))
    assert q.field_values(v) == [7, 4, 9, "u"]
    fi = FieldIndex((FIELD_ID, FIELD_SEQ), [[7, 4], [8, 0]])
    assert fi.pack() == {"f": [1, 4], "v": [7, 4, 8, 0]}
    back = unpack_fields(fi.pack())
    assert back.fields == (1, 4) and back.rows == [[7, 4], [8, 0]]


def test_query_pack_unpack_roundtrip() -> None:
    q = Query(select=(FIELD_ID,), where=((FIELD_TYPE, 5), (FIELD_UTYPE, b"text/plain"),
                                         (FIELD_OWNER, b"\x01" * 20)))
    packed = q.pack()
    assert packed == {"s": [1], "w": [{"f": 2, "v": 5}, {"f": 5, "v": b"text/plain"},
                                      {"f": 3, "v": b"\x01" * 20}]}
    raw = msgpack.unpackb(msgpack.packb(packed, use_bin_type=True), raw=False)
    assert unpack_query(raw) == q
    assert unpack_query({"s": [], "w": []}).empty


@pytest.mark.parametrize("obj", [
    pytest.param({"s": [1]}, id="no-w"),
    pytest.param({"w": []}, id="no-s"),
    pytest.param({}, id="empty"),
    pytest.param([[1], []], id="array"),
    pytest.param({"s": 1, "w": []}, id="s-not-array"),
    pytest.param({"s": [], "w": {}}, id="w-not-array"),
    pytest.param({"s": [], "w": [{"f": FIELD_SEQ, "v": 1}]}, id="where-seq"),
    pytest.param({"s": [9], "w": []}, id="select-unknown-field"),
    pytest.param({"s": ["1"], "w": []}, id="select-str"),
    pytest.param({"s": [], "w": [{"f": 9, "v": 1}]}, id="where-unknown-field"),
    pytest.param({"s": [], "w": [{"f": FIELD_UTYPE, "v": "text/plain"}]}, id="where-utype-str"),
    pytest.param({"s": [], "w": [{"f": FIELD_ID, "v": b"1"}]}, id="where-id-bin"),
    pytest.param({"s": [], "w": [{"f": FIELD_TYPE}]}, id="where-no-value"),
    pytest.param({"s": [], "w": [5]}, id="where-not-map"),
])
def test_unpack_query_rejects(obj) -> None:
    with pytest.raises(MalformedValue):
        unpack_query(obj)


@pytest.mark.parametrize("obj", [
    pytest.param({"f": [1]}, id="no-v"),
    pytest.param({"f": [], "v": []}, id="no-fields"),
    pytest.param({"f": [1, 4], "v": [1, 2, 3]}, id="ragged"),
])
def test_unpack_fields_rejects(obj) -> None:
    with pytest.raises(MalformedValue):
        unpack_fields(obj)
