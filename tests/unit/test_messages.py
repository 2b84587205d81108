"""Decoding hand-built OpenDHT messages, strict rejection, and what the encoders emit."""

from __future__ import annotations

import msgpack
import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import (
    MalformedMessage,
    decode,
    encode_error,
    encode_fragment,
    encode_legacy_update,
    encode_query,
    encode_reply,
    pack_nodes,
    unpack_nodes,
)
from sipdht.dht.values import FIELD_ID, FIELD_TYPE, Query, Value, pack

ID = InfoHash(bytes(range(1, 21)))
H = InfoHash.get("sip:alice@example.org")
TOKEN = bytes(range(32))


def raw(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def q(name: str, args: dict, tid=7, **top) -> bytes:
    return raw({"a": {"id": bytes(ID), **args}, "q": name, "t": tid, "y": "q", "v": "RNG1", **top})


def wire(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# --- queries ---------------------------------------------------------------------------------


def test_decode_ping() -> None:
    m = decode(q("ping", {}, tid=0xDEADBEEF))
    assert (m.kind, m.query, m.tid, m.id, m.network, m.client) == ("q", "ping", 0xDEADBEEF, ID, 0, False)
    assert isinstance(m.id, InfoHash)


def test_decode_find() -> None:
    m = decode(q("find", {"target": bytes(H), "w": [2, 10]}))
    assert (m.query, m.target, m.want, m.h) == ("find", H, (2, 10), None)


def test_decode_get_with_query() -> None:
    m = decode(q("get", {"h": bytes(H), "w": [10],
                         "q": {"s": [FIELD_ID], "w": [{"f": FIELD_TYPE, "v": 5}]}}))
    assert (m.query, m.h, m.want) == ("get", H, (10,))
    assert m.q == Query(select=(FIELD_ID,), where=((FIELD_TYPE, 5),))


def test_decode_get_with_incomplete_query_rejected() -> None:
    with pytest.raises(MalformedMessage):
        decode(q("get", {"h": bytes(H), "q": {"s": [FIELD_ID]}}))


def test_decode_put() -> None:
    v1 = Value(id=11, type=0, data=b"hello", utype="text/plain")
    v2 = Value(id=12, type=5, data=b"ice", seq=2, owner=b"K" * 30, signature=b"S" * 64)
    m = decode(q("put", {"h": bytes(H), "token": TOKEN, "c": 1_700_000_000,
                         "values": [pack(v1), pack(v2)]}))
    assert (m.query, m.h, m.token, m.created) == ("put", H, TOKEN, 1_700_000_000)
    assert m.values == [v1, v2]
    assert m.value_sizes is None


def test_decode_put_with_fragment_header() -> None:
    m = decode(q("put", {"h": bytes(H), "token": TOKEN, "values": [2500, 700]}))
    assert m.values == [] and m.value_sizes == [2500, 700] and m.has_values


def test_decode_put_with_bad_value_rejected() -> None:
    with pytest.raises(MalformedMessage):
        decode(q("put", {"h": bytes(H), "token": TOKEN, "values": [{"id": "x", "dat": b""}]}))
    with pytest.raises(MalformedMessage):   # mixed sizes and values
        decode(q("put", {"h": bytes(H), "token": TOKEN,
                         "values": [5, pack(Value(id=1, data=b"x"))]}))


def test_decode_listen() -> None:
    m = decode(q("listen", {"h": bytes(H), "token": TOKEN, "sid": 0xFFFFFFFF, "ve": 1}))
    assert (m.query, m.h, m.token, m.sid, m.version) == ("listen", H, TOKEN, 0xFFFFFFFF, 1)
    legacy = decode(q("listen", {"h": bytes(H), "token": TOKEN}))
    assert legacy.version == 0 and legacy.sid is None


def test_decode_refresh() -> None:
    m = decode(q("refresh", {"h": bytes(H), "token": TOKEN, "vid": 2**64 - 1}))
    assert (m.query, m.vid) == ("refresh", 2**64 - 1)


def test_decode_update_variants() -> None:
    v = Value(id=3, data=b"x")
    m = decode(q("update", {"ve": 1, "h": bytes(H), "sid": 9, "token": TOKEN,
                            "values": [pack(v)]}))
    assert (m.query, m.sid, m.h, m.version, m.values) == ("update", 9, H, 1, [v])
    m = decode(q("update", {"sid": 9, "re": [1, 2**64 - 1]}))
    assert m.refreshed == [1, 2**64 - 1] and m.expired is None
    m = decode(q("update", {"sid": 9, "exp": [5]}))
    assert m.expired == [5] and m.refreshed is None


def test_decode_client_flag_and_network() -> None:
    m = decode(q("ping", {}, s=True, n=16))
    assert m.client and m.network == 16
    assert not decode(q("ping", {}, s=1)).client     # only a true bool counts


# --- replies, errors, fragments, legacy updates ---------------------------------------------


def test_decode_reply() -> None:
    n4 = pack_nodes([(bytes(H), ("203.0.113.1", 4222))], 4)
    m = decode(raw({"r": {"id": bytes(ID), "sa": b"\x7f\x00\x00\x01", "token": TOKEN, "n4": n4,
                          "values": [pack(Value(id=1, data=b"d"))]},
                    "t": 5, "y": "r", "v": "o2"}))
    assert (m.kind, m.tid, m.id, m.sa, m.token) == ("r", 5, ID, b"\x7f\x00\x00\x01", TOKEN)
    assert m.n4 == [(H, ("203.0.113.1", 4222))] and m.n6 == []
    assert m.values == [Value(id=1, data=b"d")]


def test_decode_reply_with_fields() -> None:
    m = decode(raw({"r": {"id": bytes(ID), "fileds": {"f": [1, 4], "v": [7, 0, 8, 2]}},
                    "t": 5, "y": "r"}))
    assert m.fields.fields == (1, 4) and m.fields.rows == [[7, 0], [8, 2]]


def test_decode_error() -> None:
    m = decode(raw({"e": [401, "Put with wrong token"], "r": {"id": bytes(ID)}, "t": 3, "y": "e"}))
    assert (m.kind, m.error, m.id, m.tid) == ("e", (401, "Put with wrong token"), ID, 3)
    # error classification wins over r (OpenDHT checks e first)
    m = decode(raw({"e": [203], "t": 3, "y": "e"}))
    assert m.kind == "e" and m.error == (203, "")


def test_decode_fragment_with_integer_key() -> None:
    m = decode(raw({"p": {0: {"o": 0, "d": b"abc"}, 2: {"o": 1280, "d": b"z"}}, "t": 9, "y": "p"}))
    assert (m.kind, m.tid, m.id) == ("p", 9, None)
    assert m.fragments == {0: (0, b"abc"), 2: (1280, b"z")}


@pytest.mark.parametrize("p", [
    pytest.param({"0": {"o": 0, "d": b"x"}}, id="str-index"),
    pytest.param({0: {"o": 0, "d": "x"}}, id="str-chunk"),
    pytest.param({0: {"o": -1, "d": b"x"}}, id="negative-offset"),
    pytest.param({0: {"d": b"x"}}, id="no-offset"),
    pytest.param({0: [0, b"x"]}, id="array-part"),
    pytest.param([b"x"], id="array"),
])
def test_decode_bad_fragment_rejected(p) -> None:
    with pytest.raises(MalformedMessage):
        decode(raw({"p": p, "t": 9, "y": "p"}))


def test_decode_legacy_update() -> None:
    m = decode(raw({"u": {"id": bytes(ID), "token": TOKEN, "re": [4, 5]}, "t": 77, "y": "r"}))
    assert (m.kind, m.tid, m.refreshed, m.id) == ("u", 77, [4, 5], ID)
    m = decode(raw({"u": {"id": bytes(ID), "exp": [6]}, "t": 77, "y": "r"}))
    assert m.expired == [6]


# --- tids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tid, expected", [
    (0, 0), (1, 1), (0xFFFFFFFF, 0xFFFFFFFF),
    (b"\x01\x02\x03\x04", 0x01020304), (b"\xff\x00\x00\x01", 0xFF000001),
])
def test_tid_int_or_legacy_bin(tid, expected) -> None:
    assert decode(q("ping", {}, tid=tid)).tid == expected


@pytest.mark.parametrize("tid", [2**32, -1, b"\x01\x02\x03", b"\x01\x02\x03\x04\x05", "1234", 1.0])
def test_tid_invalid_rejected(tid) -> None:
    with pytest.raises(MalformedMessage):
        decode(q("ping", {}, tid=tid))


# --- strict rejection ------------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    pytest.param(raw({"a": {"id": ID.hex()[:20]}, "q": "ping", "t": 1, "y": "q"}), id="str-id"),
    pytest.param(raw({"a": {"id": bytes(19)}, "q": "ping", "t": 1, "y": "q"}), id="19-byte-id"),
    pytest.param(raw({"a": {"id": bytes(21)}, "q": "ping", "t": 1, "y": "q"}), id="21-byte-id"),
    pytest.param(q("get", {"h": "sip:alice@example.org"}), id="str-h"),
    pytest.param(q("get", {"h": bytes(19)}), id="19-byte-h"),
    pytest.param(q("find", {"target": bytes(21)}), id="21-byte-target"),
    pytest.param(raw({"a": {}, "q": "ping", "t": 1, "y": "q"}), id="no-sender-id"),
    pytest.param(raw({"q": "ping", "t": 1, "y": "q"}), id="no-args"),
    pytest.param(raw({"a": [bytes(ID)], "q": "ping", "t": 1, "y": "q"}), id="args-array"),
    pytest.param(raw({"r": {"sa": b"\x01\x02\x03\x04"}, "t": 1, "y": "r"}), id="reply-no-id"),
    pytest.param(raw({"u": {"re": [1]}, "t": 1, "y": "r"}), id="legacy-no-id"),
    pytest.param(q("bogus", {}), id="unknown-query"),
    pytest.param(q("PING", {}), id="query-case"),
    pytest.param(raw({"a": {"id": bytes(ID)}, "q": "ping", "t": 1, "y": "x"}), id="y-not-q"),
    pytest.param(raw({"a": {"id": bytes(ID)}, "t": 1, "y": "q"}), id="no-query-name"),
    pytest.param(raw({"a": {"id": bytes(ID)}, "q": 5, "t": 1, "y": "q"}), id="int-query-name"),
    pytest.param(q("find", {"target": bytes(H), "n4": bytes(25)}), id="n4-25"),
    pytest.param(q("find", {"target": bytes(H), "n4": bytes(27)}), id="n4-27"),
    pytest.param(q("find", {"target": bytes(H), "n4": bytes(52 + 1)}), id="n4-53"),
    pytest.param(q("find", {"target": bytes(H), "n6": bytes(26)}), id="n6-26"),
    pytest.param(q("find", {"target": bytes(H), "n4": "x" * 26}), id="n4-str"),
    pytest.param(q("ping", {"sa": b"\x01\x02\x03"}), id="sa-3-bytes"),
    pytest.param(q("ping", {"sa": "1.2.3.4"}), id="sa-str"),
    pytest.param(q("put", {"h": bytes(H), "token": "tok"}), id="token-str"),
    pytest.param(q("listen", {"h": bytes(H), "sid": 2**32}), id="sid-too-big"),
    pytest.param(q("refresh", {"h": bytes(H), "vid": -1}), id="vid-negative"),
    pytest.param(q("find", {"target": bytes(H), "w": 2}), id="w-not-array"),
    pytest.param(q("update", {"sid": 1, "re": 5}), id="re-not-array"),
    pytest.param(q("update", {"sid": 1, "exp": ["1"]}), id="exp-str"),
    pytest.param(q("put", {"h": bytes(H), "values": {"id": 1}}), id="values-map"),
    pytest.param(q("ping", {}, n=-1), id="network-negative"),
    pytest.param(q("ping", {}, n=2**32), id="network-too-big"),
    pytest.param(raw({"e": "oops", "t": 1, "y": "e"}), id="error-str"),
    pytest.param(raw({"e": [], "t": 1, "y": "e"}), id="error-empty"),
    pytest.param(raw([1, 2, 3]), id="array"),
    pytest.param(raw(5), id="int"),
    pytest.param(raw("ping"), id="str"),
    pytest.param(raw(None), id="nil"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(q("ping", {})[:-1], id="truncated"),
    pytest.param(q("ping", {}) + b"\x00", id="trailing-byte"),
    pytest.param(b"\x81\xa1a\xd6\x01\x00\x00\x00\x00", id="ext-type"),
])
def test_decode_rejects(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode(data)


def test_decode_ignores_user_agent_and_unknown_keys() -> None:
    m = decode(raw({"a": {"id": bytes(ID), "zz": [1, {"x": 2}]}, "q": "ping", "t": 1, "y": "q",
                    "v": "xyz", "extra": 1}))
    assert m.query == "ping"


# --- compact node lists ----------------------------------------------------------------------

NODES4 = [(InfoHash(bytes([i]) * 20), (f"203.0.113.{i}", 4000 + i)) for i in range(1, 4)]
NODES6 = [(InfoHash(bytes([i]) * 20), (f"2001:db8::{i}", 65535 - i)) for i in range(1, 3)]


def test_pack_nodes_layout() -> None:
    packed = pack_nodes([(bytes([7]) * 20, ("10.1.2.3", 0x1234))], 4)
    assert packed == bytes([7]) * 20 + bytes([10, 1, 2, 3]) + b"\x12\x34"
    packed6 = pack_nodes([(bytes([7]) * 20, ("::1", 4222))], 6)
    assert packed6 == bytes([7]) * 20 + bytes(15) + b"\x01" + b"\x10\x7e"


def test_node_lists_roundtrip_through_messages() -> None:
    n4, n6 = pack_nodes(NODES4, 4), pack_nodes(NODES6, 6)
    assert len(n4) == 3 * 26 and len(n6) == 2 * 38
    assert unpack_nodes(n4, 4) == NODES4 and unpack_nodes(n6, 6) == NODES6
    m = decode(encode_reply(1, {"id": ID, "n4": n4, "n6": n6, "token": TOKEN}))
    assert m.n4 == NODES4 and m.n6 == NODES6
    assert unpack_nodes(b"", 4) == []


# --- encoders --------------------------------------------------------------------------------


def test_encode_query_layout() -> None:
    data = encode_query("get", 0x01020304, {"id": ID, "h": H, "w": [2, 10]})
    obj = wire(data)
    assert obj["y"] == "q" and obj["q"] == "get" and obj["t"] == 0x01020304
    assert type(obj["t"]) is int
    assert type(obj["a"]["id"]) is bytes and obj["a"]["id"] == bytes(ID)   # bin, not str
    assert type(obj["a"]["h"]) is bytes
    assert "n" not in obj and "s" not in obj and type(obj["v"]) is str
    # key order as msgpack-c writes it: a, q, t, y, v
    assert list(obj) == ["a", "q", "t", "y", "v"]
    m = decode(data)
    assert (m.query, m.tid, m.id, m.h, m.want) == ("get", 0x01020304, ID, H, (2, 10))


def test_encode_bin_ids_at_byte_level() -> None:
    data = encode_query("ping", 1, {"id": ID})
    assert b"\xa2id\xc4\x14" + bytes(ID) in data


def test_encode_network_and_client_flag() -> None:
    assert "n" not in wire(encode_query("ping", 1, {"id": ID}, network=0))
    obj = wire(encode_query("ping", 1, {"id": ID}, network=16, client=True))
    assert obj["n"] == 16 and obj["s"] is True
    assert decode(encode_query("ping", 1, {"id": ID}, network=16)).network == 16
    assert "n" not in wire(encode_reply(1, {"id": ID}))
    assert wire(encode_reply(1, {"id": ID}, network=3))["n"] == 3
    assert "n" not in wire(encode_error(1, 401, "x", ID))
    assert wire(encode_error(1, 401, "x", ID, network=3))["n"] == 3
    assert "n" not in wire(encode_fragment(1, 0, 0, b"x"))
    assert wire(encode_fragment(1, 0, 0, b"x", network=3))["n"] == 3
    assert "n" not in wire(encode_legacy_update(1, {"id": ID, "re": [1]}))
    assert wire(encode_legacy_update(1, {"id": ID, "re": [1]}, network=3))["n"] == 3


def test_encode_reply_roundtrip() -> None:
    data = encode_reply(42, {"id": ID, "sa": b"\x0a\x00\x00\x01", "token": TOKEN, "vid": 9})
    obj = wire(data)
    assert obj["y"] == "r" and obj["t"] == 42 and type(obj["r"]["sa"]) is bytes
    assert type(obj["r"]["token"]) is bytes
    m = decode(data)
    assert (m.kind, m.tid, m.id, m.sa, m.token, m.vid) == ("r", 42, ID, b"\n\x00\x00\x01", TOKEN, 9)


def test_encode_error_layout() -> None:
    data = encode_error(8, 203, "Get_values with no info_hash", ID)
    obj = wire(data)
    assert obj["y"] == "e" and obj["e"] == [203, "Get_values with no info_hash"]
    assert obj["r"] == {"id": bytes(ID)} and obj["t"] == 8
    m = decode(data)
    assert m.kind == "e" and m.error == (203, "Get_values with no info_hash") and m.id == ID


def test_encode_fragment_layout() -> None:
    data = encode_fragment(5, 1, 1280, b"\x00" * 10)
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert obj["y"] == "p" and obj["t"] == 5
    assert obj["p"] == {1: {"o": 1280, "d": b"\x00" * 10}}
    assert b"\x81\x01\x82\xa1o\xcd\x05\x00\xa1d\xc4\x0a" in data    # integer key, bin chunk
    m = decode(data)
    assert m.kind == "p" and m.fragments == {1: (1280, b"\x00" * 10)}


def test_encode_legacy_update_layout() -> None:
    data = encode_legacy_update(99, {"id": ID, "exp": [1, 2]})
    obj = wire(data)
    assert obj["y"] == "r" and obj["t"] == 99 and "u" in obj and "r" not in obj
    m = decode(data)
    assert m.kind == "u" and m.tid == 99 and m.expired == [1, 2]


@pytest.mark.parametrize("name", [[], ["ping"], {"ping": 1}])
def test_unhashable_query_name_is_malformed(name) -> None:
    with pytest.raises(MalformedMessage):
        decode(raw({"a": {"id": bytes(ID)}, "q": name, "t": 1, "y": "q"}))
