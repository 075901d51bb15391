"""LocalEngineCore: serving, two-tier supervision on a fake clock, queueing, disconnects and
stopping — each path with its typed outcome and its slot given back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rakka_inference.actors import Actor, ActorSystem
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.errors import (
    ActorDead,
    Backpressure,
    BadRequest,
    ContextPoisoned,
    IllegalTransition,
    InferenceError,
    InternalError,
    OperationRefused,
    OutOfMemory,
    RequestCancelled,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
    Unrecoverable,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, EmbeddingRequest, Priority
from rakka_inference.core.policies import CapacityPolicy, ModelPrice, RateLimits, Serving
from rakka_inference.core.runner import ModelRunner, SessionRebuildCause, Transport
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.stream import FinishReason, TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.engine.jobs import Job, JobState
from rakka_inference.engine.stream import RequestStream
from rakka_inference.local.engine import LocalEngineCore
from rakka_inference.local.worker import WorkerActor
from rakka_inference.runtime.coordinator import Replica
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript, mock_embedding
from rakka_inference.testkit.reports import ReportLog

# ---------------------------------------------------------------- helpers


def chat(text: str = "hi", **kw: Any) -> ChatRequest:
    return ChatRequest(model="local-llm", messages=(ChatMessage.user(text),), stream=True, **kw)


async def drain(stream: BoundedStream[TokenChunk]) -> tuple[str, InferenceError | None]:
    """The text a consumer saw, and the error the stream ended with (None: it finished)."""
    text = ""
    try:
        async for chunk in stream:
            text += chunk.text
    except InferenceError as error:
        return text, error
    return text, None


async def until(condition: Callable[[], bool], steps: int = 200) -> None:
    """Let the event loop run until ``condition`` holds (no timers, no real time)."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Harness:
    """Engines on one actor system with a fake clock, and what their hooks received."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.system = ActorSystem("test", clock=self.clock)
        self.script = MockScript()
        self.report_log = ReportLog()
        self.failures: list[Exception] = []
        self.engines: list[LocalEngineCore] = []

    def engine(
        self,
        factory: Callable[[], ModelRunner] | None = None,
        *,
        max_restarts: int = 3,
        **serving: Any,
    ) -> LocalEngineCore:
        engine = LocalEngineCore(
            f"local-{len(self.engines)}",
            factory or (lambda: MockRunner(self.script)),
            serving=Serving(**{"max_concurrent": 2, "queue_timeout_ms": 60_000, **serving}),
            clock=self.clock,
            on_failed=self.failures.append,
            max_restarts=max_restarts,
        )
        self.report_log.watch(engine)
        self.engines.append(engine)
        return engine

    async def started(self, **options: Any) -> LocalEngineCore:
        engine = self.engine(**options)
        await engine.start(self.system)
        return engine

    async def close(self) -> None:
        for engine in self.engines:
            await engine.stop(timeout=0)
        await self.system.shutdown(timeout=1)

    def assert_released(self) -> None:
        for engine in self.engines:
            assert (engine.in_flight, engine.queued, engine.load_score) == (0, 0, 0)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    built = Harness()
    try:
        yield built
    finally:
        await built.close()
    built.assert_released()


# ---------------------------------------------------------------- serving


async def test_streams_an_answer_and_reports_it(harness: Harness) -> None:
    price = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    harness.script.add(MockReply.text("Hel", "lo", input_tokens=5))
    engine = harness.engine(lambda: MockRunner(harness.script, price=price))
    assert not engine.healthy  # not started yet
    await engine.start(harness.system)
    replica: Replica = engine
    assert replica.healthy
    assert (engine.generation, engine.capacity, harness.script.load_weights_calls) == (1, 2, 1)
    stream = engine.submit(chat())
    assert await drain(stream) == ("Hello", None)
    [report] = harness.report_log.reports
    assert stream.report is report
    assert (report.outcome, report.error, report.attempts) == ("ok", None, 1)
    assert (report.usage.input_tokens, report.usage.output_tokens) == (5, 2)
    assert report.cost_usd == pytest.approx(9e-6)
    assert report.ttft_s is not None
    assert engine.actor is not None
    assert engine.actor.is_alive


async def test_starting_twice_is_refused(harness: Harness) -> None:
    engine = await harness.started()
    with pytest.raises(OperationRefused, match="already started"):
        await engine.start(harness.system, "again")


async def test_a_request_submitted_before_start_waits_for_the_model(harness: Harness) -> None:
    engine = harness.engine()
    stream = engine.submit(chat())
    assert engine.queued == 1
    await engine.start(harness.system)
    assert await drain(stream) == ("ok", None)


async def test_priorities_are_served_highest_first(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=1)
    long = engine.submit(chat("long"))
    await until(lambda: harness.script.active == 1)
    streams = [
        engine.submit(chat(text, priority=priority))
        for text, priority in (("b", Priority.BACKGROUND), ("n", Priority.NORMAL))
    ]
    streams.append(engine.submit(chat("h", priority=Priority.HIGH)))
    assert (engine.in_flight, engine.queued, engine.load_score) == (1, 3, 4.0)
    long.close()
    for stream in streams:
        assert await drain(stream) == ("ok", None)
    prompts = [
        r.messages[-1].content for r in harness.script.requests if isinstance(r, ChatRequest)
    ]
    assert prompts == ["long", "h", "n", "b"]


# ---------------------------------------------------------------- two-tier supervision


async def test_poison_rebuilds_the_context_and_serves_what_waits(harness: Harness) -> None:
    script = harness.script
    script.answer("long", MockReply.hanging())
    poison = ContextPoisoned("CUDA context lost")
    script.answer("poison", MockReply.failing(poison))
    engine = await harness.started(max_concurrent=2)
    long = engine.submit(chat("long"))
    await until(lambda: script.active == 1)
    poisoned = engine.submit(chat("poison"))
    waiting = engine.submit(chat("after"))  # both slots are taken: it queues

    assert await drain(poisoned) == ("", poison)
    text, collateral = await drain(long)
    assert text == ""
    assert isinstance(collateral, ContextPoisoned)
    assert collateral.retryable
    assert await drain(waiting) == ("ok", None)

    assert script.load_weights_calls == 2
    assert engine.generation == 2
    first, second = script.runners
    assert (first.executions, second.executions) == (2, 1)  # "after" ran on the new one
    assert script.cancellations == 1
    assert engine.healthy
    assert not engine.failed
    assert harness.failures == []
    outcomes = sorted(r.outcome for r in harness.report_log.reports)
    assert outcomes == ["context_poisoned", "context_poisoned", "ok"]


async def test_a_poison_after_the_first_chunk_interrupts_the_stream(harness: Harness) -> None:
    poison = ContextPoisoned("lost mid-stream")
    harness.script.answer("half", MockReply.failing(poison, after=1))
    engine = await harness.started()
    text, error = await drain(engine.submit(chat("half")))
    assert text == "t0"
    assert isinstance(error, StreamInterrupted)
    assert not error.retryable
    assert error.__cause__ is poison
    await until(lambda: engine.generation == 2)


async def test_a_fourth_poison_within_60s_fails_the_replica(harness: Harness) -> None:
    script = harness.script
    script.answer("poison", MockReply.failing(ContextPoisoned("poisoned")))
    engine = await harness.started(max_concurrent=2)
    engine.set_concurrency_limit(1)
    for restart in range(3):
        _, error = await drain(engine.submit(chat("poison")))
        assert isinstance(error, ContextPoisoned)
        await until(lambda restart=restart: engine.generation == restart + 2)
        harness.clock.advance(10)
    assert not engine.failed

    script.answer("long", MockReply.hanging())
    engine.set_concurrency_limit(2)
    long = engine.submit(chat("long"))
    await until(lambda: script.active == 1)
    last = engine.submit(chat("poison"))
    queued = engine.submit(chat("queued"))
    _, error = await drain(last)
    assert isinstance(error, ContextPoisoned)
    for stream in (long, queued):
        _, collateral = await drain(stream)
        assert isinstance(collateral, ContextPoisoned)
        assert collateral.retryable
        assert "failed" in collateral.message

    assert engine.failed
    assert not engine.healthy
    assert harness.failures == [engine.failure]
    assert isinstance(engine.failure, ContextPoisoned)
    assert script.load_weights_calls == 4
    with pytest.raises(Backpressure, match="has failed"):
        engine.submit(chat())
    assert engine.actor is not None
    assert isinstance(await engine.actor.wait_terminated(), ContextPoisoned)


async def test_poisons_spread_over_more_than_60s_keep_the_replica(harness: Harness) -> None:
    harness.script.answer("poison", MockReply.failing(ContextPoisoned("poisoned")))
    engine = await harness.started(max_concurrent=1)
    for restart in range(5):
        _, error = await drain(engine.submit(chat("poison")))
        assert isinstance(error, ContextPoisoned)
        await until(lambda restart=restart: engine.generation == restart + 2)
        harness.clock.advance(21)
    assert not engine.failed
    assert harness.failures == []
    assert await drain(engine.submit(chat())) == ("ok", None)
    assert harness.script.load_weights_calls == 6


async def test_a_batch_poisoned_at_once_restarts_the_context_once(harness: Harness) -> None:
    harness.script.answer("poison", MockReply.failing(ContextPoisoned("batch lost")))
    engine = await harness.started(max_concurrent=2)
    first, second = engine.submit(chat("poison")), engine.submit(chat("poison"))
    for stream in (first, second):
        _, error = await drain(stream)
        assert isinstance(error, ContextPoisoned)
    assert await drain(engine.submit(chat())) == ("ok", None)
    assert (harness.script.load_weights_calls, engine.generation) == (2, 2)


async def test_out_of_memory_resumes_the_same_context(harness: Harness) -> None:
    oom = OutOfMemory("KV cache exhausted")
    harness.script.answer("big", MockReply.failing(oom))
    engine = await harness.started()
    assert await drain(engine.submit(chat("big"))) == ("", oom)
    assert oom.retryable
    assert await drain(engine.submit(chat())) == ("ok", None)
    assert harness.script.load_weights_calls == 1
    assert len(harness.script.runners) == 1
    assert engine.generation == 1


async def test_unrecoverable_stops_the_replica(harness: Harness) -> None:
    script = harness.script
    script.answer("long", MockReply.hanging())
    fatal = Unrecoverable("device lost")
    script.answer("fatal", MockReply.failing(fatal))
    engine = await harness.started(max_concurrent=2)
    long = engine.submit(chat("long"))
    await until(lambda: script.active == 1)
    failing = engine.submit(chat("fatal"))
    queued = engine.submit(chat("queued"))

    assert await drain(failing) == ("", fatal)
    assert not fatal.retryable
    for stream in (long, queued):
        _, error = await drain(stream)
        assert isinstance(error, ContextPoisoned)
        assert error.retryable
    assert engine.failed
    assert harness.failures == [fatal]
    assert engine.actor is not None
    await engine.actor.wait_terminated()
    assert script.load_weights_calls == 1


async def test_a_runner_bug_fails_the_request_and_rebuilds(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.script.answer("bug", MockReply.failing(KeyError("oops")))
    engine = await harness.started()
    with caplog.at_level(logging.ERROR, logger="rakka_inference.local.worker"):
        _, error = await drain(engine.submit(chat("bug")))
    assert isinstance(error, InternalError)
    assert "KeyError" in error.message
    await until(lambda: engine.generation == 2)
    assert await drain(engine.submit(chat())) == ("ok", None)


# ---------------------------------------------------------------- embeddings


def embedding_request(*inputs: str, **kw: Any) -> EmbeddingRequest:
    return EmbeddingRequest(model="local-embed", inputs=inputs, **kw)


class ChatOnlyRunner:
    """A runner without ``embed``, whose chunks come from an iterator with no ``aclose``."""

    def __init__(self) -> None:
        self.inner = MockRunner()

    def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        return _Chunks([TokenChunk(text="plain"), TokenChunk(finish_reason=FinishReason.STOP)])

    async def load_weights(self) -> None:
        await self.inner.load_weights()

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        await self.inner.rebuild_session(cause)

    @property
    def runtime_kind(self) -> RuntimeKind:
        return self.inner.runtime_kind

    @property
    def transport_kind(self) -> Transport:
        return self.inner.transport_kind

    @property
    def rate_limits(self) -> RateLimits:
        return self.inner.rate_limits

    def estimate_cost(self, usage: Usage) -> float | None:
        return None


class _Chunks:
    def __init__(self, chunks: list[TokenChunk]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> TokenChunk:
        for chunk in self._chunks:
            return chunk
        raise StopAsyncIteration


async def test_embeddings_are_served_as_one_result(harness: Harness) -> None:
    harness.script.answer("boom", MockReply(failure=OutOfMemory("no room for the batch")))
    engine = await harness.started()
    stream = engine.submit_embedding(embedding_request("a", "b", dimensions=4))
    [result] = [item async for item in stream]
    assert result.vectors == (mock_embedding("a", 4), mock_embedding("b", 4))
    assert result.usage.input_tokens == 2
    report = harness.report_log.reports[-1]
    assert (report.outcome, report.usage, report.attempts) == ("ok", result.usage, 1)
    with pytest.raises(OutOfMemory):
        async for _ in engine.submit_embedding(embedding_request("boom")):
            pass
    assert engine.generation == 1  # out of memory: the context stays


async def test_embeddings_from_a_chat_only_model_are_a_bad_request(harness: Harness) -> None:
    engine = harness.engine(ChatOnlyRunner)
    early = engine.submit_embedding(embedding_request("x"))  # no runner to ask yet: queued
    await engine.start(harness.system)
    with pytest.raises(BadRequest) as caught:
        async for _ in early:
            pass
    assert caught.value.param == "model"
    with pytest.raises(BadRequest, match="does not serve embeddings"):
        engine.submit_embedding(embedding_request("x"))
    assert await drain(engine.submit(chat())) == ("plain", None)
    assert engine.generation == 1


# ---------------------------------------------------------------- loading the model


async def test_unrecoverable_while_loading_fails_start(harness: Harness) -> None:
    harness.script.fail_loads(Unrecoverable("no GPU"))
    engine = harness.engine()
    with pytest.raises(Unrecoverable, match="no GPU"):
        await engine.start(harness.system)
    assert engine.failed
    assert [type(e) for e in harness.failures] == [Unrecoverable]

    script = MockScript()
    script.fail_loads(Unrecoverable("no GPU either"))
    unhooked = LocalEngineCore("bare", lambda: MockRunner(script), serving=Serving())
    with pytest.raises(Unrecoverable):
        await unhooked.start(harness.system, "bare")
    await unhooked.stop()


async def test_out_of_memory_while_loading_retries_within_the_limit(harness: Harness) -> None:
    harness.script.fail_loads(OutOfMemory("weights too big"), None)
    engine = await harness.started()
    assert (harness.script.load_weights_calls, engine.generation) == (2, 1)
    assert await drain(engine.submit(chat())) == ("ok", None)

    harness.script.fail_loads(*[OutOfMemory("still too big")] * 4)
    other = harness.engine()
    with pytest.raises(ContextPoisoned) as caught:
        await other.start(harness.system, "other")
    assert isinstance(caught.value.__cause__, OutOfMemory)
    assert other.failed


async def test_a_forced_shutdown_while_loading_ends_start() -> None:
    class NeverLoads(MockRunner):
        async def load_weights(self) -> None:
            await asyncio.get_running_loop().create_future()

    system = ActorSystem()
    engine = LocalEngineCore("stuck", NeverLoads, serving=Serving())
    starting = asyncio.ensure_future(engine.start(system))
    await until(lambda: engine.actor is not None and len(system.actors) == 2)
    await system.shutdown(timeout=0)
    with pytest.raises(ActorDead, match="before the model was loaded"):
        await starting
    await engine.stop(timeout=0)


# ---------------------------------------------------------------- capacity


async def test_reject_policy_refuses_when_every_slot_is_busy(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=1, on_capacity_exhausted=CapacityPolicy.REJECT)
    long = engine.submit(chat("long"))
    with pytest.raises(Backpressure, match="busy"):
        engine.submit(chat())
    long.close()
    await until(lambda: engine.in_flight == 0)


async def test_a_full_queue_refuses_and_a_long_wait_expires(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=1, queue_capacity=1, queue_timeout_ms=0)
    long = engine.submit(chat("long"))
    await until(lambda: engine.in_flight == 1)
    waiting = engine.submit(chat("waiting"))
    with pytest.raises(Backpressure, match="full"):
        engine.submit(chat())
    _, error = await drain(waiting)  # queue_timeout_ms = 0: it expires at once
    assert isinstance(error, Backpressure)
    assert "waited" in error.message
    long.close()


async def test_raising_the_concurrency_limit_dispatches_what_waits(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=2)
    engine.set_concurrency_limit(1)
    long = engine.submit(chat("long"))
    waiting = engine.submit(chat())
    await until(lambda: engine.in_flight == 1)
    assert engine.queued == 1
    engine.set_concurrency_limit(10)  # capped at max_concurrent
    assert engine.capacity == 2
    assert await drain(waiting) == ("ok", None)
    engine.set_concurrency_limit(0)
    assert engine.capacity == 1
    long.close()


async def test_a_deadline_that_passes_while_queued_times_out(harness: Harness) -> None:
    engine = await harness.started()
    _, error = await drain(engine.submit(chat(), deadline=harness.clock() - 1))
    assert isinstance(error, Timeout)
    assert error.phase is TimeoutPhase.DEADLINE


async def test_a_deadline_does_not_cut_a_running_request(harness: Harness) -> None:
    # As on a remote engine: the deadline bounds waiting, not work that is running.
    harness.script.answer("slow", MockReply.text("a", "b", delays=(0.0, 0.05)))
    engine = await harness.started()
    outcome = await drain(engine.submit(chat("slow"), deadline=harness.clock() + 0.01))
    assert outcome == ("ab", None)


# ---------------------------------------------------------------- disconnects


async def test_closing_a_running_stream_cancels_the_runner(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging("a"))
    engine = await harness.started()
    stream = engine.submit(chat("long"))
    assert await stream.__anext__() == TokenChunk(text="a")
    stream.close()
    await until(lambda: engine.in_flight == 0)
    assert harness.script.cancellations == 1
    assert harness.script.active == 0
    [report] = harness.report_log.reports
    assert report.outcome == "request_cancelled"
    assert isinstance(report.error, RequestCancelled)


async def test_closing_a_queued_stream_dequeues_it(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=1)
    long = engine.submit(chat("long"))
    queued = engine.submit(chat("queued"))
    await until(lambda: harness.script.active == 1)
    queued.close()
    assert engine.queued == 0  # at once, not when a worker reaches it
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("request_cancelled", 0)
    long.close()
    await until(lambda: engine.in_flight == 0)
    assert harness.script.requests == [harness.script.requests[0]]
    assert harness.script.executions == 1


# ---------------------------------------------------------------- stopping


async def test_stop_drains_queued_and_running_requests(harness: Harness) -> None:
    harness.script.add(*[MockReply.text(f"r{i}", delays=(0.0,)) for i in range(4)])
    engine = await harness.started(max_concurrent=1)
    streams = [engine.submit(chat()) for _ in range(4)]
    consumers = [asyncio.ensure_future(drain(stream)) for stream in streams]
    await engine.stop(timeout=5)
    assert [await consumer for consumer in consumers] == [(f"r{i}", None) for i in range(4)]
    assert not engine.healthy
    with pytest.raises(Backpressure, match="shutting down"):
        engine.submit(chat())
    assert engine.actor is not None
    assert not engine.actor.is_alive


async def test_stop_after_its_timeout_cancels_what_is_left(harness: Harness) -> None:
    harness.script.answer("long", MockReply.hanging())
    engine = await harness.started(max_concurrent=1)
    long = engine.submit(chat("long"))
    queued = engine.submit(chat("queued"))
    await until(lambda: engine.in_flight == 1)
    await engine.stop(timeout=0)
    _, running_error = await drain(long)
    assert isinstance(running_error, RequestCancelled)
    _, queued_error = await drain(queued)
    assert isinstance(queued_error, Backpressure)
    assert harness.script.cancellations == 1


async def test_a_runner_that_fails_when_aborted_still_ends_as_aborted(
    harness: Harness,
) -> None:
    class FailsOnAbort(MockRunner):
        async def _abortable(self) -> AsyncIterator[TokenChunk]:
            yield TokenChunk(text="a")
            try:
                await asyncio.get_running_loop().create_future()
            except asyncio.CancelledError:
                raise OutOfMemory("freeing the KV cache failed") from None

        def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
            return self._abortable()

    engine = await harness.started(factory=lambda: FailsOnAbort(harness.script))
    stream = engine.submit(chat())
    assert (await stream.__anext__()).text == "a"
    await engine.stop(timeout=0)
    with pytest.raises(RequestCancelled, match="stopped"):
        await stream.__anext__()


async def test_stop_of_an_engine_never_started_fails_what_it_queued(harness: Harness) -> None:
    engine = harness.engine()
    stream = engine.submit(chat())
    await engine.stop()
    _, error = await drain(stream)
    assert isinstance(error, Backpressure)


# ---------------------------------------------------------------- hooks and invariants


async def test_failing_hooks_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_: object) -> None:
        raise RuntimeError("hook broke")

    script = MockScript()
    script.answer("fatal", MockReply.failing(Unrecoverable("gone")))
    engine = LocalEngineCore(
        "hooks",
        lambda: MockRunner(script),
        serving=Serving(max_concurrent=1),
        on_failed=broken,
    )
    async with ActorSystem() as system:
        await engine.start(system)
        with caplog.at_level(logging.ERROR, logger="rakka_inference.local.engine"):
            _, error = await drain(engine.submit(chat("fatal")))
            await until(lambda: engine.failed)
        assert isinstance(error, Unrecoverable)
        engine.fail(RuntimeError("a second failure changes nothing"))
        assert engine.failure is error
        await engine.stop()
    assert "on_failed hook failed" in caplog.text


def test_a_request_moves_only_along_the_table() -> None:
    job = Job(request=chat(), stream=RequestStream(), deadline=None, submitted_at=0.0)
    with pytest.raises(IllegalTransition, match="is queued and cannot become running"):
        job.move(JobState.RUNNING)
    job.move(JobState.ENDED)
    with pytest.raises(IllegalTransition, match="it can become nothing: it is final"):
        job.move(JobState.QUEUED)


async def test_a_request_for_a_dead_context_fails_retryably() -> None:
    class Gone(Actor[Any]):
        pass

    engine = LocalEngineCore("orphan", MockRunner, serving=Serving(max_concurrent=1))
    runner = MockRunner()
    await runner.load_weights()
    engine.context_ready(runner)
    stream = engine.submit(chat())
    async with ActorSystem() as system:
        dead = system.spawn(Gone)
        dead.stop()
        await dead.wait_terminated()
        dispatching = asyncio.ensure_future(WorkerActor(engine)._dispatch(dead))
        await until(lambda: engine.queued == 0)
        _, error = await drain(stream)
        assert isinstance(error, ContextPoisoned)
        assert engine.in_flight == 0
        dispatching.cancel()
        await asyncio.gather(dispatching, return_exceptions=True)
