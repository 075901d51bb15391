"""Rendering the answers of :mod:`rakka_inference.testkit.mock_anthropic` on the wire.

A :class:`Reply` as the ``message`` object or as the event stream, the error answers that
faults and refusals stand for (``{"type": "error", "error": {...}, "request_id"}``), and
the headers every answer carries: ``request-id``, ``anthropic-organization-id`` and the
``anthropic-ratelimit-*`` family.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from rakka_inference.testkit.anthropic_wire import prompt_texts
from rakka_inference.testkit.faults import Fault, FaultKind, ReplyScript, count_tokens
from rakka_inference.testkit.http_script import Chunk, Faults, ScriptedResponse

__all__ = [
    "MAX_CONTEXT_TOKENS",
    "ORGANIZATION_ID",
    "Reply",
    "error_response",
    "fault_error",
    "identity_headers",
    "limit_headers",
    "message_object",
    "stream_response",
    "unary_response",
]

ORGANIZATION_ID = "00000000-0000-4000-8000-00000000a11c"
"""The ``anthropic-organization-id`` on every answer."""
MAX_CONTEXT_TOKENS = 200_000
"""The context window named in the mock's "prompt is too long" answer."""

_RATE_LIMITS = {"requests": 50, "tokens": 80_000, "input-tokens": 40_000, "output-tokens": 16_000}


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer, before it is rendered as a message object or as events."""

    message_id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


def stream_response(
    reply: Reply,
    script: ReplyScript,
    fault: Fault | None,
    headers: list[tuple[str, str]],
    request_id: str,
) -> ScriptedResponse:
    """``reply`` as the event stream, deltas paced by ``script``, ``fault`` applied."""
    delay = script.chunk_delay_s
    events: list[tuple[str, Mapping[str, Any], float]] = [
        ("message_start", {"message": message_object(reply, start=True)}, 0.0),
        ("ping", {}, 0.0),
    ]
    for index, block in enumerate(reply.content):
        kind = block["type"]
        if kind == "text":
            opening = {**block, "text": ""}
        elif kind == "thinking":
            opening = {**block, "thinking": "", "signature": ""}
        elif kind == "redacted_thinking":
            opening = block
        else:
            opening = {**block, "input": {}}
        events.append(("content_block_start", {"index": index, "content_block": opening}, 0.0))
        if kind == "text":
            deltas = [{"type": "text_delta", "text": p} for p in script.pieces(block["text"])]
        elif kind == "thinking":
            pieces = script.pieces(block["thinking"])
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
            deltas.append({"type": "signature_delta", "signature": block["signature"]})
        elif kind == "redacted_thinking":
            deltas = []
        else:
            arguments = orjson.dumps(block["input"]).decode() if block["input"] else ""
            pieces = script.pieces(arguments)
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        events += [("content_block_delta", {"index": index, "delta": d}, delay) for d in deltas]
        events.append(("content_block_stop", {"index": index}, 0.0))
    stop = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    usage = {"output_tokens": reply.output_tokens}
    events.append(("message_delta", {"delta": stop, "usage": usage}, 0.0))
    events.append(("message_stop", {}, 0.0))
    chunks = [Chunk(_event(name, payload), wait) for name, payload, wait in events]
    if fault is not None and fault.kind is FaultKind.OVERLOADED:
        chunks = chunks[: fault.after_chunks]
        error = _error_body("overloaded_error", "Overloaded", request_id)
        chunks.append(Chunk(_event("error", error)))
    elif fault is not None and fault.kind is FaultKind.MALFORMED_CHUNK:
        at = min(fault.after_chunks, len(chunks) - 1)
        name, payload, wait = events[at]
        chunks[at] = Chunk(_event(name, payload, broken=True), wait)
    return ScriptedResponse.stream(
        chunks,
        content_type="text/event-stream; charset=utf-8",
        headers=[("cache-control", "no-cache"), *headers],
        **_transport_faults(fault, len(chunks)),
    )


def message_object(reply: Reply, *, start: bool = False) -> dict[str, Any]:
    """The ``message`` object; ``start``: as ``message_start`` carries it, still empty."""
    return {
        "id": reply.message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [] if start else reply.content,
        "stop_reason": None if start else reply.stop_reason,
        "stop_sequence": None if start else reply.stop_sequence,
        "usage": {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1 if start else reply.output_tokens,
        },
    }


def unary_response(
    reply: Reply, fault: Fault | None, headers: list[tuple[str, str]]
) -> ScriptedResponse:
    """``reply`` as one JSON body, a transport or malformed-body ``fault`` applied."""
    data = orjson.dumps(message_object(reply))
    half = len(data) // 2
    pairs = [("content-type", "application/json"), *headers]
    kind = fault.kind if fault is not None else None
    if kind is FaultKind.MALFORMED_CHUNK:
        return ScriptedResponse(200, pairs, [data[:half]])
    body = [data[:half], data[half:]] if kind in (FaultKind.STALL, FaultKind.RESET) else [data]
    return ScriptedResponse(200, pairs, body, **_transport_faults(fault, 1))


def _transport_faults(fault: Fault | None, chunks: int) -> Faults:
    if fault is None:
        return {}
    if fault.kind is FaultKind.SLOW_FIRST_BYTE:
        return {"first_byte_delay": fault.delay_s}
    if fault.kind is FaultKind.STALL:
        return {"stall_after_chunks": min(fault.after_chunks, chunks)}
    if fault.kind is FaultKind.RESET:
        return {"reset_after_chunks": min(fault.after_chunks, chunks)}
    return {}


def _event(name: str, payload: Mapping[str, Any], *, broken: bool = False) -> bytes:
    """One SSE event; ``broken`` keeps only the first half of its JSON."""
    data = orjson.dumps({"type": name, **payload})
    if broken:
        data = data[: len(data) // 2]
    return b"event: %s\ndata: %s\n\n" % (name.encode(), data)


def fault_error(
    fault: Fault, body: Mapping[str, Any], request_id: str, *, stream: bool
) -> ScriptedResponse | None:
    """The error answer ``fault`` stands for; None for faults that shape a normal answer."""
    kind = fault.kind
    if kind is FaultKind.RATE_LIMIT:
        message = (
            "This request would exceed your organization's rate limit of 50 requests per "
            "minute. Please retry after the time given in the retry-after header."
        )
        headers = _retry_headers(fault.retry_after_s or 0.0)
        return error_response(429, "rate_limit_error", message, request_id, headers)
    if kind is FaultKind.SERVER_ERROR and fault.status == 529:
        return error_response(529, "overloaded_error", "Overloaded", request_id)
    if kind is FaultKind.SERVER_ERROR:
        return error_response(fault.status or 503, "api_error", "Internal server error", request_id)
    if kind is FaultKind.OVERLOADED and not stream:
        return error_response(529, "overloaded_error", "Overloaded", request_id)
    if kind is FaultKind.CONTEXT_LENGTH:
        tokens = MAX_CONTEXT_TOKENS + count_tokens(prompt_texts(body))
        message = f"prompt is too long: {tokens} tokens > {MAX_CONTEXT_TOKENS} maximum"
        return error_response(400, "invalid_request_error", message, request_id)
    if kind is FaultKind.UNAUTHORIZED:
        return error_response(401, "authentication_error", "invalid x-api-key", request_id)
    return None


def _error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def error_response(
    status: int,
    kind: str,
    message: str,
    request_id: str,
    headers: Sequence[tuple[str, str]] = (),
) -> ScriptedResponse:
    """An error answer in the API's shape, with the identity headers."""
    return ScriptedResponse.json(
        _error_body(kind, message, request_id),
        status=status,
        headers=[*identity_headers(request_id), *headers],
    )


def identity_headers(request_id: str) -> list[tuple[str, str]]:
    """What the API puts on every answer."""
    return [("request-id", request_id), ("anthropic-organization-id", ORGANIZATION_ID)]


def _retry_headers(retry_after_s: float) -> list[tuple[str, str]]:
    headers = [("retry-after", str(math.ceil(retry_after_s)))]
    if retry_after_s != math.ceil(retry_after_s):
        headers.append(("retry-after-ms", f"{retry_after_s * 1000:g}"))
    return headers + limit_headers(limited=True, reset_in_s=retry_after_s)


def limit_headers(*, limited: bool, reset_in_s: float = 60.0) -> list[tuple[str, str]]:
    """The ``anthropic-ratelimit-*`` headers; ``limited``: nothing remaining."""
    reset = datetime.fromtimestamp(math.ceil(time.time() + reset_in_s), UTC)
    stamp = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = []
    for name, limit in _RATE_LIMITS.items():
        remaining = 0 if limited else limit - 1
        headers += [
            (f"anthropic-ratelimit-{name}-limit", str(limit)),
            (f"anthropic-ratelimit-{name}-remaining", str(remaining)),
            (f"anthropic-ratelimit-{name}-reset", stamp),
        ]
    return headers
