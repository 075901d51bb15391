"""Supervision: each directive, the restart limit on a fake clock, escalation chains."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from rakka_inference.actors import (
    Actor,
    ActorRef,
    ActorSystem,
    Directive,
    OneForOneStrategy,
    Terminated,
)
from rakka_inference.actors.supervision import RestartWindow
from rakka_inference.core.errors import ContextPoisoned, OutOfMemory, Unrecoverable
from rakka_inference.testkit.clock import FakeClock


class Poisoned(Exception):
    pass


class Stateful(Actor[Any]):
    """Counts messages; raises any exception instance it is sent."""

    instances = 0

    def __init__(self, journal: list[str]) -> None:
        type(self).instances += 1
        self.generation = type(self).instances
        self.count = 0
        self.journal = journal

    async def on_start(self) -> None:
        self.journal.append(f"start#{self.generation}")

    async def receive(self, message: Any) -> Any:
        if isinstance(message, BaseException):
            raise message
        self.count += 1
        return (self.generation, self.count)

    async def on_stop(self) -> None:
        self.journal.append(f"stop#{self.generation}")

    async def on_failure(self, error: Exception, message: Any) -> None:
        self.journal.append(f"failure#{self.generation}:{type(error).__name__}")


@pytest.fixture(autouse=True)
def _reset_generations() -> None:
    Stateful.instances = 0


# ---------------------------------------------------------------- the decider


def test_decider_matches_by_type_along_the_mro() -> None:
    strategy = OneForOneStrategy(
        {
            Exception: Directive.RESTART,
            LookupError: Directive.RESUME,
            KeyError: Directive.STOP,
        }
    )
    assert strategy.decide(KeyError("x")) is Directive.STOP
    assert strategy.decide(IndexError("x")) is Directive.RESUME
    assert strategy.decide(ValueError("x")) is Directive.RESTART
    # Not an Exception: nobody registered it, so it is escalated.
    assert strategy.decide(KeyboardInterrupt()) is Directive.ESCALATE


def test_decider_ignores_message_text() -> None:
    strategy = OneForOneStrategy({ContextPoisoned: Directive.RESTART})
    assert strategy.decide(ContextPoisoned("out of memory")) is Directive.RESTART
    assert strategy.decide(OutOfMemory("context poisoned")) is Directive.ESCALATE


def test_decider_can_be_a_function_and_defaults_restart() -> None:
    assert OneForOneStrategy().decide(ValueError()) is Directive.RESTART
    strategy = OneForOneStrategy(lambda error: Directive.STOP)
    assert strategy.decide(ValueError()) is Directive.STOP


def test_strategy_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts"):
        OneForOneStrategy(max_restarts=-1)
    with pytest.raises(ValueError, match="within_s"):
        OneForOneStrategy(within_s=0)


def test_restart_window_slides_with_the_clock() -> None:
    clock = FakeClock()
    strategy = OneForOneStrategy(max_restarts=3, within_s=60)
    window = RestartWindow(clock)
    assert [window.try_restart(strategy) for _ in range(3)] == [True, True, True]
    assert window.try_restart(strategy) is False
    clock.advance(59.9)
    assert window.try_restart(strategy) is False
    clock.advance(0.1)  # the first three are now 60 s old: out of the window
    assert window.try_restart(strategy) is True
    assert len(window) == 1


def test_fake_clock_only_moves_forward() -> None:
    clock = FakeClock(5.0)
    assert clock.advance(1.5) == 6.5
    assert clock() == 6.5
    assert repr(clock) == "FakeClock(now=6.5)"
    with pytest.raises(ValueError, match="cannot go back"):
        clock.advance(-1)


# ---------------------------------------------------------------- directives


async def test_resume_keeps_state() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        ref = system.spawn(
            lambda: Stateful(journal),
            supervisor=OneForOneStrategy({Exception: Directive.RESUME}),
        )
        assert await ref.ask("a") == (1, 1)
        with pytest.raises(ValueError):
            await ref.ask(ValueError("bad"))
        assert await ref.ask("b") == (1, 2)
    assert journal == ["start#1", "failure#1:ValueError", "stop#1"]


async def test_restart_builds_fresh_state_and_keeps_the_mailbox() -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Stateful(journal))  # default: restart
        assert await ref.ask("a") == (1, 1)
        # Queue the failure and two more messages before the actor runs again.
        ref.tell(ValueError("bad"))
        ref.tell("queued")
        reply = await ref.ask("after")
        assert reply == (2, 2)  # a new instance handled both queued messages
    assert journal == ["start#1", "failure#1:ValueError", "stop#1", "start#2", "stop#2"]


async def test_stop_stops_and_tells_watchers_the_cause() -> None:
    journal: list[str] = []
    events: list[Terminated] = []

    class Watcher(Actor[ActorRef[Any]]):
        async def receive(self, message: ActorRef[Any]) -> None:
            self.context.watch(message)

        async def on_terminated(self, event: Terminated) -> None:
            events.append(event)

    async with ActorSystem() as system:
        ref = system.spawn(
            lambda: Stateful(journal), supervisor=OneForOneStrategy({Exception: Directive.STOP})
        )
        watcher = system.spawn(Watcher)
        await watcher.ask(ref)
        with pytest.raises(RuntimeError):
            await ref.ask(RuntimeError("fatal"))
        cause = await ref.wait_terminated()
        assert isinstance(cause, RuntimeError)
        await watcher.ask(ref)  # one more round trip: the Terminated signal came first
    assert [(e.ref, type(e.cause)) for e in events] == [(ref, RuntimeError)] * 2
    assert journal == ["start#1", "failure#1:RuntimeError", "stop#1"]


async def test_escalation_from_a_top_level_actor_stops_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal: list[str] = []
    async with ActorSystem() as system:
        ref = system.spawn(
            lambda: Stateful(journal),
            supervisor=OneForOneStrategy({ValueError: Directive.RESTART}),
        )
        with caplog.at_level(logging.ERROR, logger="rakka_inference.actors"):
            with pytest.raises(TypeError):
                await ref.ask(TypeError("unexpected"))
            assert isinstance(await ref.wait_terminated(), TypeError)
        assert "escalated to the top" in caplog.text


async def test_on_start_failure_is_supervised() -> None:
    attempts: list[int] = []

    class FlakyStart(Actor[str]):
        async def on_start(self) -> None:
            attempts.append(len(attempts))
            if len(attempts) < 3:
                raise ConnectionError("not yet")

        async def receive(self, message: str) -> int:
            return len(attempts)

    async with ActorSystem() as system:
        ref = system.spawn(FlakyStart)
        assert await ref.ask("ready?") == 3


async def test_a_cancelled_error_from_inside_receive_is_a_failure() -> None:
    class Cancels(Actor[str]):
        async def receive(self, message: str) -> str:
            if message == "cancel":
                raise asyncio.CancelledError
            return message

    async with ActorSystem() as system:
        ref = system.spawn(Cancels)
        with pytest.raises(RuntimeError, match="CancelledError"):
            await ref.ask("cancel")
        assert await ref.ask("still alive") == "still alive"


async def test_failing_hooks_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    class BadHooks(Actor[str]):
        async def receive(self, message: str) -> str:
            raise ValueError(message)

        async def on_failure(self, error: Exception, message: Any) -> None:
            raise RuntimeError("on_failure broke")

        async def on_stop(self) -> None:
            raise RuntimeError("on_stop broke")

    with caplog.at_level(logging.ERROR, logger="rakka_inference.actors"):
        async with ActorSystem() as system:
            ref = system.spawn(BadHooks)
            with pytest.raises(ValueError):
                await ref.ask("x")
    assert "on_failure raised" in caplog.text
    assert "on_stop raised" in caplog.text


# ---------------------------------------------------------------- restart limit


async def test_restart_limit_then_escalate_on_a_fake_clock() -> None:
    clock = FakeClock()
    journal: list[str] = []
    async with ActorSystem(clock=clock) as system:
        ref = system.spawn(
            lambda: Stateful(journal), supervisor=OneForOneStrategy(max_restarts=3, within_s=60)
        )
        for _ in range(3):
            with pytest.raises(ValueError):
                await ref.ask(ValueError())
            clock.advance(10)
        assert await ref.ask("alive") == (4, 1)
        # A fourth failure inside 60 s: escalated; at the top, that stops the actor.
        with pytest.raises(ValueError):
            await ref.ask(ValueError())
        assert isinstance(await ref.wait_terminated(), ValueError)


async def test_restarts_spread_beyond_the_window_are_allowed() -> None:
    clock = FakeClock()
    journal: list[str] = []
    async with ActorSystem(clock=clock) as system:
        ref = system.spawn(lambda: Stateful(journal))
        for _ in range(10):
            with pytest.raises(ValueError):
                await ref.ask(ValueError())
            clock.advance(30)  # never more than 2 restarts within any 60 s
        assert ref.is_alive
        assert (await ref.ask("x"))[0] == 11


# ---------------------------------------------------------------- escalation chains


class Supervisor(Actor[Any]):
    """A parent with a decider for its child, which it spawns on start."""

    def __init__(
        self, strategy: OneForOneStrategy, child_journal: list[str], journal: list[str]
    ) -> None:
        self.supervisor_strategy = strategy
        self.child_journal = child_journal
        self.journal = journal

    async def on_start(self) -> None:
        self.journal.append("parent-start")
        self.context.spawn(lambda: Stateful(self.child_journal), "child")

    async def receive(self, message: Any) -> Any:
        return message

    async def on_stop(self) -> None:
        self.journal.append("parent-stop")


async def test_escalated_failure_resumed_by_the_grandparent_resumes_the_child() -> None:
    child_journal: list[str] = []
    journal: list[str] = []
    async with ActorSystem() as system:
        parent = system.spawn(
            lambda: Supervisor(
                OneForOneStrategy({Exception: Directive.ESCALATE}), child_journal, journal
            ),
            "parent",
            supervisor=OneForOneStrategy({Exception: Directive.RESUME}),
        )
        await parent.ask("ready")
        child = system.lookup("/parent/child")
        assert child is not None
        assert await child.ask("a") == (1, 1)
        with pytest.raises(KeyError):
            await child.ask(KeyError("k"))
        # The child was suspended while its parent's fate was decided; now it resumes
        # with its state.
        assert await child.ask("b") == (1, 2)
    assert journal == ["parent-start", "parent-stop"]


async def test_escalated_failure_restarting_the_parent_replaces_the_child() -> None:
    child_journal: list[str] = []
    journal: list[str] = []
    async with ActorSystem() as system:
        parent = system.spawn(
            lambda: Supervisor(
                OneForOneStrategy({Exception: Directive.ESCALATE}), child_journal, journal
            ),
            "parent",
        )
        await parent.ask("ready")
        old_child = system.lookup("/parent/child")
        assert old_child is not None
        with pytest.raises(KeyError):
            await old_child.ask(KeyError("k"))
        cause = await old_child.wait_terminated()
        assert isinstance(cause, KeyError)
        await parent.ask("ready again")
        new_child = system.lookup("/parent/child")
        assert new_child is not None
        assert new_child != old_child
        assert await new_child.ask("a") == (2, 1)
    assert journal == ["parent-start", "parent-stop", "parent-start", "parent-stop"]


async def test_escalation_climbs_two_levels() -> None:
    child_journal: list[str] = []
    journal: list[str] = []

    class Grandparent(Actor[Any]):
        supervisor_strategy = OneForOneStrategy({Exception: Directive.ESCALATE})

        async def on_start(self) -> None:
            self.context.spawn(
                lambda: Supervisor(
                    OneForOneStrategy({Exception: Directive.ESCALATE}), child_journal, journal
                ),
                "parent",
            )

        async def receive(self, message: Any) -> Any:
            return message

    async with ActorSystem() as system:
        top = system.spawn(
            Grandparent, "top", supervisor=OneForOneStrategy({Exception: Directive.RESUME})
        )
        await top.ask("ready")
        await asyncio.sleep(0)
        parent = system.lookup("/top/parent")
        assert parent is not None
        await parent.ask("ready")
        child = system.lookup("/top/parent/child")
        assert child is not None
        assert await child.ask("a") == (1, 1)
        with pytest.raises(OSError):
            await child.ask(OSError("disk"))
        # The top actor resumed: the resume travels back down to the suspended chain.
        assert await child.ask("b") == (1, 2)
        assert await parent.ask("p") == "p"


async def test_two_tier_shape_poison_restarts_the_context_then_fails_the_worker() -> None:
    """The local engine's shape (DESIGN §2): a stable worker over a restartable context."""
    clock = FakeClock()
    contexts: list[int] = []
    events: list[Terminated] = []

    class ContextActor(Actor[Any]):
        def __init__(self) -> None:
            contexts.append(len(contexts) + 1)
            self.id = len(contexts)

        async def receive(self, message: Any) -> Any:
            if isinstance(message, Exception):
                raise message
            return self.id

    class WorkerActor(Actor[Any]):
        supervisor_strategy = OneForOneStrategy(
            {
                ContextPoisoned: Directive.RESTART,
                OutOfMemory: Directive.RESUME,
                Unrecoverable: Directive.STOP,
            },
            max_restarts=3,
            within_s=60,
        )

        async def on_start(self) -> None:
            self.context.spawn(ContextActor, "context")

        async def receive(self, message: Any) -> Any:
            return message

    class EngineCore(Actor[Any]):
        supervisor_strategy = OneForOneStrategy({Exception: Directive.STOP})

        async def on_start(self) -> None:
            worker = self.context.spawn(WorkerActor, "worker")
            self.context.watch(worker)

        async def receive(self, message: Any) -> Any:
            return message

        async def on_terminated(self, event: Terminated) -> None:
            events.append(event)

    async with ActorSystem(clock=clock) as system:
        engine = system.spawn(EngineCore, "engine")
        await engine.ask("ready")
        await asyncio.sleep(0)
        worker = system.lookup("/engine/worker")
        assert worker is not None
        await worker.ask("ready")
        ctx = system.lookup("/engine/worker/context")
        assert ctx is not None
        assert await ctx.ask("id") == 1
        with pytest.raises(OutOfMemory):
            await ctx.ask(OutOfMemory("oom"))
        assert await ctx.ask("id") == 1  # resumed: same context
        for expected in (2, 3, 4):
            with pytest.raises(ContextPoisoned):
                await ctx.ask(ContextPoisoned("poison"))
            clock.advance(5)
            assert await ctx.ask("id") == expected  # rebuilt
        # The fourth poison within 60 s escalates: the worker fails, the engine stops it.
        with pytest.raises(ContextPoisoned):
            await ctx.ask(ContextPoisoned("poison"))
        assert isinstance(await worker.wait_terminated(), ContextPoisoned)
        assert not ctx.is_alive
        await engine.ask("sync")
    assert [(e.ref.path, type(e.cause)) for e in events] == [("/engine/worker", ContextPoisoned)]
