"""Our results as OpenAI JSON and SSE: the gateway's outbound edge, sans I/O.

- :func:`completion_json`: a :class:`ChatCompletion` as a ``chat.completion`` object.
- :class:`ChunkRenderer`: one streamed answer as ``chat.completion.chunk`` SSE events,
  ``data: [DONE]``, and OpenAI's in-stream error event for a failure after the first byte.
- :func:`error_json`: an :class:`InferenceError` as status, headers and body.
- :func:`embeddings_json`: an :class:`EmbeddingResult` as a ``list`` of embeddings.

Decisions:

- The completion id is ``chatcmpl-`` plus the request id without its ``req_`` prefix, so
  logs and client-side ids line up.
- Unknown usage (``usage is None``: the provider reported none) is **omitted** from a
  completion and sent as ``"usage": null`` in the final stream chunk, never as zeros:
  zero would be a wrong count, billed as such.
- ``finish_reason``: our values are OpenAI's, except ``FinishReason.ERROR``. A failed
  answer is meant to go out through :func:`error_json` or :meth:`ChunkRenderer.error`;
  should one reach :func:`completion_json` anyway, ``ERROR`` and ``None`` (the provider
  sent none) render as ``"stop"``, since OpenAI's schema has no other value. In a stream,
  ``ERROR`` renders no finish reason: the gateway follows it with :meth:`ChunkRenderer.error`.
- Reasoning text is forwarded only with ``include_reasoning``, as ``reasoning_content``
  (the field of DeepSeek and vLLM, which the ``openai`` SDK keeps as an extra). Thinking a
  provider signed (Claude's) is also sent as ``thinking_blocks`` (LiteLLM's field:
  ``{type: thinking, thinking, signature}``, ``{type: redacted_thinking, data}``), which a
  client sends back on the assistant message to continue a tool loop; in a stream, a
  signature or a redacted block arrives as a ``thinking_blocks`` delta of its own (the
  text having come as ``reasoning_content``).
- Several choices (``n``): a completion lists each with its ``index``; a stream opens each
  with its role delta, and every chunk after carries the ``index`` of its choice, as
  OpenAI's do, each choice finishing on its own; the usage chunk comes last.
- ``logprobs`` is ``null`` unless the request asked for log probabilities; then a
  completion's choice carries ``{"content": [...], "refusal": null}``, and so does each
  stream chunk whose tokens have them (:func:`logprobs_json`).

Speed: :class:`ChunkRenderer` serializes the constant part of every chunk (id, created,
model, the choice's envelope) once per stream, and per token only a small delta dict, with
orjson (timed with ``timeit``; the figure is in ``bench/README.md``).
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson

from rakka_inference.api.openai_embeddings import EncodingFormat
from rakka_inference.core.errors import InferenceError, QuotaExhausted
from rakka_inference.core.messages import EmbeddingResult, ReasoningBlock
from rakka_inference.core.stream import (
    ChatCompletion,
    Choice,
    FinishReason,
    TokenChunk,
    TokenLogprob,
    ToolCallDelta,
)
from rakka_inference.core.usage import Usage

__all__ = [
    "ChunkRenderer",
    "chat_completion_id",
    "completion_json",
    "embeddings_json",
    "error_json",
    "error_status",
    "logprobs_json",
    "retry_is_futile",
    "usage_json",
]

_DONE = b"data: [DONE]\n\n"
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_COMPLETION_FINISH: dict[FinishReason | None, str] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.TOOL_CALLS: "tool_calls",
    FinishReason.CONTENT_FILTER: "content_filter",
    FinishReason.ERROR: "stop",
    None: "stop",
}


_NULL_LOGPROBS = b',"logprobs":null'


def _tail(finish: bytes, include_usage: bool) -> bytes:
    usage = b',"usage":null' if include_usage else b""
    return _NULL_LOGPROBS + b',"finish_reason":' + finish + b"}]" + usage + b"}\n\n"


# The end of every chunk after its delta, by include_usage: shared by all streams.
_OPEN_TAILS = {usage: _tail(b"null", usage) for usage in (False, True)}
_FINISH_TAILS: dict[bool, dict[FinishReason, bytes]] = {
    usage: {
        reason: _tail(b'"' + reason.value.encode() + b'"', usage)
        for reason in FinishReason
        if reason is not FinishReason.ERROR
    }
    for usage in (False, True)
}


def chat_completion_id(request_id: str) -> str:
    """The ``chatcmpl-...`` id of the answer to ``request_id``."""
    return f"chatcmpl-{request_id.removeprefix('req_')}"


def usage_json(usage: Usage) -> dict[str, Any]:
    """OpenAI's chat usage object, with the cached and reasoning subsets in their details."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def logprobs_json(records: tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object of a choice (or of a stream chunk's tokens)."""
    return {"content": [_logprob_json(record, top=True) for record in records], "refusal": None}


def _logprob_json(record: TokenLogprob, *, top: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "token": record.token,
        "logprob": record.logprob,
        "bytes": None if record.bytes is None else list(record.bytes),
    }
    if top:
        entry["top_logprobs"] = [_logprob_json(other, top=False) for other in record.top]
    return entry


def completion_json(
    result: ChatCompletion,
    *,
    request_id: str,
    model: str,
    created: int,
    include_reasoning: bool = False,
    logprobs: bool = False,
) -> bytes:
    """A non-streaming answer as a ``chat.completion`` object (see the module docstring);
    ``logprobs``: the request asked for them."""
    document: dict[str, Any] = {
        "id": chat_completion_id(request_id),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            _choice_json(choice, include_reasoning=include_reasoning, logprobs=logprobs)
            for choice in result.choices
        ],
    }
    if result.usage is not None:
        document["usage"] = usage_json(result.usage)
    return orjson.dumps(document)


def thinking_block_json(block: ReasoningBlock) -> dict[str, Any]:
    """A thinking block as ``thinking_blocks`` lists it (see the module docstring)."""
    if block.redacted:
        return {"type": "redacted_thinking", "data": block.redacted}
    return {"type": "thinking", "thinking": block.text, "signature": block.signature}


def _choice_json(choice: Choice, *, include_reasoning: bool, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        # OpenAI sends null content on a message that only calls tools.
        "content": None if not choice.text and choice.tool_calls else choice.text,
    }
    if include_reasoning and choice.reasoning:
        message["reasoning_content"] = choice.reasoning
    if include_reasoning and any(block.signed for block in choice.reasoning_blocks):
        message["thinking_blocks"] = [thinking_block_json(b) for b in choice.reasoning_blocks]
    if choice.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in choice.tool_calls
        ]
    return {
        "index": choice.index,
        "message": message,
        "finish_reason": _COMPLETION_FINISH[choice.finish_reason],
        "logprobs": logprobs_json(choice.logprobs) if logprobs else None,
    }


def _tool_delta(delta: ToolCallDelta) -> dict[str, Any]:
    function: dict[str, str] = {"arguments": delta.arguments}
    if delta.name is not None:
        function["name"] = delta.name
    if delta.id is None:
        return {"index": delta.index, "function": function}
    return {"index": delta.index, "id": delta.id, "type": "function", "function": function}


class ChunkRenderer:
    """Renders one streamed answer as OpenAI SSE events. Belongs to one stream.

    Call :meth:`first` once, :meth:`render` per chunk, then :meth:`final` on success or
    :meth:`error` on a failure after the first byte. Usage increments are summed, not
    sent per chunk; with ``include_usage`` the total goes out in the final chunk
    (``choices: []``), and every other chunk carries ``"usage": null``, as OpenAI does.
    ``choices`` is the request's ``n``: :meth:`first` opens that many.
    """

    __slots__ = (
        "_choices",
        "_envelope",
        "_heads",
        "_include_reasoning",
        "_include_usage",
        "_open",
        "_tails",
        "_usage",
    )

    def __init__(
        self,
        request_id: str,
        model: str,
        created: int,
        include_usage: bool,
        *,
        include_reasoning: bool = False,
        choices: int = 1,
    ) -> None:
        envelope = orjson.dumps(
            {
                "id": chat_completion_id(request_id),
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        # b'{"id":...,"model":"..."' : every chunk is this plus its choices (and usage).
        self._envelope = b"data: " + envelope[:-1]
        self._choices = choices
        self._heads = [self._head(index) for index in range(choices)]
        self._open, self._tails = _OPEN_TAILS[include_usage], _FINISH_TAILS[include_usage]
        self._include_usage = include_usage
        self._include_reasoning = include_reasoning
        self._usage: Usage | None = None

    @property
    def usage(self) -> Usage | None:
        """The usage summed so far; ``None`` while no chunk has reported any."""
        return self._usage

    def _head(self, choice: int) -> bytes:
        """The bytes of a chunk of ``choice`` before its delta."""
        return self._envelope + b',"choices":[{"index":%d,"delta":' % choice

    def first(self) -> bytes:
        """The opening events: for each choice, the assistant role with empty content."""
        opening = b'{"role":"assistant","content":""}' + self._open
        return b"".join(head + opening for head in self._heads)

    def render(self, chunk: TokenChunk) -> bytes:
        """The event for ``chunk``, or ``b""`` when it has nothing to send to the client."""
        if chunk.usage is not None:
            self._usage = chunk.usage if self._usage is None else self._usage + chunk.usage
        delta: dict[str, Any] = {}
        if chunk.text:
            delta["content"] = chunk.text
        if self._include_reasoning:
            if chunk.reasoning:
                delta["reasoning_content"] = chunk.reasoning
            if chunk.reasoning_signature:
                signed = ReasoningBlock(signature=chunk.reasoning_signature)
                delta["thinking_blocks"] = [thinking_block_json(signed)]
            if chunk.reasoning_redacted:
                redacted = ReasoningBlock(redacted=chunk.reasoning_redacted)
                delta["thinking_blocks"] = [thinking_block_json(redacted)]
        if chunk.tool_calls:
            delta["tool_calls"] = [_tool_delta(call) for call in chunk.tool_calls]
        finish = chunk.finish_reason
        tail = self._tails.get(finish) if finish is not None else None
        if tail is None:
            if not delta and not chunk.logprobs:
                return b""
            tail = self._open
        if chunk.logprobs:
            records = orjson.dumps(logprobs_json(chunk.logprobs))
            tail = b',"logprobs":' + records + tail[len(_NULL_LOGPROBS) :]
        choice = chunk.choice
        head = self._heads[choice] if choice < self._choices else self._head(choice)
        return head + orjson.dumps(delta) + tail

    def final(self) -> bytes:
        """The closing events: the usage chunk (with ``include_usage``), then ``[DONE]``."""
        if not self._include_usage:
            return _DONE
        usage = b"null" if self._usage is None else orjson.dumps(usage_json(self._usage))
        return self._envelope + b',"choices":[],"usage":' + usage + b"}\n\n" + _DONE

    def error(self, error: InferenceError) -> bytes:
        """OpenAI's in-stream error event for ``error``, then ``[DONE]``."""
        return b"data: " + orjson.dumps(error.to_openai_error()) + b"\n\n" + _DONE


def error_json(error: InferenceError) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body)`` of the JSON error answer for ``error``.

    Status and headers are :func:`error_status`'s; the body is ``application/json``.
    """
    status, headers = error_status(error)
    return status, headers, orjson.dumps(error.to_openai_error())


def error_status(error: InferenceError) -> tuple[int, dict[str, str]]:
    """The HTTP status and headers of the error answer for ``error``, in any wire format.

    For a 429 or 503, the headers say when to retry: ``retry-after`` (whole seconds,
    rounded up) when the error carries a finite ``retry_after``. When retrying the same
    request cannot succeed (:func:`retry_is_futile`), there is no ``retry-after`` but
    ``x-should-retry: false``, which the official OpenAI and Anthropic SDKs obey: they do
    not retry it on their own. Other statuses get neither.
    """
    headers: dict[str, str] = {}
    status = error.http_status
    if status not in _RETRY_AFTER_STATUSES:
        return status, headers
    retry_after = error.retry_after
    if retry_is_futile(error):
        headers["x-should-retry"] = "false"
    elif retry_after is not None and math.isfinite(retry_after):
        headers["retry-after"] = str(max(0, math.ceil(retry_after)))
    return status, headers


def retry_is_futile(error: InferenceError) -> bool:
    """Whether retrying the same request later cannot succeed: its ``retry_after`` is
    infinite (a request whose own cost passes a budget or a rate limit; see
    :class:`~rakka_inference.core.errors.InferenceError`), or the upstream's billing quota
    is spent and it gave no time (an operator has to act)."""
    retry_after = error.retry_after
    if retry_after is not None:
        return retry_after == math.inf
    return isinstance(error, QuotaExhausted)


def embeddings_json(
    result: EmbeddingResult,
    *,
    model: str,
    encoding_format: EncodingFormat = "float",
) -> bytes:
    """An embeddings answer: a ``list`` of ``embedding`` objects in input order.

    ``base64`` encodes each vector as little-endian float32, as OpenAI does.
    """
    data: list[dict[str, Any]] = []
    for index, vector in enumerate(result.vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = result.usage.input_tokens
    return orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
