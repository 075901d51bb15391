"""Anthropic's error documents: the ``error.type`` of a failed answer or of a stream's
``error`` event, mapped to our typed errors (see :mod:`rakka_inference.providers.anthropic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.errors import (
    BadRequest,
    Forbidden,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    QuotaExhausted,
    RateLimited,
    ServerError,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.wire.redact import error_label, sanitize_upstream_message

__all__ = ["error_document", "refine_error"]

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


def refine_error(error: InferenceError, body: bytes) -> InferenceError:
    """The generic HTTP classification of ``error``, sharpened by the body's error type."""
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


def _error_type(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return kind if isinstance(kind, str) else None


def error_document(document: Mapping[str, Any], provider: str) -> InferenceError:
    """The typed error for an ``error`` event (or error document) with HTTP status 200."""
    error = document.get("error")
    detail = error if isinstance(error, dict) else {}
    kind = str(detail.get("type") or "unknown_error")
    cleaned = sanitize_upstream_message(str(detail.get("message") or ""))
    label = error_label(kind) or "unknown_error"
    message = f"{provider} stream error {label}" + (f": {cleaned}" if cleaned else "")
    # A type we do not know, in a stream that had started, is upstream trouble.
    return _ERROR_TYPES.get(kind, ServerError)(message, provider=provider)
