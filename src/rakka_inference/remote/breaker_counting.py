"""How a circuit breaker counts: pure helpers for :mod:`rakka_inference.remote.breaker`.

- :class:`FailureWindow` — finished calls and counted failures over a sliding window, in
  ten time buckets, so memory is bounded and the window's edge is exact to a tenth of its
  length. The breaker trips on it when ``failure_rate_threshold`` is set.
- :func:`failure_label`, :func:`streak_cause` and :func:`describe_failure` — how counted
  failures are named in a transition's cause ("opened after 5 consecutive 503 responses",
  "probe failed: ServerError 503").
- :func:`validate_config` — the checks a :class:`CircuitBreakerConfig` must pass.

No clock is read here: every time is passed in, on the breaker's monotonic clock.
"""

from __future__ import annotations

from collections import Counter, deque

from rakka_inference.core.errors import InferenceError, NetworkError, ProtocolError, Timeout
from rakka_inference.core.policies import CircuitBreakerConfig

__all__ = [
    "FailureWindow",
    "describe_failure",
    "failure_label",
    "format_seconds",
    "streak_cause",
    "validate_config",
]


class FailureWindow:
    """Finished calls and counted failures over a sliding window, in ten time buckets."""

    BUCKETS = 10

    __slots__ = ("_buckets", "_width", "length_s")

    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self._width = length_s / self.BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]

    def record(self, now: float, *, failed: bool) -> None:
        index = self._expire(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        bucket[2] += failed

    def totals(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def trip_cause(self, now: float, config: CircuitBreakerConfig) -> str | None:
        """Why the circuit trips on the failure rate now, or None when it does not."""
        threshold = config.failure_rate_threshold
        assert threshold is not None
        calls, failures = self.totals(now)
        if calls < config.failure_rate_min_calls or failures < threshold * calls:
            return None
        period = format_seconds(self.length_s)
        return f"failure rate {failures / calls:.0%} over {period} ({calls} calls)"

    def clear(self) -> None:
        self._buckets.clear()

    def _expire(self, now: float) -> int:
        buckets = self._buckets
        index = int(now // self._width)
        if buckets:
            index = max(index, buckets[-1][0])  # a clock never goes back; be safe if it does
        while buckets and buckets[0][0] <= index - self.BUCKETS:
            buckets.popleft()
        return index


def validate_config(config: CircuitBreakerConfig) -> None:
    """ValueError naming every problem with ``config``; None when it is sound."""
    problems = [
        message
        for failed, message in (
            (config.failure_threshold < 1, "failure_threshold must be >= 1"),
            (config.open_duration_ms <= 0, "open_duration_ms must be > 0"),
            (
                config.max_open_duration_ms < config.open_duration_ms,
                "max_open_duration_ms must be >= open_duration_ms",
            ),
            (config.half_open_max_probes < 1, "half_open_max_probes must be >= 1"),
            (
                config.failure_rate_threshold is not None
                and not 0 < config.failure_rate_threshold <= 1,
                "failure_rate_threshold must be in (0, 1]",
            ),
            (config.failure_rate_window_ms <= 0, "failure_rate_window_ms must be > 0"),
            (config.failure_rate_min_calls < 1, "failure_rate_min_calls must be >= 1"),
        )
        if failed
    ]
    if problems:
        raise ValueError("; ".join(problems))


def failure_label(error: InferenceError) -> str:
    """How a failure is named in a trip's cause: a status code, or what kind of failure."""
    if isinstance(error, Timeout):
        return "timeout"
    if isinstance(error, NetworkError):
        return "network error"
    if isinstance(error, ProtocolError):
        return "protocol error"
    if error.upstream_status is not None:
        return str(error.upstream_status)
    return type(error).__name__


def streak_cause(streak: Counter[str]) -> str:
    """Why a streak of counted failures (labels and their counts) tripped the circuit."""
    count = streak.total()
    if len(streak) == 1:
        (label,) = streak
        if label.isdigit():
            return f"opened after {count} consecutive {label} responses"
    parts = ", ".join(f"{label} ×{n}" for label, n in streak.most_common())  # noqa: RUF001
    return f"opened after {count} consecutive failures ({parts})"


def describe_failure(error: InferenceError) -> str:
    """A failed probe's error in a cause: its class, with the status or timeout phase."""
    name = type(error).__name__
    if isinstance(error, Timeout):
        return f"{name} ({error.phase.value})"
    return name if error.upstream_status is None else f"{name} {error.upstream_status}"


def format_seconds(value: float) -> str:
    """Seconds as a cause writes them: ``30s``, ``1.5s``, ``0.25s``."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"
