"""What of an upstream's error text a client may read, and what an operator's log keeps.

Providers echo our own request back in their errors: a masked API key ("Incorrect API key
provided: sk-pr***wxyz"), the endpoint's URL, an internal hostname. A client sees the
message with key material, URLs and hostnames replaced by :data:`REDACTED`
(:func:`sanitize_upstream_message`); the operator's log keeps URLs and hosts but never key
material (:func:`operator_text`). Every provider quotes upstream text through these, and
only through these. Each pattern is anchored and its repeats bounded, so a scan is linear in
the (already capped) text.
"""

from __future__ import annotations

import re
from collections.abc import Collection

__all__ = [
    "MAX_UPSTREAM_MESSAGE_CHARS",
    "REDACTED",
    "error_label",
    "operator_text",
    "printable",
    "redact_secrets",
    "sanitize_upstream_message",
]

MAX_UPSTREAM_MESSAGE_CHARS = 300
"""The upstream's own message is cut to this many characters in our error message."""

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


def operator_text(message: str, secrets: Collection[str] = ()) -> str | None:
    """An upstream's message for the operator's log: whole (up to a few kilobytes), URLs and
    hostnames kept, key material masked; None when nothing printable is left."""
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


def printable(upstream: str) -> str:
    """An upstream's message fit to quote: control characters become spaces, and each run
    of whitespace one space."""
    return " ".join("".join(c if c.isprintable() else " " for c in upstream).split())
