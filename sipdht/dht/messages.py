"""OpenDHT wire messages: one msgpack map per UDP datagram.

Decoding is strict about the types OpenDHT is strict about (ids are bin 20,
tids are integers, node lists are whole records) and raises MalformedMessage,
which the engine counts and drops. Encoding writes bin for every byte string.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .infohash import HASH_LEN, InfoHash
from .values import (
    FieldIndex,
    MalformedValue,
    Query,
    Value,
    unpack,
    unpack_fields,
    unpack_query,
)
from .values import expect_bin as _bin
from .values import expect_uint as _uint

Addr = tuple[str, int]

QUERIES = frozenset({"ping", "find", "get", "put", "listen", "refresh", "update"})
USER_AGENT = "sd1"
AF_INET, AF_INET6 = 2, 10  # Linux numbers, as OpenDHT sends them in "w" whatever our OS

# error codes (OpenDHT network_engine.h)
NON_AUTHORITATIVE_INFORMATION = 203
UNAUTHORIZED = 401
NOT_FOUND = 404

NODE4_LEN, NODE6_LEN = 26, 38
MAX_DATAGRAM = 65536
# Value chunks in one `p` datagram: OpenDHT (and we) send one; thousands of tiny ones only
# cost the receiver (45 kB of 1-byte chunks took ~9 ms to decode), so more is malformed.
MAX_PARTS_PER_DATAGRAM = 16
# No map of the protocol has more than ~20 keys: a bigger one is refused by msgpack itself,
# at its header, before it is built.
MAX_MAP_LEN = 64

_UNPACK_LIMITS = dict(max_bin_len=MAX_DATAGRAM, max_str_len=MAX_DATAGRAM,
                      max_array_len=MAX_DATAGRAM, max_map_len=MAX_MAP_LEN, max_ext_len=0)


class MalformedMessage(ValueError):
    """A datagram that is not a valid OpenDHT message."""


@dataclass
class Message:
    kind: str                       # "q", "r", "e", "p" (fragment), "u" (legacy update)
    tid: int
    query: str | None = None
    network: int = 0
    client: bool = False
    id: InfoHash | None = None
    h: InfoHash | None = None
    target: InfoHash | None = None
    token: bytes | None = None
    vid: int | None = None
    sid: int | None = None
    n4: list[tuple[InfoHash, Addr]] = field(default_factory=list)
    n6: list[tuple[InfoHash, Addr]] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)
    value_sizes: list[int] | None = None   # values announced, to arrive as fragments
    fields: FieldIndex | None = None
    sa: bytes | None = None
    created: int | None = None
    want: tuple[int, ...] | None = None
    version: int = 0
    q: Query | None = None
    refreshed: list[int] | None = None
    expired: list[int] | None = None
    error: tuple[int, str] | None = None
    fragments: dict[int, tuple[int, bytes]] = field(default_factory=dict)

    @property
    def has_values(self) -> bool:
        return bool(self.values) or bool(self.value_sizes)


# --- compact node lists ---------------------------------------------------------------------


def pack_nodes(nodes: list[tuple[bytes, Addr]], family: int) -> bytes:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    return b"".join(nid + socket.inet_pton(af, ip) + struct.pack("!H", port)
                    for nid, (ip, port) in nodes)


def unpack_nodes(data: bytes, family: int) -> list[tuple[InfoHash, Addr]]:
    rec = NODE4_LEN if family == 4 else NODE6_LEN
    if len(data) % rec:
        raise MalformedMessage(f"n{family}: length {len(data)} is not a multiple of {rec}")
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    out = []
    for i in range(0, len(data), rec):
        chunk = data[i:i + rec]
        ip = socket.inet_ntop(af, chunk[HASH_LEN:rec - 2])
        (port,) = struct.unpack("!H", chunk[rec - 2:])
        out.append((InfoHash(chunk[:HASH_LEN]), (ip, port)))
    return out


@functools.lru_cache(maxsize=8192)
def address_bytes(ip: str) -> bytes:
    """Raw 4 or 16 bytes of an IP (the `sa` field, tokens); hot, so cached."""
    return socket.inet_pton(socket.AF_INET6 if ":" in ip else socket.AF_INET, ip)


# --- decoding -------------------------------------------------------------------------------


def _hash(obj: Any, what: str) -> InfoHash:
    if type(obj) is not bytes or len(obj) != HASH_LEN:
        raise MalformedMessage(f"{what}: expected bin 20")
    return _new_hash(InfoHash, obj)      # InfoHash() would check the length again


_new_hash = bytes.__new__


def _tid(obj: Any) -> int:
    if type(obj) is int and 0 <= obj < 2**32:
        return obj
    if type(obj) is bytes and len(obj) == 4:  # legacy form
        return int.from_bytes(obj, "big")
    raise MalformedMessage("t: expected a uint32")


def _id_list(obj: Any, what: str) -> list[int]:
    if type(obj) is not list:
        raise MalformedMessage(f"{what}: expected an array")
    return [_uint(x, what) for x in obj]


def _values(obj: Any, msg: Message) -> None:
    if type(obj) is not list:
        raise MalformedMessage("values: expected an array")
    if obj and all(type(x) is int for x in obj):
        msg.value_sizes = [_uint(x, "values", MAX_DATAGRAM + 32) for x in obj]
        return
    try:
        msg.values = [unpack(x) for x in obj]
    except MalformedValue as exc:
        raise MalformedMessage(f"values: {exc}") from None


def _sa(obj: Any) -> bytes:
    sa = _bin(obj, "sa")
    if len(sa) not in (4, 16):
        raise MalformedMessage("sa: expected 4 or 16 bytes")
    return sa


def _want(obj: Any) -> tuple[int, ...]:
    if type(obj) is not list:
        raise MalformedMessage("w: expected an array")
    return tuple(_uint(x, "w", 255) for x in obj)


# body key -> (Message attribute, its parser); keys not listed are ignored, as OpenDHT does
_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "id": ("id", lambda o: _hash(o, "id")),
    "h": ("h", lambda o: _hash(o, "h")),
    "target": ("target", lambda o: _hash(o, "target")),
    "token": ("token", lambda o: _bin(o, "token")),
    "vid": ("vid", lambda o: _uint(o, "vid")),
    "sid": ("sid", lambda o: _uint(o, "sid", 2**32 - 1)),
    "n4": ("n4", lambda o: unpack_nodes(_bin(o, "n4"), 4)),
    "n6": ("n6", lambda o: unpack_nodes(_bin(o, "n6"), 6)),
    "sa": ("sa", _sa),
    "c": ("created", lambda o: _uint(o, "c")),
    "w": ("want", _want),
    "ve": ("version", lambda o: _uint(o, "ve", 255)),
    "q": ("q", unpack_query),                # MalformedValue: decode() turns it into
    "fileds": ("fields", unpack_fields),     # MalformedMessage
    "re": ("refreshed", lambda o: _id_list(o, "re")),
    "exp": ("expired", lambda o: _id_list(o, "exp")),
}


def _body(b: Any, msg: Message) -> None:
    """Only the keys present are looked at: a query body has two or three."""
    if type(b) is not dict:
        raise MalformedMessage("body: expected a map")
    for key, obj in b.items():
        if key == "values":
            _values(obj, msg)
            continue
        known = _FIELDS.get(key)
        if known is not None:
            setattr(msg, known[0], known[1](obj))


def _fragments(p: Any, msg: Message) -> None:
    if type(p) is not dict:
        raise MalformedMessage("p: expected a map")
    if len(p) > MAX_PARTS_PER_DATAGRAM:
        raise MalformedMessage(f"p: more than {MAX_PARTS_PER_DATAGRAM} chunks")
    for idx, part in p.items():
        if type(idx) is not int or not 0 <= idx < 4096 or type(part) is not dict:
            raise MalformedMessage("p: expected {index: {o, d}}")
        offset = _uint(part.get("o"), "p.o", MAX_DATAGRAM + 32)
        msg.fragments[idx] = (offset, _bin(part.get("d"), "p.d"))


def _error(e: Any) -> tuple[int, str]:
    if type(e) is not list or not e or type(e[0]) is not int or not 0 <= e[0] < 1000:
        raise MalformedMessage("e: expected [code, message]")
    text = e[1] if len(e) > 1 and type(e[1]) is str else ""
    return e[0], text


def decode(data: bytes) -> Message:
    """Raises MalformedMessage for anything OpenDHT would not parse."""
    try:
        return _decode(data)
    except MalformedValue as exc:    # the shared field checks raise this one
        raise MalformedMessage(str(exc)) from None


def _decode(data: bytes) -> Message:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, **_UNPACK_LIMITS)
    except Exception as exc:  # msgpack raises many types for bad input
        raise MalformedMessage(f"not msgpack: {type(exc).__name__}") from None
    if type(obj) is not dict:
        raise MalformedMessage("not a map")
    msg = Message(kind="q", tid=_tid(obj.get("t", 0)))
    if "n" in obj:
        msg.network = _uint(obj["n"], "n", 2**32 - 1)
    msg.client = obj.get("s") is True
    if "e" in obj:
        msg.kind, msg.error = "e", _error(obj["e"])
        if "r" in obj:
            _body(obj["r"], msg)
    elif "r" in obj:
        msg.kind = "r"
        _body(obj["r"], msg)
    elif "p" in obj:
        msg.kind = "p"
        _fragments(obj["p"], msg)
    elif "u" in obj:
        msg.kind = "u"
        _body(obj["u"], msg)
    else:
        name = obj.get("q")
        if obj.get("y") != "q" or type(name) is not str or name not in QUERIES:
            raise MalformedMessage("not a known query")
        msg.query = obj["q"]
        _body(obj.get("a"), msg)
    if msg.kind in ("q", "r", "u") and msg.id is None:
        raise MalformedMessage("no sender id")
    return msg


# --- encoding -------------------------------------------------------------------------------


def _envelope(out: dict[str, Any], network: int, client: bool) -> bytes:
    out["v"] = USER_AGENT
    if network:
        out["n"] = network
    if client:
        out["s"] = True
    return msgpack.packb(out, use_bin_type=True)


def encode_query(name: str, tid: int, args: dict[str, Any], network: int = 0,
                 client: bool = False) -> bytes:
    return _envelope({"a": args, "q": name, "t": tid, "y": "q"}, network, client)


def encode_reply(tid: int, body: dict[str, Any], network: int = 0, client: bool = False,
                 packed_values: Sequence[bytes] = ()) -> bytes:
    """`packed_values`: values already in msgpack (values.packb), sent inline as the body's
    last entry "values" without being unpacked and packed again."""
    if not packed_values:
        return _envelope({"r": body, "t": tid, "y": "r"}, network, client)
    # msgpack has no raw pass-through: pack a nil in the value's place, then put the
    # packed array where the nil is (the body's last byte; the envelope's fourth, after its
    # fixmap header and the key "r").
    raw_body = msgpack.packb({**body, "values": None}, use_bin_type=True)[:-1] \
        + _array_header(len(packed_values)) + b"".join(packed_values)
    envelope = _envelope({"r": None, "t": tid, "y": "r"}, network, client)
    return envelope[:3] + raw_body + envelope[4:]


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def encode_legacy_update(tid: int, body: dict[str, Any], network: int = 0) -> bytes:
    return _envelope({"u": body, "t": tid, "y": "r"}, network, False)


def encode_error(tid: int, code: int, text: str, my_id: bytes, network: int = 0) -> bytes:
    return _envelope({"e": [code, text], "r": {"id": my_id}, "t": tid, "y": "e"}, network, False)


def encode_fragment(tid: int, index: int, offset: int, chunk: bytes, network: int = 0) -> bytes:
    return _envelope({"p": {index: {"o": offset, "d": chunk}}, "t": tid, "y": "p"}, network, False)
