"""ActorCell: the runtime of one actor — its task, mailbox, children, watchers and fate.

The protocol, from the cell's point of view:

1. ``start()`` creates the actor's single task. The task runs ``on_start`` and then loops:
   system signals first (stop, a child's escalated failure, resume, a watched actor's
   termination), then one user message at a time from the bounded mailbox.
2. A hook that raises is a *failure*. The failing message's ``ask`` (if any) gets the
   exception; ``on_failure`` runs; the parent's strategy decides (see ``supervision``):
   resume, restart (a fresh instance from the factory; the mailbox is kept), stop, or
   escalate — this cell suspends and the parent fails with the same exception.
3. ``request_stop()`` is graceful: new messages are refused at once, the messages already
   queued are still handled (the mailbox drains), then children are stopped, ``on_stop``
   runs, and watchers and parent are told. A stop for a failure, or a stop forced by
   cancelling the task, skips the drain: queued asks fail with :class:`ActorDead`.

Everything here runs on the event loop's thread; no locks are needed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rakka_inference.actors.actor import Actor, ActorContext, Terminated
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.supervision import Directive, OneForOneStrategy, RestartWindow
from rakka_inference.core.errors import ActorDead, MailboxFull

if TYPE_CHECKING:
    from rakka_inference.actors.system import ActorSystem

__all__ = ["ActorCell"]

log = logging.getLogger("rakka_inference.actors")

Envelope = tuple[Any, "asyncio.Future[Any] | None"]


# System signals: small records handled before user messages.
@dataclass(frozen=True, slots=True)
class _Stop:
    pass


@dataclass(frozen=True, slots=True)
class _ChildFailed:
    child: ActorCell
    error: Exception


@dataclass(frozen=True, slots=True)
class _Resume:
    pass


@dataclass(frozen=True, slots=True)
class _ChildTerminated:
    child: ActorCell


_Signal = _Stop | _ChildFailed | _Resume | _ChildTerminated | Terminated


class _Finished(Exception):
    """Internal: unwinds the run loop once the actor has stopped."""


class ActorCell:
    """The runtime state of one actor. Internal to the kernel; users hold ActorRefs."""

    def __init__(
        self,
        system: ActorSystem,
        factory: Callable[[], Actor[Any]],
        *,
        path: str,
        parent: ActorCell | None,
        capacity: int,
        strategy: OneForOneStrategy | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("mailbox capacity must be >= 1")
        self.system = system
        self.factory = factory
        self.path = path
        self.parent = parent
        self.capacity = capacity
        # The strategy for a top-level actor, given at spawn; children use their parent's.
        self._own_strategy = strategy
        self.loop = asyncio.get_running_loop()
        self.mailbox: deque[Envelope] = deque()
        self.signals: deque[_Signal] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self.accepting = True
        self.terminated = False
        self.done: asyncio.Future[BaseException | None] = self.loop.create_future()
        self.children: dict[str, ActorCell] = {}
        self.watchers: set[ActorCell] = set()
        self._restarts = RestartWindow(system.clock)
        self._suspended = False
        self._suspended_by: Exception | None = None
        # Children that escalated a failure to this actor and wait, suspended, for its fate.
        self._escalated: set[ActorCell] = set()
        self._draining = False
        self._started = False
        self._current_reply: asyncio.Future[Any] | None = None
        self._child_seq = 0
        self.ref: ActorRef[Any] = ActorRef(self)
        self.actor: Actor[Any] = self._new_instance()
        self.task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ wiring

    def start(self) -> None:
        self.task = self.loop.create_task(self._run(), name=f"actor:{self.path}")

    def _new_instance(self) -> Actor[Any]:
        actor = self.factory()
        if not isinstance(actor, Actor):
            raise TypeError(f"factory for {self.path} returned {type(actor).__name__}, not Actor")
        actor._context = ActorContext(self)
        return actor

    def next_child_name(self) -> str:
        self._child_seq += 1
        return f"${self._child_seq}"

    def post(self, message: Any, reply: asyncio.Future[Any] | None) -> None:
        """Enqueue a user message, or raise ActorDead / MailboxFull. The hot path of tell."""
        if not self.accepting:
            raise ActorDead(self.path)
        mailbox = self.mailbox
        if len(mailbox) >= self.capacity:
            raise MailboxFull(self.path, self.capacity)
        mailbox.append((message, reply))
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def signal(self, signal: _Signal) -> None:
        """Deliver a system signal. Signals bypass the mailbox bound: they are never refused."""
        if self.terminated:
            return
        self.signals.append(signal)
        self._wake()

    async def wait_for_room(self) -> None:
        room: asyncio.Future[None] = self.loop.create_future()
        self._room_waiters.append(room)
        await room

    def _release_room(self) -> None:
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)
                return

    def add_watcher(self, watcher: ActorCell) -> None:
        if self.terminated:
            watcher.signal(Terminated(self.ref, self.done.result()))
        else:
            self.watchers.add(watcher)

    def remove_watcher(self, watcher: ActorCell) -> None:
        self.watchers.discard(watcher)

    def request_stop(self) -> None:
        """Graceful stop: refuse new messages now, handle the queued ones, then stop."""
        if self.terminated:
            return
        self.accepting = False
        self._wake_room_waiters()
        self.signal(_Stop())

    def _wake_room_waiters(self) -> None:
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)

    # ------------------------------------------------------------------ run loop

    async def _run(self) -> None:
        cause: BaseException | None = None
        try:
            await self._start_instance()
            while True:
                if self.signals:
                    await self._handle_signal(self.signals.popleft())
                elif self.mailbox and not self._suspended:
                    message, reply = self.mailbox.popleft()
                    if self._room_waiters:
                        self._release_room()
                    await self._deliver(message, reply)
                elif self._draining and not self._suspended:
                    await self._finish(None)
                else:
                    waiter: asyncio.Future[None] = self.loop.create_future()
                    self.waiter = waiter
                    await waiter
        except _Finished:
            return
        except asyncio.CancelledError as exc:
            cause = exc
            raise
        finally:
            if not self.terminated:
                # Forced stop (task cancelled) or a bug in the kernel: settle everything
                # that can be settled without awaiting.
                self._terminate(cause)

    async def _start_instance(self) -> None:
        try:
            await self.actor.on_start()
        except Exception as error:
            await self._fail(error, None, None)
        else:
            self._started = True

    async def _deliver(self, message: Any, reply: asyncio.Future[Any] | None) -> None:
        # Kept while receive runs, so a forced stop can still settle this ask.
        self._current_reply = reply
        try:
            result = await self.actor.receive(message)
        except asyncio.CancelledError:
            task = self.task
            if task is not None and task.cancelling():
                raise
            # A cancellation raised inside receive that is not aimed at this actor's task
            # is a failure of the handler, like any other exception.
            self._current_reply = None
            await self._fail(RuntimeError("receive raised CancelledError"), message, reply)
        except Exception as error:
            self._current_reply = None
            await self._fail(error, message, reply)
        else:
            self._current_reply = None
            if reply is not None and not reply.done():
                reply.set_result(result)

    async def _handle_signal(self, signal: _Signal) -> None:
        if isinstance(signal, _Stop):
            if self._suspended:
                # Waiting on its parent after a failure: its state is not to be trusted
                # with the rest of the mailbox. Stop now, with that failure as the cause.
                await self._finish(self._suspended_by)
            self._draining = True
        elif isinstance(signal, Terminated):
            try:
                await self.actor.on_terminated(signal)
            except Exception as error:
                await self._fail(error, None, None)
        elif isinstance(signal, _ChildTerminated):
            child = signal.child
            if self.children.get(child.ref.name) is child:
                del self.children[child.ref.name]
        elif isinstance(signal, _ChildFailed):
            # The child escalated: this actor fails with the same exception. A restart or
            # stop of this actor stops the child; a resume resumes it.
            child = signal.child
            if self.children.get(child.ref.name) is child:
                self._escalated.add(child)
                await self._fail(signal.error, None, None)
                if not self._suspended:
                    self._resume_escalated()
        else:  # _Resume
            self._suspended = False
            self._suspended_by = None
            self._resume_escalated()

    def _resume_escalated(self) -> None:
        for child in self._escalated:
            child.signal(_Resume())
        self._escalated.clear()

    # ------------------------------------------------------------------ failure

    def _strategy(self) -> OneForOneStrategy:
        if self.parent is not None:
            return self.parent.actor.supervisor_strategy
        assert self._own_strategy is not None
        return self._own_strategy

    async def _fail(
        self, error: Exception, message: Any, reply: asyncio.Future[Any] | None
    ) -> None:
        if reply is not None and not reply.done():
            reply.set_exception(error)
        try:
            await self.actor.on_failure(error, message)
        except Exception:
            log.exception("%s: on_failure raised", self.path)
        strategy = self._strategy()
        directive = strategy.decide(error)
        if directive is Directive.RESTART and not self._restarts.try_restart(strategy):
            log.warning(
                "%s: more than %d restarts within %gs; escalating %s",
                self.path,
                strategy.max_restarts,
                strategy.within_s,
                type(error).__name__,
            )
            directive = Directive.ESCALATE
        log.debug("%s: %s -> %s", self.path, type(error).__name__, directive.value)
        if directive is Directive.RESUME:
            return
        if directive is Directive.RESTART:
            await self._restart(error)
        elif directive is Directive.STOP:
            await self._finish(error)
        elif self.parent is None:
            # Nobody above a top-level actor: an escalation stops it, with the cause.
            log.error("%s: failure escalated to the top: stopping", self.path, exc_info=error)
            await self._finish(error)
        else:
            self._suspended = True
            self._suspended_by = error
            self.parent.signal(_ChildFailed(self, error))

    async def _restart(self, error: Exception) -> None:
        log.info("%s: restarting after %s", self.path, type(error).__name__)
        await self._stop_children()
        await self._call_on_stop()
        self._suspended = False
        self.actor = self._new_instance()
        self._started = False
        await self._start_instance()

    # ------------------------------------------------------------------ stopping

    async def _stop_children(self) -> None:
        self._escalated.clear()
        children = list(self.children.values())
        for child in children:
            child.request_stop()
        for child in children:
            await asyncio.shield(child.done)
            self.children.pop(child.ref.name, None)

    async def _call_on_stop(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            await self.actor.on_stop()
        except Exception:
            log.exception("%s: on_stop raised", self.path)

    async def _finish(self, cause: BaseException | None) -> None:
        self.accepting = False
        self._wake_room_waiters()
        await self._stop_children()
        await self._call_on_stop()
        self._terminate(cause)
        raise _Finished

    def _terminate(self, cause: BaseException | None) -> None:
        """Settle everything synchronously: asks, watchers, parent, registry."""
        self.terminated = True
        self.accepting = False
        self._wake_room_waiters()
        current = self._current_reply
        if current is not None and not current.done():
            current.set_exception(ActorDead(self.path, "actor stopped while handling the message"))
        dead = 0
        while self.mailbox:
            _, reply = self.mailbox.popleft()
            if reply is None:
                dead += 1
            elif not reply.done():
                reply.set_exception(ActorDead(self.path, "actor stopped before replying"))
        if dead:
            self.system.record_dead_letters(self.path, dead)
        for child in list(self.children.values()):
            # Only reached on a forced stop: children are normally stopped first.
            if child.task is not None and not child.task.done():
                child.task.cancel()
        event = Terminated(self.ref, cause)
        for watcher in self.watchers:
            watcher.signal(event)
        self.watchers.clear()
        if self.parent is not None:
            self.parent.signal(_ChildTerminated(self))
        self.system.unregister(self)
        if not self.done.done():
            self.done.set_result(cause)
