"""Single flight: at most one call of a kind in flight, its outcome shared by every caller.

Used where a burst of callers would otherwise each start the same slow work: a credential
fetch at token expiry, a session rebuild.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """At most one call in flight; concurrent callers share its outcome.

    The call runs in its own task, so a caller that is cancelled (its client went away)
    neither cancels the work the others wait for nor leaves its outcome unretrieved.
    """

    __slots__ = ("_name", "_task")

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[T] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def run(self, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Start ``work()`` unless a call is already in flight, and await that call."""
        task = self._task
        if task is None:
            task = asyncio.get_running_loop().create_task(work(), name=self._name)
            self._task = task
            task.add_done_callback(self._finished)
        return await asyncio.shield(task)

    def _finished(self, task: asyncio.Task[T]) -> None:
        self._task = None  # only one task at a time: this one
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone

    async def aclose(self) -> None:
        """Cancel the call in flight, if any, and wait until it has ended."""
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
