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
  arguments. When the request thinks, an assistant turn begins with its signed thinking
  (``thinking`` blocks with their signatures, ``redacted_thinking`` blocks), unchanged, as
  a tool loop with extended thinking requires; unsigned thinking (another provider's) is
  left out.
- Thinking: a thinking budget (``/v1/messages``' ``thinking.budget_tokens``) is sent as
  ``thinking: {type: enabled, budget_tokens}``; ``reasoning_effort`` becomes a budget (see
  :mod:`rakka_inference.providers.anthropic_request`).
- Tools become ``{name, description, input_schema}`` (plus ``strict: true`` when asked);
  ``tool_choice`` auto/required/named/none becomes ``auto``/``any``/``tool``/``none``, and
  is sent only with tools (without them, auto and none mean what the API does anyway).
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

Responses: ``text`` blocks are text, ``thinking`` blocks are reasoning (their signatures
as ``reasoning_signature``, streamed as ``signature_delta``), ``redacted_thinking`` blocks
are ``reasoning_redacted``, ``tool_use`` blocks are tool calls numbered by their position
among the tool blocks (so parallel calls get 0, 1, …) with the JSON text of ``input`` as
arguments; server-tool blocks are skipped. ``stop_reason``: ``end_turn``, ``stop_sequence`` and
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

from typing import Any

import orjson

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.messages import ChatRequest
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import AnthropicConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.providers.anthropic_errors import refine_error
from rakka_inference.providers.anthropic_request import MAX_TEMPERATURE, messages_body
from rakka_inference.providers.anthropic_response import (
    AnthropicStreamParser,
    anthropic_usage,
    parse_message,
)
from rakka_inference.providers.base import AdapterState, count_field
from rakka_inference.wire.http import HttpRequest

__all__ = ["MAX_TEMPERATURE", "AnthropicAdapter", "AnthropicStreamParser", "anthropic_usage"]

DEFAULT_ENDPOINT = "https://api.anthropic.com"
_COUNTED = ("model", "messages", "system", "tools", "tool_choice", "thinking")
"""What of a Messages body ``count_tokens`` takes."""


class AnthropicAdapter(AdapterState[AnthropicConfig]):
    """The Anthropic Messages wire format for one deployment's model."""

    def __init__(
        self,
        config: AnthropicConfig,
        model: str,
        *,
        provider: str | None = None,
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(
            config, model, provider=provider, price_override=price_override, prices=prices
        )
        base = (config.endpoint or DEFAULT_ENDPOINT).rstrip("/")
        self._url = f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"
        self._static_headers = {
            "anthropic-version": config.anthropic_version,
            "content-type": "application/json",
        }

    @property
    def endpoint(self) -> str:
        return self._url

    # ------------------------------------------------------------------ request

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        headers = dict(self._static_headers)
        headers["x-api-key"] = credential.expose()
        body = orjson.dumps(self.request_body(request))
        return HttpRequest("POST", self._url, headers, body)

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (exposed for tests)."""
        return messages_body(request, self.model, self.config.default_max_output_tokens)

    def build_count_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        """``POST /v1/messages/count_tokens`` with ``request``'s prompt."""
        headers = dict(self._static_headers)
        headers["x-api-key"] = credential.expose()
        body = self.request_body(request)
        counted = {key: body[key] for key in _COUNTED if key in body}
        return HttpRequest("POST", f"{self._url}/count_tokens", headers, orjson.dumps(counted))

    def parse_count_response(self, body: bytes) -> int:
        return count_field(body, "input_tokens", self._provider)

    # ------------------------------------------------------------------ response

    def parse_response(self, body: bytes) -> list[TokenChunk]:
        return parse_message(body, self._provider)

    def stream_parser(self, choices: int = 1) -> AnthropicStreamParser:
        return AnthropicStreamParser(self._provider)  # one choice: n > 1 is refused

    # ------------------------------------------------------------------ errors

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError:
        return refine_error(error, body)
