"""MockRunner: a scripted local runner (a ModelRunner and an EmbeddingRunner) for tests.

A :class:`MockScript` holds what the runners do and counts what was asked of them. It is
shared by every runner built from it, so a test sees through context rebuilds: the engine
builds a *new* runner after a poisoning, and ``script.load_weights_calls`` counts both.

Each ``execute`` or ``embed`` call plays the :class:`MockReply` keyed to its prompt
(:meth:`MockScript.answer`), or else takes the next one in line (the script's default once
none is left), in call order:

>>> from rakka_inference.core.errors import ContextPoisoned
>>> script = MockScript(
...     MockReply.text("Hel", "lo"),
...     MockReply.failing(ContextPoisoned("bad context"), after=1),
... )
>>> factory = lambda: MockRunner(script)

A reply plays its chunks, each after its delay through the injected ``sleep`` (a zero
delay still yields to the event loop once); raises its ``failure`` before the first chunk
(``after=0``) or after ``after`` chunks; and with ``hang=True`` then waits until it is
cancelled, like a long generation. Cancelling the iteration is counted in
``script.cancellations``. Embeddings are deterministic: a unit vector derived from each
input's text, the same for the same text in every run; a request whose vectors would hold
more than :data:`MAX_EMBEDDING_VALUES` numbers in all is refused (BadRequest) before any is
made, whatever its ``dimensions`` and input count.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import ModelPrice, RateLimits
from rakka_inference.core.pricing import cost_usd
from rakka_inference.core.runner import SessionRebuildCause, Transport
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.stream import FinishReason, TokenChunk
from rakka_inference.core.usage import Usage

__all__ = ["MAX_EMBEDDING_VALUES", "MockReply", "MockRunner", "MockScript", "mock_embedding"]

Sleep = Callable[[float], Awaitable[None]]

MAX_EMBEDDING_VALUES = 1 << 20
"""The most numbers a test double builds for one embeddings request (inputs x dimensions):
each of ``dimensions`` (at most 65536) and the input count is bounded alone, but their
product is what is allocated."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MockReply:
    """One scripted answer. ``delays[i]`` is waited before chunk ``i`` (missing: 0)."""

    chunks: tuple[TokenChunk, ...] = ()
    delays: tuple[float, ...] = ()
    failure: Exception | None = None
    after: int = 0
    """How many chunks are yielded before ``failure`` is raised."""
    hang: bool = False
    """After the chunks, wait until cancelled instead of ending."""

    def __post_init__(self) -> None:
        if not 0 <= self.after <= len(self.chunks):
            raise ValueError(f"after={self.after} is outside 0..{len(self.chunks)} chunks")
        if any(delay < 0 for delay in self.delays):
            raise ValueError("delays must be >= 0")

    @classmethod
    def text(cls, *pieces: str, delays: tuple[float, ...] = (), input_tokens: int = 3) -> MockReply:
        """A complete answer: one chunk per piece, then a ``stop`` chunk with the usage."""
        chunks = [TokenChunk(text=piece) for piece in pieces]
        usage = Usage(input_tokens=input_tokens, output_tokens=len(pieces))
        chunks.append(TokenChunk(usage=usage, finish_reason=FinishReason.STOP))
        return cls(chunks=tuple(chunks), delays=delays)

    @classmethod
    def failing(cls, error: Exception, *, after: int = 0) -> MockReply:
        """``after`` text chunks (``t0``, ``t1``, ...), then ``error``."""
        chunks = tuple(TokenChunk(text=f"t{index}") for index in range(after))
        return cls(chunks=chunks, failure=error, after=after)

    @classmethod
    def hanging(cls, *pieces: str) -> MockReply:
        """``pieces``, then no end: the request runs until it is cancelled."""
        return cls(chunks=tuple(TokenChunk(text=piece) for piece in pieces), hang=True)


DEFAULT_REPLY = MockReply.text("ok")


class MockScript:
    """The replies the runners built from it play, and counts of what they did."""

    def __init__(self, *replies: MockReply, default: MockReply = DEFAULT_REPLY) -> None:
        self.replies: deque[MockReply] = deque(replies)
        self.default = default
        self.load_failures: deque[Exception | None] = deque()
        """Outcomes of the next ``load_weights`` calls: an error to raise, or None."""
        self.load_weights_calls = 0
        self.executions = 0
        self.embeddings = 0
        self.cancellations = 0
        """Plays that ended because the consumer cancelled or closed them."""
        self.active = 0
        """Plays running now."""
        self.requests: list[ChatRequest | EmbeddingRequest] = []
        self.runners: list[MockRunner] = []
        self.keyed: dict[str, MockReply] = {}

    def add(self, *replies: MockReply) -> None:
        """Queue more replies after those already scripted."""
        self.replies.extend(replies)

    def fail_loads(self, *outcomes: Exception | None) -> None:
        """Script the next ``load_weights`` calls: raise the error, or load (None)."""
        self.load_failures.extend(outcomes)

    def answer(self, prompt: str, reply: MockReply) -> None:
        """Play ``reply`` for every request whose last message (or first input) is
        ``prompt``, whatever the order of calls; it is not used up."""
        self.keyed[prompt] = reply

    def reply_for(self, request: ChatRequest | EmbeddingRequest) -> MockReply:
        """The reply for ``request``: a keyed one, else the next in line, else the default."""
        if isinstance(request, ChatRequest):
            key = request.messages[-1].content
        else:
            key = request.inputs[0] if request.inputs else None
        keyed = self.keyed.get(key) if isinstance(key, str) else None
        if keyed is not None:
            return keyed
        return self.replies.popleft() if self.replies else self.default


class MockRunner:
    """A ModelRunner and EmbeddingRunner that plays a :class:`MockScript`."""

    def __init__(
        self,
        script: MockScript | None = None,
        *,
        sleep: Sleep = asyncio.sleep,
        runtime: RuntimeKind = RuntimeKind.VLLM,
        transport: Transport | None = None,
        rate_limits: RateLimits | None = None,
        price: ModelPrice | None = None,
        dimensions: int = 8,
    ) -> None:
        self.script = script if script is not None else MockScript()
        self.script.runners.append(self)
        self._sleep = sleep
        self._runtime = runtime
        self._transport = transport or Transport.local_gpu()
        self._rate_limits = rate_limits or RateLimits()
        self._price = price
        self.dimensions = dimensions
        self.loaded = False
        self.load_weights_calls = 0
        self.executions = 0
        """Calls of ``execute`` and ``embed`` on this runner (the script counts all runners)."""
        self.rebuilds: list[SessionRebuildCause] = []

    # ------------------------------------------------------------------ properties

    @property
    def runtime_kind(self) -> RuntimeKind:
        return self._runtime

    @property
    def transport_kind(self) -> Transport:
        return self._transport

    @property
    def rate_limits(self) -> RateLimits:
        return self._rate_limits

    def estimate_cost(self, usage: Usage) -> float | None:
        return None if self._price is None else cost_usd(usage, self._price)

    # ------------------------------------------------------------------ lifecycle

    async def load_weights(self) -> None:
        script = self.script
        script.load_weights_calls += 1
        self.load_weights_calls += 1
        await self._sleep(0.0)
        failure = script.load_failures.popleft() if script.load_failures else None
        if failure is not None:
            raise failure
        self.loaded = True

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        self.rebuilds.append(cause)

    # ------------------------------------------------------------------ serving

    def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        # The reply is taken now, at the call, so replies go to requests in call order.
        self._check_loaded()
        script = self.script
        script.executions += 1
        self.executions += 1
        script.requests.append(request)
        return self._play(script.reply_for(request))

    async def _play(self, reply: MockReply) -> AsyncIterator[TokenChunk]:
        script = self.script
        script.active += 1
        try:
            for index, chunk in enumerate(reply.chunks):
                if reply.failure is not None and index == reply.after:
                    raise reply.failure
                await self._sleep(reply.delays[index] if index < len(reply.delays) else 0.0)
                yield chunk
            if reply.failure is not None:
                raise reply.failure
            if reply.hang:
                await asyncio.get_running_loop().create_future()
        except (asyncio.CancelledError, GeneratorExit):
            script.cancellations += 1
            raise
        finally:
            script.active -= 1

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self._check_loaded()
        script = self.script
        script.embeddings += 1
        self.executions += 1
        script.requests.append(request)
        reply = script.reply_for(request)
        await self._sleep(reply.delays[0] if reply.delays else 0.0)
        if reply.failure is not None:
            raise reply.failure
        texts = request.texts("the mock runner")
        size = request.dimensions or self.dimensions
        if len(texts) * size > MAX_EMBEDDING_VALUES:
            raise BadRequest(
                f"{len(texts)} inputs of {size} dimensions exceed the mock's "
                f"{MAX_EMBEDDING_VALUES} values per request",
                param="dimensions",
            )
        vectors = tuple(mock_embedding(text, size) for text in texts)
        return EmbeddingResult(
            vectors=vectors, usage=Usage(input_tokens=request.estimated_prompt_tokens())
        )

    def _check_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError("MockRunner used before load_weights()")


def mock_embedding(text: str, dimensions: int) -> tuple[float, ...]:
    """A deterministic unit vector of ``dimensions`` floats for ``text``."""
    digest = hashlib.shake_256(text.encode("utf-8")).digest(2 * dimensions)
    values = [
        int.from_bytes(digest[2 * i : 2 * i + 2], "big") / 32767.5 - 1.0 for i in range(dimensions)
    ]
    norm = math.sqrt(sum(value * value for value in values)) or 1.0
    return tuple(value / norm for value in values)
