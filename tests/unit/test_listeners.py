"""The listeners we serve (listeners.py): subscriptions per key, their expiry, and the index
per source IP that the caps read, which must hold exactly what the records hold."""

from __future__ import annotations

from sipdht.dht.infohash import InfoHash
from sipdht.dht.listeners import Listener, Listeners
from sipdht.dht.values import FIELD_TYPE, Query
from tests.harness.engine import LA, T0, A, H, engine, feed, listen, query, to, token_for

K = InfoHash.get("key")
K2 = InfoHash.get("other key")


def listener(node: bytes = b"n1", sid: int = 1, refreshed: float = T0, **kw) -> Listener:
    fields = dict(addr=("10.0.0.1", 4222), query=Query(), version=1)
    fields.update(kw)
    return Listener(node_id=node, sid=sid, refreshed=refreshed, **fields)


def test_listener_add_refresh_remove() -> None:
    ls = Listeners()
    assert ls.add(K, listener(b"n1", 1)) is True
    assert ls.add(K, listener(b"n1", 2)) is True
    assert ls.add(K, listener(b"n2", 1)) is True
    q = Query(where=((FIELD_TYPE, 5),))
    assert ls.add(K, listener(b"n1", 1, refreshed=T0 + 5, query=q, version=0,
                              addr=("10.0.0.2", 1))) is False
    held = ls.of(K)
    assert len(held) == 3 and ls.count() == 3 and ls.count(K) == 3
    first = next(x for x in held if x.node_id == b"n1" and x.sid == 1)
    assert (first.query, first.version, first.refreshed, first.addr) == (q, 0, T0 + 5, ("10.0.0.2", 1))
    ls.remove(K, b"n1", 2)
    assert {(x.node_id, x.sid) for x in ls.of(K)} == {(b"n1", 1), (b"n2", 1)}
    ls.remove(K, b"nobody", 9)  # unknown: no error
    ls.remove(K2, b"n1", 1)
    assert ls.of(K2) == [] and ls.count() == 2


def test_listeners_expire() -> None:
    ls = Listeners()
    ls.add(K, listener(b"old", 1, refreshed=T0))
    ls.add(K, listener(b"new", 1, refreshed=T0 + 300))
    ls.add(K2, listener(b"old", 2, refreshed=T0))
    assert ls.expire(T0 + 600) == []
    assert sorted((k, x.node_id) for k, x in ls.expire(T0 + 601)) == sorted(
        [(K, b"old"), (K2, b"old")])
    assert [x.node_id for x in ls.of(K)] == [b"new"]
    assert ls.of(K2) == []
    assert len(ls.expire(T0 + 1000, max_age=100)) == 1
    assert ls.of(K) == [] and ls.count() == 0


def test_caps_per_ip_and_per_key_count_what_is_held() -> None:
    ls = Listeners(max_per_ip=3, max_per_key=4)
    ip1 = ("10.0.0.1", 1)
    assert [ls.subscribe(K, listener(b"a%d" % i, addr=ip1)) for i in range(4)] == [
        True, True, True, None]                          # the IP's fourth is refused
    assert ls.subscribe(K, listener(b"a0", addr=ip1, refreshed=T0 + 1)) is False   # refreshed
    # the same subscription from another IP moves its place in the index with it
    assert ls.subscribe(K, listener(b"a0", addr=("10.0.0.2", 1))) is False
    assert ls.subscribe(K, listener(b"a3", addr=ip1)) is True
    assert ls.subscribe(K, listener(b"b0", addr=("10.0.0.3", 1))) is None    # key full
    assert ls.subscribe(K2, listener(b"b0", addr=("10.0.0.3", 1))) is True
    # dropping and expiring free the IP's room
    ls.drop(K, ls.of(K)[-1])
    assert ls.subscribe(K2, listener(b"a9", addr=ip1)) is True
    assert ls.subscribe(K2, listener(b"a8", addr=ip1)) is None
    assert len(ls.expire(T0 + 1000)) == 5 and ls.count() == 0
    assert [ls.subscribe(K, listener(b"c%d" % i, addr=ip1, refreshed=T0 + 1000))
            for i in range(4)] == [True, True, True, None]


def test_a_stale_drop_keeps_the_subscription_that_replaced_it() -> None:
    ls = Listeners()
    old = listener(b"n1", 1)
    ls.subscribe(K, old)
    ls.remove(K, b"n1", 1)
    ls.subscribe(K, listener(b"n1", 1, refreshed=T0 + 5))
    ls.drop(K, old)                 # its unanswered update: not the current subscription
    assert ls.count(K) == 1


def test_refresh_on_a_key_held_for_listeners_only_is_no_404() -> None:
    """A key we hold listeners for is storage OpenDHT knows (one entry holds values and
    listeners): a refresh of an unknown value there succeeds, as it does where values are."""
    e = engine()
    listen(e)
    outs = feed(e, query("refresh", 3, h=H, vid=1, token=token_for(e)))
    [out] = to(outs, A)
    assert out.obj["y"] == "r" and out.obj["r"]["vid"] == 1
    [update] = to(outs, LA)         # its listener is told, as for a known value
    assert update.obj["q"] == "update" and update.obj["a"]["re"] == [1]
    other = InfoHash.get("nobody listens here")
    [out] = feed(e, query("refresh", 4, h=other, vid=1, token=token_for(e)))
    assert out.obj["e"][0] == 404
    assert e.listeners.count(H) == 1
