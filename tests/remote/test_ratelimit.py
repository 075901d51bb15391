"""The exact single-node limiter: the window, settlement, waiting, auto-tune, the registry."""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.secrets import Secret
from rakka_inference.remote.ratelimit import (
    CONCURRENCY_RETRY_HINT,
    AutoTune,
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    RateFactor,
    RateLimiter,
    SlidingWindowLimiter,
)
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp0", "gpt-4o")


class Timers:
    """Virtual time for waiting tests: ``sleep`` returns only when ``advance`` passes it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (self.clock() + max(0.0, delay), self._seq, future))
        self._seq += 1
        await future

    async def advance(self, seconds: float) -> None:
        target = self.clock() + seconds
        await settle()
        while self._heap and self._heap[0][0] <= target:
            due, _, future = heapq.heappop(self._heap)
            if due > self.clock():
                self.clock.advance(due - self.clock())
            if not future.done():
                future.set_result(None)
            await settle()
        if target > self.clock():
            self.clock.advance(target - self.clock())
        await settle()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def limiter(
    clock: FakeClock, timers: Timers | None = None, **limits: int | bool
) -> SlidingWindowLimiter:
    sleep = timers.sleep if timers is not None else asyncio.sleep
    return SlidingWindowLimiter(KEY, RateLimits(**limits), clock=clock, sleep=sleep)  # type: ignore[arg-type]


def granted(result: Permit | Denial) -> Permit:
    assert isinstance(result, Permit), result
    return result


def denied(result: Permit | Denial) -> Denial:
    assert isinstance(result, Denial), result
    return result


# ---------------------------------------------------------------- the window


def test_the_key_names_provider_fingerprint_and_model() -> None:
    key = LimiterKey.for_credential("anthropic", Secret("sk-1"), "claude-sonnet-4")
    assert key.provider == "anthropic"
    assert key.model == "claude-sonnet-4"
    assert key.key_fingerprint == Secret("sk-1").fingerprint()
    assert "sk-1" not in repr(key)


def test_the_whole_minute_may_be_a_burst_then_the_window_slides() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=5)
    start = clock()
    for _ in range(5):
        granted(rl.try_acquire(0)).settle(0)
    denial = denied(rl.try_acquire(0))
    assert denial == Denial(start + 60.0, DenialReason.REQUESTS)
    clock.advance(59.999)
    denied(rl.try_acquire(0))
    clock.advance(0.001)  # exactly 60 s after the burst: the first grant has left
    granted(rl.try_acquire(0))


def test_tokens_retry_at_is_when_enough_old_grants_have_left() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=1000)
    granted(rl.try_acquire(300))
    clock.advance(10)
    granted(rl.try_acquire(300))
    clock.advance(10)
    granted(rl.try_acquire(300))
    assert denied(rl.try_acquire(101)) == Denial(1060.0, DenialReason.TOKENS)
    assert denied(rl.try_acquire(500)) == Denial(1070.0, DenialReason.TOKENS)
    granted(rl.try_acquire(100))  # exactly up to the limit
    assert denied(rl.try_acquire(2000)) == Denial(math.inf, DenialReason.TOO_LARGE)
    with pytest.raises(ValueError, match=">= 0"):
        rl.try_acquire(-1)


def window_maxima(admitted: Sequence[tuple[float, int]], window: float = 60.0) -> tuple[int, int]:
    """The most requests and tokens in any window [t, t + 60) that starts at an admission."""
    most_requests = most_tokens = 0
    end = tokens = 0
    for start, (t0, _) in enumerate(admitted):
        while end < len(admitted) and admitted[end][0] < t0 + window:
            tokens += admitted[end][1]
            end += 1
        most_requests = max(most_requests, end - start)
        most_tokens = max(most_tokens, tokens)
        tokens -= admitted[start][1]
    return most_requests, most_tokens


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 160), st.integers(0, 400), st.integers(50, 100)),
        min_size=1,
        max_size=120,
    ),
    st.booleans(),
)
def test_every_sliding_window_is_exact(offers: list[tuple[int, int, int]], smoothing: bool) -> None:
    """Any offered load: admitted requests <= RPM and settled tokens <= TPM in every window."""
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=7, tokens_per_minute=1500, smoothing=smoothing)
    admitted: list[list[float]] = []
    for eighths, tokens, percent in offers:
        clock.advance(eighths / 8)  # exact binary fractions: no rounding at the edges
        result = rl.try_acquire(tokens)
        if isinstance(result, Permit):
            actual = tokens * percent // 100
            result.settle(actual)
            admitted.append([clock(), actual])
    requests, tokens = window_maxima([(t, int(n)) for t, n in admitted])
    assert requests <= 7
    assert tokens <= 1500


# ---------------------------------------------------------------- settling


def test_settle_and_release_end_a_permit_exactly_once() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=10, tokens_per_minute=1000, concurrent_requests=3)
    a, b, c = (granted(rl.try_acquire(200)) for _ in range(3))
    assert denied(rl.try_acquire(0)).reason is DenialReason.CONCURRENCY
    a.settle(50)  # the window gives back the difference at once
    assert rl.utilization().tokens_in_window == 450
    b.release()  # a failed call: the estimate stays charged
    assert rl.utilization().tokens_in_window == 450
    with c:
        pass
    assert c.released
    for permit in (a, b, c):  # a second end is a no-op, never a second decrement
        permit.release()
        permit.settle(0)
    use = rl.utilization()
    assert use.concurrent_in_use == 0
    assert rl.in_flight == 0
    assert use.tokens_in_window == 450
    assert use.requests_in_window == 3
    clock.advance(60)
    use = rl.utilization()
    assert (use.requests_in_window, use.tokens_in_window, use.concurrent_in_use) == (0, 0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        granted(rl.try_acquire(1)).settle(-1)
    assert "held" in repr(granted(rl.try_acquire(1)))
    assert "ended" in repr(a)
    assert "in_flight" in repr(rl)


def test_an_overrun_is_charged_and_a_late_settlement_touches_nothing() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=1000)
    over = granted(rl.try_acquire(100))
    over.settle(400)
    assert rl.utilization().tokens_in_window == 400
    late = granted(rl.try_acquire(100))
    clock.advance(61)  # both have left the window
    late.settle(0)
    assert rl.utilization().tokens_in_window == 0
    granted(rl.try_acquire(1000)).settle(1000)
    assert rl.utilization().tokens_in_window == 1000


def test_unlimited_keys_only_count_concurrency() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    permits = [granted(rl.try_acquire(10**9)) for _ in range(1000)]
    assert rl.utilization().concurrent_in_use == 1000
    for permit in permits:
        permit.settle(5)
    use = rl.utilization()
    assert (use.concurrent_in_use, use.requests_in_window, use.tokens_in_window) == (0, 0, 0)
    assert use.request_utilization is None
    assert use.token_utilization is None


# ---------------------------------------------------------------- waiting


async def test_a_concurrency_waiter_wakes_on_release_without_polling() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, concurrent_requests=1)
    held = granted(rl.try_acquire(1))
    waiting = asyncio.create_task(rl.acquire(1, deadline=clock() + 30))
    await settle()
    assert not waiting.done()
    assert timers.sleeps == [30.0]  # one timer, for the deadline: no polling
    held.settle(1)
    await settle()
    permit = waiting.result()
    assert rl.utilization().concurrent_in_use == 1
    permit.release()
    await settle()  # the cancelled deadline timer is gone


async def test_a_window_waiter_wakes_at_the_computed_time() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, requests_per_minute=2)
    start = clock()
    granted(rl.try_acquire(0))
    clock.advance(20)
    granted(rl.try_acquire(0))
    waiting = asyncio.create_task(rl.acquire(0, deadline=start + 120))
    await timers.advance(39.9)
    assert not waiting.done()
    await timers.advance(0.1)
    assert waiting.done()
    assert waiting.result().granted_at == start + 60
    assert timers.sleeps == [40.0]


async def test_no_permit_by_the_deadline_raises_with_retry_after() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, requests_per_minute=1, tokens_per_minute=100)
    granted(rl.try_acquire(0))
    with pytest.raises(RateLimitExceeded) as caught:  # known at once: nothing to wait for
        await rl.acquire(0, deadline=clock() + 10)
    assert caught.value.retry_after == pytest.approx(60.0)
    assert caught.value.provider == "openai"
    assert timers.sleeps == []
    with pytest.raises(RateLimitExceeded) as too_large:
        await rl.acquire(101, deadline=math.inf)
    assert too_large.value.retry_after == math.inf  # it never fits


async def test_a_concurrency_waiter_gives_up_at_its_deadline() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, concurrent_requests=1)
    granted(rl.try_acquire(0))
    waiting = asyncio.create_task(rl.acquire(0, deadline=clock() + 5))
    await timers.advance(5)
    with pytest.raises(RateLimitExceeded) as caught:
        waiting.result()
    assert caught.value.retry_after == CONCURRENCY_RETRY_HINT
    assert rl.utilization().waiters == 0


async def test_waiters_are_served_first_in_first_out() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, concurrent_requests=1, tokens_per_minute=1000)
    held = granted(rl.try_acquire(900))
    order: list[str] = []

    async def wait(name: str, tokens: int) -> None:
        permit = await rl.acquire(tokens, deadline=math.inf)
        order.append(name)
        permit.settle(0)

    # The big head waits for the window; the small ones behind it do not overtake it.
    tasks = [
        asyncio.create_task(wait("big", 500)),
        asyncio.create_task(wait("small-1", 10)),
        asyncio.create_task(wait("small-2", 10)),
    ]
    await settle()
    held.release()
    await settle()
    assert order == []
    assert rl.utilization().waiters == 3
    await timers.advance(60)
    await asyncio.gather(*tasks)
    assert order == ["big", "small-1", "small-2"]
    late = await rl.acquire(1, deadline=clock())  # an empty queue: served at once
    late.settle(1)


async def test_a_queued_waiter_times_out_behind_the_head() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, concurrent_requests=1)
    held = granted(rl.try_acquire(0))
    head = asyncio.create_task(rl.acquire(0, deadline=clock() + 100))
    second = asyncio.create_task(rl.acquire(0, deadline=clock() + 1))
    await timers.advance(1)
    with pytest.raises(RateLimitExceeded):
        second.result()
    held.release()
    await settle()
    head.result().release()


async def test_a_waiter_queued_behind_a_blocked_head_gets_the_short_hint() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, tokens_per_minute=100)
    granted(rl.try_acquire(100))
    head = asyncio.create_task(rl.acquire(100, deadline=clock() + 100))
    await settle()
    clock.advance(0)
    small = asyncio.create_task(rl.acquire(0, deadline=clock() + 1))
    await timers.advance(1)
    with pytest.raises(RateLimitExceeded) as caught:
        small.result()
    assert caught.value.retry_after == CONCURRENCY_RETRY_HINT
    head.cancel()
    await asyncio.gather(head, return_exceptions=True)


async def test_a_cancelled_waiter_leaves_the_queue_and_passes_its_turn() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, concurrent_requests=1)
    held = granted(rl.try_acquire(0))
    head = asyncio.create_task(rl.acquire(0, deadline=math.inf))
    behind = asyncio.create_task(rl.acquire(0, deadline=math.inf))
    await settle()
    head.cancel()
    await asyncio.gather(head, return_exceptions=True)
    assert rl.utilization().waiters == 1
    held.settle(0)
    await settle()
    behind.result().settle(0)
    assert rl.utilization().concurrent_in_use == 0


# ---------------------------------------------------------------- 429s


def test_retry_after_blocks_the_whole_key() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=100)
    in_flight = granted(rl.try_acquire(0))
    rl.on_rate_limited(5.0)
    assert denied(rl.try_acquire(0)) == Denial(clock() + 5.0, DenialReason.RETRY_AFTER)
    assert rl.utilization().blocked_for == 5.0
    in_flight.settle(0)  # calls already made are not affected
    clock.advance(5.0)
    granted(rl.try_acquire(0))


async def test_acquire_waits_out_a_retry_after() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    rl = limiter(clock, timers, requests_per_minute=100)
    rl.on_rate_limited(3.0)
    waiting = asyncio.create_task(rl.acquire(0, deadline=clock() + 10))
    await timers.advance(3.0)
    assert waiting.result().granted_at == clock()


def test_a_429_halves_the_rate_once_per_cooldown_and_it_recovers() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=100, tokens_per_minute=10_000)
    rl.on_rate_limited(None)
    rl.on_rate_limited(None)  # a second 429 of the same burst counts once
    use = rl.utilization()
    assert (use.effective_requests_per_minute, use.effective_tokens_per_minute) == (50, 5000)
    assert use.rate_factor == 0.5
    for _ in range(50):
        granted(rl.try_acquire(0))
    assert denied(rl.try_acquire(0)).reason is DenialReason.REQUESTS
    clock.advance(1.0)
    rl.on_rate_limited(None)
    assert rl.utilization().effective_requests_per_minute == 25  # (0.5 + 0.01) / 2 = 0.255
    for _ in range(10):
        clock.advance(1.0)
        rl.on_rate_limited(None)
    assert rl.utilization().rate_factor == pytest.approx(0.1)  # the floor
    clock.advance(45.0)  # +0.01 per second
    assert rl.utilization().rate_factor == pytest.approx(0.55)
    clock.advance(100.0)
    assert rl.utilization().rate_factor == 1.0
    assert rl.utilization().effective_requests_per_minute == 100


def test_recovery_starts_when_the_retry_after_ends() -> None:
    factor = RateFactor(AutoTune())
    factor.cut(100.0, recover_from=110.0)
    assert factor.at(105.0) == 0.5
    assert factor.at(120.0) == pytest.approx(0.6)
    assert factor.time_to_reach(0.5, 100.0) == 100.0
    assert factor.time_to_reach(0.8, 100.0) == pytest.approx(140.0)
    assert factor.time_to_reach(1.5, 100.0) == math.inf


def test_a_request_above_the_tuned_rate_waits_for_recovery() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=1000)
    rl.on_rate_limited(None)  # effective TPM 500
    denial = denied(rl.try_acquire(800))
    assert denial.reason is DenialReason.TOKENS
    assert denial.retry_at == pytest.approx(clock() + 30.0)  # 0.5 -> 0.8 at 0.01/s
    clock.advance(30.0)
    granted(rl.try_acquire(800))


def test_auto_tune_can_be_disabled_and_is_validated() -> None:
    clock = FakeClock()
    rl = SlidingWindowLimiter(
        KEY,
        RateLimits(requests_per_minute=10),
        clock=clock,
        autotune=AutoTune(enabled=False),
    )
    rl.on_rate_limited(None)
    assert rl.utilization().rate_factor == 1.0
    for bad in (
        {"decrease": 1.0},
        {"floor": 0.0},
        {"recovery_per_s": 0.0},
        {"cooldown_s": -1.0},
    ):
        with pytest.raises(ValueError, match="must be"):
            AutoTune(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- smoothing


def test_smoothing_spreads_the_minute() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=60, tokens_per_minute=600, smoothing=True)
    granted(rl.try_acquire(20)).settle(20)  # 1 s per request, 0.1 s per token
    assert denied(rl.try_acquire(10)) == Denial(clock() + 2.0, DenialReason.TOKENS)
    clock.advance(2.0)
    big = granted(rl.try_acquire(100))  # the next token may come 10 s later
    assert denied(rl.try_acquire(0)) == Denial(clock() + 10.0, DenialReason.TOKENS)
    big.settle(40)  # settling gives the unused time back
    assert denied(rl.try_acquire(0)) == Denial(clock() + 4.0, DenialReason.TOKENS)
    clock.advance(4.0)
    granted(rl.try_acquire(0))
    assert denied(rl.try_acquire(0)) == Denial(clock() + 1.0, DenialReason.REQUESTS)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"requests_per_minute": 60}, DenialReason.REQUESTS),
        ({"tokens_per_minute": 60}, DenialReason.TOKENS),
    ],
)
def test_smoothing_one_limit(limits: dict[str, int], reason: DenialReason) -> None:
    clock = FakeClock()
    rl = limiter(clock, None, smoothing=True, **limits)
    granted(rl.try_acquire(2)).settle(1)
    assert denied(rl.try_acquire(1)) == Denial(clock() + 1.0, reason)


# ---------------------------------------------------------------- registry


def test_the_registry_gets_or_creates_and_reconfigures() -> None:
    clock = FakeClock()
    registry = RateLimiter(clock=clock)
    first = registry.limiter_for(KEY, RateLimits(requests_per_minute=1))
    assert registry.limiter_for(KEY, RateLimits(requests_per_minute=1)) is first
    granted(first.try_acquire(0))
    denied(first.try_acquire(0))
    again = registry.limiter_for(KEY, RateLimits(requests_per_minute=2))
    assert again is first
    granted(first.try_acquire(0))  # the log survived; the new limit applies
    other = LimiterKey("openai", "fp1", "gpt-4o")
    registry.limiter_for(other, RateLimits())
    assert len(registry) == 2
    assert KEY in registry
    assert registry.get(other) is not None
    assert registry.get(LimiterKey("x", "y", "z")) is None
    snapshots = {use.key: use for use in registry.utilization()}
    assert snapshots[KEY].requests_in_window == 2
    assert snapshots[KEY].request_utilization == 1.0
    assert snapshots[KEY].mode == "exact"
    assert snapshots[KEY].over_spend_bound_requests == 0.0


def test_utilization_reports_used_against_configured() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=10, tokens_per_minute=1000, concurrent_requests=4)
    granted(rl.try_acquire(250))
    use = rl.utilization()
    assert use.key == KEY
    assert use.request_utilization == pytest.approx(0.1)
    assert use.token_utilization == pytest.approx(0.25)
    assert (use.concurrent_in_use, use.concurrent_limit) == (1, 4)
    assert (use.requests_per_minute, use.tokens_per_minute) == (10, 1000)
