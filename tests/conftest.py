"""Suite-wide fixtures.

Every coroutine test is wrapped in ``no_leaked_tasks``: a test that leaves a task running
fails, and the leaked tasks are named in the failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    # Let tasks that were cancelled or finished on the test's last step settle.
    for _ in range(20):
        await asyncio.sleep(0)
    leaked = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if leaked:
        for task in leaked:
            task.cancel()
        await asyncio.gather(*leaked, return_exceptions=True)
        names = ", ".join(sorted(f"{t.get_name()} ({t.get_coro()!r})" for t in leaked))
        pytest.fail(f"test leaked {len(leaked)} running task(s): {names}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "obj", None)
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(function):
            # First in the list: set up before, and torn down after, every other fixture.
            item.fixturenames.insert(0, "no_leaked_tasks")
