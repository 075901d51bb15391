"""The engine's bounded priority queue."""

from __future__ import annotations

import asyncio

import pytest

from rakka_inference.core.errors import Backpressure
from rakka_inference.core.messages import Priority
from rakka_inference.engine.queue import RequestQueue


def test_priority_order_and_fifo_within_a_priority() -> None:
    queue: RequestQueue[str] = RequestQueue(10)
    queue.put("n1")
    queue.put("b1", Priority.BACKGROUND)
    queue.put("c1", Priority.CRITICAL)
    queue.put("h1", Priority.HIGH)
    queue.put("n2", Priority.NORMAL)
    queue.put("c2", Priority.CRITICAL)
    assert queue.drain() == ["c1", "c2", "h1", "n1", "n2", "b1"]
    assert len(queue) == 0
    assert queue.get_nowait() is None


def test_full_queue_raises_backpressure_and_keeps_its_items() -> None:
    queue: RequestQueue[int] = RequestQueue(2)
    queue.put(1)
    queue.put(2, Priority.CRITICAL)
    with pytest.raises(Backpressure, match="full"):
        queue.put(3, Priority.CRITICAL)
    assert queue.drain() == [2, 1]


def test_cancel_removes_a_queued_item_and_frees_its_slot() -> None:
    queue: RequestQueue[str] = RequestQueue(2)
    first = queue.put("a")
    queue.put("b")
    assert first.cancel() is True
    assert first.cancel() is False
    assert repr(first) == "QueueTicket(normal, cancelled)"
    assert len(queue) == 1
    assert queue.depth(Priority.NORMAL) == 1
    queue.put("c")  # the slot is free again
    assert queue.drain() == ["b", "c"]


def test_a_taken_item_cannot_be_cancelled() -> None:
    queue: RequestQueue[str] = RequestQueue(2)
    ticket = queue.put("a")
    assert queue.get_nowait() == "a"
    assert ticket.cancel() is False
    assert ticket.state == "taken"


def test_capacity_is_checked() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RequestQueue[int](0)


async def test_get_waits_for_an_item() -> None:
    queue: RequestQueue[str] = RequestQueue(4)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put("x", Priority.HIGH)
    assert await getter == "x"


async def test_close_drains_then_returns_none_and_refuses_puts() -> None:
    queue: RequestQueue[str] = RequestQueue(4)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put("last")
    queue.close()
    assert queue.closed
    assert await waiting == "last"
    assert await queue.get() is None
    with pytest.raises(Backpressure, match="shutting down"):
        queue.put("late")
    idle = asyncio.ensure_future(RequestQueue[str](1).get())
    idle.cancel()
    with pytest.raises(asyncio.CancelledError):
        await idle


async def test_close_wakes_idle_getters() -> None:
    queue: RequestQueue[str] = RequestQueue(4)
    getters = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    queue.close()
    assert await asyncio.gather(*getters) == [None, None, None]


async def test_a_cancelled_getter_passes_its_wakeup_on() -> None:
    queue: RequestQueue[str] = RequestQueue(4)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put("item")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second == "item"


async def test_release_getters_lets_waiters_go_and_keeps_items() -> None:
    queue: RequestQueue[str] = RequestQueue(4)
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.release_getters()
    assert await waiting is None
    queue.put("kept")
    assert await queue.get() == "kept"
