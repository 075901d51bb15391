"""Anthropic's Messages API.

Request: ``POST {endpoint}/v1/messages`` (``https://api.anthropic.com`` by default; an
endpoint that already ends in ``/v1`` gets only ``/messages``) with the ``x-api-key`` and
``anthropic-version`` headers.

Translation from the OpenAI-shaped :class:`~rakka_inference.core.messages.ChatRequest`:

- System and developer messages, wherever they stand, become the top-level ``system``
  *string*: their texts in order, joined by a blank line. A string is the form every
  Anthropic-compatible endpoint accepts, and we send no per-block ``cache_control`` that
  would need the list form.
- The conversation must alternate user and assistant turns, so consecutive messages that
  map to the same role are merged into one message, their content blocks concatenated. A
  ``tool`` message becomes a user ``tool_result`` block, so the answers to parallel tool
  calls (and a user message after them) form one user turn. Within a user turn the
  ``tool_result`` blocks are moved first, as the API requires. Content is always a list of
  blocks; empty text is dropped (the API rejects empty text blocks), and a message left with
  nothing is dropped.
- Images: base64 ``data:`` URLs become ``base64`` sources (JPEG, PNG, GIF or WebP, the
  types the API takes), ``http(s)`` URLs become ``url`` sources; ``detail`` has no
  equivalent and is ignored.
- Assistant ``tool_calls`` become ``tool_use`` blocks whose ``input`` is the parsed JSON
  arguments. Tools become ``{name, description, input_schema}`` (plus ``strict: true``
  when asked); ``tool_choice`` auto/required/named/none becomes ``auto``/``any``/
  ``tool``/``none``, and is sent only with tools (without them, auto and none mean what
  the API does anyway).
- ``max_tokens`` is required: the request's, else ``max_tokens_default``. ``stop`` becomes
  ``stop_sequences``, ``user`` becomes ``metadata.user_id``. Anthropic's temperature range
  is 0 to 1, so a higher one is refused here (param ``temperature``) rather than silently
  clamped. Some newer models refuse ``temperature`` together with ``top_p``; both are
  passed and the upstream decides.
- Dropped, having no Anthropic equivalent: ``seed``, ``presence_penalty``,
  ``frequency_penalty``. ``n`` other than 1 is refused.
- ``response_format``: ``json_schema`` becomes ``output_config.format`` (Anthropic's
  structured outputs; models without them answer 400, surfaced as BadRequest).
  ``json_object`` ("any JSON") has no equivalent and is refused with BadRequest.

Responses: ``text`` blocks are text, ``thinking`` blocks are reasoning, ``tool_use`` blocks
are tool calls numbered by their position among the tool blocks (so parallel calls get
0, 1, …) with the JSON text of ``input`` as arguments; ``redacted_thinking`` (encrypted)
and server-tool blocks are skipped. ``stop_reason``: ``end_turn``, ``stop_sequence`` and
``pause_turn`` (a server-tool turn paused; we send no server tools) → stop; ``max_tokens``
and ``model_context_window_exceeded`` → length; ``tool_use`` → tool_calls; ``refusal`` →
content_filter. Usage follows :mod:`rakka_inference.core.usage`: ``input_tokens`` is
Anthropic's ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``, of
which ``cache_read_input_tokens`` are cached.

Streams (:class:`AnthropicStreamParser`): ``message_start`` carries the prompt's usage and
an initial output count; ``message_delta`` carries the stop reason and *running totals*
(always ``output_tokens``, in newer API versions the input and cache counts too). Every
report goes through one cumulative :class:`~rakka_inference.core.usage.UsageAccumulator`,
so what is emitted are increments that sum to the final totals exactly. ``message_stop``
ends the stream; ``ping`` is ignored; an ``error`` event raises its typed error.

Errors (``{"type": "error", "error": {"type", "message"}}``), over the generic HTTP
classification: ``overloaded_error`` → Overloaded, ``rate_limit_error`` → RateLimited,
``api_error`` and ``timeout_error`` → ServerError, ``authentication_error`` →
Unauthorized, ``permission_error`` → Forbidden, ``not_found_error`` → UpstreamNotFound,
``request_too_large`` → PayloadTooLarge, ``billing_error`` → QuotaExhausted.
``invalid_request_error`` is also used for other 4xx statuses, so there the status decides.
A too-long prompt is an ``invalid_request_error`` told apart only by its message text,
which we do not classify by: it stays BadRequest.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.deployment import AnthropicConfig, ModelPrice, RemoteRuntimeConfig
from rakka_inference.core.errors import (
    BadRequest,
    Forbidden,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, ImagePart, Role, TextPart
from rakka_inference.core.pricing import PriceTable, resolve_price
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode
from rakka_inference.core.usage import Usage, UsageAccumulator, UsageMode
from rakka_inference.providers.base import load_json_object
from rakka_inference.wire.classify import MAX_UPSTREAM_MESSAGE_CHARS
from rakka_inference.wire.http import HttpRequest
from rakka_inference.wire.sse import SseEvent

__all__ = ["AnthropicAdapter", "AnthropicStreamParser", "anthropic_usage"]

log = logging.getLogger("rakka_inference.providers.anthropic")

DEFAULT_ENDPOINT = "https://api.anthropic.com"
MAX_TEMPERATURE = 1.0

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

_ERROR_TYPES: Mapping[str, type[InferenceError]] = {
    "invalid_request_error": BadRequest,
    "authentication_error": Unauthorized,
    "permission_error": Forbidden,
    "not_found_error": UpstreamNotFound,
    "request_too_large": PayloadTooLarge,
    "billing_error": QuotaExhausted,
    "rate_limit_error": RateLimited,
    "api_error": ServerError,
    "timeout_error": ServerError,
    "overloaded_error": Overloaded,
}

_TOOL_CHOICES: Mapping[ToolChoiceMode, str] = {
    ToolChoiceMode.AUTO: "auto",
    ToolChoiceMode.REQUIRED: "any",
    ToolChoiceMode.NONE: "none",
}


class AnthropicAdapter:
    """The Anthropic Messages wire format for one deployment's model."""

    def __init__(
        self,
        config: AnthropicConfig,
        model: str,
        *,
        provider: str = "anthropic",
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self._provider = provider
        self._price = resolve_price(model, price_override, prices)
        base = (config.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._static_headers = {
            "anthropic-version": config.anthropic_version,
            "content-type": "application/json",
        }

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def endpoint(self) -> str:
        return self._url

    @property
    def runtime_config(self) -> RemoteRuntimeConfig:
        return self.config

    def price(self) -> ModelPrice | None:
        return self._price

    # ------------------------------------------------------------------ request

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        headers = dict(self._static_headers)
        headers["x-api-key"] = credential.expose()
        body = orjson.dumps(self.request_body(request))
        return HttpRequest("POST", self._url, headers, body)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (exposed for tests)."""
        sampling = request.sampling
        if sampling.n != 1:
            raise BadRequest("only n = 1 is supported", param="n")
        if sampling.temperature is not None and sampling.temperature > MAX_TEMPERATURE:
            raise BadRequest(
                f"temperature must be between 0 and {MAX_TEMPERATURE:g} for Anthropic models",
                param="temperature",
            )
        system, messages = _conversation(request.messages)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_output_tokens(self.config.max_tokens_default),
            "messages": messages,
        }
        if system:
            body["system"] = system
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.stop:
            body["stop_sequences"] = list(sampling.stop)
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": dict(tool.parameters),
                    **({"strict": True} if tool.strict else {}),
                }
                for tool in request.tools
            ]
            if request.tool_choice is not None:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        response_format = request.response_format
        if response_format is not None and response_format.type != "text":
            if response_format.type == "json_object":
                raise BadRequest(
                    "response_format json_object is not supported by Anthropic models; "
                    "use json_schema with a schema",
                    param="response_format",
                )
            body["output_config"] = {
                "format": {"type": "json_schema", "schema": dict(response_format.json_schema or {})}
            }
        if request.user is not None:
            body["metadata"] = {"user_id": request.user}
        if request.stream:
            body["stream"] = True
        return body

    # ------------------------------------------------------------------ response

    def parse_response(self, body: bytes) -> list[TokenChunk]:
        document = load_json_object(body, self._provider)
        if document.get("type") == "error":
            raise _error_document(document, self._provider)
        content = document.get("content")
        if not isinstance(content, list):
            raise ProtocolError("response has no content list", provider=self._provider)
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCallDelta] = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                text.append(str(block.get("text") or ""))
            elif kind == "thinking":
                reasoning.append(str(block.get("thinking") or ""))
            elif kind == "tool_use":
                calls.append(
                    ToolCallDelta(
                        index=len(calls),
                        id=_required_text(block, "id", self._provider),
                        name=_required_text(block, "name", self._provider),
                        arguments=orjson.dumps(block.get("input") or {}).decode(),
                    )
                )
            else:
                log.debug("skipping Anthropic content block of type %r", kind)
        usage = document.get("usage")
        return [
            TokenChunk(
                text="".join(text),
                reasoning="".join(reasoning),
                tool_calls=tuple(calls),
                usage=(
                    anthropic_usage(usage, provider=self._provider)
                    if isinstance(usage, dict)
                    else None
                ),
                finish_reason=_finish(document.get("stop_reason")),
            )
        ]

    def stream_parser(self) -> AnthropicStreamParser:
        return AnthropicStreamParser(self._provider)

    # ------------------------------------------------------------------ errors

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError:
        kind = _ERROR_TYPES.get(_error_type(body) or "")
        # invalid_request_error also covers 4xx statuses the API lists no type for: the
        # status-based class is the sharper one there.
        if kind is None or kind is BadRequest or isinstance(error, kind):
            return error
        return kind(
            error.message,
            provider=error.provider,
            retry_after=error.retry_after,
            param=error.param if issubclass(kind, BadRequest) else None,
            upstream_status=error.upstream_status,
        )


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
                raise _error_document(document, self._provider)
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
        # leave it so.
        chunk = TokenChunk(
            text=str(block.get("text") or "") if kind == "text" else "",
            reasoning=str(block.get("thinking") or "") if kind == "thinking" else "",
        )
        if kind not in {"text", "thinking", "redacted_thinking"}:
            log.debug("skipping Anthropic content block of type %r", kind)
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
        if kind != "signature_delta":
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


# ---------------------------------------------------------------------- helpers


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


def _error_type(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def _error_document(document: Mapping[str, Any], provider: str) -> InferenceError:
    """The typed error for an ``error`` event (or error document) with HTTP status 200."""
    error = document.get("error")
    detail = error if isinstance(error, dict) else {}
    kind = str(detail.get("type") or "unknown_error")
    upstream = str(detail.get("message") or "")
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in upstream).split())
    cleaned = cleaned[:MAX_UPSTREAM_MESSAGE_CHARS]
    message = f"{provider} stream error {kind}" + (f": {cleaned}" if cleaned else "")
    # A type we do not know, in a stream that had started, is upstream trouble.
    return _ERROR_TYPES.get(kind, ServerError)(message, provider=provider)


def _finish(value: object) -> FinishReason | None:
    if value is None:
        return None
    reason = _FINISH_REASONS.get(str(value))
    if reason is None:
        log.debug("unknown Anthropic stop_reason %r, read as stop", value)
        return FinishReason.STOP
    return reason


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "tool", "name": choice.name}
    return {"type": _TOOL_CHOICES[choice.mode]}


def _conversation(
    messages: tuple[ChatMessage, ...],
) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)``: instructions hoisted, turns merged to alternate."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.role in (Role.SYSTEM, Role.DEVELOPER):
            if message.text:
                system.append(message.text)
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        blocks = _blocks(message, position)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Stable: tool results first, in order, then the rest in order.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), turns


def _blocks(message: ChatMessage, position: int) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if isinstance(message.content, str):
            if message.content:
                result["content"] = message.content
        else:
            texts = _text_blocks(message)
            if texts:
                result["content"] = texts
        return [result]
    blocks: list[dict[str, Any]] = []
    for part_index, part in enumerate(message.parts):
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        else:
            param = f"messages[{position}].content[{part_index}].image_url"
            blocks.append(_image(part, param))
    for call_index, call in enumerate(message.tool_calls):
        param = f"messages[{position}].tool_calls[{call_index}].function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": call.parsed_arguments(param=param),
            }
        )
    return blocks


def _text_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]


def _image(part: ImagePart, param: str) -> dict[str, Any]:
    if part.is_data_url:
        media_type, data = part.parse_data_url(param=param)
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise BadRequest(
                f"image type {media_type!r} is not supported; use JPEG, PNG, GIF or WebP",
                param=param,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if part.url[:8].lower() == "https://" or part.url[:7].lower() == "http://":
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    raise BadRequest("image URL must be http(s) or a base64 data: URL", param=param)
