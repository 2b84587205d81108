"""OpenDHT values: the wire layout, the bytes that get signed, value types and queries.

Signatures are checked over a re-serialization of the fields, so `to_sign` must
produce exactly the bytes msgpack-c produces: fixed key order, exact map length,
shortest integers, str for keys and utype, bin for every byte string.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import msgpack

from .digests import sha1

MAX_VALUE_SIZE = 64 * 1024
MAX_SEQ = 0xFFFF
UINT64_MAX = 2**64 - 1


class MalformedValue(ValueError):
    """A value on the wire does not follow OpenDHT's layout."""


@dataclass(frozen=True)
class ValueType:
    id: int
    name: str
    expiration: float  # seconds a storing node keeps the value


VALUE_TYPES: dict[int, ValueType] = {t.id: t for t in (
    ValueType(0, "user data", 600),
    ValueType(1, "DHT message", 300),
    ValueType(2, "Internet service announcement", 900),
    ValueType(3, "IM message", 300),
    ValueType(4, "certificate trust request", 7 * 86400),
    ValueType(5, "ICE candidates", 60),
    ValueType(8, "certificate", 7 * 86400),
)}
DEFAULT_TYPE = VALUE_TYPES[0]
CERTIFICATE_TYPE = 8


def register_type(value_type: ValueType) -> None:
    """Our own types (contact records, call requests) get their lifetime here."""
    VALUE_TYPES[value_type.id] = value_type


def type_expiration(type_id: int) -> float:
    return VALUE_TYPES.get(type_id, DEFAULT_TYPE).expiration


def random_id() -> int:
    return int.from_bytes(os.urandom(8), "big") or 1


@dataclass(frozen=True)
class Value:
    id: int
    type: int = 0
    data: bytes = b""
    utype: str = ""
    seq: int = 0
    owner: bytes | None = None       # DER SubjectPublicKeyInfo of the signer
    recipient: bytes | None = None   # 20-byte key id ("to")
    signature: bytes | None = None
    cypher: bytes | None = None      # set instead of every clear field when encrypted
    priority: int = 0
    push_type: str | None = None     # HEAD's "pt", forwarded untouched
    # packb(self), kept once made (not a field): a stored value goes out in every get reply
    _packed: ClassVar[bytes | None] = None

    @property
    def is_signed(self) -> bool:
        return self.owner is not None

    @property
    def is_encrypted(self) -> bool:
        return self.cypher is not None

    def size(self) -> int:
        """OpenDHT's Value::size(), used for storage quotas."""
        return (len(self.cypher or b"") + len(self.data) + len(self.signature or b"")
                + len(self.utype.encode()) + len((self.push_type or "").encode()))

    def with_id(self, vid: int) -> Value:
        return replace(self, id=vid)

    def same_content(self, other: Value) -> bool:
        return pack(self) == pack(other)


def new_value(data: bytes, type: int = 0, utype: str = "", vid: int | None = None) -> Value:
    return Value(id=vid or random_id(), type=type, data=data, utype=utype)


# --- encoding ------------------------------------------------------------------------------


def to_sign_map(v: Value) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if v.owner is not None:
        body["seq"] = v.seq
        body["owner"] = bytes(v.owner)
        if v.recipient is not None:
            body["to"] = bytes(v.recipient)
    body["type"] = v.type
    body["data"] = bytes(v.data)
    if v.utype:
        body["utype"] = v.utype
    return body


def to_sign(v: Value) -> bytes:
    """The exact bytes an OpenDHT signature covers."""
    return msgpack.packb(to_sign_map(v), use_bin_type=True)


def to_encrypt(v: Value) -> bytes:
    """The plaintext of an encrypted value: {"body": ToSign, "sig": bin}."""
    dat: dict[str, Any] = {"body": to_sign_map(v)}
    if v.owner is not None:
        dat["sig"] = bytes(v.signature or b"")
    return msgpack.packb(dat, use_bin_type=True)


def pack(v: Value) -> dict[str, Any]:
    """A msgpack-ready map for the wire."""
    out: dict[str, Any] = {"id": v.id}
    if v.cypher is not None:
        out["dat"] = bytes(v.cypher)
    else:
        dat: dict[str, Any] = {"body": to_sign_map(v)}
        if v.owner is not None:
            dat["sig"] = bytes(v.signature or b"")
        out["dat"] = dat
    if v.priority:
        out["p"] = v.priority
    if v.push_type is not None:
        out["pt"] = v.push_type
    return out


def packb(v: Value) -> bytes:
    """msgpack of pack(v), made once per Value: a Value is immutable, and a stored one is
    packed for every reply that carries it."""
    data = v._packed
    if data is None:
        data = msgpack.packb(pack(v), use_bin_type=True)
        object.__setattr__(v, "_packed", data)     # a cache, not a field: frozen is kept
    return data


# --- decoding ------------------------------------------------------------------------------


def expect_uint(obj: Any, what: str, limit: int = UINT64_MAX) -> int:
    """Strict msgpack field checks, shared by the value and message codecs."""
    if type(obj) is not int or not 0 <= obj <= limit:
        raise MalformedValue(f"{what}: expected an unsigned integer")
    return obj


def expect_bin(obj: Any, what: str) -> bytes:
    if type(obj) is not bytes:
        raise MalformedValue(f"{what}: expected bin")
    return obj


def _data(obj: Any) -> bytes:
    """OpenDHT readers also accept data as str or as an array of small ints."""
    if type(obj) is bytes:
        return obj
    if type(obj) is str:
        return obj.encode()
    if type(obj) is list and all(type(b) is int and 0 <= b < 256 for b in obj):
        return bytes(obj)
    raise MalformedValue("data: expected bin")


def parse_body(body: Any, sig: Any, vid: int, priority: int = 0,
               push_type: str | None = None) -> Value:
    if type(body) is not dict:
        raise MalformedValue("body: expected a map")
    fields: dict[str, Any] = {
        "id": vid, "priority": priority, "push_type": push_type,
        "type": expect_uint(body.get("type", 0), "type", 0xFFFF),
        "data": _data(body.get("data", b"")),
    }
    utype = body.get("utype", "")
    if type(utype) is bytes:
        utype = utype.decode("utf-8", "replace")
    if type(utype) is not str:
        raise MalformedValue("utype: expected str")
    fields["utype"] = utype
    if "owner" in body:
        fields["owner"] = expect_bin(body["owner"], "owner")
        fields["seq"] = expect_uint(body.get("seq", 0), "seq", MAX_SEQ)
        if "to" in body:
            fields["recipient"] = expect_bin(body["to"], "to")
            if len(fields["recipient"]) != 20:
                raise MalformedValue("to: expected 20 bytes")
        fields["signature"] = expect_bin(sig, "sig") if sig is not None else b""
    return Value(**fields)


def unpack(obj: Any) -> Value:
    """A decoded msgpack map -> Value; raises MalformedValue."""
    if type(obj) is not dict:
        raise MalformedValue("value: expected a map")
    vid = expect_uint(obj.get("id"), "id")
    priority = expect_uint(obj.get("p", 0), "p", 0xFFFFFFFF)
    push_type = obj.get("pt")
    if push_type is not None and type(push_type) is not str:
        raise MalformedValue("pt: expected str")
    dat = obj.get("dat")
    if type(dat) is bytes:
        return Value(id=vid, cypher=dat, priority=priority, push_type=push_type)
    if type(dat) is not dict or "body" not in dat:
        raise MalformedValue("dat: expected a map with body, or bin")
    return parse_body(dat["body"], dat.get("sig"), vid, priority, push_type)


def unpackb(data: bytes) -> Value:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedValue(f"not msgpack: {exc}") from None
    return unpack(obj)


# --- queries (select / where), as sent in get and listen ----------------------------------

FIELD_ID, FIELD_TYPE, FIELD_OWNER, FIELD_SEQ, FIELD_UTYPE = 1, 2, 3, 4, 5
KNOWN_FIELDS = {FIELD_ID, FIELD_TYPE, FIELD_OWNER, FIELD_SEQ, FIELD_UTYPE}


@dataclass(frozen=True)
class Query:
    select: tuple[int, ...] = ()
    where: tuple[tuple[int, Any], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.select and not self.where

    def matches(self, v: Value) -> bool:
        for fid, want in self.where:
            if fid == FIELD_ID and v.id != want:
                return False
            if fid == FIELD_TYPE and v.type != want:
                return False
            if fid == FIELD_UTYPE and v.utype.encode() != want:
                return False
            if fid == FIELD_OWNER:     # the owner's key id: SHA-1 of its DER key
                if v.owner is None or sha1(bytes(v.owner)).digest() != want:
                    return False
        return True

    def field_values(self, v: Value) -> list[Any]:
        out: list[Any] = []
        for fid in self.select:
            out.append({FIELD_ID: v.id, FIELD_TYPE: v.type, FIELD_SEQ: v.seq,
                        FIELD_UTYPE: v.utype, FIELD_OWNER: v.owner or b""}[fid])
        return out

    def pack(self) -> dict[str, Any]:
        return {"s": list(self.select), "w": [{"f": f, "v": val} for f, val in self.where]}


def unpack_query(obj: Any) -> Query:
    """Both "s" and "w" are required, as in OpenDHT."""
    if type(obj) is not dict or type(obj.get("s")) is not list or type(obj.get("w")) is not list:
        raise MalformedValue("q: expected a map with s and w arrays")
    select = tuple(expect_uint(f, "q.s") for f in obj["s"])
    if any(f not in KNOWN_FIELDS for f in select):
        raise MalformedValue("q.s: unknown field")
    where = []
    for w in obj["w"]:
        if type(w) is not dict:
            raise MalformedValue("q.w: expected maps")
        fid = expect_uint(w.get("f"), "q.w.f")
        val = w.get("v")
        if fid in (FIELD_ID, FIELD_TYPE):
            val = expect_uint(val, "q.w.v")
        elif fid in (FIELD_OWNER, FIELD_UTYPE):
            val = expect_bin(val, "q.w.v")
        else:
            raise MalformedValue("q.w: field cannot be used in where")
        where.append((fid, val))
    return Query(select, tuple(where))


@dataclass
class FieldIndex:
    """A `fileds` reply: selected fields of each value, flattened."""
    fields: tuple[int, ...]
    rows: list[list[Any]] = field(default_factory=list)

    def pack(self) -> dict[str, Any]:
        return {"f": list(self.fields), "v": [x for row in self.rows for x in row]}


def unpack_fields(obj: Any) -> FieldIndex:
    if type(obj) is not dict or type(obj.get("f")) is not list or type(obj.get("v")) is not list:
        raise MalformedValue("fileds: expected a map with f and v arrays")
    fids = tuple(expect_uint(f, "fileds.f") for f in obj["f"])
    flat = obj["v"]
    if not fids or len(flat) % len(fids):
        raise MalformedValue("fileds: v is not a whole number of rows")
    n = len(fids)
    return FieldIndex(fids, [flat[i:i + n] for i in range(0, len(flat), n)])
