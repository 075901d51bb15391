"""The vocabulary of rate limiting: keys, permits, denials and utilisation snapshots.

Every limiter (exact, approximate, strict) speaks these types; :class:`PermitSource` is
the interface a worker asks for permits. They are re-exported by
:mod:`rakka_inference.remote.ratelimit`, which is where callers import them from: its
``__all__`` is the one list of them (this module keeps none, so the list is written once).

Tokens: estimate, then settle
-----------------------------
A permit is charged the caller's estimate (prompt estimate + ``max_tokens``, one number)
when granted. ``permit.settle(actual)`` replaces the charge by the actual usage (the
window frees the difference at once); ``permit.release()`` ends a cancelled or failed
call and keeps the estimate charged, since the provider may have counted it. Either one
ends the permit: it returns its concurrency slot exactly once, and any later
``settle``/``release`` is a no-op. The window guarantee holds for the settled charges
whenever ``actual <= estimate``; a call that uses more than its estimate is charged the
excess as well (later admissions see it), but the excess itself could not be refused.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from rakka_inference.core.secrets import Secret

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

WINDOW_SECONDS = 60.0
CONCURRENCY_RETRY_HINT = 1.0
"""Seconds a concurrency denial suggests: a slot frees when any call ends, which is unknown."""


class LimiterKey(NamedTuple):
    """What a provider rate-limits: one API key (by fingerprint) on one model."""

    provider: str
    key_fingerprint: str
    model: str

    @classmethod
    def for_credential(cls, provider: str, credential: Secret, model: str) -> LimiterKey:
        return cls(provider, credential.fingerprint(), model)


class DenialReason(enum.StrEnum):
    CONCURRENCY = "concurrent_requests"
    REQUESTS = "requests_per_minute"
    TOKENS = "tokens_per_minute"
    RETRY_AFTER = "retry_after"
    """The provider said Retry-After; the whole key waits."""
    TOO_LARGE = "too_large"
    """The request alone needs more tokens than the limit allows: it can never pass."""
    SHARE = "node_share"
    """Approximate mode: this node has used its share of the current sync epoch."""


class Denial(NamedTuple):
    """No permit now. ``retry_at`` (clock time) is the earliest a permit could be had."""

    retry_at: float
    reason: DenialReason


class _PermitOwner(Protocol):
    def _finish(self, permit: Permit, actual_tokens: int | None) -> None: ...


class Permit:
    """The right to make one provider call. End it exactly once: settle or release.

    ``tokens`` is what the window is charged now: the estimate, then the actual usage once
    settled. A permit is also a context manager that releases it on exit unless settled.
    """

    __slots__ = (
        "_done",
        "_owner",
        "blocked_s",
        "estimated_tokens",
        "granted_at",
        "slot",
        "tokens",
    )

    def __init__(self, owner: _PermitOwner, granted_at: float, tokens: int, slot: int) -> None:
        self._owner = owner
        self._done = False
        self.granted_at = granted_at
        self.estimated_tokens = tokens
        self.tokens = tokens
        self.slot = slot
        """The owner's bookkeeping: log sequence number (exact) or time bucket (approximate)."""
        self.blocked_s = 0.0
        """Seconds ``acquire`` waited while the key was blocked by a provider's Retry-After:
        spent from the request's wait budget (see :mod:`.ratelimit_waiting`)."""

    @property
    def released(self) -> bool:
        return self._done

    def settle(self, actual_tokens: int) -> None:
        """End the call with its actual token usage. No-op if the permit already ended."""
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        if not self._done:
            self._done = True
            self._owner._finish(self, actual_tokens)

    def release(self) -> None:
        """End a cancelled or failed call; the estimate stays charged. No-op if ended."""
        if not self._done:
            self._done = True
            self._owner._finish(self, None)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "ended" if self._done else "held"
        return f"Permit(tokens={self.tokens}, granted_at={self.granted_at}, {state})"


@dataclass(frozen=True, slots=True)
class RateLimitUtilization:
    """A point-in-time snapshot of one key's limiter, for metrics and the admin API."""

    key: LimiterKey
    mode: str
    """``exact`` (one node or the strict authority) or ``approximate`` (CRDT)."""
    requests_in_window: int
    tokens_in_window: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    effective_requests_per_minute: int | None
    """After auto-tune; equal to the configured rate when no 429 was seen recently."""
    effective_tokens_per_minute: int | None
    concurrent_in_use: int
    concurrent_limit: int | None
    waiters: int
    rate_factor: float
    blocked_for: float
    """Seconds left of a provider Retry-After block (0 when not blocked)."""
    over_spend_bound_requests: float = 0.0
    """Worst-case requests admitted above the limit in any window (0: exact)."""
    over_spend_bound_tokens: float = 0.0

    @property
    def request_utilization(self) -> float | None:
        """Requests in the window over the configured RPM."""
        rpm = self.requests_per_minute
        return None if rpm is None else self.requests_in_window / rpm

    @property
    def token_utilization(self) -> float | None:
        tpm = self.tokens_per_minute
        return None if tpm is None else self.tokens_in_window / tpm


class PermitSource(Protocol):
    """What a worker asks for permits. Exact, approximate and strict limiters all are one;
    a remote strict authority (a cluster singleton) will be one too.

    ``acquire`` waits in line until ``deadline`` (clock time), but a provider's Retry-After
    block of the key only as long as ``wait_budget`` (seconds left of the request's wait
    budget) allows: a longer block is a :class:`~rakka_inference.core.errors.RateLimitExceeded`
    at once. :class:`~rakka_inference.remote.ratelimit_waiting.WaitingLimiter` is the one
    implementation of that waiting."""

    @property
    def key(self) -> LimiterKey: ...

    def try_acquire(self, tokens: int) -> Permit | Denial: ...

    async def acquire(
        self, tokens: int, *, deadline: float, wait_budget: float = math.inf
    ) -> Permit: ...

    def on_rate_limited(self, retry_after: float | None) -> None: ...

    def utilization(self) -> RateLimitUtilization: ...
