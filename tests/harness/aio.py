"""A time bound for async tests.

pytest-asyncio runs every ``async def test_...`` (setup.cfg: ``asyncio_mode = auto``), one
event loop per test. A test marked ``@pytest.mark.async_timeout(seconds)`` (or a module, through
``pytestmark``) runs inside ``asyncio.timeout``: past the bound its coroutine is cancelled, so
its ``finally`` blocks still stop the processes it started, and it fails with TimeoutError.
A bound is a hang guard, not a performance figure.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

AsyncTest = Callable[..., Coroutine[Any, Any, Any]]


def bounded(test: AsyncTest, seconds: float) -> AsyncTest:
    """``test`` cancelled after ``seconds``; its signature (the fixtures it asks for) kept."""
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        async with asyncio.timeout(seconds):
            return await test(*args, **kwargs)
    return run
