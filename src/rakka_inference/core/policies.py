"""The policies a deployment is configured with, with the defaults of DESIGN §3: rate
limits, retries, circuit breaking, timeouts, serving capacity, budgets and prices.

Everything here is an immutable value. Durations are integers in milliseconds and their
names end in ``_ms``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MAX_CONCURRENT",
    "Budget",
    "BudgetAction",
    "CapacityPolicy",
    "CircuitBreakerConfig",
    "Jitter",
    "ModelPrice",
    "RateLimits",
    "RetryPolicy",
    "Serving",
    "Timeouts",
]

MAX_CONCURRENT = 4096
"""The most requests one replica runs at once (``serving.max_concurrent``): a remote replica
runs a worker per request it may run, so the count is memory, and time to stop."""


class Jitter(enum.StrEnum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


class CapacityPolicy(enum.StrEnum):
    """What a full worker pool does with a new request."""

    QUEUE = "queue"
    REJECT = "reject"
    FALLBACK = "fallback"


class BudgetAction(enum.StrEnum):
    REJECT = "reject"
    WARN = "warn"
    THROTTLE = "throttle"


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Per (provider, API key, model). ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    strict: bool = False
    """One exact authority per key instead of the approximate CRDT limiter."""
    smoothing: bool = False
    """Spread the per-minute allowance over the minute instead of allowing it as a burst."""
    sync_interval_ms: int = 1000
    """How often the approximate limiter exchanges spend with other nodes."""

    @property
    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_retries: int = 3
    initial_backoff_ms: int = 1000
    max_backoff_ms: int = 60_000
    backoff_multiplier: float = 2.0
    jitter: Jitter = Jitter.EQUAL
    respect_retry_after: bool = True
    max_retry_after_ms: int = 60_000
    """A Retry-After longer than this fails at once with RateLimitExceeded (so the caller
    can fall back) instead of holding the request."""
    max_wait_ms: int = 10_000
    """The wait budget of one request: the most it may wait between its attempts in all,
    backoff and Retry-After together. A wait that would pass it is not started: a 429 then
    fails at once with RateLimitExceeded carrying the upstream's remaining Retry-After,
    other errors as they are. A client may ask for less, never more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    failure_threshold: int = 10
    open_duration_ms: int = 30_000
    max_open_duration_ms: int = 300_000
    half_open_max_probes: int = 1
    failure_rate_threshold: float | None = None
    """Optional second trigger: open when this fraction of calls in the window failed."""
    failure_rate_window_ms: int = 60_000
    failure_rate_min_calls: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect_timeout_ms: int = 5000
    request_timeout_ms: int | None = None
    """Time to first byte. Unset means 30 s for unary requests and 60 s for streams."""
    read_timeout_ms: int = 10_000
    """Longest silence between bytes of a response."""
    total_timeout_ms: int | None = None
    """Optional cap on a whole request. Unset: a healthy long stream is never cut."""

    def first_byte_ms(self, *, streaming: bool) -> int:
        if self.request_timeout_ms is not None:
            return self.request_timeout_ms
        return 60_000 if streaming else 30_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Serving:
    max_concurrent: int = 32
    """Requests one replica runs at once (a remote replica: its workers), 1 to
    :data:`MAX_CONCURRENT`."""
    queue_capacity: int = 1024
    queue_timeout_ms: int = 30_000
    on_capacity_exhausted: CapacityPolicy = CapacityPolicy.QUEUE


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Rolling spend limits in USD. At least one limit is set."""

    max_spend_per_hour: float | None = None
    max_spend_per_day: float | None = None
    on_exceeded: BudgetAction = BudgetAction.REJECT


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """USD per million tokens. Cached input defaults to the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None

    @property
    def cached_input(self) -> float:
        return (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else (self.cached_input_per_mtok)
        )
