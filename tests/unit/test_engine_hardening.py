"""Attacks and defects on the DHT engine, each reproduced with synthetic datagrams.

Every test here failed on the engine before its fix (see the commit that added it).
"""

from __future__ import annotations

from collections import Counter

from sipdht.dht import events as ev
from sipdht.dht.engine import DhtEngine
from sipdht.dht.fragments import MTU
from sipdht.dht.infohash import InfoHash
from sipdht.dht.listeners import MAX_LISTENERS_PER_IP, MAX_LISTENERS_PER_KEY
from sipdht.dht.messages import encode_query, encode_reply, pack_nodes
from sipdht.dht.serving import MAX_REPLY_BYTES, MAX_REPLY_IDS, MAX_REPLY_VALUES
from sipdht.dht.storage import MAX_VALUES_PER_SOURCE_KEY
from sipdht.dht.values import Value, pack, packb
from tests.harness.engine import (
    ME,
    OTHER,
    T0,
    A,
    B,
    H,
    Net,
    connected_pair,
    drain,
    engine,
    events,
    feed,
    put,
    query,
    token_for,
)


def prove(e: DhtEngine, addr) -> None:
    """addr answers one of our requests: it has proven it receives at that address."""
    e.ping(addr, T0)
    [ping] = [o for o in drain(e, maintenance=True) if o.dst == addr]
    e.receive_datagram(encode_reply(ping.msg.tid, {"id": InfoHash(b"\x44" * 20)}), addr, T0)
    drain(e)

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


# --- 3. key poisoning: ~1,000 junk values on one key ---------------------------------------

JUNK = 1000


def junk(i: int) -> Value:
    return Value(id=10_000 + i, data=bytes([i % 251]) * 680)          # ~0.7 MB in all


def poison(e: DhtEngine, many_sources: bool = True) -> int:
    """Junk straight into storage, as if put by 200 IPs (under storage's per-IP cap) or
    by one; returns how many values were kept."""
    kept = 0
    for i in range(JUNK):
        src = f"198.51.100.{i % 200 + 1}" if many_sources else "198.51.100.1"
        kept += e.storage.store(H, junk(i), T0, source=src).stored
    assert kept == JUNK or not many_sources
    return kept


class LossyNet(Net):
    """A receive queue of QUEUE datagrams per node per round, like a socket buffer:
    a burst beyond it is lost (what made a poisoned key's one-burst get reply fail)."""

    QUEUE = 256

    def pump(self, now: float, rounds: int = 2000, drop=lambda src, data, dst: False) -> None:
        super().pump(now, rounds, drop)

    def deliver(self, batch, now: float, drop) -> None:
        queued: Counter = Counter()

        def lost(src, data, dst) -> bool:
            queued[dst] += 1
            return queued[dst] > self.QUEUE or drop(src, data, dst)

        super().deliver(batch, now, lost)


def run_until(net: Net, start: float, done, limit: float = 30.0) -> float:
    """Pump and advance every engine's timers in 0.1 s steps until done() holds."""
    t = start
    net.pump(t)
    while not done() and t < start + limit:
        t += 0.1
        for e in net.nodes.values():
            e.handle_timer(t)
        net.pump(t)
    return t


def lossy_pair(cli_id: bytes = b"\xb0" * 20) -> tuple[LossyNet, DhtEngine, DhtEngine]:
    srv, cli = DhtEngine(InfoHash(b"\xa0" * 20), now=T0), DhtEngine(InfoHash(cli_id), now=T0)
    net = LossyNet(srv=srv, cli=cli)
    cli.add_known_node(srv.id, net.addr(srv), T0)
    net.pump(T0)
    events(cli)
    return net, srv, cli


def test_put_on_a_poisoned_key_is_stored() -> None:
    net, srv, cli = lossy_pair()
    poison(srv)
    genuine = Value(id=7, data=b"the real contact record")
    op = cli.put(H, genuine, T0)
    got: list = []
    run_until(net, T0, lambda: got.extend(events(cli)) or any(
        isinstance(x, ev.PutDone) for x in got))
    assert [x for x in got if isinstance(x, ev.PutDone)] == [ev.PutDone(op, 1)]
    assert srv.storage.get_stored(H, 7).value == genuine
    sent = sum(len(d) for src, dst, d in net.log if src == net.addr(srv))
    assert sent < 20_000, f"the storer sent {sent} bytes for one put"


def test_get_on_a_poisoned_key_returns_the_genuine_value() -> None:
    net, srv, cli = lossy_pair()
    poison(srv)
    genuine = Value(id=7, data=b"the real contact record")
    srv.storage.store(H, genuine, T0, source="203.0.113.99")
    op = cli.get(H, T0)
    got: list = []
    run_until(net, T0, lambda: got.extend(events(cli)) or any(
        isinstance(x, ev.GetDone) for x in got), limit=60)
    values = [v for x in got if isinstance(x, ev.GetValues) and x.op == op for v in x.values]
    assert genuine in values
    assert [x.ok for x in got if isinstance(x, ev.GetDone)] == [True]


def test_plain_get_reply_is_capped_and_fair_to_sources() -> None:
    """One burst per get, whatever is stored: a few values, at most a few tens of KB, and
    a value from a lone source is in it even after 1,000 from another."""
    e = engine(prove=False)
    assert poison(e, many_sources=False) > MAX_REPLY_VALUES
    genuine = Value(id=7, data=b"genuine")
    e.storage.store(H, genuine, T0 + 1, source="203.0.113.99")
    prove(e, A)
    outs = feed(e, query("get", 5, h=H), A, T0 + 1)
    assert sum(len(o.raw) for o in outs) <= MAX_REPLY_BYTES + 2 * MTU
    head = outs[0].msg
    assert 0 < len(head.values or head.value_sizes or []) <= MAX_REPLY_VALUES
    e2 = engine()
    got = e2.reassembler
    msg = None
    for o in outs:
        msg = e2._reassemble(o.msg, A, T0) or msg
    assert msg is not None and genuine in msg.values and got.dropped == 0


def test_id_listing_is_capped() -> None:
    e = engine(prove=False)
    poison(e)
    for i in range(200):
        e.storage.store(H, junk(JUNK + i), T0, source="198.51.100.250")
    prove(e, A)
    [out] = feed(e, query("get", 5, h=H, q={"s": [1, 4], "w": []}), A)
    rows = out.msg.fields.rows
    assert 0 < len(rows) <= MAX_REPLY_IDS and len(out.raw) < 16_000


def test_one_ip_cannot_fill_a_key() -> None:
    """Storage's per-IP cap (storage.py) holds for puts that come over the wire."""
    e = engine()
    tok = token_for(e, A)
    count = MAX_VALUES_PER_SOURCE_KEY + 50
    for i in range(count):
        feed(e, query("put", i + 1, h=H, token=tok, values=[pack(junk(i))]), A)
    mine = len(e.storage.get(H, now=T0))
    assert mine == MAX_VALUES_PER_SOURCE_KEY
    assert e.stats["store_refused"] == count - mine
    put(e, [Value(id=7, data=b"genuine")], addr=B, sender=OTHER)
    assert e.storage.get_stored(H, 7) is not None
    # a source's values that expire free its share again
    e.handle_timer(T0 + 601)
    feed(e, query("put", 999, h=H, token=token_for(e, A, T0 + 601), values=[pack(junk(5000))]),
         A, T0 + 601)
    assert e.storage.get_stored(H, junk(5000).id) is not None


def test_silent_close_nodes_do_not_kill_a_search() -> None:
    """Nodes that queried us (e.g. junk putters with random ids) sit in the routing table,
    closer to the key than any real node: once they time out the search must go on with
    the real ones instead of refusing them as farther than its 14 (failed) nodes."""
    net, srv, cli = lossy_pair(bytes(H)[:-1] + bytes([bytes(H)[-1] ^ 1]))   # we sit near H
    for i in range(40):                 # queries from silent strangers closer to H than srv
        nid = InfoHash(bytes(H)[:2] + bytes([i * 6]) + bytes(17))
        cli.receive_datagram(query("ping", 50 + i, sender=nid), (f"198.51.100.{i + 1}", 4222), T0)
    cli.datagrams_to_send(T0)            # their pings go nowhere
    genuine = Value(id=7, data=b"x")
    op = cli.put(H, genuine, T0)
    got: list = []
    run_until(net, T0, lambda: got.extend(events(cli)) or any(
        isinstance(x, ev.PutDone) for x in got))
    assert [x for x in got if isinstance(x, ev.PutDone)] == [ev.PutDone(op, 1)]


# --- 4. reflection amplification ------------------------------------------------------------

VICTIM = ("198.51.100.66", 53)


def sent_to(outs: list, addr) -> int:
    return sum(len(o.raw) for o in outs if o.dst == addr)


def with_good_nodes(e: DhtEngine, count: int = 16) -> None:
    """Good IPv4 and IPv6 nodes, so find/get replies carry full node lists."""
    for i in range(count):
        v6 = i % 2 == 1
        addr = (f"2001:db8::{i + 1:x}", 4222) if v6 else (f"203.0.113.{100 + i}", 4222)
        e.ping(addr, T0)
        [ping] = [o for o in drain(e, maintenance=True) if o.dst == addr]
        e.receive_datagram(encode_reply(ping.msg.tid, {"id": InfoHash(bytes([0x30 + i]) * 20)}),
                           addr, T0)
    drain(e, maintenance=True)


def test_spoofed_get_is_not_amplified() -> None:
    """A 76-byte get naming a victim's address used to send it every value of the key."""
    e = engine(prove=False)
    poison(e)
    with_good_nodes(e)
    data = query("get", 5, h=H, w=[2, 10])
    e.receive_datagram(data, VICTIM, T0)
    out = drain(e, maintenance=True)
    assert sent_to(out, VICTIM) <= 3 * len(data), (len(data), sent_to(out, VICTIM))


def test_spoofed_find_is_not_amplified_but_still_answered() -> None:
    e = engine(prove=False)
    with_good_nodes(e)
    data = query("find", 5, target=H, w=[2, 10])
    e.receive_datagram(data, VICTIM, T0)
    out = drain(e, maintenance=True)
    replies = [o for o in out if o.dst == VICTIM and o.obj.get("y") == "r"]
    assert len(replies) == 1 and len(replies[0].obj["r"]["token"]) == 32
    assert sent_to(out, VICTIM) <= 3 * len(data)


def test_many_spoofed_queries_get_a_bounded_byte_budget() -> None:
    e = engine(prove=False)
    with_good_nodes(e)
    total_in = total_out = 0
    for i in range(1000):
        data = query("find", i + 1, sender=InfoHash(bytes([9]) * 19 + bytes([i % 256])),
                     target=InfoHash(bytes([i % 256]) * 20), w=[2, 10])
        total_in += len(data)
        e.receive_datagram(data, VICTIM, T0 + i * 0.001)
        total_out += sent_to(drain(e, T0, maintenance=True), VICTIM)
    assert total_out <= 3 * total_in
    assert total_out <= 64 * 1024, total_out          # about one second's worth


def test_proven_address_gets_the_values() -> None:
    """An address that answered our ping (or wrote with a valid token) is served in full;
    an unproven one is pinged, and its retry, once proven, gets everything."""
    e = engine(prove=False)
    big = Value(id=3, data=b"v" * 1500)
    e.storage.store(H, big, T0)
    data = query("get", 5, h=H)
    e.receive_datagram(data, A, T0)
    out = drain(e, maintenance=True)
    assert sent_to(out, A) <= 3 * len(data)
    [ping] = [o for o in out if o.obj.get("q") == "ping"]
    e.receive_datagram(encode_reply(ping.msg.tid, {"id": OTHER}), A, T0 + 0.01)
    outs = feed(e, data, A, T0 + 0.5)                  # the requester's retry
    assert outs and outs[0].msg.value_sizes == [len(packb(big))]


# --- 5. listens: socket ids, spoofed updates, listeners per IP and per key ------------------


def listening_pair() -> tuple[Net, DhtEngine, DhtEngine, int]:
    net, srv, cli = connected_pair()
    op = cli.listen(H, T0)
    net.pump(T0)
    events(cli)
    return net, srv, cli, op


def test_listen_socket_ids_are_not_sequential() -> None:
    net, srv, cli = connected_pair()
    for i in range(8):
        cli.listen(InfoHash(bytes([i]) * 20), T0)
    net.pump(T0)
    sids = sorted(cli.searches.listen_sids)
    assert len(sids) == 8
    assert all(b - a > 1000 for a, b in zip(sids, sids[1:], strict=False)), sids


def test_update_from_another_address_is_ignored() -> None:
    """200 spoofed updates carrying the right sid used to inject a value into the listen."""
    net, srv, cli, op = listening_pair()
    [sid] = list(cli.searches.listen_sids)
    forged = Value(id=666, data=b"forged")
    for i in range(200):
        for kind in ("update", "legacy"):
            if kind == "update":
                data = encode_query("update", 500 + i, {"id": srv.id, "sid": sid, "ve": 1, "h": H,
                                                       "values": [pack(forged)]})
            else:
                data = encode_reply(sid, {"id": srv.id, "values": [pack(forged)]})
            cli.receive_datagram(data, ("203.0.113.77", 4222), T0)
    assert [x for x in events(cli) if isinstance(x, ev.ListenValues)] == []
    assert cli.stats["update_wrong_source"] >= 400
    # the real storer is still heard
    real = Value(id=5, data=b"real")
    cli.receive_datagram(encode_query("update", 900, {"id": srv.id, "sid": sid, "ve": 1, "h": H,
                                                      "values": [pack(real)]}), net.addr(srv), T0)
    assert [(x.op, x.values) for x in events(cli) if isinstance(x, ev.ListenValues)] == [
        (op, [real])]


def test_listeners_per_ip_are_capped() -> None:
    """20,000 listens from one IP, then one put used to fan out to every one of them."""
    e = engine()
    ip = "198.51.100.9"
    accepted = 0
    for i in range(2000):
        addr = (ip, 10_000 + i % 50)
        tok = e.tokens.make(addr)
        key = InfoHash(bytes([i % 7]) * 20)
        out = feed(e, query("listen", i + 1, sender=InfoHash(i.to_bytes(20, "big")), h=key,
                            token=tok, sid=i + 1, ve=1), addr)
        accepted += sum(1 for o in out if o.obj.get("y") == "r")
    total = sum(len(e.listeners.of(InfoHash(bytes([k]) * 20))) for k in range(7))
    assert total == accepted <= MAX_LISTENERS_PER_IP
    assert e.stats["listen_refused_cap"] == e.stats["query_listen"] - accepted > 0
    outs = put(e, [Value(id=1, data=b"x")], addr=B, sender=OTHER, key=InfoHash(bytes([0]) * 20))
    assert len([o for o in outs if o.obj.get("q") == "update"]) <= MAX_LISTENERS_PER_KEY


def test_listeners_per_key_are_capped() -> None:
    e = engine()
    for i in range(MAX_LISTENERS_PER_KEY + 50):
        addr = (f"198.51.{100 + i // 250}.{i % 250 + 1}", 4222)
        e.proofs.prove(addr[0], T0)
        feed(e, query("listen", i + 1, sender=InfoHash((i + 1).to_bytes(20, "big")), h=H,
                      token=e.tokens.make(addr), sid=7, ve=1), addr)
    assert len(e.listeners.of(H)) == MAX_LISTENERS_PER_KEY
    # a listener already in is refreshed, not refused
    addr = ("198.51.100.1", 4222)
    [ack] = feed(e, query("listen", 9999, sender=InfoHash((1).to_bytes(20, "big")), h=H,
                          token=e.tokens.make(addr), sid=7, ve=1), addr, T0 + 5)
    assert ack.obj["y"] == "r"


# --- found on the way: a query cannot move a good node's address ----------------------------


def test_query_claiming_a_good_nodes_id_does_not_move_it() -> None:
    """One spoofed ping carrying a good node's id used to redirect that id to the sender."""
    e = engine()
    e.ping(B, T0)
    [ping] = drain(e, maintenance=True)
    feed(e, encode_reply(ping.msg.tid, {"id": OTHER}), B)
    feed(e, query("ping", 9, sender=OTHER), ("198.51.100.200", 666), T0 + 1)
    assert e.tables[4].find(OTHER).addr == B
    # a node that stopped answering may come back from a new address
    e.tables[4].find(OTHER).failures = 3
    feed(e, query("ping", 10, sender=OTHER), ("203.0.113.21", 5001), T0 + 2)
    assert e.tables[4].find(OTHER).addr == ("203.0.113.21", 5001)


def test_search_looks_past_unreachable_close_nodes() -> None:
    """When the 14 closest known nodes are all suspected unreachable, a new search still
    starts with the next reachable ones instead of failing at once."""
    net, srv, cli = lossy_pair(bytes(H)[:-1] + bytes([bytes(H)[-1] ^ 1]))
    for i in range(40):
        nid = InfoHash(bytes(H)[:2] + bytes([i * 6]) + bytes(17))
        cli.receive_datagram(query("ping", 50 + i, sender=nid), (f"198.51.100.{i + 1}", 4222), T0)
    cli.datagrams_to_send(T0)
    cli.handle_timer(T0 + 0.6)              # their pings time out once: suspected unreachable
    cli.datagrams_to_send(T0 + 0.6)
    op = cli.put(H, Value(id=7, data=b"x"), T0 + 0.6)
    got: list = []
    run_until(net, T0 + 0.6, lambda: got.extend(events(cli)) or any(
        isinstance(x, ev.PutDone) for x in got))
    assert [x for x in got if isinstance(x, ev.PutDone)] == [ev.PutDone(op, 1)]


def test_unproven_client_gets_a_big_value_without_waiting_for_a_retry() -> None:
    """A client node (never pinged as a newcomer) fetching a >1 KB value: the storer pings
    it along with the id listing, so the fetch that follows is already answered in full."""
    srv = DhtEngine(InfoHash(b"\xa0" * 20), now=T0)
    cli = DhtEngine(InfoHash(b"\xb0" * 20), now=T0, client_only=True)
    net = Net(srv=srv, cli=cli)
    cli.add_known_node(srv.id, net.addr(srv), T0)
    net.pump(T0)
    events(cli)
    record = Value(id=9, data=b"r" * 1200, utype="application/sip-contact")
    srv.storage.store(H, record, T0)
    op = cli.get(H, T0 + 1)
    net.pump(T0 + 1)                       # no timer runs: no retry can help
    got = events(cli)
    assert [v for x in got if isinstance(x, ev.GetValues) for v in x.values] == [record]
    assert [x.ok for x in got if isinstance(x, ev.GetDone) and x.op == op] == [True]
