"""OpenAI chat completions, Azure OpenAI, and any OpenAI-compatible endpoint.

Request: ``POST {endpoint}/chat/completions`` with a bearer key (plus the optional
``OpenAI-Organization`` / ``OpenAI-Project`` headers). Azure: ``POST
https://{resource}.openai.azure.com/openai/deployments/{deployment}/chat/completions
?api-version=...`` with the ``api-key`` header, or an Entra ID bearer token when
``azure_ad_token`` is configured.

Streams ask for ``stream_options.include_usage`` so the usage in the final chunk is exact.
The stream ends with ``data: [DONE]``.

``n``, ``logprobs`` and ``top_logprobs`` are forwarded as they are; every choice of the
answer (unary or streamed) becomes chunks of its ``index``, with the log probabilities of
its tokens (:mod:`rakka_inference.providers.openai_logprobs`).

Error refinement on top of the generic HTTP classification: ``context_length_exceeded``
→ ContextLengthExceeded; ``content_filter`` (and Azure's ``ResponsibleAIPolicyViolation``
inner error) → ContentFiltered; ``insufficient_quota`` → QuotaExhausted, which is not
retried (more attempts cannot buy credit).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.errors import (
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    InferenceError,
    ProtocolError,
    QuotaExhausted,
    ServerError,
)
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    ContentPart,
    DocumentPart,
    EmbeddingRequest,
    EmbeddingResult,
    TextPart,
)
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import OpenAIConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import AdapterState, load_json_object
from rakka_inference.providers.openai_embed import embedding_body, parse_embeddings
from rakka_inference.providers.openai_logprobs import choice_index, choice_logprobs
from rakka_inference.wire.http import HttpRequest
from rakka_inference.wire.redact import sanitize_upstream_message
from rakka_inference.wire.sse import SseEvent

__all__ = ["OpenAIAdapter", "OpenAIStreamParser", "openai_usage"]

log = logging.getLogger("rakka_inference.providers.openai")

DEFAULT_ENDPOINT = "https://api.openai.com/v1"

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


class OpenAIAdapter(AdapterState[OpenAIConfig]):
    """The OpenAI wire format for one deployment's model."""

    def __init__(
        self,
        config: OpenAIConfig,
        model: str,
        *,
        provider: str | None = None,
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
        accepts_top_k: bool = False,
    ) -> None:
        super().__init__(
            config, model, provider=provider, price_override=price_override, prices=prices
        )
        self.accepts_top_k = accepts_top_k
        """Whether the upstream takes ``top_k`` (an engine server or a LiteLLM proxy does;
        OpenAI and Azure do not)."""
        self._azure = config.variant == "azure"
        if self._azure:
            base = config.endpoint or f"https://{config.resource}.openai.azure.com"
            prefix = f"{base.rstrip('/')}/openai/deployments/{config.deployment}"
            query = f"?api-version={config.api_version}"
            self._url = f"{prefix}/chat/completions{query}"
            self._embeddings_url = f"{prefix}/embeddings{query}"
        else:
            prefix = (config.endpoint or DEFAULT_ENDPOINT).rstrip("/")
            self._url = f"{prefix}/chat/completions"
            self._embeddings_url = f"{prefix}/embeddings"
        self._static_headers = {"content-type": "application/json"}
        if not self._azure:
            if config.organization:
                self._static_headers["openai-organization"] = config.organization
            if config.project:
                self._static_headers["openai-project"] = config.project

    @property
    def endpoint(self) -> str:
        return self._url.split("?", 1)[0]

    # ------------------------------------------------------------------ request

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        body = orjson.dumps(self.request_body(request))
        return HttpRequest("POST", self._url, self._headers(credential), body)

    def build_embedding_request(self, request: EmbeddingRequest, credential: Secret) -> HttpRequest:
        body = orjson.dumps(embedding_body(request, self.model))
        return HttpRequest("POST", self._embeddings_url, self._headers(credential), body)

    def _headers(self, credential: Secret) -> dict[str, str]:
        headers = dict(self._static_headers)
        if self._azure and self.config.azure_ad_token is None:
            headers["api-key"] = credential.expose()
        else:
            headers["authorization"] = f"Bearer {credential.expose()}"
        return headers

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (exposed for tests and the LiteLLM adapter)."""
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            # Prior thinking has no place in the chat format: a turn of thinking alone goes.
            "messages": [
                _message(m, i) for i, m in enumerate(request.messages) if not m.thought_only
            ],
        }
        if sampling.temperature is not None:
            body["temperature"] = sampling.temperature
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.top_k is not None:
            if not self.accepts_top_k:
                raise BadRequest(
                    f"top_k is not a parameter of {self.provider}'s API", param="top_k"
                )
            body["top_k"] = sampling.top_k
        if sampling.max_tokens is not None:
            # OpenAI's own API wants the newer name (reasoning models refuse max_tokens);
            # Azure and OpenAI-compatible servers all understand the older one.
            name = "max_tokens" if self._azure or self.config.endpoint else "max_completion_tokens"
            body[name] = sampling.max_tokens
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.n != 1:
            body["n"] = sampling.n
        if sampling.logprobs:
            body["logprobs"] = True
        if sampling.top_logprobs is not None:
            body["top_logprobs"] = sampling.top_logprobs
        if sampling.effort is not None:
            body["reasoning_effort"] = sampling.effort
        if sampling.presence_penalty is not None:
            body["presence_penalty"] = sampling.presence_penalty
        if sampling.frequency_penalty is not None:
            body["frequency_penalty"] = sampling.frequency_penalty
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": dict(tool.parameters),
                        **({"strict": tool.strict} if tool.strict is not None else {}),
                    },
                }
                for tool in request.tools
            ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.tools and request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
        response_format = request.response_format
        if response_format is not None and response_format.type != "text":
            if response_format.type == "json_object":
                body["response_format"] = {"type": "json_object"}
            else:
                schema: dict[str, Any] = {
                    "name": response_format.schema_name,
                    "schema": dict(response_format.json_schema or {}),
                }
                if response_format.strict is not None:
                    schema["strict"] = response_format.strict
                body["response_format"] = {"type": "json_schema", "json_schema": schema}
        if request.user is not None:
            body["user"] = request.user
        if request.metadata:
            body["metadata"] = dict(request.metadata)
        body.update(request.openai_options)
        if request.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    # ------------------------------------------------------------------ response

    def parse_response(self, body: bytes) -> list[TokenChunk]:
        document = load_json_object(body, self._provider)
        choices = document.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ProtocolError("response has no choices", provider=self._provider)
        usage = document.get("usage")
        chunks = [self._choice_chunk(choice) for choice in choices]
        if isinstance(usage, dict):  # the request's, carried by the first choice's chunk
            chunks[0] = dataclasses.replace(chunks[0], usage=openai_usage(usage))
        return chunks

    def _choice_chunk(self, choice: object) -> TokenChunk:
        """One choice of a unary answer as one chunk."""
        if not isinstance(choice, dict):
            raise ProtocolError("a choice is not an object", provider=self._provider)
        message = choice.get("message") or {}
        text = message.get("content") or message.get("refusal") or ""
        reasoning = message.get("reasoning_content") or ""
        calls = tuple(
            ToolCallDelta(
                index=index,
                id=call.get("id"),
                name=(call.get("function") or {}).get("name"),
                arguments=(call.get("function") or {}).get("arguments") or "",
            )
            for index, call in enumerate(message.get("tool_calls") or ())
        )
        return TokenChunk(
            text=text,
            reasoning=reasoning,
            tool_calls=calls,
            finish_reason=_finish(choice.get("finish_reason")),
            choice=choice_index(choice, self._provider),
            logprobs=choice_logprobs(choice, self._provider),
        )

    def parse_embedding_response(self, body: bytes, request: EmbeddingRequest) -> EmbeddingResult:
        return parse_embeddings(body, request, self._provider)

    def stream_parser(self, choices: int = 1) -> OpenAIStreamParser:
        return OpenAIStreamParser(self._provider)

    # ------------------------------------------------------------------ errors

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError:
        detail = _error_detail(body)
        if detail is None:
            return error
        code = str(detail.get("code") or "")
        kind = str(detail.get("type") or "")
        inner = detail.get("innererror")
        inner_code = str(inner.get("code") or "") if isinstance(inner, dict) else ""
        message = error.message
        common: dict[str, Any] = {
            "provider": error.provider,
            "upstream_status": error.upstream_status,
        }
        if code == "context_length_exceeded":
            return ContextLengthExceeded(message, param="messages", **common)
        if (
            code == "content_filter"
            or inner_code == "ResponsibleAIPolicyViolation"
            or code == "content_policy_violation"
        ):
            return ContentFiltered(message, **common)
        if code == "insufficient_quota" or kind == "insufficient_quota":
            return QuotaExhausted(message, **common)
        return error


class OpenAIStreamParser:
    """Chat completion chunks to TokenChunks; ``data: [DONE]`` ends the stream."""

    __slots__ = ("_provider", "done")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self.done = False

    def feed(self, event: SseEvent) -> list[TokenChunk]:
        raw = event.raw
        if raw == b"[DONE]":
            self.done = True
            return []
        document = load_json_object(raw, self._provider)
        error = document.get("error")
        if isinstance(error, dict):
            # An error in the middle of a stream (OpenAI sends these for server trouble).
            # Its message may echo our request (a key fragment, the endpoint): cleaned first.
            message = sanitize_upstream_message(str(error.get("message") or "unknown error"))
            raise ServerError(f"stream error: {message}", provider=self._provider)
        chunks: list[TokenChunk] = []
        for choice in document.get("choices") or ():
            delta = choice.get("delta") or {}
            calls = delta.get("tool_calls")
            chunk = TokenChunk(
                text=delta.get("content") or delta.get("refusal") or "",
                reasoning=delta.get("reasoning_content") or "",
                tool_calls=tuple(_tool_delta(call) for call in calls) if calls else (),
                finish_reason=_finish(choice.get("finish_reason")),
                choice=choice_index(choice, self._provider),
                logprobs=choice_logprobs(choice, self._provider),
            )
            if not chunk.is_empty:
                chunks.append(chunk)
        usage = document.get("usage")
        if isinstance(usage, dict):
            chunks.append(TokenChunk(usage=openai_usage(usage)))
        return chunks


# ---------------------------------------------------------------------- helpers


def openai_usage(usage: Mapping[str, Any]) -> Usage:
    """OpenAI's usage object (also LiteLLM's and most compatible servers')."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _error_detail(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        return document["error"]  # type: ignore[no-any-return]
    return None


def _finish(value: object) -> FinishReason | None:
    if value is None:
        return None
    return _FINISH_REASONS.get(str(value), FinishReason.STOP)


def _tool_delta(call: Mapping[str, Any]) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        index=int(call.get("index", 0)),
        id=call.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments") or "",
    )


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode.value


def _message(message: ChatMessage, position: int) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role.value}
    content = message.content
    if content is None or isinstance(content, str):
        out["content"] = content
    else:
        param = f"messages[{position}].content"
        out["content"] = [_part(part, f"{param}[{i}]") for i, part in enumerate(content)]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _part(part: ContentPart, param: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, DocumentPart):
        # The chat format takes a file inline only; the Responses API's file_url has no
        # chat equivalent.
        if not part.is_data_url:
            raise BadRequest(
                "OpenAI-format chat takes documents inline (file_data), not by URL",
                param=f"{param}.file",
            )
        part.base64_data(param=f"{param}.file.file_data")
        file = {"filename": part.filename or "document.pdf", "file_data": part.url}
        return {"type": "file", "file": file}
    image: dict[str, Any] = {"url": part.url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}
