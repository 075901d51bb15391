"""Rendering the answers of :mod:`rakka_inference.testkit.mock_gemini` on the wire.

A candidate's parts, event by event (:func:`candidate_events`); a
``GenerateContentResponse`` (:func:`document`) with its ``usageMetadata``
(:func:`usage_metadata`), framed as the call asks (:func:`framed`: one JSON body, SSE
events, or the streamed JSON array) with a transport fault applied; and Google's error
answers (``{"error": {"code", "message", "status", "details"}}``, a one-element array for a
stream without ``alt=sse``): bad credentials, quota, server errors, a prompt too long, a
blocked answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rakka_inference.testkit.faults import Fault, FaultKind, count_tokens
from rakka_inference.testkit.gemini_wire import GeminiCall, array_stream, mapping_of, prompt_texts
from rakka_inference.testkit.http_script import Chunk, Faults, ScriptedResponse
from rakka_inference.testkit.mock_choices import gemini_logprobs, tokens
from rakka_inference.testkit.proto_json import field

__all__ = [
    "JSON_HEADERS",
    "Answer",
    "Refused",
    "bad_credential",
    "blocked_candidate",
    "candidate_events",
    "count_tokens_answer",
    "document",
    "error_response",
    "framed",
    "json_response",
    "rate_limited",
    "server_error",
    "too_long",
    "usage_metadata",
]

JSON_HEADERS = (("Content-Type", "application/json; charset=UTF-8"),)
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_STATUS_NAMES: Mapping[int, str] = {
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_MESSAGES: Mapping[str, str] = {
    "INTERNAL": "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    "UNAVAILABLE": "The service is currently unavailable.",
    "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
    "UNIMPLEMENTED": "Operation is not implemented, or supported, or enabled.",
    "UNKNOWN": "An unknown error occurred.",
}
_SEE_AUTH = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_HARM_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)
_BLOCKED_CATEGORY = "HARM_CATEGORY_DANGEROUS_CONTENT"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the model says to one request, before it is framed."""

    thought: str | None
    text: str
    calls: tuple[dict[str, Any], ...]
    finish: str
    prompt_tokens: int
    output_tokens: int
    thought_tokens: int


class Refused(Exception):
    """A request the API refuses; ``response`` is its answer."""

    def __init__(self, response: ScriptedResponse) -> None:
        super().__init__(response.status)
        self.response = response


def document(
    call: GeminiCall, response_id: str, candidates: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    """One GenerateContentResponse (a whole answer, or one stream event of it)."""
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": call.model,
        "responseId": response_id,
    }


Event = tuple[list[dict[str, Any]], dict[str, Any] | None]
"""One candidate's parts in one event, and their ``logprobsResult`` (None: none)."""


def candidate_events(
    answer: Answer, pieces: Callable[[str], list[str]], streaming: bool, top: int | None
) -> list[Event]:
    """One candidate's parts, event by event (one event for a unary answer), each with the
    ``logprobsResult`` of its text when ``top`` (alternatives per token) is not None; a
    stream's text comes in ``pieces``, or a token per event with log probabilities."""
    events: list[Event] = []
    if answer.thought is not None:
        events.append(([{"text": answer.thought, "thought": True}], None))
    if answer.calls:
        events.append(([{"functionCall": dict(function)} for function in answer.calls], None))
    elif not streaming:
        result = None if top is None else gemini_logprobs(tokens(answer.text), 0, top)
        events.append(([{"text": answer.text}], result))
    elif top is not None:
        for position, token in enumerate(tokens(answer.text)):
            events.append(([{"text": token}], gemini_logprobs([token], position, top)))
    else:
        events.extend(([{"text": piece}], None) for piece in pieces(answer.text))
    if streaming:
        return events
    parts = [part for event_parts, _ in events for part in event_parts]
    logprobs = next((result for _, result in events if result is not None), None)
    return [(parts, logprobs)]  # one content with every part


def usage_metadata(prompt: int, output: int, thoughts: int, *, cached: int) -> dict[str, Any]:
    """``usageMetadata``; ``cached`` tokens count when non-zero, at most the prompt."""
    metadata: dict[str, Any] = {"promptTokenCount": prompt}
    if output:
        metadata["candidatesTokenCount"] = output
    metadata["totalTokenCount"] = prompt + output + thoughts
    cached = min(cached, prompt)
    if cached:
        metadata["cachedContentTokenCount"] = cached
    if thoughts:
        metadata["thoughtsTokenCount"] = thoughts
    metadata["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return metadata


def framed(
    call: GeminiCall, documents: list[bytes], fault: Fault | None, *, chunk_delay_s: float
) -> ScriptedResponse:
    """``documents`` as the call's framing, with the stream-shaping ``fault`` applied."""
    kind = fault.kind if fault is not None else None
    streaming = call.method == "streamGenerateContent"
    if fault is not None and kind is FaultKind.MALFORMED_CHUNK:
        index = min(fault.after_chunks, len(documents) - 1)
        documents[index] = documents[index][: len(documents[index]) // 2]
    options: Faults = {}
    if fault is not None and kind is FaultKind.SLOW_FIRST_BYTE:
        options["first_byte_delay"] = fault.delay_s
    elif fault is not None and kind is FaultKind.STALL:
        options["stall_after_chunks"] = _strike(fault, documents, streaming)
    elif fault is not None and kind is FaultKind.RESET:
        options["reset_after_chunks"] = _strike(fault, documents, streaming)
    if not streaming:
        return ScriptedResponse(200, JSON_HEADERS, documents, **options)
    if call.sse:
        frames = [b"data: " + body + b"\r\n\r\n" for body in documents]
        content_type = "text/event-stream"
    else:
        frames = [(b"," if n else b"[") + body for n, body in enumerate(documents)]
        frames[-1] += b"]"
        content_type = JSON_HEADERS[0][1]
    chunks = [Chunk(frame, chunk_delay_s if n else 0.0) for n, frame in enumerate(frames)]
    return ScriptedResponse.stream(chunks, content_type=content_type, **options)


def count_tokens_answer(body: Mapping[str, Any]) -> dict[str, Any]:
    """The answer to ``countTokens``: the prompt's tokens, of the inner request if given."""
    inner = mapping_of(field(body, "generateContentRequest"))
    total = count_tokens(prompt_texts(inner or body))
    return {
        "totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }


def json_response(
    document: Any, *, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> ScriptedResponse:
    """A JSON answer with Google's ``Content-Type``."""
    return ScriptedResponse(status, (*JSON_HEADERS, *headers), [orjson.dumps(document)])


def error_response(
    code: int,
    status: str,
    message: str,
    *,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Sequence[tuple[str, str]] = (),
    stream: bool = False,
) -> ScriptedResponse:
    """Google's error body; ``stream``: as the one-element array a JSON-array stream sends."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = [dict(detail) for detail in details]
    document: Any = [{"error": error}] if stream else {"error": error}
    return json_response(document, status=code, headers=headers)


def server_error(status: int, *, stream: bool) -> ScriptedResponse:
    """A ``server_error`` fault's answer: ``status`` under its gRPC status name."""
    name = _STATUS_NAMES.get(status, "UNKNOWN")
    return error_response(status, name, _STATUS_MESSAGES[name], stream=stream)


def too_long(prompt: int, limit: int, call: GeminiCall) -> ScriptedResponse:
    """The 400 for a prompt of ``prompt`` tokens over a window of ``limit``."""
    message = (
        f"The input token count ({prompt}) exceeds the maximum number of tokens allowed ({limit})."
    )
    return error_response(400, "INVALID_ARGUMENT", message, stream=array_stream(call))


def blocked_candidate() -> dict[str, Any]:
    """A candidate stopped by the output filter: no content, one blocked safety rating."""
    ratings: list[dict[str, Any]] = [
        {"category": category, "probability": "NEGLIGIBLE"} for category in _HARM_CATEGORIES
    ]
    ratings[_HARM_CATEGORIES.index(_BLOCKED_CATEGORY)] = {
        "category": _BLOCKED_CATEGORY,
        "probability": "HIGH",
        "blocked": True,
    }
    return {"finishReason": "SAFETY", "index": 0, "safetyRatings": ratings}


def bad_credential(call: GeminiCall, *, missing: bool) -> ScriptedResponse:
    """What a wrong (or, on Vertex, ``missing``) credential gets: AI Studio's 400, Vertex's 401."""
    stream = array_stream(call)
    if not call.vertex:
        message = "API key not valid. Please pass a valid API key."
        details: list[dict[str, Any]] = [
            {
                "@type": _ERROR_INFO,
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
        return error_response(400, "INVALID_ARGUMENT", message, details=details, stream=stream)
    if missing:
        message = f"Request is missing required authentication credential. {_SEE_AUTH}"
        reason = "CREDENTIALS_MISSING"
    else:
        message = f"Request had invalid authentication credentials. {_SEE_AUTH}"
        reason = "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    info = {
        "@type": _ERROR_INFO,
        "reason": reason,
        "metadata": {
            "service": "aiplatform.googleapis.com",
            "method": f"google.cloud.aiplatform.v1.PredictionService.{_pascal(call.method)}",
        },
    }
    challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
    return error_response(
        401,
        "UNAUTHENTICATED",
        message,
        details=[info],
        headers=[("WWW-Authenticate", challenge)],
        stream=stream,
    )


def rate_limited(call: GeminiCall, retry_after_s: float) -> ScriptedResponse:
    """The 429 ``RESOURCE_EXHAUSTED``, its ``RetryInfo`` and ``Retry-After`` saying when."""
    delay = f"{retry_after_s:.9f}".rstrip("0").rstrip(".")  # "0.5", "120": no exponent
    service = "aiplatform" if call.vertex else "generativelanguage"
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"{service}.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": call.model},
                    "quotaValue": "15",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
    ]
    message = (
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, head to: https://ai.google.dev/gemini-api/docs/"
        "rate-limits."
    )
    return error_response(
        429,
        "RESOURCE_EXHAUSTED",
        message,
        details=details,
        headers=[("Retry-After", delay)],
        stream=array_stream(call),
    )


def _pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def _strike(fault: Fault, documents: Sequence[bytes], streaming: bool) -> int:
    """After how many chunks a stall or reset strikes: a unary body is one, so after none."""
    return min(fault.after_chunks, len(documents)) if streaming else 0
