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
- ``tool_choice`` becomes ``toolConfig.functionCallingConfig.mode`` AUTO / NONE / ANY
  (named: ANY with ``allowedFunctionNames``), sent only with tools.
- ``generationConfig``: ``temperature``, ``topP``, ``maxOutputTokens``,
  ``stopSequences``, ``seed``, ``presencePenalty``, ``frequencyPenalty`` and
  ``candidateCount: 1`` (``n`` other than 1 is refused). ``json_object`` sets
  ``responseMimeType: application/json``; ``json_schema`` adds ``responseSchema``.
- ``safetySettings`` are passed through unchanged from ``runtime_config.safety_settings``
  (the registry hands them to the adapter's ``safety_settings``).
- Dropped, having no Gemini equivalent: ``user``, message ``name``, image ``detail``.

Responses: only the first candidate is read. Text parts are text, parts with
``thought: true`` are reasoning, ``functionCall`` parts are tool calls, numbered in order
(parallel calls get 0, 1, …), with the JSON text of ``args`` as arguments and the
upstream's ``id`` if it sent one, else a minted ``call_`` + 24 hex digits (random, so ids
stay unique across a conversation: tool results are matched to calls by id). Other parts
are skipped. ``finishReason``: STOP → stop, MAX_TOKENS → length, and tool_calls whenever a
function call was returned; SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII and
the IMAGE_* filters raise ContentFiltered, and so does ``promptFeedback.blockReason`` (a
prompt refused with HTTP 200 and no candidates). Other reasons (OTHER, LANGUAGE,
MALFORMED_FUNCTION_CALL, …) are read as stop. Usage: ``promptTokenCount`` (plus
``toolUsePromptTokenCount``) is input, of which ``cachedContentTokenCount`` is cached;
``candidatesTokenCount + thoughtsTokenCount`` is output, of which ``thoughtsTokenCount``
is reasoning.

Streams (:class:`GeminiStreamParser`): every SSE event is a whole GenerateContentResponse,
and its ``usageMetadata`` is a *running total*: the counts are merged field by field
(maximum, so a repeated or partial report adds nothing) and only the increments are
emitted. There is no end marker: ``done`` turns true with the first candidate that carries
a ``finishReason``, which Gemini sends only on the last event, together with the final
usage (the engine stops reading once ``done`` is true). A stream that ends before that is
truncated, and the engine reports it so. The usage of an answer that ends in a content
filter is lost with the raised error. An ``error`` object inside a stream (or a 200 body)
raises its typed error.

Errors (``{"error": {"code", "message", "status", "details"}}``), over the generic HTTP
classification, by ``status``: RESOURCE_EXHAUSTED → RateLimited, UNAVAILABLE and INTERNAL
→ ServerError, INVALID_ARGUMENT → BadRequest, PERMISSION_DENIED → Forbidden,
UNAUTHENTICATED → Unauthorized, NOT_FOUND → UpstreamNotFound, DEADLINE_EXCEEDED → Timeout
(first byte: the upstream gave up, as with a 408). An ``ErrorInfo`` detail with reason
``API_KEY_INVALID`` (a 400 on AI Studio) is Unauthorized, so the session re-reads the key.
A ``RetryInfo.retryDelay`` fills ``retry_after`` when the headers gave none.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from rakka_inference.core.deployment import GeminiConfig, ModelPrice, RemoteRuntimeConfig
from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    ConfigIssue,
    ContentFiltered,
    Forbidden,
    InferenceError,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    TimeoutPhase,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, ImagePart, Role, TextPart
from rakka_inference.core.pricing import PriceTable, resolve_price
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode
from rakka_inference.core.usage import Usage
from rakka_inference.remote.classify import MAX_UPSTREAM_MESSAGE_CHARS, parse_duration
from rakka_inference.remote.sse import SseEvent
from rakka_inference.remote.transport import HttpRequest

__all__ = ["GeminiAdapter", "GeminiStreamParser", "gemini_schema", "gemini_usage"]

log = logging.getLogger("rakka_inference.providers.gemini")

DEFAULT_ENDPOINT = "https://generativelanguage.googleapis.com"
SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
}
_FILTERED_FINISHES = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_ERROR_STATUSES: Mapping[str, type[InferenceError]] = {
    "INVALID_ARGUMENT": BadRequest,
    "UNAUTHENTICATED": Unauthorized,
    "PERMISSION_DENIED": Forbidden,
    "NOT_FOUND": UpstreamNotFound,
    "RESOURCE_EXHAUSTED": RateLimited,
    "UNAVAILABLE": ServerError,
    "INTERNAL": ServerError,
    "DEADLINE_EXCEEDED": Timeout,
}
_ERROR_REASONS: Mapping[str, type[InferenceError]] = {"API_KEY_INVALID": Unauthorized}
_TOOL_MODES: Mapping[ToolChoiceMode, str] = {
    ToolChoiceMode.AUTO: "AUTO",
    ToolChoiceMode.NONE: "NONE",
    ToolChoiceMode.REQUIRED: "ANY",
    ToolChoiceMode.NAMED: "ANY",
}
_IMAGE_TYPES: Mapping[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
}
_STRIPPED_SCHEMA_KEYS = ("$schema", "additionalProperties")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


class GeminiAdapter:
    """The Gemini ``generateContent`` wire format for one deployment's model."""

    def __init__(
        self,
        config: GeminiConfig,
        model: str,
        *,
        provider: str = "gemini",
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
        safety_settings: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        self.config = config
        self.model = model
        self._provider = provider
        self._price = resolve_price(model, price_override, prices)
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
    def provider(self) -> str:
        return self._provider

    @property
    def endpoint(self) -> str:
        """The model's URL, without the method: streams and unary calls share a breaker."""
        return self._base

    @property
    def runtime_config(self) -> RemoteRuntimeConfig:
        return self.config

    def price(self) -> ModelPrice | None:
        return self._price

    # ------------------------------------------------------------------ request

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        url = (
            f"{self._base}:streamGenerateContent?alt=sse"
            if request.stream
            else f"{self._base}:generateContent"
        )
        headers = {"content-type": "application/json"}
        if self._vertex:
            headers["authorization"] = f"Bearer {credential.expose()}"
        else:
            headers["x-goog-api-key"] = credential.expose()
        return HttpRequest("POST", url, headers, orjson.dumps(self.request_body(request)))

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body for ``request`` (exposed for tests)."""
        sampling = request.sampling
        if sampling.n != 1:
            raise BadRequest("only n = 1 is supported", param="n")
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
        generation: dict[str, Any] = {"candidateCount": 1}
        generation.update(
            (key, value)
            for key, value in (
                ("temperature", sampling.temperature),
                ("topP", sampling.top_p),
                ("maxOutputTokens", sampling.max_tokens),
                ("seed", sampling.seed),
                ("presencePenalty", sampling.presence_penalty),
                ("frequencyPenalty", sampling.frequency_penalty),
            )
            if value is not None
        )
        if sampling.stop:
            generation["stopSequences"] = list(sampling.stop)
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
        document = _load(body, self._provider)
        _raise_for_refusal(document, self._provider)
        candidate = _first_candidate(document)
        if candidate is None:
            raise ProtocolError("response has no candidates", provider=self._provider)
        text, reasoning, calls = _parts(candidate, 0, self._provider)
        usage = document.get("usageMetadata")
        return [
            TokenChunk(
                text=text,
                reasoning=reasoning,
                tool_calls=calls,
                usage=gemini_usage(usage, self._provider) if isinstance(usage, dict) else None,
                finish_reason=_finish(candidate, bool(calls), self._provider),
            )
        ]

    def stream_parser(self) -> GeminiStreamParser:
        return GeminiStreamParser(self._provider)

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
        return _error(
            kind,
            error.message,
            provider=error.provider,
            retry_after=error.retry_after,
            param=error.param if issubclass(kind, BadRequest) else None,
            upstream_status=error.upstream_status,
        )


class GeminiStreamParser:
    """``streamGenerateContent?alt=sse`` events to TokenChunks; see the module docstring."""

    __slots__ = ("_calls", "_counts", "_provider", "_total", "done")

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._calls = 0
        self._counts: dict[str, int] = {}
        self._total: Usage | None = None
        self.done = False

    def feed(self, event: SseEvent) -> list[TokenChunk]:
        document = _load(event.raw, self._provider)
        _raise_for_refusal(document, self._provider)
        text, reasoning = "", ""
        calls: tuple[ToolCallDelta, ...] = ()
        finish: FinishReason | None = None
        candidate = _first_candidate(document)
        if candidate is not None:
            text, reasoning, calls = _parts(candidate, self._calls, self._provider)
            self._calls += len(calls)
            finish = _finish(candidate, self._calls > 0, self._provider)
            if finish is not None:
                self.done = True
        chunk = TokenChunk(
            text=text,
            reasoning=reasoning,
            tool_calls=calls,
            usage=self._usage_increment(document.get("usageMetadata")),
            finish_reason=finish,
        )
        return [] if chunk.is_empty else [chunk]

    def _usage_increment(self, usage: object) -> Usage | None:
        """What a running-total report adds; None when it adds nothing.

        The first report is emitted even at zero, so "zero tokens" is not read as "usage
        unknown" downstream.
        """
        if not isinstance(usage, dict):
            return None
        gemini_usage(usage, self._provider)  # checks every count before any is kept
        # Output is the sum of two of Gemini's counts, so running totals are merged count
        # by count (field-wise maximum): a report that leaves thoughtsTokenCount out must
        # not lower it, and a report seen twice adds nothing.
        counts = self._counts
        raised = False
        for key, value in usage.items():
            if isinstance(value, int) and value > counts.get(key, -1):
                counts[key] = value
                raised = True
        previous = self._total
        if previous is not None and not raised:
            return None  # the common repeated report: nothing new, nothing built
        total = gemini_usage(counts, self._provider)
        self._total = total
        if previous is None:
            return total
        increment = total.minus(previous)
        return None if increment.is_zero else increment


# ---------------------------------------------------------------------- helpers


def gemini_usage(usage: Mapping[str, Any], provider: str | None = None) -> Usage:
    """Gemini's ``usageMetadata`` in our convention: thoughts are output and reasoning."""

    def count(key: str) -> int:
        value = usage.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError(f"usageMetadata.{key} is not a token count", provider=provider)
        return value

    thoughts = count("thoughtsTokenCount")
    return Usage(
        input_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        output_tokens=count("candidatesTokenCount") + thoughts,
        cached_input_tokens=count("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema adjusted to Gemini's OpenAPI subset (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _STRIPPED_SCHEMA_KEYS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {
                name: gemini_schema(sub) if isinstance(sub, Mapping) else sub
                for name, sub in value.items()
            }
        elif key in _SCHEMA_LISTS and isinstance(value, list | tuple):
            out[key] = [gemini_schema(sub) if isinstance(sub, Mapping) else sub for sub in value]
        elif key in ("items", "not") and isinstance(value, Mapping):
            out[key] = gemini_schema(value)
        else:
            out[key] = value
    kind = out.get("type")
    if isinstance(kind, list | tuple):
        types = [name for name in kind if name != "null"]
        if len(types) == 1:
            out["type"] = types[0]
            if len(types) < len(kind):
                out["nullable"] = True
    return out


def _strip_prefix(model: str) -> str:
    for prefix in ("models/", "google/"):
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


def _versioned(host: str, version: str) -> str:
    base = host.rstrip("/")
    return base if base.endswith(("/v1", "/v1beta")) else f"{base}/{version}"


def _load(raw: bytes, provider: str) -> dict[str, Any]:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(
            f"malformed JSON from upstream ({len(raw)} bytes)", provider=provider
        ) from None
    if not isinstance(document, dict):
        raise ProtocolError("upstream JSON is not an object", provider=provider)
    return document


def _raise_for_refusal(document: Mapping[str, Any], provider: str) -> None:
    """Raise the typed error of an ``error`` object or a blocked prompt (both HTTP 200)."""
    error = document.get("error")
    if isinstance(error, dict):
        status = str(error.get("status") or "UNKNOWN")
        message = f"{provider} error {status} in a 200 answer{_quote(error.get('message'))}"
        # A status we do not know, in an answer that had started, is upstream trouble.
        kind = _error_kind(error) or ServerError
        raise _error(kind, message, provider=provider, retry_after=_retry_delay(error))
    feedback = document.get("promptFeedback")
    if isinstance(feedback, dict) and (reason := feedback.get("blockReason")):
        raise ContentFiltered(
            f"{provider} blocked the prompt: {reason}{_blocked(feedback)}", provider=provider
        )


def _first_candidate(document: Mapping[str, Any]) -> dict[str, Any] | None:
    candidates = document.get("candidates")
    if not isinstance(candidates, list):
        return None
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate.get("index", 0) == 0:
            return candidate
    return None


def _parts(
    candidate: Mapping[str, Any], first_index: int, provider: str
) -> tuple[str, str, tuple[ToolCallDelta, ...]]:
    """``(text, reasoning, calls)`` of a candidate; calls are numbered from ``first_index``."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCallDelta] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall")
        if isinstance(call, dict):
            name = call.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError("functionCall without a name", provider=provider)
            upstream_id = call.get("id")
            calls.append(
                ToolCallDelta(
                    index=first_index + len(calls),
                    id=upstream_id if isinstance(upstream_id, str) and upstream_id else _call_id(),
                    name=name,
                    arguments=orjson.dumps(call.get("args") or {}).decode(),
                )
            )
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") is True else text).append(part["text"])
        else:
            log.debug("skipping Gemini part with keys %s", sorted(part))
    return "".join(text), "".join(reasoning), tuple(calls)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _finish(candidate: Mapping[str, Any], has_calls: bool, provider: str) -> FinishReason | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    reason = str(reason)
    if reason in _FILTERED_FINISHES:
        raise ContentFiltered(
            f"{provider} stopped the answer: finishReason {reason}{_blocked(candidate)}",
            provider=provider,
        )
    if has_calls:
        return FinishReason.TOOL_CALLS
    finish = _FINISH_REASONS.get(reason)
    if finish is None:
        log.debug("Gemini finishReason %r read as stop", reason)
        return FinishReason.STOP
    return finish


def _blocked(holder: Mapping[str, Any]) -> str:
    """The harm categories a safety verdict blocked, for the error message."""
    ratings = holder.get("safetyRatings")
    categories = [
        str(rating.get("category"))
        for rating in (ratings if isinstance(ratings, list) else ())
        if isinstance(rating, dict) and rating.get("blocked") is True
    ]
    return f" ({', '.join(categories)})" if categories else ""


def _quote(upstream: object) -> str:
    if not isinstance(upstream, str):
        return ""
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in upstream).split())
    return f": {cleaned[:MAX_UPSTREAM_MESSAGE_CHARS]}" if cleaned else ""


def _error_detail(body: bytes) -> dict[str, Any] | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, list) and document:
        document = document[0]  # errors of a non-SSE stream come as a JSON array
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, dict) else None


def _details(error: Mapping[str, Any], type_suffix: str) -> list[dict[str, Any]]:
    details = error.get("details")
    return [
        item
        for item in (details if isinstance(details, list) else ())
        if isinstance(item, dict) and str(item.get("@type", "")).endswith(type_suffix)
    ]


def _error_kind(error: Mapping[str, Any]) -> type[InferenceError] | None:
    for info in _details(error, "google.rpc.ErrorInfo"):
        kind = _ERROR_REASONS.get(str(info.get("reason")))
        if kind is not None:
            return kind
    return _ERROR_STATUSES.get(str(error.get("status")))


def _retry_delay(error: Mapping[str, Any]) -> float | None:
    for info in _details(error, "google.rpc.RetryInfo"):
        delay = info.get("retryDelay")
        seconds = parse_duration(delay) if isinstance(delay, str) else None
        if seconds is not None:
            return seconds
    return None


def _error(
    kind: type[InferenceError],
    message: str,
    *,
    provider: str | None,
    retry_after: float | None,
    param: str | None = None,
    upstream_status: int | None = None,
) -> InferenceError:
    if issubclass(kind, Timeout):
        return kind(
            message,
            phase=TimeoutPhase.FIRST_BYTE,
            provider=provider,
            retry_after=retry_after,
            upstream_status=upstream_status,
        )
    return kind(
        message,
        provider=provider,
        retry_after=retry_after,
        param=param,
        upstream_status=upstream_status,
    )


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": _TOOL_MODES[choice.mode]}
    if choice.mode is ToolChoiceMode.NAMED:
        config["allowedFunctionNames"] = [choice.name]
    return config


def _conversation(
    messages: Sequence[ChatMessage], *, vertex: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """``(system texts, contents)``: instructions hoisted, same-role turns merged."""
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for position, message in enumerate(messages):
        if message.role in (Role.SYSTEM, Role.DEVELOPER):
            if message.text:
                system.append(message.text)
            continue
        role = "model" if message.role is Role.ASSISTANT else "user"
        if message.role is Role.TOOL:
            name = call_names.get(message.tool_call_id or "")
            if name is None:
                raise BadRequest(
                    f"tool message answers unknown tool call {message.tool_call_id!r}",
                    param=f"messages[{position}].tool_call_id",
                )
            response = {"name": name, "response": {"output": message.text}}
            parts: list[dict[str, Any]] = [{"functionResponse": response}]
        else:
            parts = _message_parts(message, position, vertex=vertex)
            call_names.update((call.id, call.name) for call in message.tool_calls)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return system, contents


def _message_parts(message: ChatMessage, position: int, *, vertex: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part_index, part in enumerate(message.parts):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        else:
            param = f"messages[{position}].content[{part_index}].image_url"
            parts.append(_image(part, param, vertex=vertex))
    for call_index, call in enumerate(message.tool_calls):
        param = f"messages[{position}].tool_calls[{call_index}].function.arguments"
        function_call: dict[str, Any] = {
            "functionCall": {"name": call.name, "args": call.parsed_arguments(param=param)}
        }
        if call_index == 0:
            function_call["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
        parts.append(function_call)
    return parts


def _image(part: ImagePart, param: str, *, vertex: bool) -> dict[str, Any]:
    if part.is_data_url:
        media_type, data = part.parse_data_url(param=param)
        return {"inlineData": {"mimeType": media_type, "data": data}}
    url = part.url
    scheme = url.partition(":")[0].lower()
    if scheme not in ("http", "https") and not (vertex and scheme == "gs"):
        allowed = "http(s), gs:// (Vertex)" if vertex else "http(s)"
        raise BadRequest(f"image URL must be {allowed} or a base64 data: URL", param=param)
    _, dot, extension = urlsplit(url).path.rsplit("/", 1)[-1].rpartition(".")
    file_type = _IMAGE_TYPES.get(extension.lower()) if dot else None
    if file_type is None:
        raise BadRequest(
            "cannot tell the image's type from its URL; Gemini needs it: use a URL ending in "
            ".png, .jpg, .jpeg, .webp, .gif, .heic or .heif, or a base64 data: URL",
            param=param,
        )
    return {"fileData": {"mimeType": file_type, "fileUri": url}}
