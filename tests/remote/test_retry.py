"""Retry policy: backoff with jitter, and the rules of when to retry (DESIGN §2, §3)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from rakka_inference.core.errors import (
    BadRequest,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    Forbidden,
    InferenceError,
    NetworkError,
    RateLimited,
    RateLimitExceeded,
    ServerError,
    Timeout,
    TimeoutPhase,
    Unauthorized,
)
from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.remote.retry import (
    RetryAction,
    RetryBudget,
    RetryDecision,
    backoff_delay,
    decide_retry,
    wait_budget,
)
from rakka_inference.testkit.clock import FakeClock

DEFAULT = RetryPolicy()
NO_JITTER = RetryPolicy(jitter=Jitter.NONE)
UNBUDGETED = RetryPolicy(jitter=Jitter.NONE, max_wait_ms=3_600_000)
"""Waits bounded only by the per-wait rules, for the tests of those rules."""
NOW = 1_000.0


def rng() -> random.Random:
    return random.Random(1234)


def decide(
    error: InferenceError,
    *,
    attempt: int = 1,
    policy: RetryPolicy = NO_JITTER,
    idempotent: bool = True,
    first_byte_sent: bool = False,
    session_rebuilt: bool = False,
) -> RetryDecision:
    return decide_retry(
        error,
        attempt=attempt,
        policy=policy,
        idempotent=idempotent,
        first_byte_sent=first_byte_sent,
        rng=rng(),
        session_rebuilt=session_rebuilt,
    )


def rate_limited(retry_after: float | None = None) -> RateLimited:
    return RateLimited(
        "openai returned HTTP 429 Too Many Requests",
        provider="openai",
        retry_after=retry_after,
        upstream_status=429,
    )


def server_error(retry_after: float | None = None) -> ServerError:
    return ServerError("openai returned HTTP 503", provider="openai", retry_after=retry_after)


# --------------------------------------------------------------------------- backoff


def test_no_jitter_grows_geometrically_and_caps() -> None:
    delays = [backoff_delay(NO_JITTER, attempt, rng()) for attempt in range(1, 10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_custom_multiplier_and_initial() -> None:
    policy = RetryPolicy(
        initial_backoff_ms=250, backoff_multiplier=3.0, max_backoff_ms=5000, jitter=Jitter.NONE
    )
    assert [backoff_delay(policy, n, rng()) for n in (1, 2, 3, 4)] == [0.25, 0.75, 2.25, 5.0]


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert backoff_delay(NO_JITTER, 10_000, rng()) == 60.0
    assert backoff_delay(RetryPolicy(jitter=Jitter.FULL), 10_000, rng()) <= 60.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8])
def test_full_jitter_is_between_zero_and_base(attempt: int) -> None:
    policy = RetryPolicy(jitter=Jitter.FULL)
    base = backoff_delay(NO_JITTER, attempt, rng())
    source = rng()
    samples = [backoff_delay(policy, attempt, source) for _ in range(200)]
    assert all(0.0 <= s <= base for s in samples)
    assert min(samples) < base * 0.2
    assert max(samples) > base * 0.8


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8])
def test_equal_jitter_is_between_half_and_base(attempt: int) -> None:
    base = backoff_delay(NO_JITTER, attempt, rng())
    source = rng()
    samples = [backoff_delay(DEFAULT, attempt, source) for _ in range(200)]
    assert DEFAULT.jitter is Jitter.EQUAL
    assert all(base / 2 <= s <= base for s in samples)
    assert min(samples) < base * 0.6
    assert max(samples) > base * 0.9


def test_jitter_is_reproducible_with_a_seeded_source() -> None:
    first = [backoff_delay(DEFAULT, n, random.Random(7)) for n in range(1, 5)]
    second = [backoff_delay(DEFAULT, n, random.Random(7)) for n in range(1, 5)]
    assert first == second


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(DEFAULT, 0, rng())
    with pytest.raises(ValueError, match="attempt"):
        decide(server_error(), attempt=0)


# --------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    "error",
    [
        rate_limited(),
        server_error(),
        Timeout("no first byte", phase=TimeoutPhase.FIRST_BYTE),
        NetworkError("connection reset"),
    ],
)
def test_retryable_errors_retry_with_backoff(error: InferenceError) -> None:
    decision = decide(error, attempt=2)
    assert decision.action is RetryAction.RETRY
    assert decision.retries
    assert decision.delay_s == 2.0
    assert decision.error is None


@pytest.mark.parametrize(
    "error",
    [
        BadRequest("bad"),
        ContentFiltered("filtered"),
        ContextLengthExceeded("too long"),
        Forbidden("no"),
        CircuitOpen("open"),
    ],
)
def test_non_retryable_errors_give_up_as_they_are(error: InferenceError) -> None:
    decision = decide(error)
    assert decision.action is RetryAction.GIVE_UP
    assert not decision.retries
    assert decision.error is error
    assert "not retryable" in decision.reason


def test_never_after_the_first_byte() -> None:
    error = server_error()
    decision = decide(error, first_byte_sent=True)
    assert decision.action is RetryAction.GIVE_UP
    assert decision.error is error  # the caller turns it into StreamInterrupted
    assert "first byte" in decision.reason


def test_never_when_not_idempotent() -> None:
    for error in (server_error(), rate_limited(), Unauthorized("401")):
        decision = decide(error, idempotent=False)
        assert decision.action is RetryAction.GIVE_UP
        assert decision.error is error
        assert "idempotent" in decision.reason


def test_never_beyond_max_retries() -> None:
    error = server_error()
    assert decide(error, attempt=3).retries
    decision = decide(error, attempt=4)
    assert decision.action is RetryAction.GIVE_UP
    assert decision.error is error  # 5xx keeps its own type
    assert "exhausted" in decision.reason
    assert not decide(error, attempt=1, policy=RetryPolicy(max_retries=0)).retries


def test_exhausted_timeout_keeps_its_type() -> None:
    error = Timeout("slow", phase=TimeoutPhase.BETWEEN_BYTES)
    assert decide(error, attempt=4).error is error


def test_exhausted_rate_limit_becomes_rate_limit_exceeded() -> None:
    error = rate_limited(retry_after=3.0)
    decision = decide(error, attempt=4)
    assert decision.action is RetryAction.GIVE_UP
    final = decision.error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 3.0
    assert final.provider == "openai"
    assert final.upstream_status == 429
    assert final.__cause__ is error
    assert "retries exhausted" in final.message


def test_unauthorized_rebuilds_the_session_once() -> None:
    error = Unauthorized("openai returned HTTP 401")
    assert not error.retryable
    decision = decide(error)
    assert decision == RetryDecision.rebuild_session()
    assert decision.action is RetryAction.REBUILD_SESSION
    assert decision.retries
    assert decision.delay_s == 0.0
    again = decide(error, attempt=2, session_rebuilt=True)
    assert again.action is RetryAction.GIVE_UP
    assert again.error is error


def test_the_session_rebuild_counts_as_a_retry() -> None:
    error = Unauthorized("401")
    assert decide(error, attempt=4).action is RetryAction.GIVE_UP


def test_retry_after_longer_than_backoff_wins() -> None:
    decision = decide(rate_limited(retry_after=12.5), attempt=1, policy=UNBUDGETED)
    assert decision.action is RetryAction.RETRY
    assert decision.delay_s == 12.5


def test_backoff_longer_than_retry_after_wins() -> None:
    decision = decide(rate_limited(retry_after=0.5), attempt=3)
    assert decision.delay_s == 4.0


def test_retry_after_is_ignored_when_not_respected() -> None:
    policy = RetryPolicy(jitter=Jitter.NONE, respect_retry_after=False)
    assert decide(rate_limited(retry_after=12.5), policy=policy).delay_s == 1.0
    assert decide(rate_limited(retry_after=3600), policy=policy).delay_s == 1.0


def test_retry_after_beyond_the_limit_gives_up_at_once() -> None:
    error = rate_limited(retry_after=120.0)
    decision = decide(error, attempt=1)
    assert decision.action is RetryAction.GIVE_UP
    final = decision.error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 120.0
    assert "exceeds the 60s limit" in final.message
    # Exactly at the limit still waits.
    assert decide(rate_limited(retry_after=60.0), policy=UNBUDGETED).delay_s == 60.0


def test_a_long_retry_after_on_a_5xx_gives_up_with_the_5xx() -> None:
    error = server_error(retry_after=3600.0)
    decision = decide(error)
    assert decision.action is RetryAction.GIVE_UP
    assert decision.error is error


def test_decision_constructors() -> None:
    assert RetryDecision.retry(1.5) == RetryDecision(
        RetryAction.RETRY, delay_s=1.5, reason="retryable error"
    )
    error = BadRequest("x")
    assert RetryDecision.give_up(error, "why").error is error


# --------------------------------------------------------------------------- budget


def test_budget_counts_retries_until_exhausted() -> None:
    budget = RetryBudget(NO_JITTER, idempotent=True, rng=rng())
    delays = [budget.decide(server_error(), first_byte_sent=False, now=NOW) for _ in range(3)]
    assert [d.delay_s for d in delays] == [1.0, 2.0, 4.0]
    assert budget.retries == 3
    final = budget.decide(rate_limited(retry_after=1.0), first_byte_sent=False, now=NOW)
    assert isinstance(final.error, RateLimitExceeded)
    assert budget.retries == 3


def test_budget_rebuilds_the_session_once_per_request() -> None:
    budget = RetryBudget(NO_JITTER, idempotent=True, rng=rng())
    first = budget.decide(Unauthorized("401"), first_byte_sent=False, now=NOW)
    assert first.action is RetryAction.REBUILD_SESSION
    assert budget.session_rebuilt
    assert budget.retries == 1
    assert budget.waited_s == 0.0  # a rebuild is retried at once
    assert budget.decide(server_error(), first_byte_sent=False, now=NOW).delay_s == 2.0
    second = budget.decide(Unauthorized("401"), first_byte_sent=False, now=NOW)
    assert second.action is RetryAction.GIVE_UP


def test_budget_passes_first_byte_and_idempotency() -> None:
    budget = RetryBudget(DEFAULT, idempotent=True, rng=rng())
    assert not budget.decide(server_error(), first_byte_sent=True, now=NOW).retries
    assert budget.retries == 0
    strict = RetryBudget(DEFAULT, idempotent=False, rng=rng())
    assert not strict.decide(server_error(), first_byte_sent=False, now=NOW).retries


# --------------------------------------------------------------------------- wait budget


def test_the_wait_budget_is_the_policy_s_or_a_shorter_one_asked_for() -> None:
    assert DEFAULT.max_wait_ms == 10_000
    assert wait_budget(DEFAULT) == 10.0
    assert wait_budget(DEFAULT, 2.5) == 2.5
    assert wait_budget(DEFAULT, 0.0) == 0.0
    # Asking for more, or for nonsense, leaves the configured budget.
    for asked in (30.0, -1.0, math.inf, math.nan):
        assert wait_budget(DEFAULT, asked) == 10.0
    assert RetryBudget(DEFAULT, idempotent=True, rng=rng(), max_wait_s=60.0).max_wait_s == 10.0
    assert RetryBudget(DEFAULT, idempotent=True, rng=rng(), max_wait_s=0.5).max_wait_s == 0.5


def test_a_long_retry_after_answers_at_once_with_it() -> None:
    # Retry-After 30 s is within max_retry_after_ms (60 s) but past the 10 s budget: no
    # wait, a 429 carrying the 30 s the upstream asked for.
    clock = FakeClock()
    budget = RetryBudget(DEFAULT, idempotent=True, rng=rng())
    error = rate_limited(retry_after=30.0)
    decision = budget.decide(error, first_byte_sent=False, now=clock())
    assert decision.action is RetryAction.GIVE_UP
    assert decision.reason == "wait budget spent"
    final = decision.error
    assert isinstance(final, RateLimitExceeded)
    assert final.http_status == 429
    assert final.retry_after == 30.0
    assert final.__cause__ is error
    assert (final.provider, final.upstream_status) == ("openai", 429)
    assert "30s wait exceeds the 10s left of the request's wait budget" in final.message
    assert budget.waited_s == 0.0


def test_the_budget_spans_every_wait_of_the_request() -> None:
    # Backoff 1 s, then Retry-After 4 s, then backoff 4 s: 1 + 4 = 5 s waited; a third
    # wait of 4 s would make 9 s > 8 s, so the budget is spent by the waits together.
    clock = FakeClock()
    policy = RetryPolicy(jitter=Jitter.NONE, max_wait_ms=8_000)
    budget = RetryBudget(policy, idempotent=True, rng=rng())
    assert budget.decide(server_error(), first_byte_sent=False, now=clock()).delay_s == 1.0
    clock.advance(1.0)
    waited = budget.decide(rate_limited(4.0), first_byte_sent=False, now=clock())
    assert (waited.delay_s, waited.reason) == (4.0, "upstream retry-after")
    clock.advance(4.0)
    assert budget.waited_s == 5.0
    error = server_error()
    spent = budget.decide(error, first_byte_sent=False, now=clock())
    assert spent.action is RetryAction.GIVE_UP
    assert spent.error is error  # a 5xx keeps its own type (502, and a fallback)
    assert budget.retries == 2


def test_a_wait_for_a_blocked_key_before_the_first_attempt_spends_the_budget() -> None:
    # The permit came after 7 s of the key's Retry-After block: of the 10 s, 3 s are left,
    # so the upstream's next Retry-After of 4 s is not waited for.
    clock = FakeClock()
    budget = RetryBudget(DEFAULT, idempotent=True, rng=rng())
    budget.spend(7.0)
    decision = budget.decide(rate_limited(4.0), first_byte_sent=False, now=clock())
    assert decision.action is RetryAction.GIVE_UP
    assert isinstance(decision.error, RateLimitExceeded)
    assert "4s wait exceeds the 3s left of the request's wait budget" in decision.error.message
    fits = RetryBudget(DEFAULT, idempotent=True, rng=rng())
    fits.spend(6.0)
    assert fits.decide(rate_limited(4.0), first_byte_sent=False, now=clock()).delay_s == 4.0
    assert fits.waited_s == 10.0


def test_a_429_without_retry_after_spent_by_backoff_carries_the_refused_wait() -> None:
    policy = RetryPolicy(jitter=Jitter.NONE, initial_backoff_ms=1500, max_wait_ms=1_000)
    budget = RetryBudget(policy, idempotent=True, rng=rng())
    decision = budget.decide(rate_limited(), first_byte_sent=False, now=NOW)
    final = decision.error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 2.0  # the 1.5 s backoff refused, rounded up


def test_the_remaining_retry_after_is_measured_on_the_clock_and_rounded_up() -> None:
    # The upstream said "come back in 2.5 s" at t; the next 429 (no Retry-After) comes at
    # t + 0.8 and its backoff would pass the budget: 1.7 s are left, answered as 2 s.
    clock = FakeClock()
    policy = RetryPolicy(jitter=Jitter.NONE, max_wait_ms=3_000)
    budget = RetryBudget(policy, idempotent=True, rng=rng())
    first = budget.decide(rate_limited(2.5), first_byte_sent=False, now=clock())
    assert first.delay_s == 2.5
    clock.advance(0.8)
    decision = budget.decide(rate_limited(), first_byte_sent=False, now=clock())
    final = decision.error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 2.0
    # Once that time has passed, the answer falls back to the wait refused.
    later = RetryBudget(policy, idempotent=True, rng=rng())
    later.decide(rate_limited(2.5), first_byte_sent=False, now=NOW)
    exhausted = later.decide(rate_limited(), first_byte_sent=False, now=NOW + 2.5)
    assert isinstance(exhausted.error, RateLimitExceeded)
    assert exhausted.error.retry_after == 2.0  # backoff of retry 2, refused


def test_a_whole_number_of_seconds_is_not_rounded_past_itself() -> None:
    # (t + 30) - t in floating point may be 30.000000000000004: still 30.
    clock = FakeClock(start=0.1)
    budget = RetryBudget(DEFAULT, idempotent=True, rng=rng())
    clock.advance(1e6 + 0.3)
    final = budget.decide(rate_limited(30.0), first_byte_sent=False, now=clock()).error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 30.0


def test_a_zero_budget_never_waits_but_still_rebuilds_the_session() -> None:
    budget = RetryBudget(DEFAULT, idempotent=True, rng=rng(), max_wait_s=0.0)
    assert budget.decide(Unauthorized("401"), first_byte_sent=False, now=NOW).retries
    error = server_error()
    assert budget.decide(error, first_byte_sent=False, now=NOW).error is error


def test_exhausted_retries_carry_the_time_left_too() -> None:
    policy = RetryPolicy(jitter=Jitter.NONE, max_retries=0)
    budget = RetryBudget(policy, idempotent=True, rng=rng())
    final = budget.decide(rate_limited(0.2), first_byte_sent=False, now=NOW).error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 1.0
    assert "retries exhausted" in final.message
    # The latest time the upstream named wins over a later, shorter Retry-After.
    once = RetryBudget(replace(UNBUDGETED, max_retries=1), idempotent=True, rng=rng())
    assert once.decide(rate_limited(5.0), first_byte_sent=False, now=NOW).delay_s == 5.0
    final = once.decide(rate_limited(0.5), first_byte_sent=False, now=NOW + 1).error
    assert isinstance(final, RateLimitExceeded)
    assert final.retry_after == 4.0
