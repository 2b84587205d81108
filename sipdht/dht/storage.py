"""The value store of a DHT node: values per key, their lifetimes and quotas (the listeners
of a key are beside it, in listeners.py).

Sans-IO: every time is passed in as `now`, nothing here sleeps, sends or logs, so the
engine (and the tests) decide when time moves. The rules follow OpenDHT's storage
(`src/storage.h`, `src/dht.cpp`) and SecureDht's store/edit policy, as summarised in
docs/opendht-wire.md sections 2.5, 2.6 and 5.7-5.9.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Callable
from dataclasses import dataclass, field

from .infohash import InfoHash
from .values import (
    CERTIFICATE_TYPE,
    MAX_VALUE_SIZE,
    Query,
    Value,
    to_sign,
    type_expiration,
)

MAX_VALUES_PER_KEY = 65536
DEFAULT_MAX_TOTAL = 64 * 1024 * 1024
# What one stored value costs in CPython 3.11 besides its bytes (Value, StoredValue, dict and
# heap entries): measured 570 B in an existing key, 1030 B with a key of its own. Charged to
# the quota, so that empty values cannot fill memory for free.
VALUE_OVERHEAD = 1024
# One source IP may hold this many values in all, and this many under one key. OpenDHT has
# no such cap (only the 64 MiB quota and 65,536 values per key).
MAX_VALUES_PER_SOURCE = 8192
MAX_VALUES_PER_SOURCE_KEY = 256
# A remote value lives at most this long (OpenDHT's longest short type, 15 min), unless its
# type has a store check that proves it legitimate (a certificate at its key id). Otherwise
# anyone could keep any data for 7 days by calling it a type 4 or 8.
MAX_REMOTE_LIFETIME = 900.0

# Lazy heaps are rebuilt when stale entries outnumber live ones by this much.
_COMPACT_SLACK = 64


class StoreStatus(enum.Enum):
    NEW = "new"
    EDITED = "edited"
    REFRESHED = "refreshed"
    REFUSED = "refused"


@dataclass
class StoreResult:
    status: StoreStatus
    reason: str = ""  # why refused (too big, edit policy, quota, ...)
    # (key, value id) dropped by quota eviction, so listeners can be told "expired"
    evicted: list[tuple[InfoHash, int]] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return self.status is not StoreStatus.REFUSED


@dataclass
class StoredValue:
    value: Value
    created: float
    expiration: float
    source: str | None  # IP of a remote put; None for local puts (not under the remote quota)


# Key hashes a certificate's data may be stored at (empty when it is not a certificate).
CertificateKeys = Callable[[bytes], tuple[bytes, ...]]


class EditPolicy:
    """OpenDHT's store/edit policy. The composition root passes the checks that need crypto
    (see policies.py); without them signatures and certificates are not checked, as on a
    plain (non-secure) OpenDHT node."""

    def __init__(self, verify: Callable[[Value], bool] | None = None,
                 certificate_keys: CertificateKeys | None = None) -> None:
        self.verify = verify
        self.certificate_keys = certificate_keys

    def _signature_ok(self, value: Value) -> bool:
        return self.verify is None or self.verify(value)

    def _checks_certificate(self, value: Value) -> bool:
        return value.type == CERTIFICATE_TYPE and self.certificate_keys is not None

    def lifetime(self, value: Value, remote: bool) -> float:
        """How long the storer keeps a value: its type's lifetime, capped for remote values
        whose type has no store check."""
        life = type_expiration(value.type)
        if not remote or self._checks_certificate(value):
            return life
        return min(life, MAX_REMOTE_LIFETIME)

    def store_ok(self, key: InfoHash, value: Value) -> str | None:
        """None if a value with a new id may be stored, else the reason it may not."""
        if value.size() > MAX_VALUE_SIZE:
            return f"value too big ({value.size()} > {MAX_VALUE_SIZE} bytes)"
        if self._checks_certificate(value):
            assert self.certificate_keys is not None
            if bytes(key) not in self.certificate_keys(value.data):
                return "not a certificate whose key hashes to this key"
        if value.is_signed and not self._signature_ok(value):
            return "signature verification failed"
        return None

    def _certificate_edit_ok(self, old: Value, new: Value) -> str | None:
        """OpenDHT: a certificate is replaced only by a certificate of the same key."""
        assert self.certificate_keys is not None
        keys = self.certificate_keys(new.data)
        if not keys or keys != self.certificate_keys(old.data):
            return "certificate of another key"
        return None

    def edit_ok(self, key: InfoHash, old: Value, new: Value) -> str | None:
        """None if `new` may replace `old` (same id, different content), else the reason.

        Only the owner of a signed value may edit it, with an increasing seq; an equal seq
        is a re-announce and must sign the very same bytes.
        """
        if new.size() > MAX_VALUE_SIZE:
            return f"value too big ({new.size()} > {MAX_VALUE_SIZE} bytes)"
        if self._checks_certificate(old):
            return self._certificate_edit_ok(old, new)
        if not old.is_signed:
            return "unsigned value cannot be edited"
        if new.owner != old.owner:
            return "owner changed"
        if not self._signature_ok(new):
            return "signature verification failed"
        if new.seq < old.seq:
            return "sequence number must be increasing"
        if new.seq == old.seq and to_sign(new) != to_sign(old):
            return "same sequence number with different content"
        return None


@dataclass
class _Bucket:
    """Everything stored under one key; it lives while it has values."""
    values: dict[int, StoredValue] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)   # remote values per source IP

    @property
    def empty(self) -> bool:
        return not self.values


class Storage:
    """Values per key, with OpenDHT's lifetimes, edit rules and remote quota."""

    def __init__(self, max_total: int = DEFAULT_MAX_TOTAL, policy: EditPolicy | None = None,
                 max_per_key: int = MAX_VALUES_PER_KEY, value_overhead: int = VALUE_OVERHEAD,
                 max_per_source: int = MAX_VALUES_PER_SOURCE,
                 max_per_source_key: int = MAX_VALUES_PER_SOURCE_KEY) -> None:
        self.max_total = max_total
        self.policy = policy or EditPolicy()
        self.max_per_key = max_per_key
        self.value_overhead = value_overhead
        self.max_per_source = max_per_source
        self.max_per_source_key = max_per_source_key
        self._source_count: dict[str, int] = {}  # remote values per source IP
        self._buckets: dict[InfoHash, _Bucket] = {}
        self._total = 0
        self._remote = 0
        self._count = 0
        self._usage: dict[str, int] = {}  # remote bytes per source IP (only sources > 0)
        # Lazy heaps: entries are checked against the stored value when popped.
        self._exp_heap: list[tuple[float, int, InfoHash, int]] = []
        self._age_heaps: dict[str, list[tuple[float, int, InfoHash, int]]] = {}
        self._age_entries = 0  # live + stale entries over all age heaps
        self._tick = 0  # tie-breaker: insertion order among equal times

    # --- sizes -----------------------------------------------------------------------------

    @property
    def total_size(self) -> int:
        """Bytes charged for every value: its size plus VALUE_OVERHEAD."""
        return self._total

    @property
    def remote_size(self) -> int:
        """What remote values are charged; the quota applies to this."""
        return self._remote

    @property
    def value_count(self) -> int:
        return self._count

    def usage_by_source(self) -> dict[str, int]:
        return dict(self._usage)

    def keys(self) -> list[InfoHash]:
        """Keys with at least one stored value."""
        return list(self._buckets)

    # --- values ----------------------------------------------------------------------------

    def store(self, key: InfoHash, value: Value, now: float, source: str | None = None,
              created: float | None = None) -> StoreResult:
        """Store a put (local when source is None); the lifetime starts at min(created, now)."""
        start = now if created is None else min(created, now)
        if start + self.policy.lifetime(value, source is not None) <= now:
            return StoreResult(StoreStatus.REFUSED, "already expired")
        bucket = self._buckets.get(key)
        old = bucket.values.get(value.id) if bucket else None
        if old is not None:
            result = self._store_existing(key, old, value, start, source)
        else:
            result = self._store_new(key, value, start, source)
        if result.status is StoreStatus.REFUSED:
            return result
        return self._apply_quota(key, value.id, result)

    def _store_existing(self, key: InfoHash, old: StoredValue, value: Value, start: float,
                        source: str | None) -> StoreResult:
        if old.value.same_content(value):
            # A local re-put adopts the value, so the remote quota can no longer evict it.
            new_source = None if source is None else old.source
            end = self._end(value, start, new_source)
            fresh = StoredValue(old.value, start, max(old.expiration, end), new_source)
            self._replace(key, old, fresh)
            return StoreResult(StoreStatus.REFRESHED)
        reason = self.policy.edit_ok(key, old.value, value)
        if reason is not None:
            return StoreResult(StoreStatus.REFUSED, reason)
        self._replace(key, old, StoredValue(value, start, self._end(value, start, source), source))
        return StoreResult(StoreStatus.EDITED)

    def _store_new(self, key: InfoHash, value: Value, start: float,
                   source: str | None) -> StoreResult:
        reason = self.policy.store_ok(key, value)
        if reason is not None:
            return StoreResult(StoreStatus.REFUSED, reason)
        reason = self._room_for(key, source)
        if reason is not None:
            return StoreResult(StoreStatus.REFUSED, reason)
        self._replace(key, None, StoredValue(value, start, self._end(value, start, source), source))
        return StoreResult(StoreStatus.NEW)

    def _room_for(self, key: InfoHash, source: str | None) -> str | None:
        """None if one more value fits under key (for this source), else why not."""
        bucket = self._buckets.get(key)
        if bucket is not None and len(bucket.values) >= self.max_per_key:
            return "too many values for this key"
        if source is None:
            return None
        if self._source_count.get(source, 0) >= self.max_per_source:
            return "too many values from this source"
        if bucket is not None and bucket.by_source.get(source, 0) >= self.max_per_source_key:
            return "too many values from this source for this key"
        return None

    def _apply_quota(self, key: InfoHash, vid: int, result: StoreResult) -> StoreResult:
        """Evict over-quota remote values; a value that listeners never saw is not reported."""
        evicted = self._enforce_quota()
        if (key, vid) not in evicted:
            result.evicted = evicted
            return result
        if result.status is StoreStatus.NEW:
            evicted.remove((key, vid))
        return StoreResult(StoreStatus.REFUSED, "quota", evicted)

    def get(self, key: InfoHash, query: Query | None = None,
            now: float | None = None) -> list[Value]:
        """Values under key that match query.where and, if now is given, have not expired."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return []
        return [sv.value for sv in bucket.values.values()
                if (now is None or sv.expiration > now)
                and (query is None or query.matches(sv.value))]

    def get_stored(self, key: InfoHash, vid: int) -> StoredValue | None:
        bucket = self._buckets.get(key)
        return bucket.values.get(vid) if bucket else None

    def refresh(self, key: InfoHash, vid: int, now: float) -> bool | None:
        """A `refresh` query: None = unknown key (404), False = key known but not vid (OpenDHT still succeeds)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        old = bucket.values.get(vid)
        if old is None:
            return False
        end = max(old.expiration, self._end(old.value, now, old.source))
        self._replace(key, old, StoredValue(old.value, now, end, old.source))
        return True

    def expire(self, now: float) -> list[tuple[InfoHash, list[int]]]:
        """Remove values whose expiration is <= now; returns the removed ids per key."""
        removed: dict[InfoHash, list[int]] = {}
        heap = self._exp_heap
        while heap and heap[0][0] <= now:
            exp, _, key, vid = heapq.heappop(heap)
            sv = self.get_stored(key, vid)
            if sv is not None and sv.expiration == exp:
                self._remove(key, vid)
                removed.setdefault(key, []).append(vid)
        for key in removed:
            self._drop_if_empty(key)
        return list(removed.items())

    def next_expiration(self) -> float | None:
        """Earliest expiration of any stored value, for the engine's timer."""
        heap = self._exp_heap
        while heap:
            exp, _, key, vid = heap[0]
            sv = self.get_stored(key, vid)
            if sv is not None and sv.expiration == exp:
                return exp
            heapq.heappop(heap)
        return None

    # --- internals -------------------------------------------------------------------------

    def _end(self, value: Value, start: float, source: str | None) -> float:
        return start + self.policy.lifetime(value, source is not None)

    def _replace(self, key: InfoHash, old: StoredValue | None, new: StoredValue) -> None:
        """Put `new` in place of `old` (same id, same position), keeping every total right."""
        bucket = self._buckets.setdefault(key, _Bucket())
        if old is not None:
            self._account(bucket, old, -1)
        bucket.values[new.value.id] = new
        self._account(bucket, new, +1)
        self._push(key, new)

    def _remove(self, key: InfoHash, vid: int) -> StoredValue:
        bucket = self._buckets[key]
        sv = bucket.values.pop(vid)
        self._account(bucket, sv, -1)
        return sv

    def _drop_if_empty(self, key: InfoHash) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.empty:
            del self._buckets[key]

    def _account(self, bucket: _Bucket, sv: StoredValue, sign: int) -> None:
        size = (sv.value.size() + self.value_overhead) * sign
        self._total += size
        self._count += sign
        if sv.source is None:
            return
        self._remote += size
        _add(self._usage, sv.source, size)
        _add(self._source_count, sv.source, sign)
        _add(bucket.by_source, sv.source, sign)

    def _push(self, key: InfoHash, sv: StoredValue) -> None:
        self._tick += 1
        vid = sv.value.id
        heapq.heappush(self._exp_heap, (sv.expiration, self._tick, key, vid))
        if sv.source is not None:
            heap = self._age_heaps.setdefault(sv.source, [])
            heapq.heappush(heap, (sv.created, self._tick, key, vid))
            self._age_entries += 1
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Rebuild the lazy heaps once stale entries dominate, so memory stays O(values)."""
        if len(self._exp_heap) + self._age_entries <= 4 * self._count + _COMPACT_SLACK:
            return
        self._exp_heap = []
        self._age_heaps = {}
        self._age_entries = 0
        for key, bucket in self._buckets.items():
            for vid, sv in bucket.values.items():
                self._tick += 1
                self._exp_heap.append((sv.expiration, self._tick, key, vid))
                if sv.source is not None:
                    heap = self._age_heaps.setdefault(sv.source, [])
                    heap.append((sv.created, self._tick, key, vid))
                    self._age_entries += 1
        heapq.heapify(self._exp_heap)
        for heap in self._age_heaps.values():
            heapq.heapify(heap)

    def _enforce_quota(self) -> list[tuple[InfoHash, int]]:
        """While remote data is over the cap, drop the oldest value of the heaviest source."""
        evicted: list[tuple[InfoHash, int]] = []
        while self._remote > self.max_total and self._usage:
            source = max(self._usage, key=self._usage.__getitem__)
            key, vid = self._pop_oldest(source)
            self._remove(key, vid)
            self._drop_if_empty(key)
            evicted.append((key, vid))
        return evicted

    def _pop_oldest(self, source: str) -> tuple[InfoHash, int]:
        heap = self._age_heaps[source]
        while True:
            created, _, key, vid = heapq.heappop(heap)
            self._age_entries -= 1
            sv = self.get_stored(key, vid)
            if sv is not None and sv.source == source and sv.created == created:
                return key, vid


def _add(counts: dict[str, int], source: str, n: int) -> None:
    """Add n to a per-source counter, forgetting sources that drop to zero."""
    total = counts.get(source, 0) + n
    if total > 0:
        counts[source] = total
    else:
        counts.pop(source, None)
