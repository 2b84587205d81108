"""Many listens (issue 11): a node holding thousands of listens of its own and 100,000
listeners from others, with work per operation that does not grow with their number.

Work is counted, never timed: how many searches or listeners an operation looks at, how
many requests are out at once. Before the fix, every new search past 4,096 and every
2-second housekeeping tick looked at every search, every tick looked at every listener
held, and 10,000 listens sent 40,000 finds in one burst.
"""

from __future__ import annotations

import pytest

from sipdht.dht import serving as serving_mod
from sipdht.dht.engine import DhtEngine
from sipdht.dht.infohash import InfoHash
from sipdht.dht.listeners import MAX_LISTENERS_PER_IP, MAX_LISTENERS_PER_KEY, Listener
from sipdht.dht.messages import decode, encode_query
from sipdht.dht.operations import ListenOp
from sipdht.dht.requests import UNREACHABLE_TIME
from sipdht.dht.search import LISTEN_NODES, Search
from sipdht.dht.searches import LISTEN_START_WINDOW, SEARCH_IDLE
from sipdht.dht.sim import build
from sipdht.dht.values import Value, pack

T0 = 1000.0
ME = InfoHash(b"\x55" * 20)


# --- 1. thousands of listens of our own, on a simulated network ------------------------------


class BusyCounter:
    """Counts how often anything asks a search whether it is busy (the old idle scans did,
    for every search)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = Search.__dict__["busy"].fget
        assert real is not None

        def counted(search: Search) -> bool:
            self.n += 1
            return real(search)
        monkeypatch.setattr(Search, "busy", property(counted))


def every_second(sim, limit: float, pred, each=None) -> bool:
    """Run the simulation until pred() holds, checking it once per simulated second."""
    end = sim.now + limit
    while sim.now < end:
        sim.run_until(sim.now + 1.0, each)
        if pred():
            return True
    return False


@pytest.mark.slow
def test_own_listens_paced_all_acknowledged_values_delivered(monkeypatch) -> None:
    n_listens = 5000          # past MAX_SEARCHES (4,096), where the search table went quadratic
    sim = build(12, seed=3, max_listeners_per_ip=10 * n_listens)
    gw, putter = sim.nodes[0], sim.nodes[5]
    keys = [InfoHash.get(f"contact-{i}") for i in range(n_listens)]
    ops = [sim.listen(gw, k) for k in keys]
    assert len(gw.engine.requests.pending) <= LISTEN_START_WINDOW + 8     # no burst of 4 x 5,000 finds
    most_out = 0

    def track() -> bool:            # after every simulated event: O(1)
        nonlocal most_out
        most_out = max(most_out, len(gw.engine.requests.pending))
        return False
    assert every_second(sim, 300, lambda: all(
        gw.engine.listening_nodes(op) >= LISTEN_NODES for op in ops), track)
    assert most_out <= 4 * LISTEN_START_WINDOW, most_out     # searches go on past the start
    storers = sum(n.engine.listeners.count() for n in sim.nodes)
    assert storers >= LISTEN_NODES * n_listens

    # Held: a housekeeping tick, and a new search, look at a few searches, not all 5,000.
    busy = BusyCounter(monkeypatch)
    ticks: list[int] = []
    real = gw.engine._housekeeping

    def counted(now: float) -> None:
        busy.n = 0
        real(now)
        ticks.append(busy.n)
    monkeypatch.setattr(gw.engine, "_housekeeping", counted)
    sim.run(10.0)
    assert len(ticks) >= 3 and max(ticks) < 50, ticks
    busy.n = 0
    sim.start_get(gw, InfoHash.get("someone new"))
    assert busy.n < 50, busy.n
    sim.run(2.0)

    # Every value put on a sample of the keys reaches its listen, and only its listen.
    sample = range(0, n_listens, 50)
    for i in sample:
        sim.start_put(putter, keys[i], Value(id=i + 1, data=b"presence %d" % i))
    expected = {ops[i]: [i + 1] for i in sample}

    def delivered() -> dict[int, list[int]]:
        return {op: [v.id for e in gw.listened[op] for v in e.values if e.kind == "add"]
                for op in ops if gw.listened[op]}
    assert every_second(sim, 60, lambda: delivered() == expected)


def test_cancelled_listens_leave_nothing_behind() -> None:
    sim = build(6, seed=4)
    gw = sim.nodes[0]
    ops = [sim.listen(gw, InfoHash.get(f"k{i}")) for i in range(300)]
    sim.run(5.0)
    for op in ops:
        sim.cancel(gw, op)
    assert gw.engine.ops.local_listens == {}
    sim.run(SEARCH_IDLE + 10)        # released searches are dropped when idle
    assert len(gw.engine.searches.by_family[4]) <= 2      # our own id's, and at most one other


# --- 2. 100,000 listeners from others, on one engine fed synthetic datagrams -------------------


class CountingListener(Listener):
    """A Listener that counts reads of `refreshed` (expiry) and `query` (notification)."""
    reads = {"refreshed": 0, "query": 0}

    @property  # type: ignore[override]
    def refreshed(self) -> float:
        CountingListener.reads["refreshed"] += 1
        return self._refreshed

    @refreshed.setter
    def refreshed(self, value: float) -> None:
        self._refreshed = value

    @property  # type: ignore[override]
    def query(self):
        CountingListener.reads["query"] += 1
        return self._query

    @query.setter
    def query(self, value) -> None:
        self._query = value


N_KEYS, PER_KEY, PER_IP = 1000, 100, 100     # 100,000 listeners from 1,000 IPs


def source(i: int) -> tuple[str, int]:
    ip = i // PER_IP
    return (f"10.200.{ip // 250}.{ip % 250 + 1}", 4222 + i % PER_IP)


def key_of(k: int) -> InfoHash:
    return InfoHash.get(f"watched-{k}")


def listen_datagram(e: DhtEngine, i: int, tid: int) -> bytes:
    addr = source(i)
    return encode_query("listen", tid, {"id": InfoHash((i + 1).to_bytes(20, "big")),
                                        "h": key_of(i % N_KEYS), "token": e.tokens.make(addr),
                                        "sid": 7, "ve": 1})


def replies(e: DhtEngine, now: float) -> list:
    return [(decode(d), a) for d, a in e.datagrams_to_send(now)]


@pytest.fixture
def crowded(monkeypatch) -> DhtEngine:
    monkeypatch.setattr(serving_mod, "Listener", CountingListener)
    e = DhtEngine(ME, now=T0)
    acks = 0
    for i in range(N_KEYS * PER_KEY):
        now = T0 + i / 4000                      # within the global query rate
        e.receive_datagram(listen_datagram(e, i, i + 1), source(i), now)
        acks += sum(1 for m, _ in replies(e, now) if m.kind == "r")
    assert acks == N_KEYS * PER_KEY
    assert e.listeners.count() == N_KEYS * PER_KEY
    return e


@pytest.mark.slow
def test_hundred_thousand_listeners_cost_per_operation_not_per_listener(crowded) -> None:
    e = crowded
    now = T0 + 30
    reads = CountingListener.reads
    # Housekeeping with 100,000 listeners held and none due: none is looked at.
    reads.update(refreshed=0, query=0)
    for t in range(16):
        e.handle_timer(now + 2 * t)
    replies(e, now + 32)
    assert reads == {"refreshed": 0, "query": 0}
    # A put reaches exactly that key's listeners, looking at those and no other.
    now += 40
    key = key_of(17)
    token = e.tokens.make(("203.0.113.5", 4222))
    e.receive_datagram(encode_query("put", 9, {"id": InfoHash(b"\x77" * 20), "h": key,
                                               "token": token,
                                               "values": [pack(Value(id=5, data=b"hi"))]}),
                       ("203.0.113.5", 4222), now)
    updates = [(m, a) for m, a in replies(e, now) if m.kind == "q" and m.query == "update"]
    assert sorted(a for _, a in updates) == sorted(source(i) for i in range(17, 100_000, N_KEYS))
    assert all(m.values == [Value(id=5, data=b"hi")] for m, _ in updates)
    assert reads["query"] == PER_KEY and reads["refreshed"] == 0


@pytest.mark.slow
def test_hundred_thousand_listeners_expire_and_free_their_ip(crowded) -> None:
    e = crowded
    # Half the listeners of one IP refresh their subscription; everyone else goes silent.
    refresh_at = T0 + 300
    kept = range(0, PER_IP, 2)
    for i in kept:
        e.receive_datagram(listen_datagram(e, i, 500_000 + i), source(i), refresh_at)
    assert all(m.kind == "r" for m, _ in replies(e, refresh_at))
    reads = CountingListener.reads
    reads.update(refreshed=0, query=0)
    for t in range(30, 700, 2):
        e.handle_timer(T0 + t)
    e.datagrams_to_send(T0 + 700)
    # Every listener looked at about once (each entry pops once, a refreshed one twice).
    assert N_KEYS * PER_KEY <= reads["refreshed"] <= 2 * N_KEYS * PER_KEY + len(kept)
    assert e.listeners.count() == len(kept)
    # A put to an expired listener's key notifies nobody...
    token = e.tokens.make(("203.0.113.5", 4222))
    e.receive_datagram(encode_query("put", 9, {"id": InfoHash(b"\x77" * 20), "h": key_of(1),
                                               "token": token,
                                               "values": [pack(Value(id=5, data=b"hi"))]}),
                       ("203.0.113.5", 4222), T0 + 701)
    assert [m for m, _ in replies(e, T0 + 701) if m.kind == "q" and m.query == "update"] == []
    # ...and an IP whose listeners expired has its whole allowance again.
    now = T0 + 702
    addr = source(PER_IP * 500)
    got = 0
    for j in range(MAX_LISTENERS_PER_IP + 10):
        data = encode_query("listen", 900_000 + j, {
            "id": InfoHash((900_000 + j).to_bytes(20, "big")),
            "h": key_of(N_KEYS + j % 50), "token": e.tokens.make(addr), "sid": 1, "ve": 1})
        e.receive_datagram(data, addr, now + j / 1000)
        got += sum(1 for m, _ in replies(e, now) if m.kind == "r")
    assert got == MAX_LISTENERS_PER_IP


def test_per_key_cap_holds_among_many_ips() -> None:
    e = DhtEngine(ME, now=T0)
    key = key_of(0)
    for i in range(MAX_LISTENERS_PER_KEY + 40):
        addr = source(i * PER_IP)            # one listener per IP
        e.receive_datagram(encode_query("listen", i + 1, {
            "id": InfoHash((i + 1).to_bytes(20, "big")), "h": key,
            "token": e.tokens.make(addr), "sid": 1, "ve": 1}), addr, T0 + i / 1000)
    e.datagrams_to_send(T0 + 1)
    assert e.listeners.count(key) == MAX_LISTENERS_PER_KEY
    assert e.stats["listen_refused_cap"] == 40


def test_listen_cache_entries_expire_from_a_heap() -> None:
    """A listen's cached values are forgotten when no storer would still hold them, even
    when no storer is left to say so (the heap, not an expire notification)."""
    sim = build(4, seed=5)
    other = sim.nodes[2]
    gw = sim.add_node(client_only=True)             # stores nothing: no local expiry either
    sim.bootstrap(gw, sim.nodes[:2])
    sim.run(5.0)
    ops = [sim.listen(gw, InfoHash.get(f"c{i}")) for i in range(200)]
    sim.run(3.0)
    sim.put(other, InfoHash.get("c7"), Value(id=9, type=5, data=b"short"))   # 60 s type
    sim.run(2.0)
    op = gw.engine.ops.by_id[ops[7]]
    assert isinstance(op, ListenOp)
    assert list(op.known) == [9]
    for node in sim.nodes[:4]:
        node.down()
    sim.run(30.0)
    assert list(op.known) == [9]
    sim.run(60.0)
    assert op.known == {} and op.expires == {} and op.queued == set()
    assert [e.kind for e in gw.listened[ops[7]]] == ["add"]     # nobody told us: the heap did


@pytest.mark.slow
def test_listens_come_back_after_the_gateway_was_offline() -> None:
    """Offline for 45 s (past every retry of its listen refreshes): every storer failed in
    every listen's search, and before the fix no listen was ever acknowledged again."""
    sim = build(12, seed=6, max_listeners_per_ip=100_000)
    gw, putter = sim.nodes[0], sim.nodes[7]
    keys = [InfoHash.get(f"friend-{i}") for i in range(1000)]
    ops = [sim.listen(gw, k) for k in keys]

    def all_in() -> bool:
        return all(gw.engine.listening_nodes(op) >= LISTEN_NODES for op in ops)
    assert every_second(sim, 60, all_in)
    gw.down()
    sim.run(45.0)
    gw.up()
    assert not all_in()
    most_out = 0

    def track() -> bool:
        nonlocal most_out
        most_out = max(most_out, len(gw.engine.requests.pending))
        return False
    # back once the shared memory of unreachable nodes (120 s) lets them be asked again
    assert every_second(sim, UNREACHABLE_TIME + 60, all_in, track)
    assert most_out <= 4 * LISTEN_START_WINDOW, most_out
    sim.start_put(putter, keys[500], Value(id=77, data=b"back"))
    assert every_second(sim, 10, lambda: any(
        v.id == 77 for e in gw.listened[ops[500]] for v in e.values))
