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
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
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

__all__ = [
    "MAX_UPSTREAM_MESSAGE_CHARS",
    "REDACTED",
    "classify_http_error",
    "error_label",
    "parse_duration",
    "printable",
    "redact_secrets",
    "retry_after_seconds",
    "sanitize_upstream_message",
    "upstream_error",
    "upstream_log_text",
]

MAX_UPSTREAM_MESSAGE_CHARS = 300
"""The upstream's own message is cut to this many characters in our error message."""

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


def printable(upstream: str) -> str:
    """An upstream's message fit to quote: control characters become spaces, and each run
    of whitespace one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in upstream).split())


# --------------------------------------------------------------------------- redaction

REDACTED = "[redacted]"
"""What key material, URLs and hostnames in an upstream's message are replaced with."""

# Upstream text longer than this is cut before the patterns run: enough for any message we
# show or log, and it bounds the work on a hostile body.
_MAX_SCANNED_CHARS = 8192
_MAX_LOGGED_CHARS = 4096
# Shorter "secrets" are not searched for: they would redact ordinary words.
_MIN_SECRET_CHARS = 8

# Every pattern starts after a lookbehind that fails inside a token, and repeats are bounded,
# so a scan is linear in the text.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # An authorization header's value quoted back.
    (re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]{1,4096}"), rf"\1 {REDACTED}"),
    # A key after its name: "Incorrect API key provided: …", "x-api-key: …", "token=…".
    (
        re.compile(
            r"(?i)\b((?:x-goog-|x-)?api[-_ ]?key|access[-_ ]?token|secret|password)"
            r"((?: provided)?\s{0,4}[:=]\s{0,4}[\"']?)[^\s\"',;]{0,4095}[^\s\"',;.]"
        ),
        rf"\1\2{REDACTED}",
    ),
    # OpenAI and Anthropic keys (sk-…, sk-proj-…, sk-ant-api03-…), whole or masked.
    (re.compile(r"(?<![\w-])sk-[\w*.…-]{2,4095}[\w*…-]"), REDACTED),
    # Google API keys and OAuth access tokens.
    (re.compile(r"(?<![\w-])(?:AIza[\w-]{8,4096}|ya29\.[\w.-]{7,4095}[\w-])"), REDACTED),
    # JSON web tokens.
    (re.compile(r"(?<![\w-])eyJ[\w-]{4,4096}\.[\w-]{4,4096}\.?[\w-]{0,4096}"), REDACTED),
    # Any key as providers mask it: its ends around asterisks or an ellipsis ("abc***wxyz").
    (re.compile(r"(?<![\w.-])[\w-]{0,64}(?:\*{3,64}|…|\.{3})[\w-]{2,64}"), REDACTED),
)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT = r"(?::\d{1,5})?"
# Top-level domains a hostname is recognized by; a bare "a.b" is too often a field path
# ("messages.0.content", "function.name") to redact on shape alone.
_TLDS = (
    "com|net|org|io|ai|dev|app|cloud|co|info|biz|xyz|tech|site|run|sh|me|gov|edu|mil|int|"
    "us|uk|eu|de|fr|nl|se|ch|jp|cn|in|au|ca|br|ru|kr|sg|ie|"
    "internal|local|localdomain|lan|corp|home|intra|intranet|private|svc|cluster|"
    "test|example|invalid|localhost|arpa"
)
_URL = re.compile(r"(?i)(?<![\w.+-])[a-z][a-z0-9+.-]{0,30}://[^\s\"'<>`]{1,4096}")
_URL_TAIL = ".,;:!?)]}"
_HOST_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\[[0-9A-Fa-f:.%\w]{2,64}\]" + _PORT),  # [::1]:8443
    re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}" + _PORT + r"(?![\w-])"),
    re.compile(r"(?i)(?<![\w.-])localhost" + _PORT + r"(?![\w-])"),
    re.compile(rf"(?i)(?<![\w.-])(?:{_LABEL}\.){{1,16}}{_LABEL}:\d{{1,5}}(?![\w-])"),
    re.compile(rf"(?i)(?<![\w.-])(?:{_LABEL}\.){{1,16}}(?:{_TLDS}){_PORT}(?![\w-])"),
)
_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]{1,64}")


def redact_secrets(text: str, secrets: Collection[str] = ()) -> str:
    """``text`` with its key material replaced by :data:`REDACTED`: each of ``secrets`` (the
    credentials we sent) and anything shaped like a key, whole or masked (``sk-…``,
    ``AIza…``, ``abc***wxyz``, bearer tokens, JWTs). URLs and hostnames stay: this is the
    operator's view."""
    text = _replace_known(text, secrets)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def sanitize_upstream_message(upstream: str, secrets: Collection[str] = ()) -> str:
    """An upstream's message fit for a client: :func:`printable`, its key material, URLs and
    hostnames (or addresses, with their ports) replaced by :data:`REDACTED`, and cut to
    :data:`MAX_UPSTREAM_MESSAGE_CHARS` (the last of them an ellipsis when cut).

    Every provider quotes upstream text through this function, and only through it.
    """
    text = _replace_known(printable(upstream[:_MAX_SCANNED_CHARS]), secrets)
    # URLs first: a key in a query string goes with its URL, not before it.
    text = redact_secrets(_URL.sub(_redact_url, text))
    for pattern in _HOST_PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _cut(text, MAX_UPSTREAM_MESSAGE_CHARS)


def upstream_log_text(body: bytes, secrets: Collection[str] = ()) -> str | None:
    """The upstream's own message in an error ``body``, for the operator's log: whole (up to
    a few kilobytes), URLs and hostnames kept, key material masked; None when it has none."""
    message = _ErrorDetail.parse(body).message
    if message is None:
        return None
    text = redact_secrets(printable(message[:_MAX_SCANNED_CHARS]), secrets)
    return _cut(text, _MAX_LOGGED_CHARS) or None


def error_label(kind: object, code: object = None) -> str:
    """The upstream's error type and code, as a client may read them (``"type, code"``).

    Only identifiers are shown: a value that is not one (text, a URL) is left out, and so is
    a numeric code, which only repeats the status.
    """
    parts = [
        value
        for value in (kind, code)
        if isinstance(value, str) and _IDENTIFIER.fullmatch(value) and not value.isdigit()
    ]
    return ", ".join(dict.fromkeys(parts))


def _replace_known(text: str, secrets: Collection[str]) -> str:
    for secret in secrets:
        if len(secret) >= _MIN_SECRET_CHARS:
            text = text.replace(secret, REDACTED)
    return text


def _redact_url(match: re.Match[str]) -> str:
    url = match.group(0)
    kept = url.rstrip(_URL_TAIL)
    return REDACTED + url[len(kept) :]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- retry-after


def retry_after_seconds(
    headers: Mapping[str, str], now: float, *, rate_limit_reset: bool = True
) -> float | None:
    """Seconds the upstream asks us to wait, or None when it does not say (or says garbage).

    ``now`` is the wall clock in Unix seconds, for an HTTP-date ``Retry-After``.
    ``rate_limit_reset`` also reads OpenAI's ``x-ratelimit-reset-*`` headers; they come on
    every response, so they mean "wait" only on a 429.
    """
    lowered = {str(name).lower(): value for name, value in headers.items()}
    millis = _non_negative_number(lowered.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    retry_after = lowered.get("retry-after")
    if isinstance(retry_after, str):
        seconds = _non_negative_number(retry_after)
        if seconds is None:
            seconds = _seconds_until_http_date(retry_after, now)
        if seconds is not None:
            return seconds
    if rate_limit_reset:
        resets = [
            duration
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
            if (duration := parse_duration(lowered.get(name))) is not None
        ]
        if resets:
            return max(resets)
    return None


_NUMBER = re.compile(r"\d{1,30}(?:\.\d{1,30})?")


def _non_negative_number(value: object) -> float | None:
    """A plain decimal number (no sign, exponent, ``inf`` or ``_``), or None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _NUMBER.fullmatch(text) is None:
        return None
    return float(text)


def _seconds_until_http_date(value: str, now: float) -> float | None:
    try:
        moment = parsedate_to_datetime(value.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        target = moment.timestamp()
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return max(0.0, target - now)


# Go's time.Duration.String() units, longest first so "ms" wins over "m".
_DURATION_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # Go writes the micro sign
    "μs": 1e-6,  # and some servers the Greek mu
    "ms": 1e-3,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
}
_DURATION_PART = re.compile(
    r"(\d{1,30}(?:\.\d{0,30})?|\.\d{1,30})(" + "|".join(_DURATION_UNITS) + r")"
)
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")
_MAX_DURATION_CHARS = 64


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``).

    ``"0"`` is zero. Signs, spaces between parts, unknown units and anything else give None.
    """
    if not isinstance(text, str):
        return None
    value = text.strip()
    if value == "0":
        return 0.0
    if len(value) > _MAX_DURATION_CHARS or _DURATION.fullmatch(value) is None:
        return None
    total = sum(
        float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(value)
    )
    return total if math.isfinite(total) else None
