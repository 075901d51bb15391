"""The engine's bounded request queue: four priorities, FIFO within each, cancellable.

``put`` never blocks: when ``capacity`` items are queued it raises :class:`Backpressure`,
so a caller learns at once that this replica is full and can fall back. ``get`` waits for
the oldest item of the highest non-empty priority (critical > high > normal > background).

Cancelling a ticket removes its item: the count drops at once, and the slot is skipped
when it reaches the head (lazy deletion keeps cancel O(1)). ``close`` wakes every waiting
``get``, which then returns None once the queue is empty — the workers' signal to stop.

The queue is a plain object, not an actor: the engine's workers call it inline.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

from rakka_inference.core.errors import Backpressure
from rakka_inference.core.messages import Priority

__all__ = ["QueueTicket", "RequestQueue"]

T = TypeVar("T")

# Highest first: the order get() looks at the lanes.
_ORDER = sorted(Priority, reverse=True)


class QueueTicket(Generic[T]):
    """A queued item. ``cancel()`` takes it out of the queue if it is still there."""

    __slots__ = ("_queue", "item", "priority", "state")

    def __init__(self, queue: RequestQueue[T], item: T, priority: Priority) -> None:
        self._queue = queue
        self.item = item
        self.priority = priority
        self.state = "queued"  # -> "taken" | "cancelled"

    def cancel(self) -> bool:
        """Remove the item. False when a worker already took it."""
        if self.state != "queued":
            return False
        self.state = "cancelled"
        self._queue._forget()
        return True

    def __repr__(self) -> str:
        return f"QueueTicket({self.priority.name.lower()}, {self.state})"


class RequestQueue(Generic[T]):
    """Bounded multi-priority FIFO queue for one engine. Items must not be None."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("queue capacity must be >= 1")
        self.capacity = capacity
        self._lanes: dict[Priority, deque[QueueTicket[T]]] = {p: deque() for p in Priority}
        self._size = 0
        # A getter's future resolves True ("look again") or False ("give up: return None").
        self._getters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return self._size

    @property
    def closed(self) -> bool:
        return self._closed

    def depth(self, priority: Priority) -> int:
        """Items waiting at ``priority`` (cancelled ones excluded)."""
        return sum(1 for ticket in self._lanes[priority] if ticket.state == "queued")

    def put(self, item: T, priority: Priority = Priority.NORMAL) -> QueueTicket[T]:
        """Queue ``item``; raises Backpressure when full or closed."""
        if self._closed:
            raise Backpressure("the engine is shutting down and takes no new requests")
        if self._size >= self.capacity:
            raise Backpressure(f"the engine's queue is full ({self.capacity} requests)")
        ticket = QueueTicket(self, item, priority)
        self._lanes[priority].append(ticket)
        self._size += 1
        self._wake_one()
        return ticket

    def get_nowait(self) -> T | None:
        """The next item, or None when nothing is queued."""
        for priority in _ORDER:
            lane = self._lanes[priority]
            while lane:
                ticket = lane.popleft()
                if ticket.state == "queued":
                    ticket.state = "taken"
                    self._size -= 1
                    return ticket.item
        return None

    async def get(self) -> T | None:
        """Wait for the next item; None once the queue is closed and empty, or when
        :meth:`release_getters` lets the waiting getters go."""
        while True:
            item = self.get_nowait()
            if item is not None or self._closed:
                return item
            getter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                if not await getter:
                    return None
            except asyncio.CancelledError:
                # Pass a wake-up we may have consumed on to the next waiting getter.
                if getter.done() and not getter.cancelled() and self._size:
                    self._wake_one()
                raise

    def close(self) -> None:
        """Refuse new items; waiting getters drain what is left, then get None."""
        self._closed = True
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(True)

    def release_getters(self) -> None:
        """Let every waiting ``get`` return None now. Queued items stay queued."""
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(False)

    def drain(self) -> list[T]:
        """Take every queued item out at once (highest priority first)."""
        items: list[T] = []
        while (item := self.get_nowait()) is not None:
            items.append(item)
        return items

    def _forget(self) -> None:
        self._size -= 1

    def _wake_one(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(True)
                return
