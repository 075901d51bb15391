"""What a runner streams back, and how a stream folds into one answer.

A runner yields :class:`TokenChunk` values. The RequestActor forwards them to a streaming
client as OpenAI chunks, or folds them with :class:`ChunkAggregator` into one
:class:`ChatCompletion` for a non-streaming client (and for the Python API's ``ask``).

Two conventions make chunks from every provider mean the same thing:

- ``TokenChunk.usage`` is an **increment**: the tokens this chunk adds to the request's
  total. An adapter whose provider reports running totals (Gemini, Anthropic's
  ``message_delta``) folds them through its own cumulative
  :class:`~rakka_inference.core.usage.UsageAccumulator` and emits what
  :meth:`~rakka_inference.core.usage.UsageAccumulator.add` returns. Every consumer then
  simply sums.
- A streamed tool call arrives as :class:`ToolCallDelta` fragments. Fragments with the
  same ``index`` belong to one call; parallel calls may interleave. The first fragment of
  a call that has an ``id`` (or ``name``) fixes it; ``arguments`` fragments concatenate.
  Adapters for providers that assign no call ids (Gemini) mint them.
- Thinking arrives as ``reasoning`` text. A provider that signs its thinking (Anthropic)
  ends each block with a ``reasoning_signature`` chunk, and sends a redacted block whole as
  ``reasoning_redacted``; reasoning text after a signed block starts the next block. The
  aggregator keeps the blocks (:class:`~rakka_inference.core.messages.ReasoningBlock`), so
  an answer can be sent back, signatures and all, in the next turn of a tool loop.
- A request for ``n`` choices gets chunks of every choice, in any interleaving:
  ``TokenChunk.choice`` says whose a chunk is, and each choice has its own finish (the
  stream ends when the provider's does, not at the first finish). Tool-call indices and
  reasoning blocks are per choice; usage is the request's, whichever chunk carries it.
  Choice 0 is the answer of every single-choice consumer (the Messages and Responses
  dialects, ``ask``); :attr:`ChatCompletion.more_choices` holds the others.
- With ``logprobs`` asked for, a chunk's ``logprobs`` are the records of the tokens its
  text is made of (:class:`TokenLogprob`), in order.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass

from rakka_inference.core.content import ReasoningBlock
from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.tools import ToolCall
from rakka_inference.core.usage import Usage, UsageAccumulator, UsageMode

__all__ = [
    "ChatCompletion",
    "Choice",
    "ChunkAggregator",
    "FinishReason",
    "PartialToolCall",
    "TokenChunk",
    "TokenLogprob",
    "ToolCallDelta",
    "aggregate",
    "collect",
    "until_named",
]


class FinishReason(enum.StrEnum):
    """Why generation stopped: OpenAI's values, plus ``error`` for a stream cut short."""

    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCallDelta:
    """A fragment of a streamed tool call. Fragments with the same ``index`` form one call."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    """A piece of the arguments' JSON text; pieces are concatenated in arrival order."""

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"ToolCallDelta.index must be >= 0, got {self.index}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenLogprob:
    """One token's log probability (OpenAI's ``logprobs.content[i]``, Gemini's
    ``logprobsResult``): the token, its log probability, its UTF-8 bytes (``None`` where the
    provider gives none), and for a generated token the ``top`` likeliest alternatives at its
    step, likeliest first (empty unless ``top_logprobs`` asked for them)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenChunk:
    """One step of a streamed answer. Every field is optional; see the module docstring.

    ``text`` is visible output; ``reasoning`` is the model's exposed thinking (Anthropic
    thinking blocks, ``reasoning_content`` of OpenAI-compatible servers), kept apart so
    the gateway can choose whether to forward it. ``usage`` is an increment.
    ``finish_reason`` is set on the last chunk of a choice.
    """

    text: str = ""
    reasoning: str = ""
    reasoning_signature: str = ""
    """The signature that ends the current thinking block (see the module docstring)."""
    reasoning_redacted: str = ""
    """A redacted thinking block's opaque data, whole."""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    usage: Usage | None = None
    finish_reason: FinishReason | None = None
    choice: int = 0
    """The choice the chunk belongs to (0 to ``n - 1``); usage belongs to no choice."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """The log probabilities of the tokens of ``text``, when the request asked for them."""

    @property
    def visible(self) -> bool:
        """Whether the client sees something of this chunk: text, reasoning, a tool call or
        the finish. The first visible chunk commits the request: from then on nothing is
        retried, re-routed or failed over, so no content is ever duplicated. A usage-only
        chunk (Anthropic's ``message_start``) is not visible."""
        return bool(
            self.text
            or self.reasoning
            or self.tool_calls
            or self.finish_reason
            or self.reasoning_signature
            or self.reasoning_redacted
            or self.logprobs
        )

    @property
    def is_empty(self) -> bool:
        """Whether the chunk carries nothing (a keep-alive, or an event we do not map)."""
        return not self.visible and self.usage is None


@dataclass(frozen=True, slots=True, kw_only=True)
class Choice:
    """One choice of an answer (of the ``n`` a request asked for): the fields of
    :class:`ChatCompletion` that belong to a choice, and its ``index``."""

    index: int = 0
    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatCompletion:
    """A whole answer: what a non-streaming client receives.

    ``finish_reason`` is ``None`` when the stream ended without one (it was cut short);
    ``usage`` is ``None`` when the provider reported none, which is not the same as zero.
    Tool calls are ordered by their stream index. The fields are choice 0's (the only one,
    unless the request asked for ``n > 1``); ``more_choices`` holds the others, and
    :attr:`choices` all of them. ``usage`` is the whole request's.
    """

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    reasoning_blocks: tuple[ReasoningBlock, ...] = ()
    """The thinking as its blocks, signatures included; ``reasoning`` is their text."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """Choice 0's tokens with their log probabilities, when the request asked for them."""
    more_choices: tuple[Choice, ...] = ()
    """The choices after the first, by index."""

    @property
    def choices(self) -> tuple[Choice, ...]:
        """Every choice, choice 0 (this answer's own fields) first."""
        first = Choice(
            text=self.text,
            reasoning=self.reasoning,
            tool_calls=self.tool_calls,
            finish_reason=self.finish_reason,
            reasoning_blocks=self.reasoning_blocks,
            logprobs=self.logprobs,
        )
        return (first, *self.more_choices)


class _ReasoningBlocks:
    """Thinking blocks being assembled from chunks (see the module docstring)."""

    __slots__ = ("_blocks", "_signature", "_text")

    def __init__(self) -> None:
        self._blocks: list[ReasoningBlock] = []
        self._text: list[str] = []
        self._signature: list[str] = []

    def add(self, chunk: TokenChunk) -> None:
        if chunk.reasoning:
            if self._signature:
                self._close()
            self._text.append(chunk.reasoning)
        if chunk.reasoning_signature:
            self._signature.append(chunk.reasoning_signature)
        if chunk.reasoning_redacted:
            self._close()
            self._blocks.append(ReasoningBlock(redacted=chunk.reasoning_redacted))

    def _close(self) -> None:
        if self._text or self._signature:
            self._blocks.append(
                ReasoningBlock(text="".join(self._text), signature="".join(self._signature))
            )
            self._text.clear()
            self._signature.clear()

    def result(self) -> tuple[ReasoningBlock, ...]:
        if not (self._text or self._signature):
            return tuple(self._blocks)
        last = ReasoningBlock(text="".join(self._text), signature="".join(self._signature))
        return (*self._blocks, last)


class PartialToolCall:
    """A streamed tool call being assembled: its id and name once told, its argument
    fragments so far."""

    __slots__ = ("arguments", "id", "name")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []


def until_named(
    pending: dict[int, PartialToolCall], delta: ToolCallDelta
) -> tuple[str, str, str] | None:
    """Fold ``delta`` into the call of its index in ``pending``, a renderer's calls not yet
    started. Once the call's id and name are both known (a stream renderer starts a call's
    block only then), take it out and return its id, name and arguments so far; None
    before."""
    call = pending.get(delta.index)
    if call is None:
        call = pending[delta.index] = PartialToolCall()
    call.id = call.id or delta.id
    call.name = call.name or delta.name
    if delta.arguments:
        call.arguments.append(delta.arguments)
    if call.id is None or call.name is None:
        return None
    del pending[delta.index]
    return call.id, call.name, "".join(call.arguments)


class ChunkAggregator:
    """Folds a stream of :class:`TokenChunk` into a :class:`ChatCompletion`.

    Per choice, text and reasoning concatenate, tool-call fragments join by index, log
    probabilities follow one another, and the last finish reason wins; usage increments are
    summed over the request. Belongs to one stream; not thread-safe.
    """

    __slots__ = (
        "_blocks",
        "_finish_reason",
        "_logprobs",
        "_more",
        "_reasoning",
        "_text",
        "_tool_calls",
        "_usage",
    )

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._blocks = _ReasoningBlocks()
        self._tool_calls: dict[int, PartialToolCall] = {}
        self._finish_reason: FinishReason | None = None
        self._usage = UsageAccumulator(UsageMode.DELTA)
        self._logprobs: list[TokenLogprob] = []
        self._more: dict[int, ChunkAggregator] = {}
        """The choices after the first, each folded by an aggregator of its own."""

    def add(self, chunk: TokenChunk) -> None:
        """Fold in one chunk."""
        if chunk.usage is not None:
            self._usage.add(chunk.usage)
        if chunk.choice == 0:
            self._fold(chunk)
            return
        other = self._more.get(chunk.choice)
        if other is None:
            other = self._more[chunk.choice] = ChunkAggregator()
        other._fold(chunk)

    def _fold(self, chunk: TokenChunk) -> None:
        """Fold in the part of ``chunk`` that belongs to its choice (all but the usage)."""
        if chunk.text:
            self._text.append(chunk.text)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        if chunk.reasoning or chunk.reasoning_signature or chunk.reasoning_redacted:
            self._blocks.add(chunk)
        for delta in chunk.tool_calls:
            call = self._tool_calls.get(delta.index)
            if call is None:
                call = self._tool_calls[delta.index] = PartialToolCall()
            if call.id is None and delta.id:
                call.id = delta.id
            if call.name is None and delta.name:
                call.name = delta.name
            if delta.arguments:
                call.arguments.append(delta.arguments)
        if chunk.logprobs:
            self._logprobs.extend(chunk.logprobs)
        if chunk.finish_reason is not None:
            self._finish_reason = chunk.finish_reason

    def result(self) -> ChatCompletion:
        """The answer so far. Can be called more than once.

        Raises :class:`~rakka_inference.core.errors.ProtocolError` if a tool call never
        received an id or a name: the adapter produced a malformed stream.
        """
        return ChatCompletion(
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            tool_calls=self._calls(),
            finish_reason=self._finish_reason,
            usage=self._usage.total if self._usage.reported else None,
            reasoning_blocks=self._blocks.result(),
            logprobs=tuple(self._logprobs),
            more_choices=tuple(self._more[index]._choice(index) for index in sorted(self._more)),
        )

    def _choice(self, index: int) -> Choice:
        """What was folded in, as choice ``index`` of the answer."""
        return Choice(
            index=index,
            text="".join(self._text),
            reasoning="".join(self._reasoning),
            tool_calls=self._calls(),
            finish_reason=self._finish_reason,
            reasoning_blocks=self._blocks.result(),
            logprobs=tuple(self._logprobs),
        )

    def _calls(self) -> tuple[ToolCall, ...]:
        calls: list[ToolCall] = []
        for index in sorted(self._tool_calls):
            partial = self._tool_calls[index]
            if partial.id is None or partial.name is None:
                missing = "an id" if partial.id is None else "a name"
                raise ProtocolError(f"streamed tool call at index {index} never received {missing}")
            calls.append(
                ToolCall(id=partial.id, name=partial.name, arguments="".join(partial.arguments))
            )
        return tuple(calls)


def aggregate(chunks: Iterable[TokenChunk]) -> ChatCompletion:
    """Fold a finished sequence of chunks into one answer."""
    aggregator = ChunkAggregator()
    for chunk in chunks:
        aggregator.add(chunk)
    return aggregator.result()


async def collect(chunks: AsyncIterable[TokenChunk]) -> ChatCompletion:
    """Consume a chunk stream to its end and fold it into one answer.

    ``collect`` owns the stream: if it is cancelled or an error interrupts it, it closes the
    stream (``aclose``) before returning, so the runner behind it aborts its work at once
    instead of when the garbage collector finds the generator.
    """
    aggregator = ChunkAggregator()
    try:
        async for chunk in chunks:
            aggregator.add(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    return aggregator.result()
