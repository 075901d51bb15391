"""Google Gemini's ``generateContent`` API, through AI Studio or Vertex AI.

Requests (``:streamGenerateContent?alt=sse`` instead of ``:generateContent`` for streams):

- AI Studio: ``POST {endpoint}/v1beta/models/{model}:generateContent`` with the key in the
  ``x-goog-api-key`` header, never in the URL (URLs get logged). ``endpoint`` defaults to
  ``https://generativelanguage.googleapis.com``; one that already ends in ``/v1beta`` or
  ``/v1`` gets no second version.
- Vertex AI: ``POST {endpoint}/v1/projects/{project}/locations/{region}/publishers/google
  /models/{model}:generateContent`` with ``Authorization: Bearer {token}``, the OAuth2 access
  token the session's credential provider holds. ``endpoint`` defaults to the regional host
  ``https://{region}-aiplatform.googleapis.com``, or ``https://aiplatform.googleapis.com``
  for ``region = "global"`` (where some models are served only).

One routing prefix (``models/`` or ``google/``) is dropped from the model name in the URL.

Translation from the OpenAI-shaped :class:`~rakka_inference.core.messages.ChatRequest`:

- System and developer messages, wherever they stand, become ``systemInstruction``: one
  text part, their texts joined by a blank line.
- Assistant messages become ``model`` contents, everything else ``user`` contents;
  consecutive contents with the same role are merged (so the answers to parallel calls form
  one turn, as the API wants). Empty text is dropped, and so is a content left empty.
- Images: a base64 ``data:`` URL becomes ``inlineData {mimeType, data}`` with the URL's
  media type (the upstream decides which it accepts); an ``http(s)`` URL becomes
  ``fileData {mimeType, fileUri}``, and Vertex also takes ``gs://`` URIs. ``fileData``
  needs a real MIME type, which we read from the path's extension (png, jpg/jpeg, webp,
  gif, heic, heif); a URL without one of those (a Files API URI, a signed URL without an
  extension) is refused with BadRequest naming the part, rather than guessed.
- Assistant ``tool_calls`` become ``functionCall {name, args}`` parts. Gemini 3 models
  refuse history whose function calls lack the ``thoughtSignature`` they were returned
  with, which an OpenAI-shaped history cannot carry; the first call of each assistant
  message gets the sentinel ``skip_thought_signature_validator`` that Google documents for
  history from elsewhere. A tool message becomes a ``functionResponse {name, response}``
  part; OpenAI tool messages carry only the call id, so the name is that of the earlier
  call with that id, and the response is ``{"output": text}`` (the key the API reference
  gives for a function's output).
- Tools become one ``functionDeclarations`` list. Gemini takes an OpenAPI subset of JSON
  Schema in ``parameters`` and ``responseSchema``, and rejects keys it does not know, so
  two adjustments are made, recursively through the schema structure: ``$schema`` and
  ``additionalProperties`` (always sent by OpenAI strict-mode clients) are removed, and a
  ``type`` list of one type (plus ``"null"``) becomes that type (with ``nullable: true``).
  Anything else is passed as is, and the upstream's 400 names what it refused.
- ``parallel_tool_calls = false`` is refused (400): Gemini has no such switch.
- ``reasoning_effort`` becomes ``generationConfig.thinkingConfig``: its
  :data:`~rakka_inference.core.messages.THINKING_BUDGETS` budget, thoughts included; a
  thinking budget (Anthropic's ``thinking.budget_tokens``) is sent as it is. Prior thinking
  in the conversation is left out: Gemini takes none back.
- ``tool_choice`` becomes ``toolConfig.functionCallingConfig.mode`` AUTO / NONE / ANY
  (named: ANY with ``allowedFunctionNames``), sent only with tools.
- ``generationConfig``: ``temperature``, ``topP``, ``maxOutputTokens``,
  ``stopSequences``, ``seed``, ``presencePenalty``, ``frequencyPenalty`` and
  ``candidateCount`` (``n``). ``logprobs`` sets ``responseLogprobs``, and ``top_logprobs``
  (above 0) ``logprobs``. ``json_object`` sets
  ``responseMimeType: application/json``; ``json_schema`` adds ``responseSchema``.
- ``safetySettings`` are passed through unchanged from ``runtime_config.safety_settings``
  (the registry hands them to the adapter's ``safety_settings``).
- Dropped, having no Gemini equivalent: ``user``, message ``name``, image ``detail``.

Responses: every candidate is read, as the choice of its ``index``. Text parts are text,
parts with ``thought: true`` are reasoning, ``functionCall`` parts are tool calls, numbered
in order per candidate (parallel calls get 0, 1, …), with the JSON text of ``args`` as
arguments and the upstream's ``id`` if it sent one, else a minted ``call_`` + 24 hex digits
(random, so ids stay unique across a conversation: tool results are matched to calls by
id). Other parts are skipped. ``finishReason``: STOP → stop, MAX_TOKENS → length, and
tool_calls whenever a function call was returned; SAFETY, RECITATION, BLOCKLIST,
PROHIBITED_CONTENT, SPII and the IMAGE_* filters raise ContentFiltered, and so does
``promptFeedback.blockReason`` (a prompt refused with HTTP 200 and no candidates). Other
reasons (OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, …) are read as stop. Usage:
``promptTokenCount`` (plus ``toolUsePromptTokenCount``) is input, of which
``cachedContentTokenCount`` is cached; ``candidatesTokenCount + thoughtsTokenCount`` is
output, of which ``thoughtsTokenCount`` is reasoning. ``logprobsResult`` gives each
generated token's log probability (``chosenCandidates``) and, step by step, its likeliest
alternatives (``topCandidates``); their bytes are the UTF-8 of the token's text. A content
filter that stops any one candidate fails the whole answer.

Streams (:class:`GeminiStreamParser`): every SSE event is a whole GenerateContentResponse,
and its ``usageMetadata`` is a *running total*: the counts are merged field by field
(maximum, so a repeated or partial report adds nothing) and only the increments are
emitted. There is no end marker: ``done`` turns true once every candidate asked for (``n``)
has sent its ``finishReason``, which Gemini sends only on a candidate's last event, the
last one with the final usage (the engine stops reading once ``done`` is true). A stream
that ends before that is truncated, and the engine reports it so. The usage of an answer
that ends in a content filter is lost with the raised error. An ``error`` object inside a
stream (or a 200 body) raises its typed error.

Errors (``{"error": {"code", "message", "status", "details"}}``), over the generic HTTP
classification, by ``status``: RESOURCE_EXHAUSTED → RateLimited, UNAVAILABLE and INTERNAL
→ ServerError, INVALID_ARGUMENT → BadRequest, PERMISSION_DENIED → Forbidden,
UNAUTHENTICATED → Unauthorized, NOT_FOUND → UpstreamNotFound, DEADLINE_EXCEEDED → Timeout
(first byte: the upstream gave up, as with a 408). An ``ErrorInfo`` detail with reason
``API_KEY_INVALID`` (a 400 on AI Studio) is Unauthorized, so the session re-reads the key.
A ``RetryInfo.retryDelay`` fills ``retry_after`` when the headers gave none.

Embeddings (``batchEmbedContents`` on AI Studio, ``predict`` on Vertex, same URL base and
credential header) are set out in :mod:`rakka_inference.providers.gemini_embed`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import orjson

from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    ConfigIssue,
    InferenceError,
    ProtocolError,
)
from rakka_inference.core.messages import (
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResult,
    refuse_openai_options,
)
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import GeminiConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.providers.base import AdapterState, count_field, load_json_object
from rakka_inference.providers.gemini_embed import (
    embedding_body,
    embedding_method,
    parse_embeddings,
)
from rakka_inference.providers.gemini_errors import _error_detail, _error_kind, _retry_delay
from rakka_inference.providers.gemini_request import (
    SKIP_THOUGHT_SIGNATURE,
    _conversation,
    _tool_choice,
    gemini_schema,
)
from rakka_inference.providers.gemini_response import (
    GeminiStreamParser,
    _raise_for_refusal,
    candidate_chunk,
    candidates,
    gemini_usage,
)
from rakka_inference.wire.classify import upstream_error
from rakka_inference.wire.http import HttpRequest

# The request and response halves live in gemini_request / gemini_response /
# gemini_errors; their public names are re-exported here, where callers import them.
__all__ = [
    "GeminiAdapter",
    "GeminiStreamParser",
    "gemini_schema",
    "gemini_usage",
    "SKIP_THOUGHT_SIGNATURE",
]

DEFAULT_ENDPOINT = "https://generativelanguage.googleapis.com"


_VERTEX_COUNTED = ("contents", "systemInstruction", "tools")
"""What of a generateContent body Vertex's ``countTokens`` takes."""


class GeminiAdapter(AdapterState[GeminiConfig]):
    """The Gemini ``generateContent`` wire format for one deployment's model."""

    def __init__(
        self,
        config: GeminiConfig,
        model: str,
        *,
        provider: str | None = None,
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
        safety_settings: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(
            config, model, provider=provider, price_override=price_override, prices=prices
        )
        self._safety_settings = [dict(setting) for setting in safety_settings]
        self._vertex = config.variant == "vertex"
        wire_model = quote(_strip_prefix(model), safe="")
        if self._vertex:
            if not config.project or not config.region:
                raise ConfigError(
                    [
                        ConfigIssue("GeminiConfig", name, "is required when variant = 'vertex'")
                        for name in ("project", "region")
                        if not getattr(config, name)
                    ]
                )
            region = quote(config.region, safe="")
            host = config.endpoint or (
                "https://aiplatform.googleapis.com"
                if region == "global"
                else f"https://{region}-aiplatform.googleapis.com"
            )
            self._base = (
                f"{_versioned(host, 'v1')}/projects/{quote(config.project, safe='')}"
                f"/locations/{region}/publishers/google/models/{wire_model}"
            )
        else:
            host = config.endpoint or DEFAULT_ENDPOINT
            self._base = f"{_versioned(host, 'v1beta')}/models/{wire_model}"

    @property
    def endpoint(self) -> str:
        """The model's URL, without the method: streams and unary calls share a breaker."""
        return self._base

    # ------------------------------------------------------------------ request

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        url = (
            f"{self._base}:streamGenerateContent?alt=sse"
            if request.stream
            else f"{self._base}:generateContent"
        )
        return HttpRequest(
            "POST", url, self._headers(credential), orjson.dumps(self.request_body(request))
        )

    def build_count_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        """``countTokens`` with ``request``'s prompt (its contents, system instruction and
        tools; AI Studio takes them as a whole ``generateContentRequest``)."""
        inner = self.request_body(request)
        if self._vertex:
            body = {key: inner[key] for key in _VERTEX_COUNTED if key in inner}
        else:
            body = {"generateContentRequest": {"model": f"models/{self.model}", **inner}}
        url = f"{self._base}:countTokens"
        return HttpRequest("POST", url, self._headers(credential), orjson.dumps(body))

    def parse_count_response(self, body: bytes) -> int:
        return count_field(body, "totalTokens", self._provider)

    def _headers(self, credential: Secret) -> dict[str, str]:
        """The JSON content type and the credential: a bearer token on Vertex, else a key."""
        headers = {"content-type": "application/json"}
        if self._vertex:
            headers["authorization"] = f"Bearer {credential.expose()}"
        else:
            headers["x-goog-api-key"] = credential.expose()
        return headers

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (exposed for tests)."""
        sampling = request.sampling
        refuse_openai_options(request, "Gemini")
        if request.tools and request.parallel_tool_calls is False:
            raise BadRequest(
                "Gemini cannot be told to call one tool at a time: leave parallel_tool_calls "
                "out (or true) for a Gemini deployment",
                param="parallel_tool_calls",
            )
        system, contents = _conversation(request.messages, vertex=self._vertex)
        if not contents:
            raise BadRequest(
                "Gemini needs at least one message besides system instructions",
                param="messages",
            )
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        if request.tools:
            body["tools"] = [
                {
                    "functionDeclarations": [
                        {
                            "name": tool.name,
                            **({"description": tool.description} if tool.description else {}),
                            "parameters": gemini_schema(tool.parameters),
                        }
                        for tool in request.tools
                    ]
                }
            ]
            if request.tool_choice is not None:
                body["toolConfig"] = {"functionCallingConfig": _tool_choice(request.tool_choice)}
        generation: dict[str, Any] = {"candidateCount": sampling.n}
        if sampling.logprobs:
            generation["responseLogprobs"] = True
            if sampling.top_logprobs:
                generation["logprobs"] = sampling.top_logprobs
        generation.update(
            (key, value)
            for key, value in (
                ("temperature", sampling.temperature),
                ("topP", sampling.top_p),
                ("topK", sampling.top_k),
                ("maxOutputTokens", sampling.max_tokens),
                ("seed", sampling.seed),
                ("presencePenalty", sampling.presence_penalty),
                ("frequencyPenalty", sampling.frequency_penalty),
            )
            if value is not None
        )
        if sampling.stop:
            generation["stopSequences"] = list(sampling.stop)
        budget = sampling.thinking_tokens
        if budget is not None:
            generation["thinkingConfig"] = {"thinkingBudget": budget, "includeThoughts": budget > 0}
        response_format = request.response_format
        if response_format is not None and response_format.type != "text":
            generation["responseMimeType"] = "application/json"
            if response_format.json_schema is not None:
                generation["responseSchema"] = gemini_schema(response_format.json_schema)
        body["generationConfig"] = generation
        if self._safety_settings:
            body["safetySettings"] = self._safety_settings
        return body

    # ------------------------------------------------------------------ response

    def parse_response(self, body: bytes) -> list[TokenChunk]:
        document = load_json_object(body, self._provider)
        _raise_for_refusal(document, self._provider)
        found = candidates(document, self._provider)
        if not found:
            raise ProtocolError("response has no candidates", provider=self._provider)
        chunks = [candidate_chunk(candidate, 0, self._provider) for candidate in found]
        usage = document.get("usageMetadata")
        if isinstance(usage, dict):  # the request's, carried by the first candidate's chunk
            total = gemini_usage(usage, self._provider)
            chunks[0] = dataclasses.replace(chunks[0], usage=total)
        return chunks

    def stream_parser(self, choices: int = 1) -> GeminiStreamParser:
        return GeminiStreamParser(self._provider, choices)

    # ------------------------------------------------------------------ embeddings

    def build_embedding_request(self, request: EmbeddingRequest, credential: Secret) -> HttpRequest:
        """``:batchEmbedContents`` (AI Studio) or ``:predict`` (Vertex) for ``request``."""
        url = f"{self._base}:{embedding_method(vertex=self._vertex)}"
        body = embedding_body(request, _strip_prefix(self.model), vertex=self._vertex)
        return HttpRequest("POST", url, self._headers(credential), orjson.dumps(body))

    def parse_embedding_response(self, body: bytes, request: EmbeddingRequest) -> EmbeddingResult:
        return parse_embeddings(body, request, vertex=self._vertex, provider=self._provider)

    # ------------------------------------------------------------------ errors

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError:
        detail = _error_detail(body)
        if detail is None:
            return error
        if error.retry_after is None:
            # Gemini says when to retry in the body, seldom in a header.
            error.retry_after = _retry_delay(detail)
        kind = _error_kind(detail)
        if kind is None or isinstance(error, kind):
            return error
        return upstream_error(
            kind,
            error.message,
            provider=error.provider,
            retry_after=error.retry_after,
            param=error.param if issubclass(kind, BadRequest) else None,
            upstream_status=error.upstream_status,
        )


def _strip_prefix(model: str) -> str:
    for prefix in ("models/", "google/"):
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


def _versioned(host: str, version: str) -> str:
    base = host.rstrip("/")
    return base if base.endswith(("/v1", "/v1beta")) else f"{base}/{version}"
