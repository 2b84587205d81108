"""A time bound for async tests, and the old hand-written runner tests/sip still uses.

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


def async_test(fn: AsyncTest) -> Callable[..., Any]:
    """A synchronous test running ``fn`` in its own loop, bounded at 300 s.

    Only for the tests/sip modules not yet written as ``async def`` tests; new tests are
    plain ``async def`` (with ``async_timeout`` where a bound is wanted)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 300))
    return wrapper
