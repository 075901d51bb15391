"""Rendering the answers of :mod:`rakka_inference.testkit.mock_openai` on the wire.

The common headers (request ids, rate limits), error bodies in the OpenAI and Azure
dialects, the refusals that faults ask for, a chat's SSE events and usage, and the delivery
of an :class:`Answer` with a transport fault applied.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from rakka_inference.testkit.faults import Fault, FaultKind, count_tokens
from rakka_inference.testkit.http_script import Chunk, Faults, RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_choices import openai_logprobs, tokens
from rakka_inference.testkit.openai_wire import (
    ChatRequest,
    InvalidRequest,
    Route,
    checked_messages,
    message_texts,
)

__all__ = [
    "CONTEXT_WINDOW",
    "LIMIT_REQUESTS",
    "LIMIT_TOKENS",
    "FINGERPRINT",
    "FILTER_RESULTS",
    "PROMPT_FILTER",
    "AZURE_401",
    "NO_KEY",
    "Answer",
    "MockChoice",
    "response_headers",
    "error_response",
    "not_found",
    "refusal",
    "rate_limited",
    "deliver",
    "stream_events",
    "chat_usage",
    "sse_event",
    "mock_id",
    "rate_headers",
    "go_duration",
    "azure_error",
]

CONTEXT_WINDOW = 128_000
LIMIT_REQUESTS = 10_000
LIMIT_TOKENS = 30_000_000

FINGERPRINT = "fp_mock0openai"
_MALFORMED = b'{"choices": ['
_SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": FILTER_RESULTS}]
AZURE_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)


@dataclass(frozen=True, slots=True)
class MockChoice:
    """One choice of a chat answer: its text or its calls, its finish, and — when the
    request asked for log probabilities — ``top`` alternatives per token (None: not asked)."""

    text: str
    calls: list[tuple[str, str, str]]
    finish: str
    top: int | None = None


@dataclass(slots=True)
class Answer:
    """A success before faults are applied: a unary document, or a stream's events."""

    headers: list[tuple[str, str]]
    document: Any = None
    events: list[Chunk] | None = None


def response_headers(count: int, *, azure: bool = False, tokens: int = 0) -> list[tuple[str, str]]:
    request_id = mock_id("req", count, 32)
    headers = [("x-request-id", f"req_{request_id}"), ("openai-processing-ms", "1")]
    if azure:
        headers += [
            ("apim-request-id", request_id),
            ("x-ratelimit-remaining-requests", str(LIMIT_REQUESTS - 1)),
            ("x-ratelimit-remaining-tokens", str(LIMIT_TOKENS - tokens)),
        ]
        return headers
    return [
        *headers,
        ("openai-version", "2020-10-01"),
        *rate_headers(LIMIT_REQUESTS - 1, LIMIT_TOKENS - tokens, 0.006),
    ]


def error_response(
    count: int,
    status: int,
    message: str,
    *,
    azure: bool = False,
    kind: str | None = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> ScriptedResponse:
    detail = {"message": message, "type": kind, "param": param, "code": code}
    given = {name for name, _ in headers}
    common = [(n, v) for n, v in response_headers(count, azure=azure) if n not in given]
    return ScriptedResponse.json({"error": detail}, status=status, headers=[*common, *headers])


def not_found(count: int, request: RecordedRequest) -> ScriptedResponse:
    if request.path.startswith("/openai/"):
        return azure_error(404, "404", "Resource not found")
    return error_response(count, 404, f"Invalid URL ({request.method} {request.path})")


def refusal(count: int, fault: Fault, route: Route, body: dict[str, Any]) -> ScriptedResponse:
    """The dialect's answer to a refusing fault (all but ``unauthorized``: the mock's own)."""
    model = str(body.get("model") or route.name or "gpt-4o")
    kind = fault.kind
    if kind is FaultKind.RATE_LIMIT:
        return rate_limited(count, route, model, fault.retry_after_s or 0.0)
    if kind is FaultKind.SERVER_ERROR:
        message = "The server had an error while processing your request. Sorry about that!"
        return error_response(
            count, fault.status or 503, message, azure=route.azure, kind="server_error"
        )
    if kind is FaultKind.OVERLOADED:
        message = (
            "That model is currently overloaded with other requests. You can retry your "
            "request, or contact us through our help center at help.openai.com if the "
            "error persists."
        )
        return error_response(
            count, fault.status or 503, message, azure=route.azure, kind="server_error"
        )
    if kind is FaultKind.CONTEXT_LENGTH:
        try:
            prompt = count_tokens(message_texts(checked_messages(body)))
        except InvalidRequest:
            prompt = 1
        message = (
            f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, "
            f"your messages resulted in {CONTEXT_WINDOW + prompt} tokens. Please reduce "
            "the length of the messages."
        )
        return error_response(
            count,
            400,
            message,
            azure=route.azure,
            param="messages",
            code="context_length_exceeded",
        )
    if route.azure:
        message = (
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry. To learn more about "
            "our content filtering policies please read our documentation: "
            "https://go.microsoft.com/fwlink/?linkid=2198766"
        )
        results = {**FILTER_RESULTS, "violence": {"filtered": True, "severity": "medium"}}
        detail = {
            "message": message,
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": results,
            },
        }
        return ScriptedResponse.json(
            {"error": detail}, status=400, headers=response_headers(count, azure=True)
        )
    message = (
        "Your request was rejected as a result of our safety system. Your prompt may "
        "contain text that is not allowed by our safety system."
    )
    return error_response(count, 400, message, param="prompt", code="content_filter")


def rate_limited(count: int, route: Route, model: str, wait: float) -> ScriptedResponse:
    """The dialect's 429, asking for ``wait`` seconds."""
    retry = [("retry-after", str(math.ceil(wait))), ("retry-after-ms", f"{wait * 1000:g}")]
    if route.azure:
        message = (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
            f"version {route.api_version} have exceeded call rate limit of your current "
            f"OpenAI S0 pricing tier. Please retry after {math.ceil(wait)} second. Please "
            "go here: https://aka.ms/oai/quotaincrease if you would like to further "
            "increase the default rate limit."
        )
        headers = [*retry, ("x-ratelimit-remaining-requests", "0")]
        return azure_error(429, "429", message, headers)
    message = (
        f"Rate limit reached for {model} in organization org-mock on requests per min "
        f"(RPM): Limit {LIMIT_REQUESTS}, Used {LIMIT_REQUESTS}, Requested 1. Please try "
        f"again in {go_duration(wait)}. Visit https://platform.openai.com/account/"
        "rate-limits to learn more."
    )
    headers = [*retry, *rate_headers(0, LIMIT_TOKENS, wait)]
    return error_response(
        count, 429, message, kind="requests", code="rate_limit_exceeded", headers=headers
    )


def deliver(answer: Answer, fault: Fault | None) -> ScriptedResponse:
    """``answer`` on the wire, with ``fault`` (one of the transport kinds, or none)."""
    options: Faults = {}
    kind = fault.kind if fault is not None else None
    events = answer.events
    after = 0 if events is None or fault is None else min(fault.after_chunks, len(events))
    if fault is not None and kind is FaultKind.SLOW_FIRST_BYTE:
        options["first_byte_delay"] = fault.delay_s
    elif kind is FaultKind.STALL:
        options["stall_after_chunks"] = after
    elif kind is FaultKind.RESET:
        options["reset_after_chunks"] = after
    if events is None:
        body = _MALFORMED if kind is FaultKind.MALFORMED_CHUNK else orjson.dumps(answer.document)
        headers = [("Content-Type", "application/json"), *answer.headers]
        return ScriptedResponse(200, headers, [body], **options)
    if kind is FaultKind.MALFORMED_CHUNK:
        index = min(after, len(events) - 1)
        events[index] = Chunk(b"data: " + _MALFORMED + b"\n\n", events[index].delay)
    return ScriptedResponse.stream(
        events, content_type="text/event-stream; charset=utf-8", headers=answer.headers, **options
    )


def stream_events(
    chat: ChatRequest,
    route: Route,
    head: dict[str, Any],
    *,
    choices: Sequence[MockChoice],
    usage: dict[str, Any],
) -> list[Chunk]:
    """A chat answer's SSE events, in the order the module docstring gives; the events of
    several choices interleave, one of each in turn, each choice finishing on its own."""
    events: list[Chunk] = []
    head = {**head, "object": "chat.completion.chunk"}
    if route.azure:
        empty = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        events.append(sse_event({**empty, "prompt_filter_results": PROMPT_FILTER}))
    else:
        head |= {"service_tier": "default", "system_fingerprint": FINGERPRINT}
    each = [_choice_events(chat, route, index, choice) for index, choice in enumerate(choices)]
    for step in range(max(map(len, each))):
        for documents in each:
            if step < len(documents):
                choice, wait = documents[step]
                document = {**head, "choices": [choice]}
                if chat.include_usage:
                    document["usage"] = None  # the real API sends the key on every chunk
                events.append(sse_event(document, wait))
    if chat.include_usage:
        events.append(sse_event({**head, "choices": [], "usage": usage}))
    events.append(Chunk(b"data: [DONE]\n\n"))
    return events


def _choice_events(
    chat: ChatRequest, route: Route, index: int, answer: MockChoice
) -> list[tuple[dict[str, Any], float]]:
    """One choice's stream chunks (the ``choices`` element each) and the wait before each."""
    out: list[tuple[dict[str, Any], float]] = []
    delay = chat.reply.chunk_delay_s

    def add(
        delta: dict[str, Any],
        finish_reason: str | None = None,
        wait: float = 0.0,
        logprobs: list[dict[str, Any]] | None = None,
    ) -> None:
        content = None if logprobs is None else {"content": logprobs, "refusal": None}
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": content,
            "finish_reason": finish_reason,
        }
        if route.azure:
            choice["content_filter_results"] = FILTER_RESULTS if delta.get("content") else {}
        out.append((choice, wait))

    for number, (call_id, name, arguments) in enumerate(answer.calls):
        call = {"index": number, "id": call_id, "type": "function"}
        call["function"] = {"name": name, "arguments": ""}
        opening = {"role": "assistant", "content": None, "refusal": None} if number == 0 else {}
        add({**opening, "tool_calls": [call]})
        for piece in chat.reply.pieces(arguments):
            add({"tool_calls": [{"index": number, "function": {"arguments": piece}}]}, None, delay)
    if not answer.calls:
        add({"role": "assistant", "content": "", "refusal": None})
        if answer.top is None:
            for piece in chat.reply.pieces(answer.text):
                add({"content": piece}, None, delay)
        else:  # one token per chunk, its log probability with it
            for position, token in enumerate(tokens(answer.text)):
                records = openai_logprobs([token], position, answer.top)
                add({"content": token}, None, delay, records)
    add({}, answer.finish)
    return out


def chat_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def sse_event(document: Any, delay: float = 0.0) -> Chunk:
    return Chunk(b"data: " + orjson.dumps(document) + b"\n\n", delay)


def mock_id(kind: str, seed: object, length: int) -> str:
    """A deterministic id part: the Nth request of a mock always gets the same ids."""
    return hashlib.blake2b(f"{kind}:{seed}".encode(), digest_size=16).hexdigest()[:length]


def rate_headers(requests: int, tokens: int, reset_s: float) -> list[tuple[str, str]]:
    return [
        ("x-ratelimit-limit-requests", str(LIMIT_REQUESTS)),
        ("x-ratelimit-limit-tokens", str(LIMIT_TOKENS)),
        ("x-ratelimit-remaining-requests", str(requests)),
        ("x-ratelimit-remaining-tokens", str(tokens)),
        ("x-ratelimit-reset-requests", go_duration(reset_s)),
        ("x-ratelimit-reset-tokens", go_duration(min(reset_s, 0.006))),
    ]


def go_duration(seconds: float) -> str:
    """OpenAI's reset durations: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def azure_error(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> ScriptedResponse:
    return ScriptedResponse.json(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
