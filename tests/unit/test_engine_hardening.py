"""Attacks and defects on the DHT engine, each reproduced with synthetic datagrams.

Every test here failed on the engine before its fix (see the commit that added it).
"""

from __future__ import annotations

from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import encode_reply, pack_nodes
from tests.unit.test_engine import ME, OTHER, T0, B, drain, engine, feed

PLANTED = InfoHash(b"\x66" * 20)


def all_addrs(e: DhtEngine) -> list[tuple[str, int]]:
    nodes = [n for t in e.tables.values() for n in t.nodes()]
    cached = [b.cached for t in e.tables.values() for b in t.buckets if b.cached is not None]
    return [n.addr for n in nodes + cached]


# --- 1. one learning path: loopback nodes from a remote peer -------------------------------


def test_bucket_refresh_reply_cannot_plant_loopback_nodes() -> None:
    """A maintenance `find` reply (the `_learn_reply` path) used to insert 127.0.0.1 as sent."""
    e = engine()
    e.ping(B, T0)
    [ping] = drain(e, maintenance=True)
    feed(e, encode_reply(ping.msg.tid, {"id": OTHER}), B)
    e.tables[4].buckets[0].time = float("-inf")      # stale: maintenance will refresh it
    now = T0 + 700
    e.handle_timer(now)
    finds = [o for o in drain(e, now, maintenance=True)
             if o.obj.get("q") == "find" and o.obj["a"]["target"] != bytes(ME)]
    assert finds, "maintenance sent no bucket-refresh find"
    planted = [(PLANTED, ("127.0.0.1", 4222)), (InfoHash(b"\x67" * 20), ("127.0.0.1", 22))]
    for f in finds:
        e.receive_datagram(encode_reply(f.msg.tid, {"id": OTHER, "n4": pack_nodes(planted, 4)}),
                           f.dst, now)
    addrs = all_addrs(e)
    assert not [a for a in addrs if a[0].startswith("127.")], addrs
    # as in a search reply, a loopback entry stands for the sender's own IP
    assert (B[0], 4222) in addrs and ME not in [n.id for n in e.tables[4].nodes()]
