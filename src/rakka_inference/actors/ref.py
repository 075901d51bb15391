"""ActorRef: the only way to reach an actor.

``tell`` enqueues and returns at once; a full mailbox raises :class:`MailboxFull` and a
stopped actor raises :class:`ActorDead` — a message is never dropped silently. ``send`` is
``tell`` that waits for room instead of raising. ``ask`` enqueues and awaits the reply,
raising :class:`AskTimeout` when none comes in time, :class:`ActorDead` when the actor
stops first, or the exception ``receive`` raised for this message.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rakka_inference.core.errors import AskTimeout

if TYPE_CHECKING:
    from rakka_inference.actors.cell import ActorCell

__all__ = ["DEFAULT_ASK_TIMEOUT", "ActorRef"]

M = TypeVar("M")

DEFAULT_ASK_TIMEOUT = 5.0


def _expire(reply: asyncio.Future[Any], path: str, timeout: float) -> None:
    if not reply.done():
        reply.set_exception(AskTimeout(path, timeout))


class ActorRef(Generic[M]):
    """A handle on a running (or stopped) actor. Cheap to copy and share."""

    __slots__ = ("_cell", "path")

    def __init__(self, cell: ActorCell) -> None:
        self._cell = cell
        self.path: str = cell.path

    @property
    def cell(self) -> ActorCell:
        return self._cell

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def is_alive(self) -> bool:
        return not self._cell.terminated

    def tell(self, message: M) -> None:
        """Enqueue ``message``. Raises MailboxFull or ActorDead; never drops it silently."""
        self._cell.post(message, None)

    async def send(self, message: M) -> None:
        """Enqueue ``message``, waiting for room in the mailbox if it is full."""
        cell = self._cell
        while cell.accepting and len(cell.mailbox) >= cell.capacity:
            await cell.wait_for_room()
        self.tell(message)

    async def ask(self, message: M, timeout: float = DEFAULT_ASK_TIMEOUT) -> Any:
        """Send ``message`` and await what ``receive`` returns for it."""
        loop = self._cell.loop
        reply: asyncio.Future[Any] = loop.create_future()
        self._cell.post(message, reply)
        timer = loop.call_later(timeout, _expire, reply, self.path, timeout)
        try:
            return await reply
        finally:
            timer.cancel()

    def stop(self) -> None:
        """Stop the actor after the messages already in its mailbox; refuse new ones."""
        self._cell.request_stop()

    async def wait_terminated(self) -> BaseException | None:
        """Wait until the actor has stopped; the failure that stopped it, or None."""
        return await asyncio.shield(self._cell.done)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

    def __repr__(self) -> str:
        state = "alive" if self.is_alive else "terminated"
        return f"ActorRef({self.path!r}, {state})"
