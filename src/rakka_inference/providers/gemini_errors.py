"""Gemini's error objects (``{"error": {"code", "message", "status", "details"}}``).

Reads an error body (or an ``error`` object inside a 200 answer) into our typed errors:
the class by ``status`` and ``ErrorInfo`` reason, ``retry_after`` from ``RetryInfo``. The
mapping is set out in the adapter module's docstring
(:mod:`rakka_inference.providers.gemini`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.errors import (
    BadRequest,
    Forbidden,
    InferenceError,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.wire.redact import sanitize_upstream_message
from rakka_inference.wire.retry_after import parse_duration

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


def _quote(upstream: object) -> str:
    if not isinstance(upstream, str):
        return ""
    cleaned = sanitize_upstream_message(upstream)
    return f": {cleaned}" if cleaned else ""


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
