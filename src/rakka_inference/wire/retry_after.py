"""How long an upstream asks us to wait: ``Retry-After`` (seconds or an HTTP date),
``retry-after-ms``, OpenAI's ``x-ratelimit-reset-*`` headers, and the duration strings they
use ("1m30s", "250ms")."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["parse_duration", "retry_after_seconds"]


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
