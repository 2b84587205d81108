"""One request on its own (requests.py): its timeouts and retransmissions with a synthetic
clock, what an answer teaches (RTT), what an expiry does (unreachable memory), and tids
that never collide. No engine: a Context and the test's own timer loop."""

from __future__ import annotations

import heapq
import random

import pytest

from sipdht.dht.context import Context
from sipdht.dht.infohash import InfoHash
from sipdht.dht.messages import Message, decode
from sipdht.dht.requests import (
    FIRST_TIMEOUT,
    MAX_ATTEMPTS,
    MAX_UNREACHABLE,
    SUSPECT_TIME,
    UNREACHABLE_TIME,
    Requests,
)
from sipdht.dht.routing import MAX_FAILURES, Node
from sipdht.dht.rtt import RTO_MIN, rto

T0 = 1000.0
ME = InfoHash(b"\x55" * 20)
PEER = InfoHash(b"\x11" * 20)
B = ("203.0.113.20", 5000)


def part(sids: set[int] | None = None, seed: int = 1) -> tuple[Context, Requests]:
    ctx = Context(ME, 0, False, (4,), random.Random(seed), T0)
    return ctx, Requests(ctx, sids if sids is not None else set())


def run(ctx: Context, until: float) -> list[float]:
    """Fire the due timers up to `until`, as DhtEngine.handle_timer does; their times."""
    fired = []
    while ctx.timers and ctx.timers[0][0] <= until:
        when, _, timer = heapq.heappop(ctx.timers)
        if not timer.cancelled:
            ctx.now = when
            fired.append(when)
            timer.fn(when)
    return fired


def sent(ctx: Context) -> list[tuple[int, tuple[str, int]]]:
    out, ctx.out = ctx.out, []
    return [(decode(d).tid, a) for d, a in out]


class Log:
    def __init__(self) -> None:
        self.replies: list[float] = []
        self.expired: list[float] = []
        self.retries: list[float] = []

    def reply(self, msg: Message, t: float) -> None:
        self.replies.append(t)

    def expire(self, t: float) -> None:
        self.expired.append(t)

    def retry(self, t: float) -> None:
        self.retries.append(t)


def measured_node(rtt: float = 0.02) -> Node:
    node = Node(PEER, B)
    node.rtt, node.rtt_var = rtt, rtt / 2
    return node


def test_a_silent_node_is_retried_at_its_rto_then_backs_off_and_expires() -> None:
    ctx, reqs = part()
    node = measured_node()
    log = Log()
    req = reqs.send(B, node, "ping", {}, T0, log.reply, log.expire, on_retry=log.retry)
    [(tid, dst)] = sent(ctx)
    assert dst == B and tid == req.tid and reqs.pending == {tid: req}
    first = rto(node.rtt, node.rtt_var)
    assert req.wait == first and not req.blind
    # the first timeout at the node's RTO: sent again, the caller told (a search moves on)
    assert run(ctx, T0 + first - 1e-6) == []
    run(ctx, T0 + first)
    assert sent(ctx) == [(tid, B)] and log.retries == [T0 + first] and req.attempts == 2
    # the next wait backs off from FIRST_TIMEOUT at least, with up to 0.25 s of jitter
    assert FIRST_TIMEOUT * 2 <= req.wait <= FIRST_TIMEOUT * 2 + 0.25
    # silent for FIRST_TIMEOUT since the first attempt: every search skips it for a while
    run(ctx, T0 + FIRST_TIMEOUT)
    assert reqs.unreachable[B] == T0 + FIRST_TIMEOUT + SUSPECT_TIME
    assert not reqs.reachable(node, T0 + FIRST_TIMEOUT + 1)
    second = T0 + first + req.wait
    run(ctx, second)
    assert sent(ctx) == [(tid, B)] and req.attempts == MAX_ATTEMPTS
    assert log.expired == []
    run(ctx, second + req.wait)
    assert log.expired == [second + req.wait] and log.replies == []
    assert reqs.pending == {} and ctx.stats["requests_expired"] == 1
    assert node.failures == MAX_FAILURES
    assert reqs.unreachable[B] == second + req.wait + UNREACHABLE_TIME
    run(ctx, T0 + 60)
    assert sent(ctx) == [] and log.expired == [second + req.wait]    # nothing after expiry


def test_an_answer_stops_the_timer_clears_the_address_and_times_the_node() -> None:
    ctx, reqs = part()
    node = measured_node(0.02)
    log = Log()
    reqs.mark_unreachable(B, T0, SUSPECT_TIME)
    req = reqs.send(B, node, "ping", {}, T0, log.reply, log.expire)
    sent(ctx)
    assert reqs.match(req.tid, ("203.0.113.99", 5000)) is None     # only from where it went
    assert reqs.match(req.tid, B) is req
    reqs.answered(req, B)
    reqs.sample(req, node, T0 + 0.030)
    assert req.done and req.timer is not None and req.timer.cancelled
    assert reqs.pending == {} and B not in reqs.unreachable
    assert reqs.rtt.srtt == pytest.approx(0.030)            # the engine-wide estimate
    assert 0.02 < node.rtt < 0.030                          # and the node's own
    run(ctx, T0 + 60)
    assert sent(ctx) == [] and log.expired == []


def test_a_blind_request_rereads_its_rto_once_an_estimate_exists() -> None:
    """Sent before any RTT was known: it waits RTO_MAX only while nothing is measured."""
    ctx, reqs = part()
    log = Log()
    req = reqs.send(B, None, "ping", {}, T0, log.reply, log.expire, on_retry=log.retry)
    sent(ctx)
    assert req.blind and req.wait == FIRST_TIMEOUT
    assert run(ctx, T0 + RTO_MIN) == [T0 + RTO_MIN]          # looks again, nothing measured
    assert log.retries == [] and sent(ctx) == []
    reqs.rtt.sample(0.100)                                    # another node answered
    deadline = T0 + reqs.rto(None)
    assert deadline < T0 + FIRST_TIMEOUT
    run(ctx, deadline)
    assert log.retries == [deadline] and len(sent(ctx)) == 1 and not req.blind


def test_tids_avoid_requests_out_listen_sids_and_zero() -> None:
    sids: set[int] = set()
    ctx, reqs = part(sids, seed=7)
    twin = random.Random()
    twin.setstate(ctx.rng.getstate())
    first = twin.getrandbits(32)
    sids.add(first)                   # the next draw is taken as a listen socket id
    tid = reqs.next_tid()
    assert tid not in (0, first)
    log = Log()
    req = reqs.send(B, None, "ping", {}, T0, log.reply, log.expire)
    assert req.tid not in sids and req.tid != 0


def test_unreachable_memory_is_bounded() -> None:
    ctx, reqs = part()
    for i in range(MAX_UNREACHABLE + 10):
        reqs.mark_unreachable((f"10.1.{i // 250}.{i % 250 + 1}", 1), T0 + i * 1e-3)
    assert len(reqs.unreachable) == MAX_UNREACHABLE
