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

Direct delivery
===============

A consumer that only passes items on (the gateway writing SSE events to its client) can
:meth:`attach` a *sink* once it no longer needs to look at each item itself. Every later
``put`` then awaits ``sink(item)`` on the producer's task instead of queueing the item and
waking the consumer's: one task switch and one event-loop turn fewer per item. The
consumer waits for the end with :meth:`ended`, which raises what iterating would have: the
producer's error — or the sink's own, since a sink that fails (the client's connection
broke) closes the stream, as the consumer going away does. Order is kept: items already
queued go to the sink first, and the sink's own waiting (a slow client) holds the producer
back just as a full queue does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
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
        "_sink",
        "_sink_error",
        "_writer",
        "committed",
        "trailer",
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
        self._sink: Callable[[T], Awaitable[None]] | None = None
        self._sink_error: BaseException | None = None
        self.committed = False
        self.trailer: object = None
        """Set by the producer before it ends the stream: what it has to say about the
        whole (the engine puts its request report here)."""

    # ------------------------------------------------------------------ producer

    async def put(self, item: T, *, commit: bool = True) -> None:
        """Hand ``item`` to the consumer; waits while the stream is full."""
        while self._sink is None and len(self._items) >= self._capacity and not self._closed:
            writer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._writer = writer
            await writer
        if self._closed:
            raise RequestCancelled("the consumer closed the stream")
        if self._finished:
            raise RuntimeError("put() after the stream was finished")
        if commit:
            self.committed = True
        sink = self._sink
        if sink is None:
            self._items.append(item)
            self._wake_reader()
            return
        try:
            await sink(item)
        except Exception as error:
            self._sink_error = error
            self.close()
            raise RequestCancelled(f"the consumer's sink failed: {type(error).__name__}") from error

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
        self._wake_writer()
        return item

    def _wake_writer(self) -> None:
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                writer.set_result(None)

    async def attach(self, sink: Callable[[T], Awaitable[None]]) -> None:
        """From now on, hand every item to ``sink`` on the producer's task (see above).

        Items already queued go to ``sink`` first, on this task, in order. Then wait for
        the end with :meth:`ended`.
        """
        if self._sink is not None:
            raise RuntimeError("a sink is attached already")
        while self._items:
            item = self._items.popleft()
            self._wake_writer()
            await sink(item)
        self._sink = sink

    async def ended(self) -> None:
        """Wait for the end after :meth:`attach`: returns when the producer finished,
        raises its error, or the sink's error when the sink failed."""
        while not self._finished and not self._closed:
            reader: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._reader = reader
            try:
                await reader
            finally:
                self._reader = None
        if self._sink_error is not None:
            error, self._sink_error = self._sink_error, None
            raise error
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """The consumer is gone: refuse further items and tell the producer (once)."""
        if self._closed:
            return
        self._closed = True
        self._items.clear()
        self._wake_writer()
        self._wake_reader()  # a consumer waiting in ended() (a sink failed)
        hook, self._on_close = self._on_close, None
        if hook is not None and not self._finished:
            hook()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)
