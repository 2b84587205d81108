"""RTT-adaptive timeouts in the sans-IO engine, with synthetic datagrams and a test-owned clock:
a node's round trips set its retransmission timeout, and a search stops waiting for a
silent node at that timeout instead of OpenDHT's fixed half second."""

from __future__ import annotations

import pytest

from sipdht.dht import events as ev
from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import decode, encode_reply
from sipdht.dht.requests import FIRST_TIMEOUT
from sipdht.dht.rtt import RTO_MAX, RTO_MIN, rto, updated
from sipdht.dht.values import Value
from tests.harness.engine import T0, H, Net, drain, events

PEER = InfoHash(b"\x11" * 20)
B = ("203.0.113.20", 5000)


def test_estimator_follows_rfc6298_and_is_clamped() -> None:
    srtt, var = updated(0.0, 0.0, 0.100)           # first sample: R, R/2
    assert (srtt, var) == (0.100, 0.050)
    srtt, var = updated(srtt, var, 0.020)          # then 7/8 and 3/4 weights
    assert srtt == pytest.approx(0.090) and var == pytest.approx(0.0575)
    assert rto(srtt, var) == pytest.approx(0.090 + 4 * 0.0575)
    assert rto(0.3, 0.1) == RTO_MAX                 # the ceiling: OpenDHT's first timeout
    assert rto(0.001, 0.0005) == RTO_MIN            # loopback: the floor
    assert rto(0.0, 0.0) == RTO_MAX                 # never measured


def answer_ping(e: DhtEngine, addr, sent: float, replied: float, node_id: bytes = PEER) -> None:
    e.ping(addr, sent)
    [ping] = [o for o in drain(e, sent, maintenance=True) if o.dst == addr]
    e.receive_datagram(encode_reply(ping.msg.tid, {"id": node_id}), addr, replied)
    drain(e, replied, maintenance=True)


def pings(e: DhtEngine, now: float) -> list:
    return [o.dst for o in drain(e, now, maintenance=True) if o.obj.get("q") == "ping"]


def test_a_node_that_answers_in_20_ms_is_retried_at_its_rto_not_after_half_a_second() -> None:
    e = DhtEngine(InfoHash(b"\x55" * 20), now=T0)
    answer_ping(e, B, T0, T0 + 0.020)
    node = e.tables[4].find(PEER)
    assert node is not None and node.rtt == pytest.approx(0.020)
    assert node.rtt_var == pytest.approx(0.010)
    t = T0 + 1.0
    drain(e, t, maintenance=True)                   # its own neighbourhood search
    e.ping(B, t, node)                              # this one goes unanswered
    assert pings(e, t) == [B]
    e.handle_timer(t + 0.059)
    assert pings(e, t + 0.059) == []                # RTO = 0.02 + 4 * 0.01 = 0.06
    e.handle_timer(t + 0.061)
    assert pings(e, t + 0.061) == [B]               # the retry


def test_a_reply_to_a_retry_is_timed_from_the_first_attempt() -> None:
    """An upper bound: a node slower than its RTO still gets measured, and slower."""
    e = DhtEngine(InfoHash(b"\x55" * 20), now=T0)
    answer_ping(e, B, T0, T0 + 0.010)
    node = e.tables[4].find(PEER)
    t = T0 + 1.0
    drain(e, t, maintenance=True)
    e.ping(B, t, node)
    [ping] = [o for o in drain(e, t, maintenance=True) if o.obj.get("q") == "ping"]
    e.handle_timer(t + 0.1)                         # past its RTO (0.05): sent again
    assert pings(e, t + 0.1) == [B]
    e.receive_datagram(encode_reply(ping.msg.tid, {"id": PEER}), B, t + 0.3)
    assert node.rtt == pytest.approx(updated(0.010, 0.005, 0.3)[0])


def star(n: int) -> tuple[Net, DhtEngine, list[DhtEngine]]:
    """A client that knows one node, which knows n - 1 others (the client does not)."""
    servers = [DhtEngine(InfoHash(bytes([0x20 + i]) * 20), now=T0) for i in range(n)]
    cli = DhtEngine(InfoHash(b"\xf0" * 20), now=T0)
    net = Net(cli=cli, **{f"s{i}": s for i, s in enumerate(servers)})
    for s in servers[1:]:
        servers[0].add_known_node(s.id, net.addr(s), T0)
    net.pump(T0)
    cli.add_known_node(servers[0].id, net.addr(servers[0]), T0)
    net.pump(T0)
    events(cli)
    return net, cli, servers


def run_until_done(net: Net, cli: DhtEngine, op: int, start: float, drop,
                   step: float = 0.005) -> tuple[float, list]:
    got: list = []
    now = start
    while now < start + 10:
        net.pump(now, drop=drop)
        got += events(cli)
        if any(isinstance(x, (ev.GetDone, ev.PutDone)) and x.op == op for x in got):
            return now, got
        now += step
        for e in net.nodes.values():
            e.handle_timer(now)
    raise AssertionError("the operation did not end in 10 s")


def test_a_search_moves_on_from_a_silent_node_at_the_rto_of_the_network() -> None:
    """The 2026-11 kill bench: right after a quarter of the nodes died, every fresh client
    waited the fixed 0.5 s on each dead node among the closest. Nodes learnt from a reply
    were never measured: they get the RTO of the nodes that were (loopback: the floor)."""
    net, cli, servers = star(10)
    value = Value(id=9, data=b"record")
    for s in servers:
        s.storage.store(H, value, T0)
    ranked = sorted(servers[1:], key=lambda s: H.distance(s.id))
    dead = net.addr(ranked[0])                     # the closest node to the key is gone
    op = cli.get(H, T0)
    done_at, got = run_until_done(net, cli, op, T0, drop=lambda src, d, dst: dst == dead)
    assert [x.ok for x in got if isinstance(x, ev.GetDone)] == [True]
    assert [v.data for x in got if isinstance(x, ev.GetValues) for v in x.values] == [b"record"]
    assert done_at - T0 < 2 * RTO_MIN + 0.02       # was 0.5 s: the fixed first timeout
    cli.handle_timer(T0 + FIRST_TIMEOUT)
    assert cli.requests.unreachable.get(dead, 0) > T0 + FIRST_TIMEOUT   # silent 0.5 s: all skip it


def test_a_put_is_done_without_waiting_for_a_dead_storer() -> None:
    net, cli, servers = star(10)
    ranked = sorted(servers[1:], key=lambda s: H.distance(s.id))
    dead = {net.addr(ranked[0]), net.addr(ranked[3])}
    op = cli.put(H, Value(id=3, data=b"offer"), T0)
    done_at, got = run_until_done(net, cli, op, T0, drop=lambda src, d, dst: dst in dead)
    [done] = [x for x in got if isinstance(x, ev.PutDone)]
    assert done.stored == 8                          # the 8 closest live nodes took it
    assert done_at - T0 < 2 * RTO_MIN + 0.02


def test_the_next_search_skips_the_dead_node_at_once() -> None:
    """Dead nodes are shared knowledge: a later search does not wait on them again."""
    net, cli, servers = star(10)
    ranked = sorted(servers[1:], key=lambda s: H.distance(s.id))
    dead = net.addr(ranked[0])
    drop = lambda src, d, dst: dst == dead         # noqa: E731
    op = cli.get(H, T0)
    t1, _ = run_until_done(net, cli, op, T0, drop)
    t1 = T0 + FIRST_TIMEOUT                          # silent that long: every search is told
    cli.handle_timer(t1)
    other = InfoHash(bytes(ranked[0].id)[:19] + b"\x00")   # a key the dead node is closest to
    op = cli.get(other, t1)
    t2, got = run_until_done(net, cli, op, t1, drop, step=0.001)
    assert [x.ok for x in got if isinstance(x, ev.GetDone)] == [True]
    assert t2 - t1 < 0.005                           # no timeout at all


def test_four_silent_nodes_do_not_hold_the_search_slots_until_they_expire() -> None:
    """Seen in the kill bench (p95 3.9 s): four dead nodes being retried held all of the
    search's MAX_IN_FLIGHT slots until their third attempt expired."""
    net, cli, servers = star(14)
    value = Value(id=4, data=b"record")
    for s in servers:
        s.storage.store(H, value, T0)
    ranked = sorted(servers[1:], key=lambda s: H.distance(s.id))
    dead = {net.addr(s) for s in ranked[:4]}
    op = cli.get(H, T0)
    done_at, got = run_until_done(net, cli, op, T0, drop=lambda src, d, dst: dst in dead)
    assert [x.ok for x in got if isinstance(x, ev.GetDone)] == [True]
    assert done_at - T0 < 2 * RTO_MIN + 0.02


def test_a_put_goes_out_with_the_find_when_the_node_gave_us_a_token_before() -> None:
    """A write token is bound to our address, not to a key: a put to another key need not
    wait a round trip for a fresh one (a put with a stale one is answered 401 and sent
    again once the search has synced)."""
    net, cli, servers = star(4)
    op = cli.get(H, T0)
    run_until_done(net, cli, op, T0, drop=lambda src, d, dst: False)
    other = InfoHash.get("sip:bob@example.org")
    op = cli.put(other, Value(id=5, data=b"offer"), T0 + 1)
    first = [o.obj.get("q") for o in drain(cli, T0 + 1, maintenance=True)]
    assert first.count("put") == len(servers) and first.count("find") == len(servers)


def test_a_put_with_a_token_the_node_no_longer_accepts_is_sent_again() -> None:
    net, cli, servers = star(4)
    op = cli.get(H, T0)
    run_until_done(net, cli, op, T0, drop=lambda src, d, dst: False)
    for s in servers:                                # two rotations: the old tokens are void
        for _ in range(2):
            s.tokens.rotate(T0 + 1)
    other = InfoHash.get("sip:bob@example.org")
    op = cli.put(other, Value(id=5, data=b"offer"), T0 + 1)
    _, got = run_until_done(net, cli, op, T0 + 1, drop=lambda src, d, dst: False)
    assert [x.stored for x in got if isinstance(x, ev.PutDone)] == [len(servers)]
    assert all(s.storage.get(other, now=T0 + 1) for s in servers)


def test_a_get_from_known_nodes_needs_no_fetch_by_id_for_a_small_key() -> None:
    """The closest node that answered us before is asked for the values whole; the others
    list ids, which are then not fetched again: one request per node, no extra round."""
    net, cli, servers = star(6)
    value = Value(id=8, data=b"contact")
    for s in servers:
        s.storage.store(H, value, T0)
    op = cli.get(H, T0)
    run_until_done(net, cli, op, T0, drop=lambda src, d, dst: False)
    net.log.clear()
    op = cli.get(H, T0 + 1)
    _, got = run_until_done(net, cli, op, T0 + 1, drop=lambda src, d, dst: False)
    assert [v for x in got if isinstance(x, ev.GetValues) for v in x.values] == [value]
    asked = [decode(d) for src, dst, d in net.log if src == net.addr(cli)]
    gets = [m for m in asked if m.query == "get"]
    assert len(gets) == len(servers)                           # no fetch by id
    assert sum(1 for m in gets if m.q is None or not m.q.select) == 1   # one asked whole


def test_a_fresh_engine_stops_waiting_on_a_silent_node_once_another_node_gave_an_rtt() -> None:
    """Both pings go out before anything is measured (RTO_MAX); C's answer in 20 ms sets the
    engine's estimate, and B's first attempt is then timed out at that RTO, not at 0.5 s."""
    e = DhtEngine(InfoHash(b"\x55" * 20), now=T0)
    c = ("203.0.113.21", 5000)
    e.ping(B, T0)
    e.ping(c, T0)
    sent = {o.dst: o for o in drain(e, T0, maintenance=True) if o.obj.get("q") == "ping"}
    assert set(sent) == {B, c}
    e.receive_datagram(encode_reply(sent[c].msg.tid, {"id": InfoHash(b"\x22" * 20)}), c, T0 + 0.020)
    drain(e, T0 + 0.020, maintenance=True)
    for t in (T0 + 0.030, T0 + 0.050, T0 + 0.059):
        e.handle_timer(t)
        assert B not in pings(e, t)
    e.handle_timer(T0 + 0.061)                      # RTO = 0.02 + 4 * 0.01, from the first send
    assert pings(e, T0 + 0.061) == [B]
