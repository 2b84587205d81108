"""The one async runner: pytest-asyncio runs ``async def`` tests, ``async_timeout`` bounds them
(tests/harness/aio.py); no test
wraps its own ``asyncio.run``."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness.aio import bounded


async def test_a_bound_cancels_the_test_and_its_finally_still_runs():
    cleaned: list[str] = []

    async def hangs() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("stopped")

    with pytest.raises(TimeoutError):
        await bounded(hangs, 0.05)()
    assert cleaned == ["stopped"]


@pytest.mark.async_timeout(0.2)
async def test_the_mark_bounds_the_test_it_is_on():
    with pytest.raises(asyncio.CancelledError):     # unbounded, this sleep would just end
        await asyncio.sleep(5)
