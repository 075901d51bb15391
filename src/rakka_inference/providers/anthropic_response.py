"""Anthropic Messages responses: a unary answer's content blocks and the stream's events
to :class:`~rakka_inference.core.stream.TokenChunk` (the rules are set out in
:mod:`rakka_inference.providers.anthropic`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.stream import FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.usage import Usage, UsageAccumulator, UsageMode
from rakka_inference.providers.anthropic_errors import error_document
from rakka_inference.providers.base import load_json_object
from rakka_inference.wire.sse import SseEvent

__all__ = ["AnthropicStreamParser", "anthropic_usage", "parse_message"]

log = logging.getLogger("rakka_inference.providers.anthropic")

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}


def parse_message(body: bytes, provider: str) -> list[TokenChunk]:
    """A unary Messages answer as chunks: one per thinking block (its text and signature,
    or a redacted block's data), then one with the text, tool calls, usage and finish."""
    document = load_json_object(body, provider)
    if document.get("type") == "error":
        raise error_document(document, provider)
    content = document.get("content")
    if not isinstance(content, list):
        raise ProtocolError("response has no content list", provider=provider)
    text: list[str] = []
    thinking: list[TokenChunk] = []
    calls: list[ToolCallDelta] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(str(block.get("text") or ""))
        elif kind in ("thinking", "redacted_thinking"):
            chunk = _thinking_chunk(block)
            if not chunk.is_empty:
                thinking.append(chunk)
        elif kind == "tool_use":
            calls.append(
                ToolCallDelta(
                    index=len(calls),
                    id=_required_text(block, "id", provider),
                    name=_required_text(block, "name", provider),
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
        else:
            log.debug("skipping Anthropic content block of type %r", kind)
    usage = document.get("usage")
    return [
        *thinking,
        TokenChunk(
            text="".join(text),
            tool_calls=tuple(calls),
            usage=(anthropic_usage(usage, provider=provider) if isinstance(usage, dict) else None),
            finish_reason=_finish(document.get("stop_reason")),
        ),
    ]


class _ToolBlock:
    """A streamed ``tool_use`` block: its tool-call index and what it has sent so far."""

    __slots__ = ("complete", "has_arguments", "index")

    def __init__(self, index: int, *, complete: bool) -> None:
        self.index = index
        self.has_arguments = complete
        self.complete = complete
        """The start event carried the whole input: later deltas would duplicate it."""


class AnthropicStreamParser:
    """Messages stream events to TokenChunks; ``message_stop`` ends the stream.

    Events are told apart by their JSON ``type`` (the SSE ``event`` name when the JSON has
    none). Tool-use blocks are numbered in order of their ``content_block_start``, and
    ``input_json_delta`` fragments go to the call of their block ``index``, so parallel calls
    may interleave. A tool block that streamed no arguments gets ``{}`` when it stops.
    """

    __slots__ = ("_provider", "_tools", "_usage", "done")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._tools: dict[int, _ToolBlock] = {}
        self._usage = UsageAccumulator(UsageMode.CUMULATIVE)
        self.done = False

    def feed(self, event: SseEvent) -> list[TokenChunk]:
        document = load_json_object(event.raw, self._provider)
        kind = document.get("type") or event.event
        match kind:
            case "content_block_delta":
                return self._block_delta(document)
            case "content_block_start":
                return self._block_start(document)
            case "content_block_stop":
                return self._block_stop(document)
            case "message_start":
                message = document.get("message")
                if not isinstance(message, dict):
                    raise ProtocolError("message_start without a message", provider=self._provider)
                usage = self._usage_increment(message.get("usage"))
                return [] if usage is None else [TokenChunk(usage=usage)]
            case "message_delta":
                delta = _object(document, "delta", self._provider)
                chunk = TokenChunk(
                    usage=self._usage_increment(document.get("usage")),
                    finish_reason=_finish(delta.get("stop_reason")),
                )
                return [] if chunk.is_empty else [chunk]
            case "message_stop":
                self.done = True
            case "ping":
                pass
            case "error":
                raise error_document(document, self._provider)
            case _:
                log.debug("skipping unknown Anthropic stream event %r", kind)
        return []

    def _block_start(self, document: dict[str, Any]) -> list[TokenChunk]:
        block = _object(document, "content_block", self._provider)
        kind = block.get("type")
        if kind == "tool_use":
            index = self._block_index(document)
            tool_input = block.get("input")
            complete = isinstance(tool_input, dict) and bool(tool_input)
            tool = self._tools[index] = _ToolBlock(len(self._tools), complete=complete)
            delta = ToolCallDelta(
                index=tool.index,
                id=_required_text(block, "id", self._provider),
                name=_required_text(block, "name", self._provider),
                arguments=orjson.dumps(tool_input).decode() if complete else "",
            )
            return [TokenChunk(tool_calls=(delta,))]
        # A start block's own text is empty on Anthropic's API; a compatible server may not
        # leave it so. A redacted thinking block comes whole in its start.
        if kind == "text":
            chunk = TokenChunk(text=str(block.get("text") or ""))
        elif kind in ("thinking", "redacted_thinking"):
            chunk = _thinking_chunk(block)
        else:
            log.debug("skipping Anthropic content block of type %r", kind)
            return []
        return [] if chunk.is_empty else [chunk]

    def _block_delta(self, document: dict[str, Any]) -> list[TokenChunk]:
        delta = _object(document, "delta", self._provider)
        kind = delta.get("type")
        if kind == "text_delta":
            text = str(delta.get("text") or "")
            return [TokenChunk(text=text)] if text else []
        if kind == "thinking_delta":
            thinking = str(delta.get("thinking") or "")
            return [TokenChunk(reasoning=thinking)] if thinking else []
        if kind == "input_json_delta":
            index = self._block_index(document)
            tool = self._tools.get(index)
            if tool is None:
                raise ProtocolError(
                    f"input_json_delta for content block {index}, which is not a tool_use block",
                    provider=self._provider,
                )
            partial = str(delta.get("partial_json") or "")
            if not partial or tool.complete:
                return []
            tool.has_arguments = True
            return [TokenChunk(tool_calls=(ToolCallDelta(index=tool.index, arguments=partial),))]
        if kind == "signature_delta":
            signature = str(delta.get("signature") or "")
            return [TokenChunk(reasoning_signature=signature)] if signature else []
        log.debug("skipping Anthropic content delta of type %r", kind)
        return []

    def _block_stop(self, document: dict[str, Any]) -> list[TokenChunk]:
        tool = self._tools.get(self._block_index(document))
        if tool is None or tool.has_arguments:
            return []
        # A tool without parameters streams no input: say "no arguments" as unary does.
        tool.has_arguments = True
        return [TokenChunk(tool_calls=(ToolCallDelta(index=tool.index, arguments="{}"),))]

    def _block_index(self, document: dict[str, Any]) -> int:
        index = document.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ProtocolError(
                f"{document.get('type')} without a valid block index", provider=self._provider
            )
        return index

    def _usage_increment(self, usage: object) -> Usage | None:
        """What a running-total report adds; None when it adds nothing.

        The first report is emitted even at zero, so "zero tokens" is not read as "usage
        unknown" downstream.
        """
        if not isinstance(usage, dict):
            return None
        first = not self._usage.reported
        increment = self._usage.add(anthropic_usage(usage, provider=self._provider))
        return increment if first or not increment.is_zero else None


def _thinking_chunk(block: Mapping[str, Any]) -> TokenChunk:
    """A ``thinking`` block (text and signature) or ``redacted_thinking`` block (its data)
    as a chunk."""
    if block.get("type") == "redacted_thinking":
        return TokenChunk(reasoning_redacted=str(block.get("data") or ""))
    return TokenChunk(
        reasoning=str(block.get("thinking") or ""),
        reasoning_signature=str(block.get("signature") or ""),
    )


def anthropic_usage(usage: Mapping[str, Any], *, provider: str | None = None) -> Usage:
    """Anthropic's usage object in our convention: cache reads and writes are prompt tokens.

    A count that is not a non-negative integer is a
    :class:`~rakka_inference.core.errors.ProtocolError`: guessing would mis-bill.
    """
    cache_read = _count(usage, "cache_read_input_tokens", provider)
    cache_write = _count(usage, "cache_creation_input_tokens", provider)
    return Usage(
        input_tokens=_count(usage, "input_tokens", provider) + cache_read + cache_write,
        output_tokens=_count(usage, "output_tokens", provider),
        cached_input_tokens=cache_read,
    )


def _count(usage: Mapping[str, Any], key: str, provider: str | None) -> int:
    value = usage.get(key)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ProtocolError(f"usage.{key} is not a token count", provider=provider)


def _object(document: Mapping[str, Any], key: str, provider: str) -> dict[str, Any]:
    """``document[key]`` as an object: absent or null is empty, anything else is malformed."""
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{document.get('type')}.{key} is not an object", provider=provider)
    return value


def _required_text(block: Mapping[str, Any], key: str, provider: str) -> str:
    value = block.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"tool_use block without {key}", provider=provider)
    return value


def _finish(value: object) -> FinishReason | None:
    if value is None:
        return None
    reason = _FINISH_REASONS.get(str(value))
    if reason is None:
        log.debug("unknown Anthropic stop_reason %r, read as stop", value)
        return FinishReason.STOP
    return reason
