"""The actor base class and the context an actor acts through.

An actor is a class with four hooks, all coroutines, all run on the actor's own task, one
at a time:

- ``on_start()`` before the first message (and again on a fresh instance after a restart);
- ``receive(message)`` for each message; what it returns is the reply to an ``ask``;
- ``on_stop()`` once, when the actor stops (and on the old instance before a restart);
- ``on_failure(error, message)`` when ``receive`` (or ``on_start``) raised, before the
  parent's supervisor strategy decides what happens next.

A watcher also gets ``on_terminated(event)`` when an actor it watches stops or fails.
``supervisor_strategy`` decides for the actor's *children*.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rakka_inference.actors.supervision import OneForOneStrategy

if TYPE_CHECKING:
    from rakka_inference.actors.cell import ActorCell
    from rakka_inference.actors.ref import ActorRef
    from rakka_inference.actors.system import ActorSystem

__all__ = ["Actor", "ActorContext", "Terminated"]

M = TypeVar("M")
C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class Terminated:
    """A watched actor stopped. ``cause`` is the failure that stopped it, or None."""

    ref: ActorRef[Any]
    cause: BaseException | None

    @property
    def failed(self) -> bool:
        return self.cause is not None


class Actor(Generic[M]):
    """Base class of every actor. Subclass it and override the hooks you need."""

    supervisor_strategy: OneForOneStrategy = OneForOneStrategy()
    """How this actor supervises its children. Override per class or per instance."""

    _context: ActorContext | None = None

    @property
    def context(self) -> ActorContext:
        """The actor's handle on the system; available from ``on_start`` on."""
        if self._context is None:
            raise RuntimeError(f"{type(self).__name__} is not running in an actor system")
        return self._context

    @property
    def self_ref(self) -> ActorRef[M]:
        return self.context.self_ref

    async def on_start(self) -> None:
        """Called before the first message is received."""

    async def receive(self, message: M) -> Any:
        """Handle one message. The return value is the reply to an ``ask``."""
        raise TypeError(f"{type(self).__name__} does not handle {type(message).__name__} messages")

    async def on_stop(self) -> None:
        """Called once when the actor stops, and on the old instance before a restart."""

    async def on_failure(self, error: Exception, message: M | None) -> None:
        """Called with the failure before the supervisor's directive is applied."""

    async def on_terminated(self, event: Terminated) -> None:
        """Called when an actor this one watches has stopped or failed."""


class ActorContext:
    """What an actor can do besides handling its message: spawn, watch, stop, look up."""

    __slots__ = ("_cell",)

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell

    @property
    def self_ref(self) -> ActorRef[Any]:
        return self._cell.ref

    @property
    def system(self) -> ActorSystem:
        return self._cell.system

    @property
    def parent(self) -> ActorRef[Any] | None:
        parent = self._cell.parent
        return None if parent is None else parent.ref

    @property
    def children(self) -> tuple[ActorRef[Any], ...]:
        return tuple(child.ref for child in self._cell.children.values())

    @property
    def clock(self) -> Callable[[], float]:
        return self._cell.system.clock

    def spawn(
        self,
        factory: Callable[[], Actor[C]],
        name: str | None = None,
        *,
        mailbox_capacity: int | None = None,
    ) -> ActorRef[C]:
        """Start a child actor, supervised by this one."""
        return self._cell.system.spawn_cell(
            factory, name, parent=self._cell, mailbox_capacity=mailbox_capacity
        ).ref

    def child(self, name: str) -> ActorRef[Any] | None:
        cell = self._cell.children.get(name)
        return None if cell is None else cell.ref

    def watch(self, ref: ActorRef[Any]) -> None:
        """Be told (``on_terminated``) when ``ref`` stops or fails."""
        ref.cell.add_watcher(self._cell)

    def unwatch(self, ref: ActorRef[Any]) -> None:
        ref.cell.remove_watcher(self._cell)

    def stop(self, ref: ActorRef[Any] | None = None) -> None:
        """Stop ``ref`` (default: this actor) after the messages already in its mailbox."""
        (ref.cell if ref is not None else self._cell).request_stop()
