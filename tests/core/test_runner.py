from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResult,
)
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import PriceTable, cost_usd
from rakka_inference.core.runner import (
    EmbeddingRunner,
    ModelRunner,
    SessionRebuildCause,
    Transport,
    TransportKind,
)
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.stream import FinishReason, TokenChunk, collect
from rakka_inference.core.usage import Usage


class EchoRunner:
    """The smallest runner: echoes the last message word by word.

    Before its last word it waits on ``gate``, so a test can hold it mid-stream.
    """

    def __init__(self) -> None:
        self.loaded = False
        self.rebuilds: list[SessionRebuildCause] = []
        self.aborted: list[str] = []
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()

    async def execute(self, request: ChatRequest) -> AsyncGenerator[TokenChunk, None]:
        words = request.messages[-1].text.split()
        try:
            for i, word in enumerate(words):
                if i == len(words) - 1:
                    self.started.set()
                    await self.gate.wait()
                yield TokenChunk(text=word if i == 0 else f" {word}")
            yield TokenChunk(
                finish_reason=FinishReason.STOP,
                usage=Usage(
                    input_tokens=request.estimated_prompt_tokens(), output_tokens=len(words)
                ),
            )
        except (GeneratorExit, asyncio.CancelledError):
            # Where a real runner aborts the engine request or closes the HTTP response.
            self.aborted.append(request.request_id)
            raise

    async def load_weights(self) -> None:
        self.loaded = True

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        self.rebuilds.append(cause)

    @property
    def runtime_kind(self) -> RuntimeKind:
        return RuntimeKind.OPENAI

    @property
    def transport_kind(self) -> Transport:
        return Transport.remote("openai")

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits(requests_per_minute=60)

    def estimate_cost(self, usage: Usage) -> float | None:
        price = PriceTable.default().lookup("gpt-4o")
        return None if price is None else cost_usd(usage, price)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        vectors = tuple((float(len(text)),) for text in request.inputs)
        return EmbeddingResult(vectors=vectors, usage=Usage(input_tokens=len(vectors)))


def runner_as_protocol(runner: EchoRunner) -> ModelRunner:
    # Static check: mypy verifies EchoRunner satisfies the protocol's signatures here.
    return runner


def request(text: str) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=(ChatMessage.user(text),), stream=True)


class TestTransport:
    def test_constructors(self) -> None:
        assert Transport.local_gpu() == Transport(kind=TransportKind.LOCAL_GPU)
        assert Transport.local_cpu().kind is TransportKind.LOCAL_CPU
        remote = Transport.remote("anthropic")
        assert (remote.kind, remote.provider, remote.is_remote) == (
            TransportKind.REMOTE_NETWORK,
            "anthropic",
            True,
        )
        assert not Transport.local_gpu().is_remote

    def test_provider_only_for_remote(self) -> None:
        with pytest.raises(ValueError, match="names its provider"):
            Transport(kind=TransportKind.REMOTE_NETWORK)
        with pytest.raises(ValueError, match="names its provider"):
            Transport.remote("")
        with pytest.raises(ValueError, match="has no provider"):
            Transport(kind=TransportKind.LOCAL_GPU, provider="openai")


def test_rebuild_causes() -> None:
    assert {cause.value for cause in SessionRebuildCause} == {
        "unauthorized",
        "config_changed",
        "operator",
        "context_poisoned",
    }


def test_runner_satisfies_the_protocols() -> None:
    runner = EchoRunner()
    assert isinstance(runner_as_protocol(runner), ModelRunner)
    assert isinstance(runner, EmbeddingRunner)
    assert not isinstance(object(), ModelRunner)
    assert not isinstance(object(), EmbeddingRunner)


async def test_consumer_lifecycle() -> None:
    runner: ModelRunner = EchoRunner()
    await runner.load_weights()
    completion = await collect(runner.execute(request("hello brave world")))
    assert completion.text == "hello brave world"
    assert completion.finish_reason is FinishReason.STOP
    assert completion.usage is not None
    assert completion.usage.output_tokens == 3
    cost = runner.estimate_cost(completion.usage)
    assert cost is not None
    assert cost > 0
    assert runner.runtime_kind is RuntimeKind.OPENAI
    assert runner.transport_kind.provider == "openai"
    assert runner.rate_limits.requests_per_minute == 60
    await runner.rebuild_session(SessionRebuildCause.UNAUTHORIZED)


async def test_embedding_runner() -> None:
    runner: EmbeddingRunner = EchoRunner()
    result = await runner.embed(EmbeddingRequest(model="m", inputs=("ab", "abc")))
    assert result.vectors == ((2.0,), (3.0,))


async def test_aclose_aborts_the_work() -> None:
    # A consumer that stops early closes the generator; the runner sees it and aborts.
    runner = EchoRunner()
    req = request("one two three")
    stream = runner.execute(req)
    assert (await anext(stream)).text == "one"
    await stream.aclose()
    assert runner.aborted == [req.request_id]


async def test_cancelling_the_consumer_aborts_the_work() -> None:
    # The client disconnects while the runner is waiting on its engine: the consumer task
    # is cancelled, and the cancellation reaches the runner's generator.
    runner = EchoRunner()
    runner.gate.clear()
    req = request("one two three")
    consumer = asyncio.create_task(collect(runner.execute(req)))
    await runner.started.wait()
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    assert runner.aborted == [req.request_id]
