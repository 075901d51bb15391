"""The strict lease authority on a fake clock: exactness by use time, lease size, returns,
expiry and 429s. Its line protocol is tested in ``test_strict_lease_wire.py``."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import AutoTune, DenialReason, LimiterKey
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    LeaseReturn,
    lease_cap,
)
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp0", "gpt-4o")
RPM = RateLimits(requests_per_minute=120, strict=True)


def granted(result: LeaseGrant | LeaseRefusal) -> LeaseGrant:
    assert isinstance(result, LeaseGrant), result
    return result


def refused(result: LeaseGrant | LeaseRefusal) -> LeaseRefusal:
    assert isinstance(result, LeaseRefusal), result
    return result


def window_maxima(uses: Sequence[tuple[float, int]], window: float = 60.0) -> tuple[int, int]:
    """The most requests and tokens in any window [t, t + 60) that starts at a use."""
    most_requests = most_tokens = end = tokens = 0
    for start, (t0, _) in enumerate(uses):
        while end < len(uses) and uses[end][0] < t0 + window:
            tokens += uses[end][1]
            end += 1
        most_requests = max(most_requests, end - start)
        most_tokens = max(most_tokens, tokens)
        tokens -= uses[start][1]
    return most_requests, most_tokens


# ---------------------------------------------------------------- a simulation


@dataclass
class Holder:
    """A worker spending leases: asks when its queue has no room, returns at expiry."""

    queue: deque[tuple[float, int]] = field(default_factory=deque)
    lease: list[float] | None = None  # [lease_id, requests, tokens, expires_at]
    asked_at: float | None = None
    answer_at: float = 0.0
    answer: LeaseGrant | LeaseRefusal | None = None
    refused_until: float = -math.inf
    returns: dict[int, list[int]] = field(default_factory=dict)

    def give_back(self, lease_id: int, requests: int, tokens: int) -> None:
        entry = self.returns.setdefault(lease_id, [0, 0])
        entry[0] += requests
        entry[1] += tokens

    def retire(self) -> None:
        if self.lease is not None:
            lease_id, requests, tokens, _ = self.lease
            self.give_back(int(lease_id), int(requests), int(tokens))
            self.lease = None


def simulate(
    seed: int,
    *,
    rpm: int,
    tpm: int,
    minutes: int = 6,
    ttl: float = 1.0,
    restore_at: float | None = None,
) -> tuple[list[tuple[float, int]], LeaseAuthority]:
    """Four holders, Poisson-like demand at 3x the RPM, random one-way latencies; every
    use is recorded with its time and actual tokens (always <= the estimate). With
    ``restore_at`` the authority persists a snapshot after every change and is replaced at
    that time by one restored from the last snapshot (a restart on another node)."""
    rng = random.Random(seed)
    clock = FakeClock(0.0)
    authority = LeaseAuthority(clock, lease_ttl=ttl)
    saved, saved_dirty = authority.snapshot(), authority.dirty

    def persist() -> None:
        nonlocal saved, saved_dirty
        if restore_at is not None and authority.dirty != saved_dirty:
            saved, saved_dirty = authority.snapshot(), authority.dirty

    limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm, strict=True)
    holders = [Holder() for _ in range(4)]
    tick = 1 / 16
    arrival = 3 * rpm / 60 / len(holders) * tick
    uses: list[tuple[float, int]] = []
    in_transit: list[tuple[float, Holder, int, int, int]] = []  # (arrives, holder, want..)
    for _ in range(int(minutes * 60 / tick)):
        now = clock()
        if restore_at is not None and now >= restore_at:
            authority, restore_at = LeaseAuthority.restore(saved, clock), None
        for at, holder, want_requests, want_tokens, need in list(in_transit):
            if at <= now:  # the request reaches the authority now
                in_transit.remove((at, holder, want_requests, want_tokens, need))
                holder.answer = authority.request(
                    KEY, limits, want_requests, want_tokens, need_tokens=need
                )
                persist()  # before the reply leaves
                holder.answer_at = now + rng.randrange(3) * tick
        for holder in rng.sample(holders, len(holders)):
            if rng.random() < arrival:
                holder.queue.append((now, rng.randrange(50, 151)))
            while holder.queue and holder.queue[0][0] < now - 5:  # past its deadline
                holder.queue.popleft()
            if holder.answer is not None and holder.answer_at <= now:
                if isinstance(holder.answer, LeaseGrant):
                    holder.retire()
                    grant = holder.answer
                    assert holder.asked_at is not None
                    expires = holder.asked_at + grant.ttl
                    holder.lease = [grant.lease_id, grant.requests, grant.tokens, expires]
                else:
                    holder.refused_until = holder.answer.retry_at
                holder.answer, holder.asked_at = None, None
            if holder.lease is not None and now >= holder.lease[3]:
                holder.retire()
            lease = holder.lease
            while lease is not None and holder.queue and lease[1] >= 1:
                estimate = holder.queue[0][1]
                if lease[2] < estimate:
                    break
                holder.queue.popleft()
                actual = estimate * rng.randrange(50, 101) // 100
                uses.append((now, actual))
                lease[1] -= 1
                lease[2] -= actual  # settled at once: the difference stays in the lease
            if (
                holder.queue
                and holder.asked_at is None
                and holder.answer is None
                and now >= holder.refused_until
            ):
                returns = [
                    LeaseReturn(lease_id, requests, tokens, 0)
                    for lease_id, (requests, tokens) in holder.returns.items()
                ]
                holder.returns.clear()
                for item in returns:
                    authority.release(*item)
                persist()
                want = len(holder.queue)
                demand = sum(tokens for _, tokens in holder.queue)
                in_transit.append(
                    (now + rng.randrange(3) * tick, holder, want, demand, holder.queue[0][1])
                )
                holder.asked_at = now
        clock.advance(tick)
    return uses, authority


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_four_holders_at_three_times_the_limit_stay_exact_and_near_it(seed: int) -> None:
    rpm = 120
    uses, _ = simulate(seed, rpm=rpm, tpm=rpm * 100)
    requests, tokens = window_maxima(uses)
    assert requests <= rpm
    assert tokens <= rpm * 100
    steady = [t for t, _ in uses if 60 <= t < 360]
    assert len(steady) >= 0.9 * rpm * 5  # >= 90 % of the limit per minute


@pytest.mark.parametrize("seed", [5, 6])
def test_a_restore_in_the_middle_keeps_the_record_exact(seed: int) -> None:
    """Snapshots after every change and a restart at a random moment: the holders' uses
    are exactly those of a run without the restart, so every window of use holds."""
    rpm = 120
    restore_at = random.Random(seed).uniform(30.0, 330.0)
    uses, authority = simulate(seed, rpm=rpm, tpm=rpm * 100, restore_at=restore_at)
    assert uses == simulate(seed, rpm=rpm, tpm=rpm * 100)[0]
    requests, tokens = window_maxima(uses)
    assert requests <= rpm
    assert tokens <= rpm * 100
    assert authority.dirty > 0  # the restored one went on granting


def test_a_token_bound_key_stays_exact_by_use_time() -> None:
    uses, authority = simulate(4, rpm=600, tpm=6000, minutes=4)
    requests, tokens = window_maxima(uses)
    assert requests <= 600
    assert tokens <= 6000
    steady = sum(n for t, n in uses if 60 <= t < 240)
    assert steady >= 0.8 * 6000 * 3  # estimates run ~1.3x the actual usage
    assert authority.utilization()[0].mode == "strict"


# ---------------------------------------------------------------- the record


def test_a_grant_counts_for_window_plus_ttl() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=2.0)
    limits = RateLimits(requests_per_minute=1, strict=True)
    assert granted(authority.request(KEY, limits, 1, 0)) == LeaseGrant(1, 1, 0, 2.0)
    refusal = refused(authority.request(KEY, limits, 1, 0))
    assert (refusal.retry_at, refusal.retry_after, refusal.reason) == (
        clock() + 62.0,
        62.0,
        DenialReason.REQUESTS,
    )
    clock.advance(60.0)  # the exact limiter would admit here; a lease may still be in use
    refused(authority.request(KEY, limits, 1, 0))
    clock.advance(2.0)
    granted(authority.request(KEY, limits, 1, 0))


def test_the_per_lease_cap_lets_holders_take_turns() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0)
    assert lease_cap(600, 1.0, 60.0) == 20
    assert lease_cap(10, 1.0, 60.0) == 1
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=60_000, strict=True)
    grant = granted(authority.request(KEY, limits, 100, 10**6))
    assert (grant.requests, grant.tokens) == (20, 2000)
    small = granted(authority.request(KEY, limits, 5, 300))
    assert (small.requests, small.tokens) == (5, 300)
    big = granted(authority.request(KEY, limits, 1, 0, need_tokens=5000))  # need beats cap
    assert (big.requests, big.tokens) == (1, 5000)
    assert granted(authority.request(KEY, limits, 0, 0)).requests == 1


def test_a_grant_is_what_the_window_allows_and_a_refusal_says_when() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0, window=10.0)
    limits = RateLimits(requests_per_minute=30, tokens_per_minute=1000, strict=True)
    granted(authority.request(KEY, limits, 6, 400))  # caps: 6 requests, 200 tokens
    clock.advance(1.0)
    grant = granted(authority.request(KEY, limits, 6, 700, need_tokens=700))
    assert grant.tokens == 700
    clock.advance(1.0)
    refusal = refused(authority.request(KEY, limits, 1, 200, need_tokens=200))
    assert refusal.reason is DenialReason.TOKENS
    assert refusal.retry_at == 1000.0 + 11.0  # when the first grant leaves
    never = refused(authority.request(KEY, limits, 1, 0, need_tokens=1001))
    assert (never.retry_at, never.retry_after, never.reason) == (
        math.inf,
        None,
        DenialReason.TOO_LARGE,
    )
    zero = RateLimits(requests_per_minute=0, strict=True)
    assert refused(authority.request(KEY, zero, 1, 0)).reason is DenialReason.TOO_LARGE
    unlimited = granted(authority.request(LimiterKey("a", "b", "c"), RateLimits(), 7, 9))
    assert (unlimited.requests, unlimited.tokens) == (7, 9)
    with pytest.raises(ValueError, match="negative"):
        authority.request(KEY, limits, -1, 0)
    with pytest.raises(ValueError, match="> 0"):
        LeaseAuthority(clock, lease_ttl=0.0)


def test_returns_free_permits_and_overruns_are_charged() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0)
    limits = RateLimits(requests_per_minute=2, tokens_per_minute=1000, strict=True)
    lease = granted(authority.request(KEY, limits, 1, 100, need_tokens=100))
    other = granted(authority.request(KEY, limits, 1, 100, need_tokens=100))
    refused(authority.request(KEY, limits, 1, 0))
    assert authority.release(lease.lease_id, 1, 100, 0)  # never used
    again = granted(authority.request(KEY, limits, 1, 100, need_tokens=100))
    assert authority.release(other.lease_id, 0, 0, 850)  # used 950 of an estimate of 100
    use = authority.utilization()[0]
    assert (use.requests_in_window, use.tokens_in_window) == (2, 1050)
    assert authority.release(again.lease_id, 5, 10**6, 0)  # clamped to the lease
    use = authority.utilization()[0]
    assert (use.requests_in_window, use.tokens_in_window) == (1, 950)
    assert refused(authority.request(KEY, limits, 1, 60, need_tokens=60)).reason is (
        DenialReason.TOKENS
    )
    assert not authority.release(999, 1, 1, 0)  # never granted
    with pytest.raises(ValueError, match="negative"):
        authority.release(other.lease_id, -1)


def test_a_lease_never_returned_counts_in_full_until_it_leaves() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0)
    limits = RateLimits(requests_per_minute=3, strict=True)
    lost = [granted(authority.request(KEY, limits, 3, 0)) for _ in range(3)]
    assert [lease.requests for lease in lost] == [1, 1, 1]  # the cap: one at a time
    clock.advance(30.0)
    refused(authority.request(KEY, limits, 1, 0))
    clock.advance(31.0)
    granted(authority.request(KEY, limits, 3, 0))
    assert not authority.release(lost[0].lease_id, 1, 0, 0)  # too late: it has left


def test_a_429_blocks_the_key_merged_by_max_and_cuts_the_rate() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0, autotune=AutoTune(cooldown_s=0.0))
    limits = RateLimits(requests_per_minute=100, tokens_per_minute=1000, strict=True)
    authority.on_rate_limited(KEY, 5.0)
    authority.on_rate_limited(KEY, 2.0)  # a shorter block does not shorten it
    refusal = refused(authority.request(KEY, limits, 1, 0))
    assert (refusal.retry_at, refusal.reason) == (clock() + 5.0, DenialReason.RETRY_AFTER)
    clock.advance(5.0)
    use = authority.utilization()[0]
    assert (use.effective_requests_per_minute, use.blocked_for) == (25, 0.0)  # cut twice
    grant = granted(authority.request(KEY, limits, 100, 0))
    assert grant.requests == lease_cap(25, 1.0, 60.0)
    slow = refused(authority.request(KEY, limits, 1, 600, need_tokens=600))
    assert slow.reason is DenialReason.TOKENS  # 600 > 250: waits for recovery
    assert slow.retry_at == pytest.approx(clock() + 35.0)
    authority.on_rate_limited(KEY, None)  # a cut without a block
    assert authority.utilization()[0].blocked_for == 0.0
