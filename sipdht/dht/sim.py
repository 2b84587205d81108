"""A discrete-event simulated network driving many DhtEngine instances in one process.

No sockets and no real time: one heap holds every timed happening (a datagram
arriving, an engine timer falling due, a scheduled call) and `run_until` pops
them in time order, exactly as the asyncio adapter in node.py drives one engine:
feed `receive_datagram` / `handle_timer`, then collect `datagrams_to_send`
(each gets a random one-way latency, or is lost with probability `loss`) and
drain `next_event()`.

Each engine has at most one live heap entry for its timer: after every call into
an engine its `get_timer()` is compared with the time already armed and pushed
only when earlier; an entry that pops while a later one is armed is stale and
skipped (an early one just re-arms). Nodes get 10.200.x.y:4222 addresses.

Scale: `build(n, join="direct")` fills every routing table from the global view (what
a converged network's tables hold) instead of letting n nodes join by pings and
searches, and the tables share the nodes' id and address objects (`RoutingTable.intern`):
10,000 engines then build in seconds at ~17 KB each (bench/sim_scale.py).

    sim = build(200, seed=1)
    node = sim.nodes[0]
    stored = sim.put(node, key, new_value(b"hi"))
    values, done = sim.get(sim.nodes[7], key)

Everything is bounded: every run loop by a simulated deadline and a step count,
every per-node record by what the caller asks for (results are popped by the
helpers) or by a fixed length (the event log).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import events as ev
from .addresses import family_of
from .engine import DhtEngine
from .infohash import HASH_LEN, InfoHash
from .messages import Addr
from .routing import K
from .values import Query, Value

SIM_PORT = 4222
HOSTS_PER_SUBNET = 254                 # 10.200.x.1 .. 10.200.x.254
MAX_NODES = 256 * HOSTS_PER_SUBNET     # all inside 10.200.0.0/16
DEFAULT_LATENCY = (0.005, 0.05)        # one-way, seconds
MAX_STEPS = 50_000_000                 # per run call: a runaway engine cannot hang the caller
EVENT_LOG = 1000                       # events kept per node

_DELIVER, _TIMER, _CALL = 0, 1, 2


class SimTimeout(TimeoutError):
    """An operation did not complete within its simulated timeout."""


class SimError(RuntimeError):
    """The simulation ran away (more steps than allowed in one run call)."""


@dataclass
class GetResult:
    node: SimNode
    key: InfoHash
    values: list[Value]
    done: ev.GetDone | None     # None: timed out
    latency: float | None       # simulated seconds from get() to GetDone

    @property
    def ok(self) -> bool:
        return self.done is not None and self.done.ok


@dataclass
class PutResult:
    node: SimNode
    key: InfoHash
    done: ev.PutDone | None
    latency: float | None


class SimNode:
    """One engine on the simulated network, and what it reported."""

    __slots__ = ("net", "index", "addr", "engine", "alive", "connected", "_events", "values",
                 "done", "started", "finished", "listened", "callbacks", "_armed")

    def __init__(self, net: SimNetwork, index: int, addr: Addr, engine: DhtEngine) -> None:
        self.net, self.index, self.addr, self.engine = net, index, addr, engine
        self.alive = True
        self.connected = False
        self._events: list[ev.Event] = []        # a list: a deque allocates 600 bytes at once
        self.values: dict[int, list[Value]] = {}                 # get op -> values so far
        self.done: dict[int, ev.GetDone | ev.PutDone] = {}       # op -> completion
        self.started: dict[int, float] = {}                      # op -> sim time started
        self.finished: dict[int, float] = {}                     # op -> sim time completed
        self.listened: dict[int, list[ev.ListenValues]] = {}     # listen op -> events
        self.callbacks: list[Callable[[SimNode, ev.Event], None]] = []
        self._armed: float | None = None                         # timer entry in the heap

    def __repr__(self) -> str:
        state = "up" if self.alive else "down"
        return f"SimNode({self.index}, {self.addr[0]}, {state})"

    @property
    def id(self) -> InfoHash:
        return self.engine.id

    @property
    def events(self) -> list[ev.Event]:
        """The last EVENT_LOG events it reported (a copy)."""
        return self._events[-EVENT_LOG:]

    def _record(self, event: ev.Event) -> None:
        self._events.append(event)
        if len(self._events) > 2 * EVENT_LOG:
            del self._events[:-EVENT_LOG]

    def down(self) -> None:
        """Crash: receives nothing and whatever it sends is dropped; its timers still run."""
        self.alive = False

    def up(self) -> None:
        """Back on the network with the state it had."""
        self.alive = True

    def good_count(self) -> int:
        return len(self.engine.good_nodes(self.net.now))

    def pop_result(self, op: int) -> tuple[list[Value], ev.GetDone | ev.PutDone | None, float | None]:
        """Values, completion event and latency of an op, forgetting them."""
        start = self.started.pop(op, None)
        end = self.finished.pop(op, None)
        latency = None if start is None or end is None else end - start
        return self.values.pop(op, []), self.done.pop(op, None), latency


class SimNetwork:
    def __init__(self, seed: int = 0, latency: tuple[float, float] = DEFAULT_LATENCY,
                 loss: float = 0.0) -> None:
        """Every engine draws from the network's one generator, seeded from `seed`, so a
        seed replays the same run whatever the process's `random` module does (one
        generator per engine would cost 2.5 KB each)."""
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss is a probability")
        if latency[0] < 0 or latency[1] < latency[0]:
            raise ValueError("latency is (min, max) seconds with 0 <= min <= max")
        self.rng = random.Random(seed)
        self.latency = latency
        self.loss = loss
        self.now = 0.0
        self.nodes: list[SimNode] = []
        self.by_addr: dict[Addr, SimNode] = {}
        self.by_id: dict[InfoHash, SimNode] = {}
        self._interner = self._intern      # one bound method for every table
        self.stats: Counter[str] = Counter()
        self.in_flight = 0
        self.max_steps = MAX_STEPS
        self.converged_at: float | None = None     # set by build()
        self._heap: list[tuple] = []
        self._seq = itertools.count()

    # --- nodes ------------------------------------------------------------------------------

    def add_node(self, **engine_kwargs) -> SimNode:
        index = len(self.nodes)
        if index >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes fit in 10.200.0.0/16")
        addr = (f"10.200.{index // HOSTS_PER_SUBNET}.{index % HOSTS_PER_SUBNET + 1}", SIM_PORT)
        engine_kwargs.setdefault("rate_limit", False)
        engine_kwargs.setdefault("families", (4,))
        engine_kwargs.setdefault("node_id", InfoHash(self.rng.randbytes(HASH_LEN)))
        engine_kwargs["now"] = self.now
        engine_kwargs.setdefault("rng", self.rng)
        engine = DhtEngine(**engine_kwargs)
        for table in engine.tables.values():
            table.intern = self._interner
        node = SimNode(self, index, addr, engine)
        self.nodes.append(node)
        self.by_addr[addr] = node
        self.by_id[engine.id] = node
        self.flush(node)
        return node

    def _intern(self, node_id: InfoHash, addr: Addr) -> tuple[InfoHash, Addr]:
        """The node's own id and address objects, so that tables share them."""
        node = self.by_id.get(node_id)
        if node is not None:
            node_id = node.engine.id
            if addr == node.addr:
                addr = node.addr
        return node_id, addr

    def alive_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive]

    def bootstrap(self, node: SimNode, peers: Iterable[SimNode]) -> None:
        node.engine.bootstrap([p.addr for p in peers], self.now)
        self.flush(node)

    def churn(self, fraction: float, now: float | None = None,
              exclude: Iterable[SimNode] = ()) -> list[SimNode]:
        """Take `fraction` of the live nodes (not in `exclude`) down, at sim time `now`
        (default: at once). Returns the chosen nodes."""
        keep = {id(n) for n in exclude}
        candidates = [n for n in self.nodes if n.alive and id(n) not in keep]
        chosen = self.rng.sample(candidates, min(len(candidates), round(fraction * len(candidates))))
        if now is None or now <= self.now:
            for n in chosen:
                n.down()
        else:
            def crash() -> None:
                for n in chosen:
                    n.down()
            self.call_at(now, crash)
        return chosen

    # --- the engine pump --------------------------------------------------------------------

    def flush(self, node: SimNode) -> None:
        """After any call into node.engine: events, outgoing datagrams, the timer."""
        engine, now = node.engine, self.now
        while (event := engine.next_event()) is not None:
            self._dispatch(node, event)
        out = engine.datagrams_to_send(now)
        if out:
            stats = self.stats
            stats["sent"] += len(out)
            if not node.alive:
                stats["dropped_down"] += len(out)
            else:
                lo, hi = self.latency
                loss, rand, heap, seq = self.loss, self.rng.random, self._heap, self._seq
                for data, addr in out:
                    dst = self.by_addr.get(addr)
                    if dst is None:
                        stats["dropped_unknown"] += 1
                    elif loss and rand() < loss:
                        stats["lost"] += 1
                    else:
                        heapq.heappush(heap, (now + lo + (hi - lo) * rand(), next(seq),
                                              _DELIVER, dst, data, node.addr))
                        self.in_flight += 1
        when = engine.get_timer()
        if when is not None and (node._armed is None or when < node._armed):
            node._armed = when
            heapq.heappush(self._heap, (when, next(self._seq), _TIMER, node, None, None))

    def _dispatch(self, node: SimNode, event: ev.Event) -> None:
        node._record(event)
        if isinstance(event, ev.GetValues):
            node.values.setdefault(event.op, []).extend(event.values)
        elif isinstance(event, ev.GetDone | ev.PutDone):
            node.done[event.op] = event
            node.finished[event.op] = self.now
        elif isinstance(event, ev.ListenValues):
            node.listened.setdefault(event.op, []).append(event)
        elif isinstance(event, ev.Connectivity):
            node.connected = event.good_nodes > 0
        for callback in node.callbacks:
            callback(node, event)

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), _CALL, fn, None, None))

    def _step(self) -> None:
        when, _, kind, a, b, c = heapq.heappop(self._heap)
        self.now = when
        if kind == _DELIVER:
            self.in_flight -= 1
            if not a.alive:
                self.stats["dropped_down"] += 1
                return
            self.stats["delivered"] += 1
            a.engine.receive_datagram(b, c, when)
            self.flush(a)
        elif kind == _TIMER:
            if a._armed != when:
                return              # superseded by an earlier arm
            a._armed = None
            a.engine.handle_timer(when)
            self.flush(a)
        else:
            a()

    # --- running ----------------------------------------------------------------------------

    def run_until(self, t: float, pred: Callable[[], bool] | None = None) -> bool:
        """Process everything due up to sim time t (then now = t), or stop as soon as
        pred() holds (now = that event's time). Returns pred's final value (False if none)."""
        heap, step = self._heap, self._step
        for _ in range(self.max_steps):
            if not heap or heap[0][0] > t:
                break
            step()
            self.stats["steps"] += 1
            if pred is not None and pred():
                return True
        else:
            raise SimError(f"more than {self.max_steps} steps before t={t}")
        self.now = max(self.now, t)
        return pred is not None and pred()

    def run(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_idle(self, pred: Callable[[], bool] | None = None,
                       timeout: float = 30.0) -> bool:
        """Run until pred() holds, or (without pred) until no datagram is in flight,
        for at most `timeout` simulated seconds. Returns whether it got there."""
        if pred is None:
            def pred() -> bool:
                return self.in_flight == 0
        if pred():
            return True
        return self.run_until(self.now + timeout, pred)

    # --- operations -------------------------------------------------------------------------

    def start_get(self, node: SimNode, key: InfoHash, query: Query | None = None) -> int:
        op = node.engine.get(key, self.now, query)
        node.started[op] = self.now
        self.flush(node)
        return op

    def start_put(self, node: SimNode, key: InfoHash, value: Value,
                  permanent: bool = False) -> int:
        op = node.engine.put(key, value, self.now, permanent)
        node.started[op] = self.now
        self.flush(node)
        return op

    def wait(self, pending: Iterable[tuple[SimNode, int]], timeout: float = 30.0) -> bool:
        """Run until every (node, op) has completed, for at most `timeout` sim seconds."""
        left = list(pending)

        def all_done() -> bool:
            while left and left[-1][1] in left[-1][0].done:
                left.pop()
            return not left
        return self.run_until_idle(all_done, timeout)

    def get_all(self, requests: Iterable[tuple[SimNode, InfoHash]],
                timeout: float = 30.0) -> list[GetResult]:
        """Concurrent gets; one result per (node, key), in order."""
        started = [(node, key, self.start_get(node, key)) for node, key in requests]
        self.wait([(node, op) for node, _, op in started], timeout)
        results = []
        for node, key, op in started:
            values, done, latency = node.pop_result(op)
            results.append(GetResult(node, key, values, done, latency))  # type: ignore[arg-type]
        return results

    def put_all(self, requests: Iterable[tuple[SimNode, InfoHash, Value]],
                timeout: float = 30.0) -> list[PutResult]:
        started = [(node, key, self.start_put(node, key, value)) for node, key, value in requests]
        self.wait([(node, op) for node, _, op in started], timeout)
        results = []
        for node, key, op in started:
            _, done, latency = node.pop_result(op)
            results.append(PutResult(node, key, done, latency))  # type: ignore[arg-type]
        return results

    def get(self, node: SimNode, key: InfoHash, timeout: float = 30.0,
            query: Query | None = None) -> tuple[list[Value], ev.GetDone]:
        """Run the sim until a get completes: (values found, its GetDone)."""
        op = self.start_get(node, key, query)
        self.wait([(node, op)], timeout)
        values, done, _ = node.pop_result(op)
        if done is None:
            raise SimTimeout(f"get {key.hex()[:8]} from {node} not done in {timeout} s")
        return values, done  # type: ignore[return-value]

    def put(self, node: SimNode, key: InfoHash, value: Value, timeout: float = 30.0,
            permanent: bool = False) -> ev.PutDone:
        """Run the sim until a put completes; its PutDone tells how many nodes stored it."""
        op = self.start_put(node, key, value, permanent)
        self.wait([(node, op)], timeout)
        _, done, _ = node.pop_result(op)
        if done is None:
            raise SimTimeout(f"put {key.hex()[:8]} from {node} not done in {timeout} s")
        return done  # type: ignore[return-value]

    def listen(self, node: SimNode, key: InfoHash) -> int:
        """Start a listen; its ListenValues events accumulate in node.listened[op]."""
        op = node.engine.listen(key, self.now)
        node.listened.setdefault(op, [])
        self.flush(node)
        return op

    def cancel(self, node: SimNode, op: int) -> None:
        node.engine.cancel(op, self.now)
        node.listened.pop(op, None)
        node.pop_result(op)
        self.flush(node)

    # --- observation ------------------------------------------------------------------------

    def engine_stats(self) -> Counter[str]:
        """Every engine's stats, summed."""
        total: Counter[str] = Counter()
        for node in self.nodes:
            total.update(node.engine.stats)
        return total

    def converged(self, min_good: int = K) -> bool:
        """Every live node is connected and knows min(min_good, live nodes - 1) good nodes."""
        alive = self.alive_nodes()
        need = min(min_good, len(alive) - 1)
        return all(n.connected and n.good_count() >= need for n in alive) if need > 0 else True


def build(n: int, seed: int = 0, *, latency: tuple[float, float] = DEFAULT_LATENCY,
          loss: float = 0.0, peers: int = 2, join_interval: float = 0.02,
          converge_timeout: float = 120.0, settle: float = 5.0, min_good: int = K,
          join: str = "protocol", **engine_kwargs) -> SimNetwork:
    """n nodes on a new network.

    join="protocol": each node bootstraps to up to `peers` random earlier nodes as it
    joins (one every `join_interval` sim seconds), then the network runs until every node
    is connected with `min_good` good nodes (checked each sim second, at most
    `converge_timeout` s after the last join) plus `settle` seconds. `sim.converged_at`
    is when that held (None: never).

    join="direct": every node is added at once and its routing table filled from the
    global view (`fill_tables`), as if the network had converged: no datagram is sent,
    so n = 10,000 builds in seconds. The engines have not yet seen a reply: the first
    one each gets starts its own neighbourhood search, as after a real bootstrap. Then
    `settle` seconds run."""
    if join not in ("protocol", "direct"):
        raise ValueError("join is 'protocol' or 'direct'")
    sim = SimNetwork(seed, latency, loss)
    if join == "direct":
        for _ in range(n):
            sim.add_node(**engine_kwargs)
        fill_tables(sim)
        sim.converged_at = sim.now
        sim.run(settle)
        return sim
    for i in range(n):
        node = sim.add_node(**engine_kwargs)
        if i:
            sim.bootstrap(node, [sim.nodes[j] for j in sim.rng.sample(range(i), min(i, peers))])
        if join_interval:
            sim.run(join_interval)
    deadline = sim.now + converge_timeout
    while sim.now < deadline:
        sim.run(1.0)
        if sim.converged(min_good):
            sim.converged_at = sim.now
            break
    sim.run(settle)
    return sim


def fill_tables(sim: SimNetwork, nodes: list[SimNode] | None = None) -> None:
    """Fill each node's routing table (of its address family) with what a converged
    Kademlia table holds: for every bucket on the path to its own id, K + 1 live nodes of
    that bucket's range (K in the bucket, one cached spare) or all of them, each as if it
    had just replied. Its K closest nodes are among them (its own search found them, and
    they queried it); the rest of each range is picked at random. Only live nodes are
    used; `nodes` (default: every live node) are the ones filled."""
    alive = sorted((n for n in sim.nodes if n.alive), key=lambda n: n.id.int)
    ints = [n.id.int for n in alive]
    rng, now = sim.rng, sim.now
    for node in alive if nodes is None else nodes:
        table = node.engine.tables[family_of(node.addr)]
        for i in _table_view(ints, node.id.int, rng):
            other = alive[i]
            if other is not node:
                table.update(other.engine.id, other.addr, now, 2)
        node.connected = True


def _table_view(ints: list[int], me: int, rng: random.Random) -> list[int]:
    """Indexes (into the sorted ids) of what a converged table of `me` holds, farthest
    bucket first."""
    ranges: list[tuple[int, int]] = []      # the range of each bucket on the path to me
    lo, hi, base = 0, len(ints), 0
    for depth in range(8 * HASH_LEN):
        if hi - lo <= K + 2:                # me and at most K + 1 others left: all of them
            break
        bit = 1 << (8 * HASH_LEN - 1 - depth)
        mid = bisect_left(ints, base + bit, lo, hi)
        if me & bit:
            ranges.append((lo, mid))
            lo, base = mid, base + bit
        else:
            ranges.append((mid, hi))
            hi = mid
    # The K closest: the last range's nodes, then the nearest of the deepest buckets.
    need = K - (hi - lo - 1)
    picks: list[list[int]] = [[] for _ in ranges]
    for level in range(len(ranges) - 1, -1, -1):
        if need <= 0:
            break
        a, b = ranges[level]
        picks[level] = heapq.nsmallest(need, range(a, b), key=lambda i: ints[i] ^ me)
        need -= len(picks[level])
    out: list[int] = []
    for (a, b), chosen in zip(ranges, picks, strict=True):
        # the closest first: the (K + 1)th of a range is only cached
        others = range(a, b) if b - a <= K + 1 else rng.sample(range(a, b), K + 1)
        out += chosen + [i for i in others if i not in chosen][:K + 1 - len(chosen)]
    return out + list(range(lo, hi))


def summarize(samples: Iterable[float]) -> dict[str, float]:
    """count, min, median, p95, max and mean of some samples (NaN when empty)."""
    xs = sorted(samples)
    if not xs:
        nan = math.nan
        return {"count": 0, "min": nan, "median": nan, "p95": nan, "max": nan, "mean": nan}
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    p95 = xs[min(len(xs) - 1, math.ceil(0.95 * len(xs)) - 1)]
    return {"count": len(xs), "min": xs[0], "median": median, "p95": p95, "max": xs[-1],
            "mean": sum(xs) / len(xs)}
