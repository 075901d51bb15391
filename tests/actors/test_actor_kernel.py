"""The actor kernel: tell/ask, bounded mailboxes, children, lookup, watch, shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from rakka_inference.actors import Actor, ActorSystem, Terminated
from rakka_inference.core.errors import ActorDead, AskTimeout, MailboxFull, RakkaError


class Recorder(Actor[Any]):
    """Records every message and hook; replies with the message count."""

    def __init__(self, log: list[str] | None = None) -> None:
        self.log = log if log is not None else []
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        self.seen.append(message)
        return len(self.seen)

    async def on_stop(self) -> None:
        self.log.append("stop")


class Gate(Actor[Any]):
    """Blocks in receive until its gate opens; lets a test fill the mailbox."""

    def __init__(self, gate: asyncio.Event, handled: list[Any]) -> None:
        self.gate = gate
        self.handled = handled

    async def receive(self, message: Any) -> Any:
        await self.gate.wait()
        self.handled.append(message)
        return message


async def test_tell_then_ask_is_handled_in_order() -> None:
    async with ActorSystem() as system:
        recorder = Recorder()
        ref = system.spawn(lambda: recorder, "rec")
        ref.tell("a")
        ref.tell("b")
        assert await ref.ask("c") == 3
        assert recorder.seen == ["a", "b", "c"]
        assert recorder.log == ["start"]
    assert recorder.log == ["start", "stop"]


async def test_ask_returns_the_exception_receive_raised() -> None:
    class Fails(Actor[str]):
        async def receive(self, message: str) -> str:
            raise KeyError(message)

    async with ActorSystem() as system:
        ref = system.spawn(Fails)
        with pytest.raises(KeyError, match="boom"):
            await ref.ask("boom")


async def test_ask_times_out_with_a_typed_error() -> None:
    gate = asyncio.Event()
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Gate(gate, []), "slow")
        with pytest.raises(AskTimeout) as caught:
            await ref.ask("x", timeout=0.01)
        assert caught.value.path == "/slow"
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, RakkaError)
        gate.set()


async def test_a_full_mailbox_raises_and_keeps_what_it_accepted() -> None:
    gate = asyncio.Event()
    handled: list[Any] = []
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Gate(gate, handled), "gate", mailbox_capacity=3)
        ref.tell(0)
        await asyncio.sleep(0)  # the actor takes message 0 and blocks on the gate
        for i in range(1, 4):
            ref.tell(i)
        with pytest.raises(MailboxFull) as caught:
            ref.tell(4)
        assert caught.value.capacity == 3
        with pytest.raises(MailboxFull):
            await ref.ask(5)
        gate.set()
        await ref.send(6)  # waits for room, then enqueues
    assert handled == [0, 1, 2, 3, 6]


async def test_send_waits_for_room_instead_of_raising() -> None:
    gate = asyncio.Event()
    handled: list[Any] = []
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Gate(gate, handled), mailbox_capacity=1)
        ref.tell(0)
        await asyncio.sleep(0)
        ref.tell(1)
        sender = asyncio.create_task(ref.send(2))
        await asyncio.sleep(0)
        assert not sender.done()
        gate.set()
        await sender
        assert await ref.ask(3) == 3
    assert handled == [0, 1, 2, 3]


async def test_send_to_a_stopping_actor_raises_actor_dead() -> None:
    gate = asyncio.Event()
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Gate(gate, []), mailbox_capacity=1)
        ref.tell(0)
        await asyncio.sleep(0)
        ref.tell(1)
        sender = asyncio.create_task(ref.send(2))
        await asyncio.sleep(0)
        ref.stop()
        with pytest.raises(ActorDead):
            await sender
        gate.set()


async def test_children_have_paths_and_can_be_looked_up() -> None:
    class Parent(Actor[str]):
        async def on_start(self) -> None:
            self.context.spawn(Recorder, "kid")
            self.context.spawn(Recorder)

        async def receive(self, message: str) -> Any:
            return [ref.path for ref in self.context.children]

    async with ActorSystem() as system:
        parent = system.spawn(Parent, "parent")
        paths = await parent.ask("children")
        assert paths == ["/parent/kid", "/parent/$1"]
        kid = system.lookup("/parent/kid")
        assert kid is not None
        assert kid.name == "kid"
        assert await kid.ask("hello") == 1
        assert system.lookup("/parent/nobody") is None
        assert {ref.path for ref in system.actors} == {"/parent", "/parent/kid", "/parent/$1"}


async def test_names_are_checked() -> None:
    async with ActorSystem() as system:
        system.spawn(Recorder, "one")
        with pytest.raises(ValueError, match="already runs"):
            system.spawn(Recorder, "one")
        for bad in ["", "a/b", "$x"]:
            with pytest.raises(ValueError, match="invalid actor name"):
                system.spawn(Recorder, bad)
        assert system.spawn(Recorder).path == "/$1"


async def test_stop_drains_the_mailbox_then_refuses() -> None:
    gate = asyncio.Event()
    handled: list[Any] = []
    async with ActorSystem() as system:
        ref = system.spawn(lambda: Gate(gate, handled), "g")
        ref.tell(1)
        pending = asyncio.ensure_future(ref.ask(2))
        await asyncio.sleep(0)
        ref.stop()
        with pytest.raises(ActorDead):
            ref.tell(3)
        gate.set()
        assert await pending == 2
        assert await ref.wait_terminated() is None
        assert not ref.is_alive
        assert system.lookup("/g") is None
    assert handled == [1, 2]


async def test_shutdown_drains_every_mailbox() -> None:
    gate = asyncio.Event()
    handled: list[Any] = []
    system = ActorSystem()
    ref = system.spawn(lambda: Gate(gate, handled))
    asks = [asyncio.ensure_future(ref.ask(i)) for i in range(5)]
    await asyncio.sleep(0)
    gate.set()
    await system.shutdown(timeout=1.0)
    assert [await ask for ask in asks] == [0, 1, 2, 3, 4]
    with pytest.raises(ActorDead, match="shut down"):
        system.spawn(Recorder)


async def test_shutdown_timeout_fails_outstanding_asks_with_actor_dead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    system = ActorSystem()
    ref = system.spawn(lambda: Gate(never, []), "stuck")
    first = asyncio.ensure_future(ref.ask(1, timeout=5))
    queued = asyncio.ensure_future(ref.ask(2, timeout=5))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="rakka_inference.actors"):
        await system.shutdown(timeout=0.01)
    assert "did not stop" in caplog.text
    with pytest.raises(ActorDead):
        await queued
    # The message being handled was cut off by the cancellation; its ask is settled too.
    with pytest.raises(ActorDead, match="while handling"):
        await first
    assert isinstance(await ref.wait_terminated(), asyncio.CancelledError)


async def test_watchers_are_told_of_stop_and_of_failure() -> None:
    events: list[Terminated] = []

    class Watcher(Actor[Any]):
        async def receive(self, message: Any) -> Any:
            self.context.watch(message)
            return None

        async def on_terminated(self, event: Terminated) -> None:
            events.append(event)

    class Doomed(Actor[str]):
        async def receive(self, message: str) -> None:
            raise LookupError(message)

    from rakka_inference.actors import Directive, OneForOneStrategy

    stop_on_error = OneForOneStrategy({Exception: Directive.STOP})
    async with ActorSystem() as system:
        watcher = system.spawn(Watcher, "watcher")
        quiet = system.spawn(Recorder, "quiet")
        doomed = system.spawn(Doomed, "doomed", supervisor=stop_on_error)
        await watcher.ask(quiet)
        await watcher.ask(doomed)
        quiet.stop()
        with pytest.raises(LookupError):
            await doomed.ask("bad")
        assert await quiet.wait_terminated() is None
        assert isinstance(await doomed.wait_terminated(), LookupError)
        # Watching an actor that is already dead tells at once.
        await watcher.ask(quiet)
        with pytest.raises(AttributeError):  # not a ref: the watcher fails and is restarted
            await watcher.ask(Recorder)
        await watcher.ask(doomed)
    by_path = [(event.ref.path, event.failed) for event in events]
    assert sorted(by_path) == [
        ("/doomed", True),
        ("/doomed", True),
        ("/quiet", False),
        ("/quiet", False),
    ]


async def test_unwatch_stops_notifications() -> None:
    events: list[Terminated] = []

    class Watcher(Actor[Any]):
        async def receive(self, message: tuple[str, Any]) -> None:
            verb, ref = message
            if verb == "watch":
                self.context.watch(ref)
            else:
                self.context.unwatch(ref)

        async def on_terminated(self, event: Terminated) -> None:
            events.append(event)

    async with ActorSystem() as system:
        watcher = system.spawn(Watcher)
        target = system.spawn(Recorder)
        await watcher.ask(("watch", target))
        await watcher.ask(("unwatch", target))
        target.stop()
        await target.wait_terminated()
        await watcher.ask(("noop", target))
    assert events == []


async def test_stopping_a_parent_stops_children_first() -> None:
    order: list[str] = []

    class Child(Actor[str]):
        async def receive(self, message: str) -> str:
            return message

        async def on_stop(self) -> None:
            order.append("child")

    class Parent(Actor[str]):
        async def on_start(self) -> None:
            self.context.spawn(Child, "c")

        async def receive(self, message: str) -> str:
            return message

        async def on_stop(self) -> None:
            order.append("parent")

    async with ActorSystem() as system:
        parent = system.spawn(Parent, "p")
        await parent.ask("ready")
        child = system.lookup("/p/c")
        assert child is not None
        parent.stop()
        await parent.wait_terminated()
        assert not child.is_alive
    assert order == ["child", "parent"]


async def test_an_actor_can_stop_itself_and_its_children() -> None:
    class SelfStopper(Actor[str]):
        async def on_start(self) -> None:
            self.context.spawn(Recorder, "kid")

        async def receive(self, message: str) -> str:
            if message == "stop-kid":
                kid = self.context.child("kid")
                assert kid is not None
                self.context.stop(kid)
                assert self.context.child("nobody") is None
            elif message == "stop":
                self.context.stop()
            return message

    async with ActorSystem() as system:
        ref = system.spawn(SelfStopper, "s")
        await ref.ask("ready")
        kid = system.lookup("/s/kid")
        assert kid is not None
        await ref.ask("stop-kid")
        await kid.wait_terminated()
        await ref.ask("stop")
        assert await ref.wait_terminated() is None


async def test_stopped_actor_with_unhandled_tells_counts_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class StopsOnFirst(Actor[int]):
        async def receive(self, message: int) -> None:
            raise RuntimeError("stop me")

    from rakka_inference.actors import Directive, OneForOneStrategy

    async with ActorSystem() as system:
        ref = system.spawn(
            StopsOnFirst, supervisor=OneForOneStrategy({RuntimeError: Directive.STOP})
        )
        for i in range(4):
            ref.tell(i)
        with caplog.at_level(logging.WARNING, logger="rakka_inference.actors"):
            await ref.wait_terminated()
        assert system.dead_letters == 3
        assert "3 unhandled message(s)" in caplog.text


async def test_unhandled_message_type_is_a_failure() -> None:
    async with ActorSystem() as system:
        ref = system.spawn(Actor[int])
        with pytest.raises(TypeError, match="does not handle int"):
            await ref.ask(1)


async def test_factory_must_return_an_actor() -> None:
    async with ActorSystem() as system:
        with pytest.raises(TypeError, match="not Actor"):
            system.spawn(object)  # type: ignore[arg-type]


def test_context_outside_a_system_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        _ = Recorder().context


def test_system_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="mailbox_capacity"):
        ActorSystem(mailbox_capacity=0)


async def test_mailbox_capacity_must_be_positive() -> None:
    async with ActorSystem() as system:
        with pytest.raises(ValueError, match="capacity"):
            system.spawn(Recorder, mailbox_capacity=-1)


async def test_refs_compare_by_actor_and_show_state() -> None:
    async with ActorSystem() as system:
        ref = system.spawn(Recorder, "r")
        same = system.lookup("/r")
        assert same == ref
        assert hash(same) == hash(ref)
        assert ref != "r"
        assert repr(ref) == "ActorRef('/r', alive)"
    assert repr(ref) == "ActorRef('/r', terminated)"
