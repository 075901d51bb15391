"""The distributed limiter: the over-spend bound (formula and acceptance simulation), strict
mode, replication through the simulated network, partitions, and the node facade."""

from __future__ import annotations

import asyncio
import heapq
import math
import random
from dataclasses import dataclass

import pytest

from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.distributed_limit_approximate import ApproximateLimiter
from rakka_inference.remote.distributed_limit_rule import (
    epoch_grant,
    over_spend_bound,
    reserve_epochs,
)
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import (
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    RateLimiter,
    SlidingWindowLimiter,
)
from rakka_inference.remote.replicator import (
    KeySync,
    PartitionMode,
    SimulatedNetwork,
    SyncMessage,
)
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp0", "gpt-4o")


def granted(result: Permit | Denial) -> Permit:
    assert isinstance(result, Permit), result
    return result


def denied(result: Permit | Denial) -> Denial:
    assert isinstance(result, Denial), result
    return result


class Timers:
    """Virtual time for waiting tests: ``sleep`` returns only when ``advance`` passes it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    async def sleep(self, delay: float) -> None:
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


class Cluster:
    """N nodes on one simulated network, synced at every epoch boundary."""

    def __init__(
        self,
        nodes: int = 4,
        *,
        delay: float = 0.25,
        max_delay: float = 0.5,
        max_request_tokens: int | None = None,
        anti_entropy_every: int = 10,
        start: float = 1000.0,
    ) -> None:
        self.clock = FakeClock(start)
        self.network = SimulatedNetwork(self.clock, delay=delay)
        self.authority = RateLimiter(clock=self.clock)
        self.nodes = [
            DistributedRateLimiter(
                self.network.join(f"node-{i}"),
                clock=self.clock,
                authority=self.authority,
                max_delay=max_delay,
                max_request_tokens=max_request_tokens,
                anti_entropy_every=anti_entropy_every,
            )
            for i in range(nodes)
        ]
        self._epoch = math.floor(start)

    def advance(self, seconds: float) -> None:
        """Move time, delivering messages and syncing every node at each 1 s boundary."""
        target = self.clock() + seconds
        while True:
            boundary = float(self._epoch + 1)
            if boundary > target:
                break
            self.network.advance(boundary - self.clock())
            self._epoch += 1
            for node in self.nodes:
                node.sync()
        self.network.advance(target - self.clock())

    def approximate(self, index: int, limits: RateLimits) -> ApproximateLimiter:
        limiter = self.nodes[index].limiter_for(KEY, limits)
        assert isinstance(limiter, ApproximateLimiter)
        return limiter


# ---------------------------------------------------------------- the formula


def test_reserve_epochs_count_the_delay_in_sync_intervals() -> None:
    assert reserve_epochs(1.0, 0.0) == 1
    assert reserve_epochs(1.0, 0.5) == 1
    assert reserve_epochs(1.0, 1.0) == 2
    assert reserve_epochs(1.0, 2.5) == 3
    with pytest.raises(ValueError, match="sync_interval"):
        reserve_epochs(0.0, 1.0)


def test_the_over_spend_bound_formula() -> None:
    # N·c, independent of the interval and the delay while the delay is within max_delay.
    assert over_spend_bound(4, 750, 1, 1.0, 0.25) == 4
    assert over_spend_bound(4, 300_000, 1000, 1.0, 0.25, max_delay=0.5) == 4000
    assert over_spend_bound(4, 300_000, 1000, 5.0, 4.0) == 4000
    assert over_spend_bound(1, 300_000, 1000, 1.0, 0.25) == 0  # one node: exact
    assert over_spend_bound(2, 1000, 1000, 1.0, 0.25) == 1000  # capped by (N - 1)·L
    # A delay beyond the assumption: only the per-node view check holds.
    assert over_spend_bound(4, 750, 1, 1.0, 2.0, max_delay=0.5) == 3 * 750
    with pytest.raises(ValueError, match="nodes"):
        over_spend_bound(0, 1, 1, 1.0, 0.0)


def test_the_epoch_grant_reserves_the_unstable_epochs() -> None:
    assert epoch_grant(1000, 0, [], 4) == (1000, 250)  # m = 0: the whole share
    assert epoch_grant(1000, 0, [1000.0], 4) == (1000, 125)  # half reserved for epoch k-1
    assert epoch_grant(1000, 600, [1000.0], 4) == (400, 0)  # headroom fell: grant nothing
    assert epoch_grant(1000, 1500, [400.0], 4) == (0, 0)


# ---------------------------------------------------------------- acceptance simulation


@dataclass(frozen=True)
class HammerReport:
    mode: str
    nodes: int
    offered: int
    admitted: int
    worst_requests: float
    """The worst sliding 60 s window, as a fraction of RPM."""
    worst_tokens: float
    """The worst sliding 60 s window of settled tokens, as a fraction of TPM."""
    allowed_requests: float
    """1 + over-spend bound / RPM (1.0 in strict mode)."""
    allowed_tokens: float

    def __str__(self) -> str:
        return (
            f"{self.mode}: {self.nodes} nodes, {self.admitted}/{self.offered} admitted; "
            f"worst window {self.worst_requests:.4f} x RPM (allowed {self.allowed_requests:.4f}), "
            f"{self.worst_tokens:.4f} x TPM (allowed {self.allowed_tokens:.4f})"
        )


def worst_windows(admitted: list[list[float]], window: float = 60.0) -> tuple[int, int]:
    """The most requests and tokens in any window [t, t + 60) (the worst window always
    starts at an admission, so this checks every sliding window exactly)."""
    most_requests = most_tokens = 0
    end = tokens = 0
    for start, (t0, _) in enumerate(admitted):
        while end < len(admitted) and admitted[end][0] < t0 + window:
            tokens += int(admitted[end][1])
            end += 1
        most_requests = max(most_requests, end - start)
        most_tokens = max(most_tokens, tokens)
        tokens -= int(admitted[start][1])
    return most_requests, most_tokens


def hammer(
    *,
    strict: bool,
    nodes: int = 4,
    minutes: float = 5.0,
    rpm: int = 750,
    tpm: int = 300_000,
    max_request_tokens: int = 1000,
    delay: float = 0.25,
    max_delay: float = 0.5,
    seed: int = 7,
) -> HammerReport:
    """Every node offers one request per 1/32 s (10.24x RPM in all, about 12.8x TPM) of
    1..max_request_tokens tokens; each call settles 0.5-3 s later at 80-100 % of its
    estimate. Returns the worst windows of what was admitted (settled charges)."""
    cluster = Cluster(nodes, delay=delay, max_delay=max_delay, max_request_tokens=1000)
    limits = RateLimits(requests_per_minute=rpm, tokens_per_minute=tpm, strict=strict)
    limiters = [
        node.limiter_for(KEY, limits, max_request_tokens=max_request_tokens)
        for node in cluster.nodes
    ]
    rng = random.Random(seed)
    admitted: list[list[float]] = []
    calls: list[tuple[float, int, Permit, int]] = []
    offered = 0
    step = 1 / 32
    for _ in range(int(minutes * 60 / step)):
        cluster.advance(step)
        now = cluster.clock()
        while calls and calls[0][0] <= now:
            _, index, permit, actual = heapq.heappop(calls)
            permit.settle(actual)
            admitted[index][1] = actual
        for limiter in limiters:
            cost = rng.randint(1, max_request_tokens)
            offered += 1
            result = limiter.try_acquire(cost)
            if isinstance(result, Permit):
                actual = cost * rng.randint(80, 100) // 100
                heapq.heappush(calls, (now + rng.uniform(0.5, 3.0), len(admitted), result, actual))
                admitted.append([now, cost])
    for _, index, permit, actual in calls:
        permit.settle(actual)
        admitted[index][1] = actual
    requests, tokens = worst_windows(admitted)
    if strict:
        allowed_requests = allowed_tokens = 1.0
    else:
        bound = over_spend_bound(nodes, rpm, 1, 1.0, delay, max_delay=max_delay)
        allowed_requests = 1 + bound / rpm
        bound = over_spend_bound(nodes, tpm, max_request_tokens, 1.0, delay, max_delay=max_delay)
        allowed_tokens = 1 + bound / tpm
    return HammerReport(
        mode="strict" if strict else "approximate",
        nodes=nodes,
        offered=offered,
        admitted=len(admitted),
        worst_requests=requests / rpm,
        worst_tokens=tokens / tpm,
        allowed_requests=allowed_requests,
        allowed_tokens=allowed_tokens,
    )


def acceptance_figures() -> tuple[HammerReport, HammerReport]:
    """Four nodes, one key, 10x its limit, five simulated minutes: (approximate, strict)."""
    return hammer(strict=False), hammer(strict=True)


def test_acceptance_four_nodes_hammer_one_key_at_ten_times_its_limit() -> None:
    approximate, strict = acceptance_figures()
    print(f"\n{approximate}\n{strict}")
    assert approximate.offered >= 10 * 5 * 750
    assert approximate.worst_requests <= approximate.allowed_requests, approximate
    assert approximate.worst_tokens <= approximate.allowed_tokens, approximate
    assert strict.worst_requests <= 1.0, strict
    assert strict.worst_tokens <= 1.0, strict
    # Both keep the key busy: at least 80 % of what five minutes allow.
    assert approximate.admitted >= 0.8 * 5 * 750
    assert strict.admitted >= 0.8 * 5 * 750


def test_the_bound_holds_with_a_longer_delay_and_large_requests() -> None:
    slow = hammer(strict=False, minutes=3, delay=2.25, max_delay=2.5)  # m = 3
    print(f"\n{slow}")
    assert slow.worst_requests <= slow.allowed_requests, slow
    assert slow.worst_tokens <= slow.allowed_tokens, slow
    big = hammer(strict=False, minutes=3, max_request_tokens=40_000)
    print(big)
    assert big.worst_tokens <= big.allowed_tokens, big


def test_the_bound_is_tight_under_an_adversarial_schedule() -> None:
    """Every node stops just short of its entitlement, then takes one maximal request, in
    two epochs before anyone has seen anyone: L + N·c - N, just under the bound."""
    cluster = Cluster(4, delay=0.25, max_request_tokens=1000)
    limits = RateLimits(tokens_per_minute=8000)
    nodes = [cluster.approximate(i, limits) for i in range(4)]
    cluster.advance(1.0)  # every node's grant: 8000 / (m + 1) / N = 1000
    for node in nodes:
        granted(node.try_acquire(999))
        granted(node.try_acquire(1000))  # 999 < 1000: the straddling request
    cluster.advance(1.0)  # the next grant; the others' spend is still on its way
    for node in nodes:
        granted(node.try_acquire(1000))  # 1999 < 2000
        assert denied(node.try_acquire(1)).reason is DenialReason.SHARE
    admitted = 4 * (999 + 1000 + 1000)
    bound = over_spend_bound(4, 8000, 1000, 1.0, 0.25, max_delay=0.5)
    assert admitted - 8000 == bound - 4  # N·c, less one token per node
    cluster.advance(1.25)  # now everyone has seen everything: no more grants
    for node in nodes:
        assert denied(node.try_acquire(1)).reason in (DenialReason.SHARE, DenialReason.TOKENS)


# ---------------------------------------------------------------- the rule, step by step


def test_a_node_takes_its_share_of_the_epoch_then_waits_for_the_next() -> None:
    cluster = Cluster(4)
    limits = RateLimits(requests_per_minute=800)
    node = cluster.approximate(0, limits)
    cluster.advance(1.0)  # H = 800, m = 1: every node's grant is 800 / 2 / 4 = 100
    for _ in range(100):
        granted(node.try_acquire(0))
    denial = denied(node.try_acquire(0))
    assert denial == Denial(1002.0, DenialReason.SHARE)
    cluster.advance(1.0)
    granted(node.try_acquire(0))
    use = node.utilization()
    assert use.mode == "approximate"
    assert use.requests_in_window == 101
    assert use.over_spend_bound_requests == 4.0
    assert use.over_spend_bound_tokens == 0.0


def test_the_view_check_refuses_what_the_node_can_see_is_spent() -> None:
    cluster = Cluster(2, max_request_tokens=1000)
    limits = RateLimits(tokens_per_minute=1000)
    a, b = cluster.approximate(0, limits), cluster.approximate(1, limits)
    a.latest.merge(
        CounterState(buckets={a.latest.bucket_of(cluster.clock()): {"x": Spend(1, 990)}})
    )
    denial = denied(a.try_acquire(20))
    assert denial.reason is DenialReason.TOKENS
    assert denial.retry_at == a.latest.expires_at(a.latest.bucket_of(cluster.clock()))
    granted(b.try_acquire(20))
    assert denied(a.try_acquire(1001)).reason is DenialReason.TOO_LARGE


def test_spend_is_gossiped_and_becomes_stable_after_the_reserve() -> None:
    cluster = Cluster(3, delay=0.25)
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=60_000)
    a, b, c = (cluster.approximate(i, limits) for i in range(3))
    cluster.advance(1.0)
    granted(a.try_acquire(100)).settle(60)
    granted(a.try_acquire(100))
    assert (b.latest.requests, b.stable.requests) == (0, 0)
    cluster.advance(1.0)  # published at the boundary, delivered 0.25 s later
    assert b.latest.requests == 0
    cluster.advance(0.25)
    assert (b.latest.requests, b.latest.tokens) == (2, 160)
    assert b.stable.requests == 0
    cluster.advance(1.0)  # folded once stamped <= epoch - m, on every node alike
    assert (b.stable.requests, b.stable.tokens) == (2, 160)
    assert c.stable.state() == b.stable.state() == a.stable.state()


def test_settlement_refunds_only_while_the_grant_is_live() -> None:
    cluster = Cluster(1, max_request_tokens=1000)
    limits = RateLimits(tokens_per_minute=1000)
    node = cluster.approximate(0, limits)
    cluster.advance(1.0)
    first = granted(node.try_acquire(100))
    first.settle(30)
    assert node.latest.tokens == 30
    over = granted(node.try_acquire(100))
    over.settle(150)  # an overrun is charged
    assert node.latest.tokens == 180
    late = granted(node.try_acquire(100))
    cluster.advance(62.0)
    late.settle(0)  # its bucket has left the window: nothing to give back
    assert node.latest.tokens == 0
    late.release()
    assert node.utilization().concurrent_in_use == 0


def test_concurrency_is_shared_out_between_nodes() -> None:
    cluster = Cluster(4)
    node = cluster.approximate(0, RateLimits(concurrent_requests=6))
    a, b = granted(node.try_acquire(0)), granted(node.try_acquire(0))  # ceil(6 / 4) = 2
    assert denied(node.try_acquire(0)).reason is DenialReason.CONCURRENCY
    a.settle(0)
    b.release()
    assert node.utilization().concurrent_limit == 2
    assert node.utilization().concurrent_in_use == 0


def test_retry_after_is_gossiped_to_every_node() -> None:
    cluster = Cluster(2)
    limits = RateLimits(requests_per_minute=600)
    a, b = cluster.approximate(0, limits), cluster.approximate(1, limits)
    cluster.advance(1.0)
    a.on_rate_limited(30.0)
    assert denied(a.try_acquire(0)).reason is DenialReason.RETRY_AFTER
    assert a.utilization().rate_factor == 0.5
    cluster.advance(1.25)
    denial = denied(b.try_acquire(0))
    assert denial.reason is DenialReason.RETRY_AFTER
    assert denial.retry_at == pytest.approx(1031.0)
    assert b.utilization().blocked_for == pytest.approx(28.75)


def test_a_request_above_the_tuned_rate_waits_for_recovery() -> None:
    cluster = Cluster(1, max_request_tokens=1000)
    node = cluster.approximate(0, RateLimits(tokens_per_minute=1000))
    cluster.advance(1.0)
    node.on_rate_limited(None)
    denial = denied(node.try_acquire(800))
    assert denial.reason is DenialReason.TOKENS
    assert denial.retry_at == pytest.approx(cluster.clock() + 30.0)


def test_smoothing_spaces_a_nodes_own_admissions() -> None:
    cluster = Cluster(2, max_request_tokens=1000)
    limits = RateLimits(requests_per_minute=1200, tokens_per_minute=120_000, smoothing=True)
    node = cluster.approximate(0, limits)
    cluster.advance(1.0)
    granted(node.try_acquire(300))  # a node's rate: 10 requests/s, 1000 tokens/s
    denial = denied(node.try_acquire(0))
    assert denial.reason is DenialReason.TOKENS
    assert denial.retry_at == pytest.approx(cluster.clock() + 0.3)
    cluster.advance(0.3)
    granted(node.try_acquire(0))
    assert denied(node.try_acquire(0)).reason is DenialReason.REQUESTS


def test_unlimited_keys_need_no_bookkeeping() -> None:
    cluster = Cluster(2)
    node = cluster.approximate(0, RateLimits())
    permit = granted(node.try_acquire(10**9))
    permit.settle(5)
    use = node.utilization()
    assert (use.requests_in_window, use.concurrent_in_use) == (0, 0)
    assert use.over_spend_bound_requests == 0.0
    assert cluster.nodes[0].sync() is None  # nothing to publish


def test_a_long_idle_gap_replays_only_the_last_epochs() -> None:
    cluster = Cluster(1)
    node = cluster.approximate(0, RateLimits(requests_per_minute=60))
    cluster.advance(1.0)
    granted(node.try_acquire(0))
    cluster.clock.advance(3600.0)  # no ticks at all for an hour
    granted(node.try_acquire(0))
    assert node.epoch == math.floor(cluster.clock())
    assert "epoch=" in repr(node)


# ---------------------------------------------------------------- waiting and the sync task


async def test_acquire_waits_for_the_next_epochs_grant() -> None:
    clock = FakeClock(1000.0)
    timers = Timers(clock)
    network = SimulatedNetwork(clock)
    node = DistributedRateLimiter(network.join("busy"), clock=clock, sleep=timers.sleep)
    network.join("idle")
    limiter = node.limiter_for(KEY, RateLimits(requests_per_minute=240))
    for _ in range(60):  # two nodes, m = 1: 240 / 2 / 2 per node and epoch
        granted(limiter.try_acquire(0))
    waiting = asyncio.create_task(limiter.acquire(0, deadline=clock() + 5))
    await timers.advance(0.5)
    assert not waiting.done()
    await timers.advance(0.5)
    assert waiting.result().granted_at == 1001.0
    for _ in range(59):  # the rest of this epoch's grant
        granted(limiter.try_acquire(0))
    with pytest.raises(RateLimitExceeded) as caught:  # the next grant is after the deadline
        await limiter.acquire(0, deadline=clock() + 0.5)
    assert caught.value.retry_after == pytest.approx(1.0)


async def test_the_sync_task_publishes_at_every_boundary() -> None:
    clock = FakeClock(1000.25)
    timers = Timers(clock)
    network = SimulatedNetwork(clock, delay=0.0)
    nodes = [
        DistributedRateLimiter(network.join(name), clock=clock, sleep=timers.sleep)
        for name in ("a", "b")
    ]
    assert nodes[0].next_sync_at() == 1001.0  # no keys yet: whole seconds
    limits = RateLimits(requests_per_minute=600)
    granted(nodes[0].limiter_for(KEY, limits).try_acquire(0))
    task = asyncio.create_task(nodes[0].run())
    await timers.advance(0.75)
    network.flush()
    other = nodes[1].limiter_for(KEY, limits)
    assert isinstance(other, ApproximateLimiter)
    assert other.latest.requests == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- strict mode


def test_strict_keys_share_one_exact_authority() -> None:
    cluster = Cluster(3)
    limits = RateLimits(requests_per_minute=5, strict=True)
    limiters = [node.limiter_for(KEY, limits) for node in cluster.nodes]
    assert all(limiter is limiters[0] for limiter in limiters)
    assert isinstance(limiters[0], SlidingWindowLimiter)
    for i in range(5):
        granted(limiters[i % 3].try_acquire(0))
    for limiter in limiters:
        assert denied(limiter.try_acquire(0)).reason is DenialReason.REQUESTS
    snapshots = cluster.nodes[1].utilization()
    assert [use.requests_in_window for use in snapshots] == [5]
    assert snapshots[0].over_spend_bound_requests == 0.0


def test_without_an_authority_a_node_is_its_own() -> None:
    clock = FakeClock()
    node = DistributedRateLimiter(SimulatedNetwork(clock).join("solo"), clock=clock)
    limiter = node.limiter_for(KEY, RateLimits(requests_per_minute=1, strict=True))
    assert isinstance(limiter, SlidingWindowLimiter)
    granted(limiter.try_acquire(0))
    denied(limiter.try_acquire(0))


def test_a_discarded_key_is_forgotten_and_made_again_on_use() -> None:
    clock = FakeClock()
    node = DistributedRateLimiter(SimulatedNetwork(clock).join("solo"), clock=clock)
    approximate = node.limiter_for(KEY, RateLimits(requests_per_minute=60))
    node.limiter_for(OTHER := KEY._replace(model="other"), RateLimits(strict=True))
    assert len(node.utilization()) == 2
    node.discard(KEY)
    node.discard(OTHER)
    node.discard(OTHER)  # already gone: nothing to do
    assert node.utilization() == []
    assert node.limiter_for(KEY, RateLimits(requests_per_minute=60)) is not approximate


# ---------------------------------------------------------------- the node facade


def test_a_message_about_a_new_key_creates_its_limiter() -> None:
    cluster = Cluster(2)
    limits = RateLimits(requests_per_minute=600)
    a = cluster.approximate(0, limits)
    cluster.advance(1.0)
    granted(a.try_acquire(0))
    cluster.advance(1.25)
    b = cluster.nodes[1].limiter_for(KEY, limits)
    assert isinstance(b, ApproximateLimiter)
    assert b.latest.requests == 1
    assert b.limits == limits
    # Reconfiguring keeps the spend.
    b2 = cluster.approximate(1, RateLimits(requests_per_minute=900, tokens_per_minute=50))
    assert b2 is b
    assert b.latest.requests == 1
    assert b.max_request_tokens == 50


def test_a_node_ignores_its_own_echo() -> None:
    cluster = Cluster(1)
    node = cluster.nodes[0]
    node._on_message(SyncMessage("node-0", 0.0, ()))
    fake = KeySync(KEY, RateLimits(requests_per_minute=1), 0, CounterState(), 0.0)
    node._on_message(SyncMessage("node-0", 0.0, (fake,)))
    assert node.utilization() == []


def test_invalid_anti_entropy_setting_is_refused() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="anti_entropy_every"):
        ApproximateLimiter(
            KEY, RateLimits(), node_id="a", nodes=lambda: 1, clock=clock, anti_entropy_every=0
        )


# ---------------------------------------------------------------- partitions


def test_a_dropping_partition_heals_through_anti_entropy() -> None:
    cluster = Cluster(4, anti_entropy_every=5)
    limits = RateLimits(requests_per_minute=6000)
    limiters = [cluster.approximate(i, limits) for i in range(4)]
    cluster.network.partition(["node-0", "node-1"], ["node-2", "node-3"])
    for _ in range(3):
        cluster.advance(1.0)
        for limiter in limiters:
            granted(limiter.try_acquire(0))
    cluster.advance(1.25)
    assert cluster.network.dropped > 0
    assert limiters[0].latest.requests == 6  # its side only
    cluster.network.heal()
    cluster.advance(6.0)  # one full-row round repairs the lost deltas
    assert all(limiter.latest.state() == limiters[0].latest.state() for limiter in limiters)
    assert limiters[0].latest.requests == 12


def test_a_holding_partition_delivers_late_and_late_news_is_folded_at_once() -> None:
    cluster = Cluster(2, anti_entropy_every=1000)
    limits = RateLimits(requests_per_minute=6000)
    a, b = cluster.approximate(0, limits), cluster.approximate(1, limits)
    cluster.network.partition(["node-0"], ["node-1"], mode=PartitionMode.HOLD)
    cluster.advance(1.0)
    granted(a.try_acquire(0))
    cluster.advance(4.0)
    assert cluster.network.held > 0
    assert b.latest.requests == 0
    cluster.network.heal()
    cluster.advance(0.25)
    assert cluster.network.held == 0
    assert b.latest.requests == 1
    assert b.stable.requests == 1  # stamped long ago: straight into the stable view


def test_the_network_refuses_nonsense() -> None:
    clock = FakeClock()
    network = SimulatedNetwork(clock)
    replicator = network.join("a")
    assert repr(replicator) == "InProcessReplicator('a')"
    with pytest.raises(ValueError, match="already joined"):
        network.join("a")
    with pytest.raises(ValueError, match="delay"):
        network.delay = -1.0
    with pytest.raises(ValueError, match="forward"):
        network.advance(-1.0)
    with pytest.raises(ValueError, match="two groups"):
        network.partition(["a"], ["a"])
    network.partition(["a"])
    assert not network.connected("a", "b")  # b is in no group: cut off
    assert network.connected("b", "b")
    network.heal()
    assert network.connected("a", "b")
    network.leave("a")
    with pytest.raises(ValueError, match="has left"):
        replicator.subscribe(lambda message: None)


def test_messages_to_absent_or_deaf_nodes_are_lost() -> None:
    clock = FakeClock()
    network = SimulatedNetwork(clock, delay=1.0)
    sender = network.join("a")
    network.join("deaf")  # never subscribes
    listener = network.join("gone")
    listener.subscribe(lambda message: None)
    sender.publish(SyncMessage("a", clock(), ()))
    assert network.in_flight == 2
    network.leave("gone")
    assert sender.members() == frozenset({"a", "deaf"})
    network.advance(1.0)
    assert (network.sent, network.delivered, network.dropped) == (2, 0, 2)


def test_one_limit_alone_smoothing_and_one_sync_per_epoch() -> None:
    clock = FakeClock(1000.0)
    requests_only = ApproximateLimiter(
        KEY,
        RateLimits(requests_per_minute=60, smoothing=True),
        node_id="a",
        nodes=lambda: 2,
        clock=clock,
        max_request_tokens=10,
    )
    assert requests_only.max_request_tokens == 10  # no TPM to cap it
    granted(requests_only.try_acquire(5))  # half of 60/min per node: one per 2 s
    assert denied(requests_only.try_acquire(5)) == Denial(1002.0, DenialReason.REQUESTS)
    requests_only.reconfigure(RateLimits(requests_per_minute=120))
    assert requests_only.max_request_tokens == 10
    clock.advance(1.0)
    assert requests_only.make_sync(clock()) is not None
    assert requests_only.make_sync(clock()) is None  # once per epoch
    tokens_only = ApproximateLimiter(
        KEY,
        RateLimits(tokens_per_minute=600, smoothing=True),
        node_id="a",
        nodes=lambda: 1,
        clock=clock,
    )
    granted(tokens_only.try_acquire(10))  # 10 tokens/s
    assert denied(tokens_only.try_acquire(0)) == Denial(clock() + 1.0, DenialReason.TOKENS)
    assert SimulatedNetwork(clock, delay=0.5).delay == 0.5
