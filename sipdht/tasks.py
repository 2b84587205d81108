"""One supervised way to run background work.

Every task an agent starts goes through a Supervisor: finished tasks are dropped at once
(no list that grows per call), failures are logged with their traceback instead of being
swallowed, and long-lived loops (`forever`) are restarted with a backoff, so one bad input
can never silently stop a service such as incoming calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

RESTART_MIN, RESTART_MAX = 0.5, 30.0


class Supervisor:
    def __init__(self, name: str = "sipdht") -> None:
        self.name = name
        self.stats: Counter[str] = Counter()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Run `coro` in the background; its failure is logged and counted, never lost."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def forever(self, name: str, loop: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run `loop()` until stop(), restarting it (with a growing pause) when it returns or
        raises."""
        return self.spawn(self._restarting(name, loop), name)

    async def _restarting(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        pause = RESTART_MIN
        while not self._stopping:
            try:
                await loop()
                log.warning("%s ended; restarting it", name)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; restarting it in %.1f s", name, pause)
            self.stats[f"restarted_{name}"] += 1
            await asyncio.sleep(pause)
            pause = min(RESTART_MAX, pause * 2)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.stats["failed"] += 1
            log.error("background task %s failed: %r", task.get_name(), exc, exc_info=exc)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel everything still running and wait (bounded) for it to finish."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                log.warning("background task %s did not stop within %g s", task.get_name(), timeout)
