"""When to try a failed upstream call again, and after how long (DESIGN §2, §3).

Pure policy: no sleeping, no clock. The random source for jitter is passed in, so a test
seeds it and a caller shares one per worker; the time is passed in too, read from the
caller's injected clock.

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
7. the wait — ``max(backoff, retry_after)`` — would take the request past its **wait
   budget** → give up at once, without waiting. The budget is the total time one request
   may spend waiting between its attempts, backoff and Retry-After together: the policy's
   ``max_wait_ms``, or less when the client asked for less (:func:`wait_budget`; never
   more). So a long Retry-After is answered while the client still listens, and the caller
   can fall back to another deployment. A wait before the first attempt, for the permit of
   a key that an earlier 429 blocked, spends from the same budget
   (:meth:`RetryBudget.spend`; the limiter refuses such a wait that would not fit it);
8. otherwise retry after ``max(backoff, retry_after)``.

A ``RateLimited`` that gives up for running out of retries (3), for a long Retry-After
(6) or for the wait budget (7) is raised as :class:`RateLimitExceeded` (a 429 to the
client) carrying the upstream's ``retry_after``; server errors and timeouts keep their own
type.

:class:`RetryBudget` keeps the state of one request — retries so far, the session
rebuild, the time waited, and when the upstream said to come back — so callers only say
what failed and when. When it gives up on a 429, the ``retry_after`` it raises is the time
*left* until the upstream said to come back, on the caller's clock, rounded up to whole
seconds (the ``Retry-After`` a client can act on); with no such time left, the wait it
refused.
"""

from __future__ import annotations

import enum
import math
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
    "wait_budget",
    "whole_seconds",
]


def wait_budget(policy: RetryPolicy, requested_s: float | None = None) -> float:
    """Seconds one request may wait between its attempts in all: the policy's
    ``max_wait_ms``, or ``requested_s`` (the client's own budget) when that is shorter. A
    client may shorten its budget, never lengthen it; a negative or non-finite request is
    ignored."""
    configured = policy.max_wait_ms / 1000.0
    if requested_s is None or not math.isfinite(requested_s) or requested_s < 0:
        return configured
    return min(configured, requested_s)


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
    waited_s: float = 0.0,
    max_wait_s: float | None = None,
    come_back_in: float | None = None,
) -> RetryDecision:
    """Decide whether retry number ``attempt`` (1-based) happens, after ``error``.

    ``session_rebuilt`` says this request already had its one session rebuild. ``waited_s``
    is how long it already waited between attempts, against a wait budget of
    ``max_wait_s`` (``policy.max_wait_ms`` when None). ``come_back_in`` is the time left
    until the upstream said to come back, for the ``retry_after`` of a
    :class:`RateLimitExceeded` (when None: the error's own ``retry_after``).
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if first_byte_sent:
        return RetryDecision.give_up(error, "the first byte already reached the client")
    if not idempotent:
        return RetryDecision.give_up(error, "the deployment is not idempotent")
    if come_back_in is None:
        come_back_in = error.retry_after
    if attempt > policy.max_retries:
        return RetryDecision.give_up(
            _final(error, "retries exhausted", come_back_in),
            f"retries exhausted ({policy.max_retries} allowed)",
        )
    if isinstance(error, Unauthorized):
        if session_rebuilt:
            return RetryDecision.give_up(error, "credential rejected again after a rebuild")
        return RetryDecision.rebuild_session()
    if not error.retryable:
        return RetryDecision.give_up(error, f"{type(error).__name__} is not retryable")
    delay = backoff_delay(policy, attempt, rng)
    reason = "retryable error"
    retry_after = error.retry_after
    if policy.respect_retry_after and retry_after is not None:
        limit = policy.max_retry_after_ms / 1000.0
        if retry_after > limit:
            why = f"retry-after {retry_after:g}s exceeds the {limit:g}s limit"
            return RetryDecision.give_up(_final(error, why, come_back_in), "retry-after too long")
        if retry_after > delay:
            delay, reason = retry_after, "upstream retry-after"
    budget = wait_budget(policy) if max_wait_s is None else max_wait_s
    if waited_s + delay > budget:
        left = max(0.0, budget - waited_s)
        why = f"a {delay:g}s wait exceeds the {left:g}s left of the request's wait budget"
        if come_back_in is None or come_back_in <= 0:
            come_back_in = delay  # no time from the upstream: the wait we refused
        return RetryDecision.give_up(_final(error, why, come_back_in), "wait budget spent")
    return RetryDecision.retry(delay, reason)


def _final(error: InferenceError, why: str, come_back_in: float | None) -> InferenceError:
    """The error to raise on giving up: a RateLimited becomes RateLimitExceeded, whose
    ``retry_after`` is ``come_back_in`` rounded up to whole seconds."""
    if not isinstance(error, RateLimited):
        return error
    final = RateLimitExceeded(
        f"{error.message} ({why})",
        provider=error.provider,
        retry_after=None if come_back_in is None else whole_seconds(come_back_in),
        upstream_status=error.upstream_status,
    )
    final.__cause__ = error
    return final


def whole_seconds(seconds: float) -> float:
    """``seconds`` rounded up to whole seconds: the ``Retry-After`` a client can act on."""
    # Rounded to the millisecond first: a difference of clock readings such as
    # (t + 30) - t must not round up to 31.
    return float(max(0, math.ceil(round(seconds, 3))))


class RetryBudget:
    """The retry state of one request: retries so far, whether the session was rebuilt,
    the time waited against the wait budget, and when the upstream said to come back.
    Call :meth:`decide` after each failed attempt, with the time on the caller's clock."""

    __slots__ = (
        "_come_back_at",
        "_idempotent",
        "_policy",
        "_rng",
        "max_wait_s",
        "retries",
        "session_rebuilt",
        "waited_s",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        idempotent: bool,
        rng: random.Random,
        max_wait_s: float | None = None,
    ) -> None:
        self._policy = policy
        self._idempotent = idempotent
        self._rng = rng
        self.max_wait_s = wait_budget(policy, max_wait_s)
        """This request's wait budget: the policy's, or the client's when shorter."""
        self.retries = 0
        """Retries granted so far (session rebuilds included)."""
        self.session_rebuilt = False
        self.waited_s = 0.0
        """The waits granted so far, in seconds."""
        self._come_back_at: float | None = None

    def decide(self, error: InferenceError, *, first_byte_sent: bool, now: float) -> RetryDecision:
        """What to do after ``error``, which failed an attempt at ``now``."""
        if isinstance(error, RateLimited) and error.retry_after is not None:
            come_back_at = now + error.retry_after
            if self._come_back_at is None or come_back_at > self._come_back_at:
                self._come_back_at = come_back_at
        decision = decide_retry(
            error,
            attempt=self.retries + 1,
            policy=self._policy,
            idempotent=self._idempotent,
            first_byte_sent=first_byte_sent,
            rng=self._rng,
            session_rebuilt=self.session_rebuilt,
            waited_s=self.waited_s,
            max_wait_s=self.max_wait_s,
            come_back_in=self._come_back_in(now),
        )
        if decision.retries:
            self.retries += 1
            self.waited_s += decision.delay_s
        if decision.action is RetryAction.REBUILD_SESSION:
            self.session_rebuilt = True
        return decision

    def spend(self, seconds: float) -> None:
        """Count a wait outside the retries against the budget: the time the request
        waited for its rate-limit permit while the key was blocked by a Retry-After."""
        self.waited_s += seconds

    def _come_back_in(self, now: float) -> float | None:
        """Seconds left until the upstream said to come back; None when none are left."""
        if self._come_back_at is None or self._come_back_at <= now:
            return None
        return self._come_back_at - now
