"""A bounded single-producer, single-consumer stream: how chunks cross from a worker to the
request that waits for them, with no mailbox hop per chunk.

The producer ``await put(item)``s — waiting while ``capacity`` items are unread, so a slow
client slows the upstream read instead of growing memory — and ends the stream with
``finish()`` or ``fail(error)``. The consumer iterates; the iteration ends after the last
item, or raises the error the producer failed with.

``committed`` turns true at the first ``put`` of something the consumer may show its
client: from then on the producer must not retry or fall back (no duplicated content). An
item put with ``commit=False`` (bookkeeping, such as a usage report) flows through without
committing. The consumer can ``close()`` early — the client went away — which makes every
later ``put`` raise :class:`RequestCancelled` and calls the ``on_close`` hook once, so the
producer's work can be cancelled and its permits released.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from rakka_inference.core.errors import RequestCancelled

__all__ = ["BoundedStream"]

T = TypeVar("T")


class BoundedStream(Generic[T]):
    """A bounded, cancellable stream of items with a typed end."""

    __slots__ = (
        "_capacity",
        "_closed",
        "_error",
        "_finished",
        "_items",
        "_on_close",
        "_reader",
        "_writer",
        "committed",
    )

    def __init__(self, capacity: int = 64) -> None:
        if capacity < 1:
            raise ValueError("stream capacity must be >= 1")
        self._capacity = capacity
        self._items: deque[T] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._writer: asyncio.Future[None] | None = None
        self._finished = False
        self._closed = False
        self._error: BaseException | None = None
        self._on_close: Callable[[], None] | None = None
        self.committed = False

    # ------------------------------------------------------------------ producer

    async def put(self, item: T, *, commit: bool = True) -> None:
        """Hand ``item`` to the consumer; waits while the stream is full."""
        while len(self._items) >= self._capacity and not self._closed:
            writer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._writer = writer
            await writer
        if self._closed:
            raise RequestCancelled("the consumer closed the stream")
        if self._finished:
            raise RuntimeError("put() after the stream was finished")
        self._items.append(item)
        if commit:
            self.committed = True
        self._wake_reader()

    def finish(self) -> None:
        """End the stream normally."""
        self._finished = True
        self._wake_reader()

    def fail(self, error: BaseException) -> None:
        """End the stream with ``error``, raised to the consumer after the items before it."""
        if self._finished:
            return
        self._error = error
        self._finished = True
        self._wake_reader()

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def closed(self) -> bool:
        """Whether the consumer has gone away."""
        return self._closed

    def on_close(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` (once) when the consumer closes the stream early."""
        self._on_close = hook

    # ------------------------------------------------------------------ consumer

    def __aiter__(self) -> BoundedStream[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            if self._finished:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                raise StopAsyncIteration
            reader: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._reader = reader
            try:
                await reader
            finally:
                self._reader = None
        item = self._items.popleft()
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.set_result(None)
        return item

    def close(self) -> None:
        """The consumer is gone: refuse further items and tell the producer (once)."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.set_result(None)
        hook, self._on_close = self._on_close, None
        if hook is not None and not self._finished:
            hook()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)
