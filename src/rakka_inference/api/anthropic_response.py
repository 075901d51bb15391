"""Our results as Anthropic Messages JSON and SSE: the ``/v1/messages`` outbound edge.

The mirror image of :class:`~rakka_inference.providers.anthropic.AnthropicStreamParser`,
sans I/O:

- :func:`message_json`: a :class:`ChatCompletion` as a ``message`` object.
- :class:`MessageStreamRenderer`: one streamed answer as Anthropic's event stream, and its
  in-stream ``error`` event for a failure after the first byte.
- :func:`anthropic_error_json`: an :class:`InferenceError` as status, headers and an
  Anthropic error body.

Decisions:

- The message id is ``msg_`` plus the request id without its ``req_`` prefix.
- Content blocks come in the order the answer produced them: the thinking (only with
  ``include_reasoning``: a ``thinking`` block per signed block, with its signature, a
  ``redacted_thinking`` block per redacted one; thinking from a provider that signs none is
  one block with an empty signature), ``text``, then one ``tool_use`` block per tool call,
  ``input`` being the parsed arguments (``{}`` when they are not a JSON object, or one
  nested past :data:`~rakka_inference.core.json_depth.MAX_JSON_DEPTH` levels, which a
  model rarely produces; logged).
- ``stop_reason``: stop → ``end_turn``, length → ``max_tokens``, tool_calls →
  ``tool_use``, content_filter → ``refusal``. An answer with tool calls says ``tool_use``
  whatever its finish reason (OpenAI says ``stop`` when ``tool_choice`` named the tool),
  because that is what an Anthropic client's tool loop checks. ``stop_sequence`` is never
  reported: the core's finish reason does not say whether a stop sequence ended the text,
  so ``stop_sequence`` is always null and such an answer says ``end_turn``. A stream that
  ended without a finish reason says ``end_turn``.
- ``usage`` follows Anthropic: ``input_tokens`` counts the prompt tokens *not* read from
  the cache, ``cache_read_input_tokens`` those that were (our ``input_tokens`` counts
  both). Unknown usage is sent as zeros: Anthropic's schema requires the counts.

The stream: ``message_start`` (its usage is what was reported before the first content:
an Anthropic upstream reports the prompt there, an OpenAI one only at the end), ``ping``,
then per content block ``content_block_start``, its deltas (``thinking_delta`` and
``signature_delta``, ``text_delta``, ``input_json_delta``) and ``content_block_stop``, each
block started and stopped once (a ``redacted_thinking`` block comes whole in its start);
then ``message_delta`` (stop reason and the *total* usage, which the ``anthropic`` SDK
takes over the start's) and ``message_stop``. A block stays open until content of another
kind arrives, or (a thinking block) until thinking follows its signature. Parallel tool
calls whose fragments interleave (no provider we know streams them so) send a late
fragment with its own, already stopped, block index: the SDK accumulates by index, so the
final message is still right. Every
event carries its ``event:`` line, which the SDK dispatches on. A failure after the first
byte sends ``event: error`` with the error body and ends the stream: Anthropic has no
``[DONE]``.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from rakka_inference.api.openai_response import error_status
from rakka_inference.core.errors import InferenceError, ProtocolError, QuotaExhausted
from rakka_inference.core.json_depth import MAX_JSON_DEPTH, too_deep
from rakka_inference.core.messages import ReasoningBlock
from rakka_inference.core.stream import (
    ChatCompletion,
    FinishReason,
    PartialToolCall,
    TokenChunk,
    ToolCallDelta,
    until_named,
)
from rakka_inference.core.usage import Usage

__all__ = [
    "MessageStreamRenderer",
    "anthropic_error_json",
    "anthropic_usage_json",
    "message_id",
    "message_json",
]

log = logging.getLogger("rakka_inference.gateway")

_STOP_REASONS: dict[FinishReason | None, str] = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
    FinishReason.ERROR: "end_turn",
    None: "end_turn",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


def message_id(request_id: str) -> str:
    """The ``msg_...`` id of the answer to ``request_id``."""
    return f"msg_{request_id.removeprefix('req_')}"


def anthropic_usage_json(usage: Usage | None) -> dict[str, int]:
    """Anthropic's usage object: uncached and cache-read prompt tokens apart (zeros if unknown)."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    return {
        "input_tokens": usage.uncached_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def _stop_reason(finish: FinishReason | None, *, has_tool_calls: bool) -> str:
    if has_tool_calls and finish in (FinishReason.STOP, FinishReason.ERROR, None):
        return "tool_use"
    return _STOP_REASONS[finish]


def _tool_input(call_id: str, arguments: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or too_deep(value, MAX_JSON_DEPTH) is not None:
        # Nested too deep, the object could not be written back into the answer.
        log.warning(
            "tool call %s has arguments that are not a JSON object of at most %d levels; "
            "sent as {}",
            call_id,
            MAX_JSON_DEPTH,
        )
        return {}
    return value


def message_json(
    result: ChatCompletion, *, request_id: str, model: str, include_reasoning: bool = False
) -> bytes:
    """A non-streaming answer as a ``message`` object (see the module docstring)."""
    content: list[dict[str, Any]] = []
    if include_reasoning:
        blocks = result.reasoning_blocks
        if not blocks and result.reasoning:
            blocks = (ReasoningBlock(text=result.reasoning),)
        content.extend(_thinking_block(block) for block in blocks)
    if result.text:
        content.append({"type": "text", "text": result.text})
    content.extend(
        {
            "type": "tool_use",
            "id": call.id,
            "name": call.name,
            "input": _tool_input(call.id, call.arguments),
        }
        for call in result.tool_calls
    )
    return orjson.dumps(
        {
            "id": message_id(request_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": _stop_reason(
                result.finish_reason, has_tool_calls=bool(result.tool_calls)
            ),
            "stop_sequence": None,
            "usage": anthropic_usage_json(result.usage),
        }
    )


def _thinking_block(block: ReasoningBlock) -> dict[str, Any]:
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    return {"type": "thinking", "thinking": block.text, "signature": block.signature}


def _event(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class MessageStreamRenderer:
    """Renders one streamed answer as Anthropic SSE events. Belongs to one stream.

    Call :meth:`render` per chunk and :meth:`first` once (before or after rendering the
    chunks held back until the first visible one: :meth:`first` reports the usage seen so
    far, and its bytes go first on the wire), then :meth:`final` on success or
    :meth:`error` on a failure after the first byte. :meth:`final` raises
    :class:`~rakka_inference.core.errors.ProtocolError` if a tool call never received an
    id or a name.
    """

    __slots__ = (
        "_finish",
        "_include_reasoning",
        "_message_id",
        "_model",
        "_next_index",
        "_open",
        "_pending",
        "_signed",
        "_text_head",
        "_tool_blocks",
        "_usage",
    )

    def __init__(self, request_id: str, model: str, *, include_reasoning: bool = False) -> None:
        self._message_id = message_id(request_id)
        self._model = model
        self._include_reasoning = include_reasoning
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._next_index = 0
        self._open: str | None = None
        """The kind of the open block: "text", "thinking", "tool", or None."""
        self._signed = False
        """Whether the open thinking block has its signature: more thinking starts another."""
        self._text_head = b""
        """The bytes before a text delta's JSON string, for the open text block."""
        self._tool_blocks: dict[int, int] = {}
        """Tool-call index → its content block index."""
        self._pending: dict[int, PartialToolCall] = {}

    @property
    def usage(self) -> Usage | None:
        """The usage summed so far; ``None`` while no chunk has reported any."""
        return self._usage

    def first(self) -> bytes:
        """``message_start``, with the usage seen so far, and a ``ping``."""
        message: dict[str, Any] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage_json(self._usage),
        }
        return _event(b"message_start", {"type": "message_start", "message": message}) + _PING

    def render(self, chunk: TokenChunk) -> bytes:
        """The events for ``chunk``, or ``b""`` when it has nothing to send yet."""
        if chunk.usage is not None:
            self._usage = chunk.usage if self._usage is None else self._usage + chunk.usage
        if chunk.choice:
            return b""  # a request of this dialect asks for one choice: no other is shown
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        out: list[bytes] = []
        if self._include_reasoning:
            self._thinking(chunk, out)
        if chunk.text:
            if self._open != "text":
                self._enter("text", out)
            out.append(self._text_head + orjson.dumps(chunk.text) + b"}}\n\n")
        for call in chunk.tool_calls:
            self._tool(call, out)
        return b"".join(out)

    def final(self) -> bytes:
        """The closing events: the open block's stop, ``message_delta``, ``message_stop``."""
        if self._pending:
            index = min(self._pending)
            missing = "an id" if self._pending[index].id is None else "a name"
            raise ProtocolError(f"streamed tool call at index {index} never received {missing}")
        out: list[bytes] = []
        self._close(out)
        stop = _stop_reason(self._finish, has_tool_calls=bool(self._tool_blocks))
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": anthropic_usage_json(self._usage),
        }
        out += (_event(b"message_delta", delta), _MESSAGE_STOP)
        return b"".join(out)

    def error(self, error: InferenceError) -> bytes:
        """Anthropic's in-stream ``error`` event for ``error``; the stream ends after it."""
        return _event(b"error", _error_body(error))

    # ------------------------------------------------------------------ blocks

    def _block_index(self) -> int:
        """The index of the open block (the last one started)."""
        return self._next_index - 1

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        payload = {
            "type": "content_block_delta",
            "index": self._block_index() if index is None else index,
            "delta": delta,
        }
        return _event(b"content_block_delta", payload)

    def _close(self, out: list[bytes]) -> None:
        if self._open is not None:
            stop = {"type": "content_block_stop", "index": self._block_index()}
            out.append(_event(b"content_block_stop", stop))
            self._open = None
            self._signed = False

    def _start(self, kind: str, block: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        index = self._next_index
        self._next_index += 1
        self._open = kind
        start = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(_event(b"content_block_start", start))
        return index

    def _enter(self, kind: str, out: list[bytes]) -> None:
        if self._open == kind:
            return
        if kind == "text":
            index = self._start(kind, {"type": "text", "text": ""}, out)
            self._text_head = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"text_delta","text":' % index
            )
        else:
            self._start(kind, {"type": "thinking", "thinking": "", "signature": ""}, out)

    def _thinking(self, chunk: TokenChunk, out: list[bytes]) -> None:
        if chunk.reasoning:
            if self._signed:
                self._close(out)
            self._enter("thinking", out)
            out.append(self._delta({"type": "thinking_delta", "thinking": chunk.reasoning}))
        if chunk.reasoning_signature:
            self._enter("thinking", out)
            delta = {"type": "signature_delta", "signature": chunk.reasoning_signature}
            out.append(self._delta(delta))
            self._signed = True
        if chunk.reasoning_redacted:
            block = {"type": "redacted_thinking", "data": chunk.reasoning_redacted}
            self._start("redacted", block, out)
            self._close(out)

    def _tool(self, delta: ToolCallDelta, out: list[bytes]) -> None:
        index = self._tool_blocks.get(delta.index)
        if index is not None:
            if delta.arguments:
                out.append(self._delta(_json_delta(delta.arguments), index))
            return
        named = until_named(self._pending, delta)
        if named is None:
            return
        call_id, name, arguments = named
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        index = self._tool_blocks[delta.index] = self._start("tool", block, out)
        if arguments:
            out.append(self._delta(_json_delta(arguments), index))


def _json_delta(partial: str) -> dict[str, str]:
    return {"type": "input_json_delta", "partial_json": partial}


# --------------------------------------------------------------------------- errors


def _error_body(error: InferenceError) -> dict[str, Any]:
    if isinstance(error, QuotaExhausted):
        kind = "billing_error"  # a 429 that waiting does not cure
    else:
        status = error.http_status
        kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def anthropic_error_json(error: InferenceError) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of the Anthropic-format JSON error answer for ``error``.

    Status and ``retry-after`` are those of the OpenAI-format answer
    (:func:`~rakka_inference.api.openai_response.error_status`); the body is
    ``{"type": "error", "error": {"type", "message"}}`` with the error type of the status
    (``billing_error`` for a spent quota). The request id is in the ``x-request-id`` header.
    """
    status, headers = error_status(error)
    return status, headers, orjson.dumps(_error_body(error))
