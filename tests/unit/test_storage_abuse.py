"""Attacks on the value store found in review, each reproduced before it was fixed.

- empty values were charged 0 bytes, so 300,000 of them (123 MiB) fit a 64 MiB quota;
- one source IP could fill a key (or the whole store) alone;
- any data was kept 7 days as a "certificate" (type 8) at any key;
- a remote putter chose a long lifetime by picking a long-lived type.
"""

from __future__ import annotations

import gc
import tracemalloc

import msgpack
import pytest

from sipdht import identity as identity_mod
from sipdht.dht.infohash import InfoHash
from sipdht.dht.policies import plain_policy, secure_policy
from sipdht.dht.storage import MAX_REMOTE_LIFETIME, Storage, StoreStatus
from sipdht.dht.values import CERTIFICATE_TYPE, Value, type_expiration

T0 = 1000.0
K = InfoHash.get("key")


def ip(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


# --- memory: every value is charged what it costs ------------------------------------------


@pytest.mark.slow
def test_empty_values_fill_the_quota_by_their_real_memory() -> None:
    """20,000 empty values from 20,000 IPs at distinct keys under a 2 MiB quota: the store
    must not grow far beyond 2 MiB (it grew by ~20 MB when empty values were charged 0)."""
    quota = 2 * 1024 * 1024
    keys = [InfoHash.get(str(i)) for i in range(20_000)]
    values = [Value(id=i + 1, type=8) for i in range(20_000)]
    st = Storage(max_total=quota)
    gc.collect()
    tracemalloc.start()
    try:
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            st.store(key, value, T0 + i * 1e-3, source=ip(i))
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert st.remote_size <= quota
    assert 0 < st.value_count < 20_000
    assert grown < quota * 1.5, f"{grown} bytes held for a {quota}-byte quota"


def test_empty_value_is_charged_an_overhead() -> None:
    st = Storage()
    st.store(K, Value(id=1), T0, source="10.0.0.1")
    assert st.remote_size >= 500
    assert st.usage_by_source()["10.0.0.1"] == st.remote_size
    st.expire(T0 + 600)
    assert st.remote_size == 0 and st.usage_by_source() == {}


# --- per-source caps ------------------------------------------------------------------------


def test_one_source_cannot_fill_a_key() -> None:
    st = Storage(max_per_source_key=10)
    for vid in range(1, 11):
        assert st.store(K, Value(id=vid), T0, source="10.0.0.1").status is StoreStatus.NEW
    res = st.store(K, Value(id=11), T0, source="10.0.0.1")
    assert res.status is StoreStatus.REFUSED and "source" in res.reason
    # others still can, the same source can elsewhere, and its values can be refreshed
    assert st.store(K, Value(id=11), T0, source="10.0.0.2").status is StoreStatus.NEW
    assert st.store(InfoHash.get("k2"), Value(id=11), T0, source="10.0.0.1").stored
    assert st.store(K, Value(id=3), T0 + 1, source="10.0.0.1").status is StoreStatus.REFRESHED
    # local puts are not a remote source
    assert st.store(K, Value(id=12), T0).status is StoreStatus.NEW
    # once one expires, the source may put again
    st.expire(T0 + 600)
    assert st.store(K, Value(id=13), T0 + 600, source="10.0.0.1").status is StoreStatus.NEW


def test_one_source_cannot_fill_the_store() -> None:
    st = Storage(max_per_source=50)
    for i in range(50):
        assert st.store(InfoHash.get(str(i)), Value(id=1), T0, source="10.0.0.1").stored
    res = st.store(InfoHash.get("x"), Value(id=1), T0, source="10.0.0.1")
    assert res.status is StoreStatus.REFUSED and "source" in res.reason
    assert st.store(InfoHash.get("x"), Value(id=1), T0, source="10.0.0.2").stored
    assert st.value_count == 51


def test_default_per_source_caps_bound_one_ip() -> None:
    st = Storage()
    stored = sum(st.store(K, Value(id=vid), T0, source="10.0.0.1").stored
                 for vid in range(1, 3000))
    assert stored < 3000


# --- lifetimes chosen by the storer, not the putter ----------------------------------------


@pytest.mark.parametrize("vtype", [4, 8, 1234])
def test_remote_value_cannot_choose_a_long_lifetime(vtype: int) -> None:
    st = Storage(policy=plain_policy())
    st.store(K, Value(id=1, type=vtype, data=b"x"), T0, source="10.0.0.1")
    assert st.get_stored(K, 1).expiration <= T0 + MAX_REMOTE_LIFETIME
    assert st.refresh(K, 1, T0 + 100)
    assert st.get_stored(K, 1).expiration <= T0 + 100 + MAX_REMOTE_LIFETIME


def test_local_value_keeps_its_type_lifetime() -> None:
    st = Storage()
    st.store(K, Value(id=1, type=4, data=b"x"), T0)
    assert st.get_stored(K, 1).expiration == T0 + type_expiration(4) == T0 + 7 * 86400


# --- certificates (type 8): only a certificate, only at its key id -------------------------


@pytest.fixture(scope="module")
def idents() -> tuple[identity_mod.Identity, identity_mod.Identity]:
    return identity_mod.generate(2048), identity_mod.generate(2048)


def cert_value(ident: identity_mod.Identity) -> Value:
    return Value(id=1, type=CERTIFICATE_TYPE,
                 data=msgpack.packb(ident.chain_pem(), use_bin_type=True))


def test_certificate_stored_at_either_key_id_for_a_week(idents) -> None:
    a, _ = idents
    st = Storage(policy=secure_policy())
    for key in (InfoHash(a.key_id), InfoHash.get(identity_mod.long_key_id(a.public_key_der))):
        res = st.store(key, cert_value(a), T0, source="10.0.0.1")
        assert res.status is StoreStatus.NEW, res.reason
        assert st.get_stored(key, 1).expiration == T0 + 7 * 86400


@pytest.mark.parametrize("data", [b"", b"garbage", msgpack.packb(b"-----BEGIN CERTIFICATE-----")])
def test_non_certificate_refused_as_type_8(idents, data: bytes) -> None:
    a, _ = idents
    st = Storage(policy=secure_policy())
    res = st.store(InfoHash(a.key_id), Value(id=1, type=CERTIFICATE_TYPE, data=data), T0,
                   source="10.0.0.1")
    assert res.status is StoreStatus.REFUSED


def test_certificate_refused_at_another_key(idents) -> None:
    a, b = idents
    st = Storage(policy=secure_policy())
    for key in (K, InfoHash(b.key_id)):
        res = st.store(key, cert_value(a), T0, source="10.0.0.1")
        assert res.status is StoreStatus.REFUSED and "certificate" in res.reason


def test_certificate_edit_only_by_the_same_key(idents) -> None:
    a, b = idents
    st = Storage(policy=secure_policy())
    key = InfoHash(a.key_id)
    assert st.store(key, cert_value(a), T0).stored
    renewed = identity_mod.Identity(a.private_key, b.chain)    # b's chain: another key
    res = st.store(key, cert_value(renewed), T0 + 1, source="10.0.0.1")
    assert res.status is StoreStatus.REFUSED
    assert st.get(key) == [cert_value(a)]
    fresh = identity_mod._self_signed(a.private_key, "renewed")    # same key, new cert
    res = st.store(key, cert_value(identity_mod.Identity(a.private_key, (fresh,))), T0 + 2,
                   source="10.0.0.1")
    assert res.status is StoreStatus.EDITED, res.reason
