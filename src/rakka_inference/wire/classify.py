"""Turn a provider's error response — status, headers, body — into a typed error.

This is the provider-neutral first pass; a provider adapter may refine the result (for
example Anthropic's "prompt is too long", which it signals only in message text). The
classification goes by status code and by *structured* fields of the JSON body, never by
the wording of a message:

=========  ===============================================================
status     error
=========  ===============================================================
400, 422   ``BadRequest``; ``ContextLengthExceeded`` or ``ContentFiltered``
           when the body's ``error.code`` (or ``error.type``) says so
401        ``Unauthorized`` (our credential: the session is rebuilt)
403        ``Forbidden``
404        ``UpstreamNotFound`` (our deployment is wrong, not the client)
408        ``Timeout(phase=FIRST_BYTE)``: the upstream gave up waiting on us
           and produced no response, which is what our first-byte deadline
           guards against; so it takes the same retry and breaker path
409        ``Conflict``
413        ``PayloadTooLarge``
429        ``RateLimited``
529        ``Overloaded`` (Anthropic); so is any 5xx whose body says
           ``"type": "overloaded_error"``
other 5xx  ``ServerError``
other 4xx  ``BadRequest`` (with the same structured detection as 400)
otherwise  ``ProtocolError``: a status outside 400 to 599 is not an error answer
=========  ===============================================================

The message names the provider, the status, the upstream's error type and code (OpenAI's and
Anthropic's ``error.type`` / ``error.code``, Gemini's ``error.status``) and quotes the
upstream's own message (``error.message`` in the OpenAI, Anthropic and Gemini shapes) through
:func:`sanitize_upstream_message`: control characters become spaces; key material (our key
echoed whole or masked, ``sk-…``, ``AIza…``, bearer tokens, JWTs), URLs and hostnames or
addresses (``myresource.openai.azure.com``, ``127.0.0.1:8443``) become :data:`REDACTED`; the
result is cut to :data:`MAX_UPSTREAM_MESSAGE_CHARS`. Headers never appear in it. Every provider
quotes upstream text through that one function. Operators read the upstream's full message
through :func:`upstream_log_text`, with only the key material masked.

When to retry is read from the headers by :func:`retry_after_seconds`, in this order:

1. ``retry-after-ms`` — milliseconds, possibly fractional (OpenAI, Anthropic);
2. ``retry-after`` — delta-seconds (``"7"`` or ``"1.5"``) or an HTTP-date, taken relative
   to the caller's wall clock and never negative;
3. for a 429 only: ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens``, OpenAI's
   Go-style durations (``"6m0s"``, ``"20ms"``); the larger of the two when both are set.

A header that cannot be parsed is skipped, never an exception: a misbehaving upstream must
not turn a clean 429 into a crash.
"""

from __future__ import annotations

import http
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from rakka_inference.core.errors import (
    BadRequest,
    Conflict,
    ContentFiltered,
    ContextLengthExceeded,
    Forbidden,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    TimeoutPhase,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.wire.redact import (
    error_label,
    operator_text,
    sanitize_upstream_message,
)
from rakka_inference.wire.retry_after import retry_after_seconds

__all__ = ["classify_http_error", "upstream_error", "upstream_log_text"]


# Bodies larger than this are not parsed as JSON: error bodies are small, and a large one is
# an HTML page from a proxy or a misrouted response.
_MAX_JSON_BODY_BYTES = 256 * 1024

_CONTEXT_LENGTH_CODES = frozenset({"context_length_exceeded"})
_CONTENT_FILTER_CODES = frozenset({"content_filter"})
_OVERLOADED_TYPES = frozenset({"overloaded_error"})

# Statuses whose error type does not depend on the body.
_BY_STATUS: Mapping[int, type[InferenceError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: UpstreamNotFound,
    409: Conflict,
    413: PayloadTooLarge,
    429: RateLimited,
    529: Overloaded,
}


def classify_http_error(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    provider: str | None,
    now: float,
    secrets: Collection[str] = (),
) -> InferenceError:
    """The typed error for an upstream's non-success HTTP answer.

    ``headers`` are the *response* headers, looked up case-insensitively. ``now`` is the
    wall clock in Unix seconds, used only to read an HTTP-date ``Retry-After``. ``secrets``
    are the credentials the request carried: should the upstream echo one, it is redacted.
    """
    detail = _ErrorDetail.parse(body)
    retry_after = retry_after_seconds(headers, now, rate_limit_reset=status == 429)
    message = _message(status, provider, detail, secrets)

    if not 400 <= status <= 599:
        return ProtocolError(
            f"{message} (not an error status)", provider=provider, upstream_status=status
        )
    kind = Timeout if status == 408 else _BY_STATUS.get(status)
    if kind is None:
        if status >= 500:
            kind = Overloaded if detail.has_type(_OVERLOADED_TYPES) else ServerError
        elif detail.has_code(_CONTEXT_LENGTH_CODES):
            kind = ContextLengthExceeded
        elif detail.has_code(_CONTENT_FILTER_CODES):
            kind = ContentFiltered
        else:
            kind = BadRequest
    param = detail.param if issubclass(kind, BadRequest) else None
    return upstream_error(
        kind,
        message,
        provider=provider,
        retry_after=retry_after,
        param=param,
        upstream_status=status,
    )


def upstream_error(
    kind: type[InferenceError],
    message: str,
    *,
    provider: str | None,
    retry_after: float | None,
    param: str | None = None,
    upstream_status: int | None = None,
) -> InferenceError:
    """An error of ``kind`` about an upstream's answer. A :class:`Timeout` is one of the
    first byte: the upstream gave up waiting and produced no answer (it takes no ``param``).
    """
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


# --------------------------------------------------------------------------- the body


@dataclass(frozen=True, slots=True)
class _ErrorDetail:
    """What the structured error body says, where it says anything."""

    message: str | None = None
    code: str | None = None
    type: str | None = None
    param: str | None = None
    status: str | None = None
    """Gemini's ``error.status`` (``"UNAUTHENTICATED"``): shown, never classified on."""

    def has_code(self, codes: frozenset[str]) -> bool:
        return self.code in codes or self.type in codes

    def has_type(self, types: frozenset[str]) -> bool:
        return self.type in types

    @classmethod
    def parse(cls, body: bytes) -> _ErrorDetail:
        """Read the ``error`` object of the OpenAI, Anthropic or Gemini shapes.

        OpenAI: ``{"error": {"message", "type", "param", "code"}}``; Anthropic:
        ``{"type": "error", "error": {"type", "message"}}``; Gemini:
        ``{"error": {"code": 400, "message", "status"}}``, sometimes wrapped in a list.
        Some OpenAI-compatible servers send ``{"error": "text"}`` or ``{"message": "text"}``.
        A body that is not JSON yields its text, unless it is markup.
        """
        document = _json(body)
        if isinstance(document, list) and document:
            document = document[0]
        if isinstance(document, dict):
            error = document.get("error")
            if isinstance(error, dict):
                return cls(
                    message=_text(error.get("message")),
                    code=_text(error.get("code")),
                    type=_text(error.get("type")),
                    param=_text(error.get("param")),
                    status=_text(error.get("status")),
                )
            return cls(message=_text(error) or _text(document.get("message")))
        if isinstance(document, str):
            return cls(message=_text(document))
        if document is _NOT_JSON and body:
            text = body[:_MAX_JSON_BODY_BYTES].decode("utf-8", errors="replace").strip()
            if text and not text.startswith("<"):
                return cls(message=text)
        return cls()


_NOT_JSON = object()


def _json(body: bytes) -> Any:
    if len(body) > _MAX_JSON_BODY_BYTES:
        return _NOT_JSON
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _message(
    status: int, provider: str | None, detail: _ErrorDetail, secrets: Collection[str]
) -> str:
    who = provider or "upstream"
    try:
        reason = f" {http.HTTPStatus(status).phrase}"
    except ValueError:
        reason = ""
    head = f"{who} returned HTTP {status}{reason}"
    label = error_label(detail.type or detail.status, detail.code)
    if label:
        head = f"{head} ({label})"
    if detail.message is None:
        return head
    cleaned = sanitize_upstream_message(detail.message, secrets)
    return f"{head}: {cleaned}" if cleaned else head


def upstream_log_text(body: bytes, secrets: Collection[str] = ()) -> str | None:
    """The upstream's own message in an error ``body``, for the operator's log: whole (up to
    a few kilobytes), URLs and hostnames kept, key material masked; None when it has none."""
    message = _ErrorDetail.parse(body).message
    return None if message is None else operator_text(message, secrets)
