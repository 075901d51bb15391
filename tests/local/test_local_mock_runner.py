"""MockRunner: scripted plays, injected failures, counts, and deterministic embeddings."""

from __future__ import annotations

import asyncio
import math

import pytest

from rakka_inference.core.errors import ContextPoisoned, OutOfMemory, Unrecoverable
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    TextPart,
)
from rakka_inference.core.policies import ModelPrice, RateLimits
from rakka_inference.core.runner import (
    EmbeddingRunner,
    ModelRunner,
    SessionRebuildCause,
    Transport,
    TransportKind,
)
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.stream import FinishReason, TokenChunk, aggregate
from rakka_inference.core.usage import Usage
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript, mock_embedding


def chat(text: str = "hi") -> ChatRequest:
    return ChatRequest(model="m", messages=(ChatMessage.user(text),))


async def loaded(script: MockScript | None = None, **kw: object) -> MockRunner:
    runner = MockRunner(script, **kw)  # type: ignore[arg-type]
    await runner.load_weights()
    return runner


async def play(runner: MockRunner) -> tuple[str, Exception | None]:
    text = ""
    try:
        async for chunk in runner.execute(chat()):
            text += chunk.text
    except Exception as error:
        return text, error
    return text, None


class RecordingSleep:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_replies_are_checked() -> None:
    with pytest.raises(ValueError, match="outside"):
        MockReply(failure=OutOfMemory("x"), after=1)
    with pytest.raises(ValueError, match="delays"):
        MockReply(delays=(-1.0,))


async def test_plays_chunks_with_their_delays_through_the_injected_sleep() -> None:
    sleep = RecordingSleep()
    runner = await loaded(MockScript(MockReply.text("a", "b", delays=(0.5, 1.5))), sleep=sleep)
    completion = aggregate([chunk async for chunk in runner.execute(chat())])
    assert completion.text == "ab"
    assert completion.finish_reason is FinishReason.STOP
    assert completion.usage == Usage(input_tokens=3, output_tokens=2)
    assert sleep.slept == [0.0, 0.5, 1.5, 0.0]  # the load, then one per chunk


async def test_failures_before_the_first_chunk_or_after_n() -> None:
    early = ContextPoisoned("at once")
    late = Unrecoverable("after two")
    last = OutOfMemory("after one of two chunks")
    script = MockScript(
        MockReply.failing(early),
        MockReply.failing(late, after=2),
        MockReply(chunks=(TokenChunk(text="x"), TokenChunk(text="never")), failure=last, after=1),
    )
    runner = await loaded(script)
    for error, expected in ((early, ""), (late, "t0t1"), (last, "x")):
        assert await play(runner) == (expected, error)
    assert (script.executions, script.active, script.cancellations) == (3, 0, 0)


async def test_a_hanging_play_counts_its_cancellation() -> None:
    script = MockScript(MockReply.hanging("a"), MockReply.hanging())
    runner = await loaded(script)

    closed = runner.execute(chat())
    assert await closed.__anext__() == TokenChunk(text="a")
    task = asyncio.ensure_future(closed.__anext__())
    await asyncio.sleep(0)
    assert script.active == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (script.active, script.cancellations) == (0, 1)

    iterator = runner.execute(chat())
    waiting = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert script.cancellations == 2


async def test_an_abandoned_generator_closed_early_is_a_cancellation() -> None:
    script = MockScript(MockReply.text("a", "b"))
    runner = await loaded(script)
    iterator = runner.execute(chat())
    await iterator.__anext__()
    await iterator.aclose()  # type: ignore[attr-defined]
    assert (script.cancellations, script.active) == (1, 0)


async def test_replies_go_in_line_then_default_and_keyed_ones_stay() -> None:
    script = MockScript(MockReply.text("first"), default=MockReply.text("default"))
    script.answer("special", MockReply.text("keyed"))
    runner = await loaded(script)

    async def text(request: ChatRequest) -> str:
        return aggregate([c async for c in runner.execute(request)]).text

    assert await text(chat("special")) == "keyed"
    assert await text(chat()) == "first"
    assert await text(chat()) == "default"
    assert await text(chat("special")) == "keyed"
    parts = ChatRequest(model="m", messages=(ChatMessage.user((TextPart(text="special"),)),))
    assert await text(parts) == "default"  # only a plain-text prompt is a key
    script.add(MockReply.text("added"))
    assert await text(chat()) == "added"
    assert len(script.requests) == 6
    assert runner.executions == 6


async def test_load_failures_are_scripted_and_loads_counted() -> None:
    script = MockScript()
    script.fail_loads(ContextPoisoned("first load fails"), None)
    first = MockRunner(script)
    with pytest.raises(ContextPoisoned):
        await first.load_weights()
    assert not first.loaded
    with pytest.raises(RuntimeError, match="before load_weights"):
        first.execute(chat())
    with pytest.raises(RuntimeError, match="before load_weights"):
        await first.embed(EmbeddingRequest(model="m", inputs=("x",)))
    second = MockRunner(script)
    await second.load_weights()
    assert second.loaded
    assert (first.load_weights_calls, second.load_weights_calls) == (1, 1)
    assert script.load_weights_calls == 2
    assert script.runners == [first, second]


async def test_properties_cost_and_session_rebuilds() -> None:
    price = ModelPrice(input_per_mtok=2.0, output_per_mtok=4.0)
    limits = RateLimits(requests_per_minute=10)
    runner = MockRunner(
        runtime=RuntimeKind.TRANSFORMERS,
        transport=Transport.local_cpu(),
        rate_limits=limits,
        price=price,
    )
    assert isinstance(runner, ModelRunner)
    assert isinstance(runner, EmbeddingRunner)
    assert runner.runtime_kind is RuntimeKind.TRANSFORMERS
    assert runner.transport_kind.kind is TransportKind.LOCAL_CPU
    assert runner.rate_limits is limits
    assert runner.estimate_cost(Usage(input_tokens=1_000_000)) == pytest.approx(2.0)
    default = MockRunner()
    assert default.transport_kind.kind is TransportKind.LOCAL_GPU
    assert default.runtime_kind is RuntimeKind.VLLM
    assert default.rate_limits.unlimited
    assert default.estimate_cost(Usage(input_tokens=5)) is None
    await default.rebuild_session(SessionRebuildCause.CONTEXT_POISONED)
    assert default.rebuilds == [SessionRebuildCause.CONTEXT_POISONED]


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    sleep = RecordingSleep()
    script = MockScript(MockReply(delays=(0.25,)))
    script.answer("broken", MockReply(failure=OutOfMemory("batch too big")))
    runner = await loaded(script, sleep=sleep, dimensions=6)
    result = await runner.embed(EmbeddingRequest(model="m", inputs=("cat", "dog")))
    assert sleep.slept == [0.0, 0.25]
    cat, dog = result.vectors
    assert cat == mock_embedding("cat", 6)
    assert cat != dog
    assert math.isclose(math.fsum(v * v for v in cat), 1.0)
    assert result.usage.input_tokens == 2
    again = await runner.embed(EmbeddingRequest(model="m", inputs=("cat",), dimensions=3))
    assert again.vectors == (mock_embedding("cat", 3),)
    with pytest.raises(OutOfMemory):
        await runner.embed(EmbeddingRequest(model="m", inputs=("broken",)))
    assert (script.embeddings, runner.executions) == (3, 3)
