"""When to try a failed upstream call again, and after how long (DESIGN §2, §3).

Pure policy: no sleeping, no clock. The random source for jitter is passed in, so a test
seeds it and a caller shares one per worker.

Backoff for retry number ``n`` (1 is the first retry)::

    base = min(max_backoff, initial_backoff * multiplier ** (n - 1))
    NONE   → base
    FULL   → uniform(0, base)
    EQUAL  → base/2 + uniform(0, base/2)          (the default)

:func:`decide_retry` applies the rules in this order; the first that matches decides:

1. the first byte already went to the client → give up with the error as is; the caller
   ends the stream with :class:`StreamInterrupted` (content is never duplicated);
2. the deployment is not idempotent → give up: such a request is sent at most once. That
   holds for a 401 too, although the provider did not process the request: the deployment
   promised "at most once" and the next request gets the rebuilt session anyway;
3. more than ``max_retries`` retries → give up; the session rebuild counts as a retry;
4. ``Unauthorized`` → rebuild the session and retry at once, once per request; a second
   401 after the rebuild gives up;
5. the error is not ``retryable`` → give up;
6. ``respect_retry_after`` and the upstream asked for longer than ``max_retry_after_ms``
   → give up at once, so the caller can fall back to another deployment instead of
   holding the request; a ``RateLimited`` then becomes :class:`RateLimitExceeded`;
7. otherwise retry after ``max(backoff, retry_after)``.

A ``RateLimited`` that gives up for running out of retries (3) or for a long Retry-After
(6) is raised as :class:`RateLimitExceeded` carrying the upstream's last ``retry_after``;
server errors and timeouts keep their own type.

:class:`RetryBudget` keeps the count for one request so callers only say what failed.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from rakka_inference.core.errors import (
    InferenceError,
    RateLimited,
    RateLimitExceeded,
    Unauthorized,
)
from rakka_inference.core.policies import Jitter, RetryPolicy

__all__ = [
    "RetryAction",
    "RetryBudget",
    "RetryDecision",
    "backoff_delay",
    "decide_retry",
]


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based), jittered per the policy."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    cap = policy.max_backoff_ms / 1000.0
    try:
        grown = policy.initial_backoff_ms / 1000.0 * policy.backoff_multiplier ** (attempt - 1)
    except OverflowError:
        grown = cap
    base = min(cap, grown)
    if policy.jitter is Jitter.FULL:
        return rng.uniform(0.0, base)
    if policy.jitter is Jitter.EQUAL:
        half = base / 2.0
        return half + rng.uniform(0.0, half)
    return base


class RetryAction(enum.Enum):
    RETRY = "retry"
    """Send the request again after ``delay_s``."""
    REBUILD_SESSION = "rebuild_session"
    """Rebuild the session (re-read the credential), then send the request again."""
    GIVE_UP = "give_up"
    """Raise ``error``."""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt. Build one with the class methods."""

    action: RetryAction
    delay_s: float = 0.0
    error: InferenceError | None = None
    """The error to raise; set exactly when giving up."""
    reason: str = ""
    """Why, in words, for logs."""

    @classmethod
    def retry(cls, delay_s: float, reason: str = "retryable error") -> RetryDecision:
        return cls(RetryAction.RETRY, delay_s=delay_s, reason=reason)

    @classmethod
    def rebuild_session(cls) -> RetryDecision:
        return cls(RetryAction.REBUILD_SESSION, reason="upstream rejected the credential")

    @classmethod
    def give_up(cls, error: InferenceError, reason: str) -> RetryDecision:
        return cls(RetryAction.GIVE_UP, error=error, reason=reason)

    @property
    def retries(self) -> bool:
        """True when the request is sent again (after a plain wait or a session rebuild)."""
        return self.action is not RetryAction.GIVE_UP


def decide_retry(
    error: InferenceError,
    *,
    attempt: int,
    policy: RetryPolicy,
    idempotent: bool,
    first_byte_sent: bool,
    rng: random.Random,
    session_rebuilt: bool = False,
) -> RetryDecision:
    """Decide whether retry number ``attempt`` (1-based) happens, after ``error``.

    ``session_rebuilt`` says this request already had its one session rebuild.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if first_byte_sent:
        return RetryDecision.give_up(error, "the first byte already reached the client")
    if not idempotent:
        return RetryDecision.give_up(error, "the deployment is not idempotent")
    if attempt > policy.max_retries:
        return RetryDecision.give_up(
            _final(error), f"retries exhausted ({policy.max_retries} allowed)"
        )
    if isinstance(error, Unauthorized):
        if session_rebuilt:
            return RetryDecision.give_up(error, "credential rejected again after a rebuild")
        return RetryDecision.rebuild_session()
    if not error.retryable:
        return RetryDecision.give_up(error, f"{type(error).__name__} is not retryable")
    delay = backoff_delay(policy, attempt, rng)
    retry_after = error.retry_after
    if policy.respect_retry_after and retry_after is not None:
        limit = policy.max_retry_after_ms / 1000.0
        if retry_after > limit:
            return RetryDecision.give_up(
                _final(error, f"retry-after {retry_after:g}s exceeds the {limit:g}s limit"),
                "retry-after too long",
            )
        if retry_after > delay:
            return RetryDecision.retry(retry_after, "upstream retry-after")
    return RetryDecision.retry(delay)


def _final(error: InferenceError, why: str | None = None) -> InferenceError:
    """The error to raise on giving up: a RateLimited becomes RateLimitExceeded."""
    if not isinstance(error, RateLimited):
        return error
    detail = why or "retries exhausted"
    final = RateLimitExceeded(
        f"{error.message} ({detail})",
        provider=error.provider,
        retry_after=error.retry_after,
        upstream_status=error.upstream_status,
    )
    final.__cause__ = error
    return final


class RetryBudget:
    """The retry state of one request: how many retries so far, and whether the session
    was rebuilt. Call :meth:`decide` after each failed attempt."""

    __slots__ = ("_idempotent", "_policy", "_rng", "retries", "session_rebuilt")

    def __init__(self, policy: RetryPolicy, *, idempotent: bool, rng: random.Random) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._rng = rng
        self.retries = 0
        """Retries granted so far (session rebuilds included)."""
        self.session_rebuilt = False

    def decide(self, error: InferenceError, *, first_byte_sent: bool) -> RetryDecision:
        decision = decide_retry(
            error,
            attempt=self.retries + 1,
            policy=self._policy,
            idempotent=self._idempotent,
            first_byte_sent=first_byte_sent,
            rng=self._rng,
            session_rebuilt=self.session_rebuilt,
        )
        if decision.retries:
            self.retries += 1
        if decision.action is RetryAction.REBUILD_SESSION:
            self.session_rebuilt = True
        return decision
