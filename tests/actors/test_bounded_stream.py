"""The per-request bounded stream."""

from __future__ import annotations

import asyncio

import pytest

from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.errors import RequestCancelled, ServerError


async def test_items_flow_in_order_then_the_stream_ends() -> None:
    stream: BoundedStream[int] = BoundedStream(capacity=2)

    async def produce() -> None:
        for i in range(5):
            await stream.put(i)
        stream.finish()

    producer = asyncio.create_task(produce())
    assert [item async for item in stream] == [0, 1, 2, 3, 4]
    await producer
    assert stream.committed
    assert stream.finished


async def test_a_full_stream_makes_the_producer_wait() -> None:
    stream: BoundedStream[int] = BoundedStream(capacity=1)
    await stream.put(1)
    blocked = asyncio.create_task(stream.put(2))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await stream.__anext__() == 1
    await blocked
    assert await stream.__anext__() == 2


async def test_fail_raises_after_the_items_before_it() -> None:
    stream: BoundedStream[str] = BoundedStream()
    await stream.put("partial")
    stream.fail(ServerError("upstream broke"))
    stream.fail(ServerError("ignored: already ended"))
    assert await stream.__anext__() == "partial"
    with pytest.raises(ServerError, match="upstream broke"):
        await stream.__anext__()


async def test_close_cancels_the_producer_once() -> None:
    stream: BoundedStream[int] = BoundedStream(capacity=1)
    calls: list[str] = []
    stream.on_close(lambda: calls.append("closed"))
    await stream.put(1)
    blocked = asyncio.create_task(stream.put(2))
    await asyncio.sleep(0)
    stream.close()
    stream.close()
    assert stream.closed
    assert calls == ["closed"]
    with pytest.raises(RequestCancelled):
        await blocked
    with pytest.raises(RequestCancelled):
        await stream.put(3)


async def test_close_after_finish_does_not_call_the_hook() -> None:
    stream: BoundedStream[int] = BoundedStream()
    calls: list[str] = []
    stream.on_close(lambda: calls.append("closed"))
    stream.finish()
    stream.close()
    assert calls == []


async def test_put_after_finish_is_a_bug() -> None:
    stream: BoundedStream[int] = BoundedStream()
    stream.finish()
    with pytest.raises(RuntimeError, match="finished"):
        await stream.put(1)


def test_capacity_is_checked() -> None:
    with pytest.raises(ValueError, match="capacity"):
        BoundedStream[int](0)


async def test_bookkeeping_items_do_not_commit() -> None:
    stream: BoundedStream[str] = BoundedStream()
    await stream.put("usage report", commit=False)
    assert not stream.committed
    await stream.put("visible text")
    assert stream.committed
