"""A request's wait budget at every limiter, on a fake clock: a Retry-After block of the key
is waited out only while it fits the budget, and what the wait took is spent from it.

The same cases run against each implementation (the exact limiter, one node's approximate
limiter, a strict holder spending leases), since the waiting is one piece of code
(:class:`~rakka_inference.remote.ratelimit_waiting.WaitingLimiter`); then a block learnt
from elsewhere — another node's gossip, the strict authority's refusal — reaches waiters
the same way.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable

import pytest

from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit_approximate import ApproximateLimiter
from rakka_inference.remote.gcounter import CounterState
from rakka_inference.remote.ratelimit import (
    LimiterKey,
    Permit,
    SlidingWindowLimiter,
    WaitingLimiter,
)
from rakka_inference.remote.replicator import KeySync
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    LeaseReturn,
)
from rakka_inference.remote.strict_lease_limiter import LeasedLimiter
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp0", "gpt-4o")
ONE_AT_A_TIME = RateLimits(concurrent_requests=1)
QUEUE_S = 60.0
"""The queue timeout the waits below are given: longer than every block, so the old bound
(the deadline alone) would have waited each one out."""


class Timers:
    """Virtual time: ``sleep`` returns only when ``advance`` passes it."""

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


class AuthorityChannel:
    """A strict holder's channel straight to an in-process authority on the same clock."""

    holders = 1
    lease_ttl = 1.0
    retry_delay = 1.0

    def __init__(self, authority: LeaseAuthority) -> None:
        self.authority = authority
        self.told: list[bytes] = []

    async def lease(
        self,
        key: LimiterKey,
        limits: RateLimits,
        want: tuple[int, int],
        need: int,
        returns: list[LeaseReturn],
    ) -> LeaseGrant | LeaseRefusal:
        for back in returns:
            self.authority.release(
                back.lease_id, back.unused_requests, back.unused_tokens, back.overrun_tokens
            )
        return self.authority.request(key, limits, want[0], want[1], need_tokens=need)

    def tell(self, line: bytes) -> None:
        self.told.append(line)


def exact(clock: FakeClock, timers: Timers, limits: RateLimits) -> WaitingLimiter:
    return SlidingWindowLimiter(KEY, limits, clock=clock, sleep=timers.sleep)


def approximate(clock: FakeClock, timers: Timers, limits: RateLimits) -> WaitingLimiter:
    return ApproximateLimiter(
        KEY, limits, node_id="a", nodes=lambda: 1, clock=clock, sleep=timers.sleep
    )


def strict(clock: FakeClock, timers: Timers, limits: RateLimits) -> WaitingLimiter:
    channel = AuthorityChannel(LeaseAuthority(clock))
    return LeasedLimiter(KEY, limits, channel, clock=clock, sleep=timers.sleep)


Build = Callable[[FakeClock, Timers, RateLimits], WaitingLimiter]
EVERY_LIMITER = pytest.mark.parametrize("build", [exact, approximate, strict])


def granted(result: object) -> Permit:
    assert isinstance(result, Permit), result
    return result


# ---------------------------------------------------------------- every limiter


@EVERY_LIMITER
async def test_a_block_past_the_wait_budget_is_answered_at_once(build: Build) -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = build(clock, timers, ONE_AT_A_TIME)
    limiter.on_rate_limited(30.0)
    clock.advance(0.4)  # 29.6 s of the block left: a Retry-After of 30
    asking = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S, wait_budget=10.0))
    await settle()
    assert asking.done()  # answered at once, on the clock that did not move
    with pytest.raises(RateLimitExceeded) as caught:
        asking.result()
    assert caught.value.retry_after == 30.0
    assert caught.value.provider == "openai"
    assert "wait budget" in caught.value.message
    assert timers.sleeps == []  # not one wait was started
    assert limiter.utilization().waiters == 0


@EVERY_LIMITER
async def test_a_block_within_the_budget_is_waited_out_and_spent(build: Build) -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = build(clock, timers, ONE_AT_A_TIME)
    limiter.on_rate_limited(3.0)
    ends = clock() + 3.0
    waiting = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S, wait_budget=10.0))
    await timers.advance(2.9)
    assert not waiting.done()
    await timers.advance(0.1)
    permit = waiting.result()
    assert (permit.granted_at, permit.blocked_s) == (ends, 3.0)
    permit.settle(0)


@EVERY_LIMITER
async def test_waiting_for_capacity_is_bounded_by_the_deadline_not_the_budget(
    build: Build,
) -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = build(clock, timers, ONE_AT_A_TIME)
    held = granted(limiter.try_acquire(0))
    waiting = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S, wait_budget=0.0))
    await timers.advance(20.0)  # far past a budget of nothing: still in line
    assert not waiting.done()
    held.settle(0)
    await settle()
    permit = waiting.result()
    assert permit.blocked_s == 0.0  # waiting in line spends nothing of the budget
    permit.settle(0)


@EVERY_LIMITER
async def test_a_block_that_lands_on_waiters_answers_those_it_outlasts(build: Build) -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = build(clock, timers, ONE_AT_A_TIME)
    held = granted(limiter.try_acquire(0))
    deadline = clock() + QUEUE_S
    head = asyncio.create_task(limiter.acquire(0, deadline=deadline, wait_budget=5.0))
    behind = asyncio.create_task(limiter.acquire(0, deadline=deadline, wait_budget=40.0))
    await timers.advance(1.0)
    limiter.on_rate_limited(30.0)  # the call in flight got a 429
    await settle()
    with pytest.raises(RateLimitExceeded) as caught:  # at once, from the head of the line
        head.result()
    assert caught.value.retry_after == 30.0
    held.settle(0)
    await timers.advance(29.0)
    assert not behind.done()
    await timers.advance(1.0)
    permit = behind.result()
    assert permit.blocked_s == 30.0
    permit.settle(0)


@EVERY_LIMITER
async def test_what_one_block_took_counts_against_the_next(build: Build) -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = build(clock, timers, ONE_AT_A_TIME)
    held = granted(limiter.try_acquire(0))
    limiter.on_rate_limited(8.0)
    waiting = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S, wait_budget=10.0))
    await timers.advance(8.0)  # the block is over, the slot is still taken: 2 s left
    assert not waiting.done()
    limiter.on_rate_limited(3.0)
    await settle()
    with pytest.raises(RateLimitExceeded) as caught:
        waiting.result()
    assert caught.value.retry_after == 3.0
    assert "2s left" in caught.value.message
    held.settle(0)


async def test_without_a_budget_a_block_is_bounded_by_the_deadline_alone() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    limiter = exact(clock, timers, ONE_AT_A_TIME)
    limiter.on_rate_limited(30.0)
    waiting = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S))
    await timers.advance(30.0)
    permit = waiting.result()
    assert permit.blocked_s == 30.0
    permit.settle(0)
    limiter.on_rate_limited(90.0)
    asking = asyncio.create_task(limiter.acquire(0, deadline=clock() + QUEUE_S))
    await settle()
    with pytest.raises(RateLimitExceeded) as caught:  # past the deadline: known at once
        asking.result()
    assert caught.value.retry_after == pytest.approx(90.0)
    assert "wait budget" not in caught.value.message


# ---------------------------------------------------------------- a block learnt elsewhere


async def test_a_block_gossiped_by_another_node_answers_the_waiters_it_outlasts() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    node = approximate(clock, timers, ONE_AT_A_TIME)
    assert isinstance(node, ApproximateLimiter)
    held = granted(node.try_acquire(0))
    waiting = asyncio.create_task(node.acquire(0, deadline=clock() + QUEUE_S, wait_budget=10.0))
    await settle()
    node.receive(KeySync(KEY, ONE_AT_A_TIME, node.epoch, CounterState(), clock() + 30.0))
    await settle()
    with pytest.raises(RateLimitExceeded) as caught:
        waiting.result()
    assert caught.value.retry_after == 30.0
    held.settle(0)


async def test_another_holders_429_reaches_a_strict_waiter_through_the_authority() -> None:
    clock = FakeClock()
    timers = Timers(clock)
    authority = LeaseAuthority(clock)
    channel = AuthorityChannel(authority)
    limits = RateLimits(requests_per_minute=100, strict=True)
    holder = LeasedLimiter(KEY, limits, channel, clock=clock, sleep=timers.sleep)
    authority.on_rate_limited(KEY, 30.0)  # what another holder's 429 told the authority
    # The holder learns it when it asks for a lease: its waiter is answered then, at once.
    asking = asyncio.create_task(holder.acquire(1, deadline=clock() + QUEUE_S, wait_budget=10.0))
    await settle()
    assert asking.done()
    with pytest.raises(RateLimitExceeded) as caught:
        asking.result()
    assert caught.value.retry_after == 30.0
    assert holder.utilization().blocked_for == 30.0
    # A waiter whose budget covers the block waits it out, then gets its lease.
    waiting = asyncio.create_task(holder.acquire(1, deadline=clock() + QUEUE_S, wait_budget=40.0))
    await timers.advance(30.0)
    await timers.advance(0.1)  # the lease's round trip
    permit = waiting.result()
    assert permit.blocked_s == 30.0
    permit.settle(1)
    assert channel.told == []  # nothing was learnt here: nothing to tell
    await holder._close()
