"""Behaviour of the value store: lifetimes, edit policy, quota, queries."""

from __future__ import annotations

import pytest

from sipdht.dht.infohash import InfoHash
from sipdht.dht.storage import (
    EditPolicy,
    Storage,
    StoreStatus,
)
from sipdht.dht.values import FIELD_ID, FIELD_TYPE, MAX_VALUE_SIZE, Query, Value

K = InfoHash.get("key")
K2 = InfoHash.get("other key")
T0 = 1000.0


def signed(vid: int = 7, seq: int = 1, owner: bytes = b"K1", data: bytes = b"d",
           sig: bytes = b"s") -> Value:
    return Value(id=vid, owner=owner, seq=seq, signature=sig, data=data)


def verify_good_sigs(value: Value) -> bool:
    """Fake verifier: a signature is valid when it is not b"bad"."""
    return value.signature != b"bad"


def secure_storage(**kwargs) -> Storage:
    return Storage(policy=EditPolicy(verify_good_sigs), **kwargs)


# --- store / get / lifetimes ---------------------------------------------------------------


@pytest.mark.parametrize("vtype, lifetime", [(5, 60.0), (0, 600.0), (1234, 600.0)])
def test_value_expires_after_its_type_lifetime(vtype: int, lifetime: float) -> None:
    st = Storage()
    v = Value(id=1, type=vtype, data=b"x")
    assert st.store(K, v, T0).status is StoreStatus.NEW
    assert st.get_stored(K, 1).expiration == T0 + lifetime
    assert st.get(K, now=T0 + lifetime - 1) == [v]
    assert st.get(K, now=T0 + lifetime) == []
    assert st.expire(T0 + lifetime - 1) == []
    assert st.expire(T0 + lifetime) == [(K, [1])]
    assert st.get(K) == []
    assert st.keys() == []
    assert st.value_count == 0 and st.total_size == 0


def test_get_unknown_key_is_empty() -> None:
    assert Storage().get(K) == []
    assert Storage().get_stored(K, 1) is None


def test_created_in_the_past_shortens_life() -> None:
    st = Storage()
    st.store(K, Value(id=1, data=b"x"), T0, created=T0 - 500)
    sv = st.get_stored(K, 1)
    assert sv.created == T0 - 500
    assert sv.expiration == T0 + 100


def test_created_in_the_future_counts_from_now() -> None:
    st = Storage()
    st.store(K, Value(id=1), T0, created=T0 + 500)
    assert st.get_stored(K, 1).expiration == T0 + 600


def test_value_already_expired_by_created_is_refused() -> None:
    st = Storage()
    res = st.store(K, Value(id=1), T0, created=T0 - 600)
    assert res.status is StoreStatus.REFUSED
    assert st.get(K) == []


def test_identical_restore_refreshes_and_extends() -> None:
    st = Storage()
    v = Value(id=1, data=b"x")
    st.store(K, v, T0)
    res = st.store(K, Value(id=1, data=b"x"), T0 + 300)
    assert res.status is StoreStatus.REFRESHED
    sv = st.get_stored(K, 1)
    assert sv.created == T0 + 300
    assert sv.expiration == T0 + 900
    assert st.value_count == 1
    assert st.expire(T0 + 600) == []
    assert st.get(K, now=T0 + 899) == [v]


def test_restore_never_shortens_expiration() -> None:
    st = Storage()
    st.store(K, Value(id=1), T0)
    st.store(K, Value(id=1), T0 + 10, created=T0 - 100)
    assert st.get_stored(K, 1).expiration == T0 + 600


def test_values_keep_insertion_order_across_edits() -> None:
    st = secure_storage()
    st.store(K, signed(vid=1), T0)
    st.store(K, Value(id=2), T0)
    st.store(K, signed(vid=1, seq=2, data=b"new"), T0)
    assert [v.id for v in st.get(K)] == [1, 2]
    assert st.get(K)[0].data == b"new"


def test_value_over_64k_refused() -> None:
    st = Storage()
    assert st.store(K, Value(id=1, data=bytes(MAX_VALUE_SIZE)), T0).status is StoreStatus.NEW
    res = st.store(K, Value(id=2, data=bytes(MAX_VALUE_SIZE + 1)), T0)
    assert res.status is StoreStatus.REFUSED
    assert "big" in res.reason
    assert [v.id for v in st.get(K)] == [1]


def test_per_key_limit() -> None:
    st = Storage(max_per_key=2)
    st.store(K, Value(id=1), T0)
    st.store(K, Value(id=2), T0)
    assert st.store(K, Value(id=3), T0).status is StoreStatus.REFUSED
    assert st.store(K2, Value(id=3), T0).status is StoreStatus.NEW
    # an existing id can still be refreshed at the limit
    assert st.store(K, Value(id=2), T0 + 1).status is StoreStatus.REFRESHED


# --- edit policy ---------------------------------------------------------------------------


def test_unsigned_value_cannot_be_edited() -> None:
    st = secure_storage()
    st.store(K, Value(id=1, data=b"a"), T0)
    res = st.store(K, Value(id=1, data=b"b"), T0)
    assert res.status is StoreStatus.REFUSED
    assert res.reason == "unsigned value cannot be edited"
    assert st.get(K)[0].data == b"a"


def test_signed_edit_with_higher_seq_same_owner_accepted() -> None:
    st = secure_storage()
    st.store(K, signed(seq=1, data=b"a"), T0)
    res = st.store(K, signed(seq=2, data=b"b"), T0 + 100)
    assert res.status is StoreStatus.EDITED
    sv = st.get_stored(K, 7)
    assert sv.value.data == b"b" and sv.value.seq == 2
    assert sv.created == T0 + 100 and sv.expiration == T0 + 700


def test_signed_edit_with_lower_seq_refused() -> None:
    st = secure_storage()
    st.store(K, signed(seq=2, data=b"a"), T0)
    assert st.store(K, signed(seq=1, data=b"b"), T0).status is StoreStatus.REFUSED
    assert st.get(K)[0].seq == 2


def test_equal_seq_with_different_content_refused() -> None:
    st = secure_storage()
    st.store(K, signed(seq=3, data=b"a"), T0)
    assert st.store(K, signed(seq=3, data=b"b"), T0).status is StoreStatus.REFUSED
    assert st.get(K)[0].data == b"a"


def test_equal_seq_same_signed_bytes_new_signature_accepted() -> None:
    """A re-announce: same ToSign bytes, another (valid) signature packs differently."""
    st = secure_storage()
    st.store(K, signed(seq=3, sig=b"s1"), T0)
    res = st.store(K, signed(seq=3, sig=b"s2"), T0)
    assert res.status is StoreStatus.EDITED
    assert st.get(K)[0].signature == b"s2"


def test_edit_by_different_owner_refused() -> None:
    st = secure_storage()
    st.store(K, signed(seq=1, owner=b"K1"), T0)
    res = st.store(K, signed(seq=5, owner=b"K2", data=b"evil"), T0)
    assert res.status is StoreStatus.REFUSED
    assert st.get(K)[0].owner == b"K1"


def test_unsigned_replacement_of_signed_value_refused() -> None:
    st = secure_storage()
    st.store(K, signed(seq=1), T0)
    res = st.store(K, Value(id=7, data=b"plain"), T0)
    assert res.status is StoreStatus.REFUSED
    assert st.get(K)[0].is_signed


def test_failing_verify_refuses_new_signed_value() -> None:
    st = secure_storage()
    res = st.store(K, signed(sig=b"bad"), T0)
    assert res.status is StoreStatus.REFUSED
    assert "signature" in res.reason
    assert st.get(K) == []
    assert st.keys() == []


def test_failing_verify_refuses_edit() -> None:
    st = secure_storage()
    st.store(K, signed(seq=1, data=b"a"), T0)
    res = st.store(K, signed(seq=2, data=b"b", sig=b"bad"), T0)
    assert res.status is StoreStatus.REFUSED
    assert st.get(K)[0].data == b"a"


def test_verify_always_false_refuses_new_and_edit() -> None:
    st = Storage(policy=EditPolicy(lambda v: False))
    assert st.store(K, signed(), T0).status is StoreStatus.REFUSED
    assert st.store(K, Value(id=1), T0).status is StoreStatus.NEW  # unsigned: nothing to verify
    # an edit whose new signature does not verify (the old one did, when stored)
    st2 = Storage(policy=EditPolicy(lambda v: v.seq < 2))
    assert st2.store(K, signed(seq=1, data=b"a"), T0).status is StoreStatus.NEW
    res = st2.store(K, signed(seq=2, data=b"b"), T0)
    assert res.status is StoreStatus.REFUSED
    assert "signature" in res.reason
    assert st2.get(K)[0].data == b"a"


def test_without_verifier_signatures_are_not_checked() -> None:
    st = Storage()
    assert st.store(K, signed(seq=1, data=b"a", sig=b"bad"), T0).status is StoreStatus.NEW
    assert st.store(K, signed(seq=2, data=b"b", sig=b"bad"), T0).status is StoreStatus.EDITED
    assert st.store(K, signed(seq=1, data=b"c"), T0).status is StoreStatus.REFUSED


def test_edit_policy_direct() -> None:
    pol = EditPolicy(verify_good_sigs)
    assert pol.store_ok(K, signed()) is None
    assert pol.edit_ok(K, signed(seq=1), signed(seq=2, data=b"x")) is None
    assert pol.edit_ok(K, signed(seq=2), signed(seq=1, data=b"x")) is not None
    assert pol.edit_ok(K, Value(id=7), Value(id=7, data=b"x")) == "unsigned value cannot be edited"


def test_edit_to_oversized_value_refused() -> None:
    st = secure_storage()
    st.store(K, signed(seq=1), T0)
    res = st.store(K, signed(seq=2, data=bytes(MAX_VALUE_SIZE + 1)), T0)
    assert res.status is StoreStatus.REFUSED


# --- refresh -------------------------------------------------------------------------------


def test_refresh_rules() -> None:
    st = Storage()
    assert st.refresh(K, 1, T0) is None  # nothing stored under K: 404
    st.store(K, Value(id=1, type=5), T0)
    assert st.refresh(K, 2, T0 + 10) is False  # key known, id unknown: still success
    assert st.refresh(K, 1, T0 + 50) is True
    sv = st.get_stored(K, 1)
    assert sv.created == T0 + 50
    assert sv.expiration == T0 + 110
    assert st.next_expiration() == T0 + 110
    assert st.expire(T0 + 60) == []
    assert st.expire(T0 + 110) == [(K, [1])]
    assert st.refresh(K, 1, T0 + 120) is None


def test_refresh_does_not_shorten() -> None:
    st = Storage()
    st.store(K, Value(id=1, type=5), T0)
    st.refresh(K, 1, T0 - 30)
    assert st.get_stored(K, 1).expiration == T0 + 60


# --- quota (value_overhead=0: these count data bytes only) ------------------------------


def blob(vid: int, size: int = 100) -> Value:
    return Value(id=vid, data=bytes(size))


def test_quota_reelects_heaviest_source_after_each_eviction() -> None:
    st = Storage(max_total=500, value_overhead=0)
    st.store(K, blob(1), T0 + 1, source="10.0.0.1")
    st.store(K, blob(2), T0 + 2, source="10.0.0.2")
    st.store(K2, blob(3), T0 + 3, source="10.0.0.2")
    st.store(K, blob(4), T0 + 4, source="10.0.0.2")
    assert st.usage_by_source() == {"10.0.0.1": 100, "10.0.0.2": 300}
    res = st.store(K, blob(6, 250), T0 + 6, source="10.0.0.1")
    # 650: .1 is heaviest (350) -> its oldest (1) goes; 550: now .2 (300) -> its oldest (2)
    assert res.status is StoreStatus.NEW
    assert res.evicted == [(K, 1), (K, 2)]
    assert st.remote_size == 450
    assert st.usage_by_source() == {"10.0.0.1": 250, "10.0.0.2": 200}


def test_quota_eviction_uses_created_not_arrival_order() -> None:
    st = Storage(max_total=250, value_overhead=0)
    st.store(K, blob(1), T0, source="1.1.1.1")
    st.store(K, blob(2), T0, source="1.1.1.1", created=T0 - 100)
    res = st.store(K, blob(3), T0 + 1, source="1.1.1.1")
    assert res.evicted == [(K, 2)]


def test_quota_eviction_order_and_reporting() -> None:
    st = Storage(max_total=500, value_overhead=0)
    st.store(K, blob(1), T0 + 1, source="10.0.0.1")
    st.store(K, blob(2), T0 + 2, source="10.0.0.2")
    st.store(K2, blob(3), T0 + 3, source="10.0.0.2")
    st.store(K, blob(4), T0 + 4, source="10.0.0.2")
    st.store(K, blob(5, 1000), T0 + 5)  # local
    res = st.store(K, blob(6, 150), T0 + 6, source="10.0.0.3")
    # 550 > 500: 10.0.0.2 uses the most (300); its oldest value (2) goes first
    assert res.status is StoreStatus.NEW
    assert res.evicted == [(K, 2)]
    assert st.remote_size == 450
    assert st.usage_by_source() == {"10.0.0.1": 100, "10.0.0.2": 200, "10.0.0.3": 150}
    assert sorted(v.id for v in st.get(K)) == [1, 4, 5, 6]
    assert st.total_size == 1450
    res = st.store(K, blob(7, 250), T0 + 7, source="10.0.0.3")
    # 700: .3 is heaviest (400) -> 6 goes (300 left); .2 and .3 now... 600 > 500: .3 300 vs .2 200
    # -> 7 would go next, i.e. the new value itself
    assert res.status is StoreStatus.REFUSED
    assert res.reason == "quota"
    assert res.evicted == [(K, 6)]  # the new value was never seen, so it is not reported
    assert st.get_stored(K, 7) is None
    assert st.get_stored(K, 5) is not None  # local survives
    assert st.remote_size <= 500


def test_local_values_never_evicted() -> None:
    st = Storage(max_total=100, value_overhead=0)
    st.store(K, blob(1, 5000), T0)
    st.store(K, blob(2, 90), T0, source="10.0.0.9")
    assert st.remote_size == 90
    res = st.store(K, blob(3, 80), T0 + 1, source="10.0.0.8")
    assert res.evicted == [(K, 2)]  # 10.0.0.9 is heaviest; the bigger local value is ignored
    assert st.get_stored(K, 1) is not None
    assert st.remote_size == 80
    assert st.total_size == 5080


def test_eviction_reports_empty_key_and_drops_it() -> None:
    st = Storage(max_total=150, value_overhead=0)
    st.store(K2, blob(1), T0, source="1.1.1.1")
    res = st.store(K, blob(2), T0 + 1, source="1.1.1.1")
    assert res.evicted == [(K2, 1)]
    assert st.keys() == [K]


def test_local_restore_protects_remote_value_from_eviction() -> None:
    st = Storage(max_total=150, value_overhead=0)
    st.store(K, blob(1), T0, source="1.1.1.1")
    assert st.store(K, blob(1), T0 + 1).status is StoreStatus.REFRESHED
    assert st.get_stored(K, 1).source is None
    assert st.remote_size == 0
    st.store(K, blob(2), T0 + 2, source="1.1.1.1")
    st.store(K, blob(3), T0 + 3, source="1.1.1.1")
    assert st.get_stored(K, 1) is not None


# --- a key is forgotten with its last value ------------------------------------------------


def test_expired_key_is_forgotten() -> None:
    """(Listeners are kept beside the store: test_listeners.py.)"""
    st = Storage()
    st.store(K, Value(id=1, type=5), T0)
    st.store(K2, Value(id=2, type=5), T0)
    assert sorted(st.expire(T0 + 60)) == sorted([(K, [1]), (K2, [2])])
    assert st.refresh(K, 1, T0 + 61) is None
    assert st.refresh(K2, 2, T0 + 61) is None
    assert st.keys() == []


# --- next_expiration -----------------------------------------------------------------------


def test_next_expiration_tracks_stores_and_expiries() -> None:
    st = Storage()
    assert st.next_expiration() is None
    st.store(K, Value(id=1, type=0), T0)
    assert st.next_expiration() == T0 + 600
    st.store(K, Value(id=2, type=5), T0 + 10)
    assert st.next_expiration() == T0 + 70
    st.store(K2, Value(id=3, type=1), T0)
    assert st.next_expiration() == T0 + 70
    assert st.expire(T0 + 70) == [(K, [2])]
    assert st.next_expiration() == T0 + 300
    st.refresh(K2, 3, T0 + 400)  # 300 -> 700
    assert st.next_expiration() == T0 + 600
    st.expire(T0 + 600)
    assert st.next_expiration() == T0 + 700
    st.expire(T0 + 700)
    assert st.next_expiration() is None


def test_next_expiration_after_eviction_and_edit() -> None:
    st = Storage(max_total=150, policy=EditPolicy(verify_good_sigs), value_overhead=0)
    st.store(K, Value(id=1, type=5, data=bytes(100)), T0, source="1.1.1.1")
    st.store(K, Value(id=2, type=0, data=bytes(100)), T0 + 1, source="1.1.1.1")
    assert st.get_stored(K, 1) is None
    assert st.next_expiration() == T0 + 601
    st.store(K2, signed(vid=9, seq=1), T0)
    st.store(K2, signed(vid=9, seq=2, data=b"e"), T0 + 100)
    assert st.next_expiration() == T0 + 601
    st.expire(T0 + 601)
    assert st.next_expiration() == T0 + 700


def test_many_refreshes_keep_heaps_bounded() -> None:
    st = Storage(max_total=10_000, value_overhead=0)
    for i in range(20):
        st.store(K, blob(i, 10), T0, source="1.1.1.1")
    for t in range(1, 2000):
        st.refresh(K, t % 20, T0 + t)
    assert len(st._exp_heap) + st._age_entries <= 4 * st.value_count + 64
    assert st.next_expiration() == T0 + 1980 + 600
    assert st.remote_size == 200


# --- queries -------------------------------------------------------------------------------


def test_query_where_filters_by_id_and_type() -> None:
    st = Storage()
    st.store(K, Value(id=1, type=0), T0)
    st.store(K, Value(id=2, type=5), T0)
    st.store(K, Value(id=3, type=5), T0)
    assert [v.id for v in st.get(K, Query(where=((FIELD_ID, 2),)))] == [2]
    assert [v.id for v in st.get(K, Query(where=((FIELD_TYPE, 5),)))] == [2, 3]
    assert st.get(K, Query(where=((FIELD_TYPE, 5), (FIELD_ID, 1)))) == []
    assert [v.id for v in st.get(K, Query())] == [1, 2, 3]
    assert [v.id for v in st.get(K, Query(where=((FIELD_TYPE, 5),)), now=T0 + 60)] == []
