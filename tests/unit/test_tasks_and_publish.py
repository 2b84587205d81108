"""The supervisor (logged failures, restarts, no growth) and the contact-record publish loop."""

from __future__ import annotations

import asyncio
import logging

from sipdht.tasks import Supervisor
from sipdht.v1 import locator as loc


async def test_failures_are_logged_and_finished_tasks_dropped(caplog):
    with caplog.at_level(logging.ERROR):
        sup = Supervisor("t")

        async def boom():
            raise RuntimeError("kaput")

        for _ in range(50):
            sup.spawn(asyncio.sleep(0), "quick")
        sup.spawn(boom(), "boom")
        await asyncio.sleep(0.05)
        assert len(sup) == 0                    # before: Agent._tasks grew per call
        assert sup.stats["failed"] == 1
        await sup.stop()
    assert "t:boom" in caplog.text and "kaput" in caplog.text


async def test_forever_restarts_a_loop_that_raises(monkeypatch):
    monkeypatch.setattr("sipdht.tasks.RESTART_MIN", 0.01)
    runs = []
    sup = Supervisor("t")

    async def loop():
        runs.append(1)
        if len(runs) < 3:
            raise ValueError("one bad value")
        await asyncio.sleep(10)

    sup.forever("inbox", loop)
    for _ in range(100):
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    await sup.stop()
    assert len(runs) == 3 and sup.stats["restarted_inbox"] == 2


class _FlakyDht:
    """Stands in for SecureDht: the first publishes fail, as when the network is down."""

    account_id = "a" * 40

    def __init__(self, fail: set[int]) -> None:
        self.calls, self.fail = 0, fail

    async def put_signed(self, *args, **kw):
        self.calls += 1
        if self.calls in self.fail:
            raise ConnectionError("network down")
        from sipdht.dht.values import Value
        return Value(id=kw["vid"], seq=kw["seq"]), 8


async def _run_publish_loop(monkeypatch, fail: set[int], seconds: float) -> int:
    monkeypatch.setattr(loc, "RETRY_INTERVAL", 0.02)
    monkeypatch.setattr(loc, "REPUBLISH_INTERVAL", 0.05)
    dht = _FlakyDht(fail)
    locator = loc.Locator(dht)                  # type: ignore[arg-type]

    async def visible() -> bool:
        return True

    locator._visible = visible                  # type: ignore[method-assign]

    locator.start()
    await asyncio.sleep(seconds)
    locator._task.cancel()
    return dht.calls


async def test_publish_loop_survives_a_first_failure(monkeypatch):
    # before: `stored` was unbound after a first failure: the loop died, never re-published
    assert await _run_publish_loop(monkeypatch, {1}, 0.2) >= 3


async def test_a_failure_after_a_success_retries_soon(monkeypatch):
    # before: after one success, a failure waited the full re-publish interval
    calls = await _run_publish_loop(monkeypatch, {2, 3, 4, 5, 6, 7, 8, 9}, 0.3)
    # success at 0, failures then retry every 0.02 s: ~8 calls in 0.3 s, not 1 per 0.05 s
    assert calls >= 8
