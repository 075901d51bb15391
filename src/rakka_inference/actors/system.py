"""ActorSystem: spawns top-level actors, finds actors by path, and shuts everything down.

Paths are ``/name`` for top-level actors and ``/parent/child`` below them. Names must be
unique among siblings; a name left out gets ``$N``.

``shutdown(timeout)`` is graceful: every actor stops taking new messages, handles those
already in its mailbox, stops its children and runs ``on_stop``. Whatever has not finished
by the timeout is cancelled, and its outstanding asks fail with :class:`ActorDead`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from rakka_inference.actors.actor import Actor
from rakka_inference.actors.cell import ActorCell
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.supervision import OneForOneStrategy
from rakka_inference.core.errors import ActorDead

__all__ = ["DEFAULT_MAILBOX_CAPACITY", "ActorSystem"]

log = logging.getLogger("rakka_inference.actors")

M = TypeVar("M")

DEFAULT_MAILBOX_CAPACITY = 1024


class ActorSystem:
    """A tree of supervised actors on the running event loop."""

    def __init__(
        self,
        name: str = "rakka",
        *,
        clock: Callable[[], float] = time.monotonic,
        mailbox_capacity: int = DEFAULT_MAILBOX_CAPACITY,
    ) -> None:
        if mailbox_capacity < 1:
            raise ValueError("mailbox_capacity must be >= 1")
        self.name = name
        self.clock = clock
        self.mailbox_capacity = mailbox_capacity
        self.dead_letters = 0
        self._cells: dict[str, ActorCell] = {}
        self._top: dict[str, ActorCell] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._top_seq = 0
        self._closed = False

    # ------------------------------------------------------------------ spawning

    def spawn(
        self,
        factory: Callable[[], Actor[M]],
        name: str | None = None,
        *,
        mailbox_capacity: int | None = None,
        supervisor: OneForOneStrategy | None = None,
    ) -> ActorRef[M]:
        """Start a top-level actor. ``supervisor`` decides its failures (default: restart
        on any Exception, at most 3 times in 60 s; an escalation stops it)."""
        cell = self.spawn_cell(
            factory,
            name,
            parent=None,
            mailbox_capacity=mailbox_capacity,
            strategy=supervisor or OneForOneStrategy(),
        )
        return cell.ref

    def spawn_cell(
        self,
        factory: Callable[[], Actor[Any]],
        name: str | None,
        *,
        parent: ActorCell | None,
        mailbox_capacity: int | None,
        strategy: OneForOneStrategy | None = None,
    ) -> ActorCell:
        if self._closed:
            raise ActorDead(f"/{self.name}", "actor system is shut down")
        if parent is not None and not parent.accepting:
            raise ActorDead(parent.path, "cannot spawn children while stopping")
        siblings = self._top if parent is None else parent.children
        if name is None:
            name = self._next_top_name() if parent is None else parent.next_child_name()
        else:
            _check_name(name)
        if name in siblings:
            raise ValueError(f"an actor named {name!r} already runs under {_path_of(parent)}")
        path = f"{'' if parent is None else parent.path}/{name}"
        cell = ActorCell(
            self,
            factory,
            path=path,
            parent=parent,
            capacity=self.mailbox_capacity if mailbox_capacity is None else mailbox_capacity,
            strategy=strategy,
        )
        siblings[name] = cell
        self._cells[path] = cell
        cell.start()
        task = cell.task
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return cell

    def _next_top_name(self) -> str:
        self._top_seq += 1
        return f"${self._top_seq}"

    # ------------------------------------------------------------------ lookup

    def lookup(self, path: str) -> ActorRef[Any] | None:
        """The actor at ``path`` (``/name`` or ``/parent/child``), if it is running."""
        cell = self._cells.get(path)
        return None if cell is None else cell.ref

    @property
    def actors(self) -> tuple[ActorRef[Any], ...]:
        return tuple(cell.ref for cell in self._cells.values())

    # ------------------------------------------------------------------ bookkeeping

    def unregister(self, cell: ActorCell) -> None:
        if self._cells.get(cell.path) is cell:
            del self._cells[cell.path]
        if cell.parent is None and self._top.get(cell.ref.name) is cell:
            del self._top[cell.ref.name]

    def record_dead_letters(self, path: str, count: int) -> None:
        self.dead_letters += count
        log.warning("%s stopped with %d unhandled message(s) in its mailbox", path, count)

    # ------------------------------------------------------------------ shutdown

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every actor, draining mailboxes; cancel what is still running at ``timeout``."""
        self._closed = True
        tops = list(self._top.values())
        for cell in tops:
            cell.request_stop()
        if tops:
            _, pending = await asyncio.wait([cell.done for cell in tops], timeout=timeout)
            if pending:
                log.warning(
                    "shutdown: %d actor(s) did not stop in %gs; cancelling", len(pending), timeout
                )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> ActorSystem:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith("$"):
        raise ValueError(f"invalid actor name {name!r}: non-empty, no '/', not starting with '$'")


def _path_of(parent: ActorCell | None) -> str:
    return "/" if parent is None else parent.path
