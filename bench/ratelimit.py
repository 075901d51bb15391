"""Rate-limit permit cost on one core: acquire + settle, per limiter kind.

    python bench/ratelimit.py [--ops N] [--repeats R]

Each limiter is measured in its steady state: the clock moves 1 ms per request, so the
60 s window holds 60,000 grants and every grant also pays for one eviction. The limits are
high enough that every request is admitted (the cost of a grant, not of a denial). The
baseline, taken in the same run, is the same bookkeeping done bare: a dict lookup of the
key, a deque append and popleft with a running token sum, and an in-flight counter up and
down. Absolute times on shared machines are noisy; the ratio is the figure to compare
across machines. Target (issue: rate limiter): acquire + settle <= 5 us.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable

from _pinning import pin_to_one_core
from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.ratelimit import LimiterKey, Permit, RateLimiter
from rakka_inference.remote.replicator import SimulatedNetwork
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "0123456789abcdef", "gpt-4o")
LIMITS = RateLimits(requests_per_minute=10**9, tokens_per_minute=10**12, concurrent_requests=10**6)
STEP = 0.001


def bench_exact(n: int) -> float:
    clock = FakeClock(0.0)
    registry = RateLimiter(clock=clock)
    limiter = registry.limiter_for(KEY, LIMITS)
    for _ in range(70_000):  # fill the window: steady state
        clock.now += STEP
        permit = limiter.try_acquire(500)
        assert isinstance(permit, Permit)
        permit.settle(400)
    start = time.perf_counter_ns()
    for _ in range(n):
        clock.now += STEP
        permit = limiter.try_acquire(500)
        permit.settle(400)  # type: ignore[union-attr]
    return (time.perf_counter_ns() - start) / n


def bench_exact_registry(n: int) -> float:
    """The same, looking the key's limiter up in the registry each time (as a worker does)."""
    clock = FakeClock(0.0)
    registry = RateLimiter(clock=clock)
    registry.limiter_for(KEY, LIMITS)
    for _ in range(70_000):
        clock.now += STEP
        registry.limiter_for(KEY, LIMITS).try_acquire(500).settle(400)  # type: ignore[union-attr]
    start = time.perf_counter_ns()
    for _ in range(n):
        clock.now += STEP
        registry.limiter_for(KEY, LIMITS).try_acquire(500).settle(400)  # type: ignore[union-attr]
    return (time.perf_counter_ns() - start) / n


def bench_approximate(n: int) -> float:
    """One node of a four-node approximate cluster (the others idle), syncing every 1 s."""
    clock = FakeClock(0.0)
    network = SimulatedNetwork(clock)
    node = DistributedRateLimiter(network.join("node-0"), clock=clock, max_request_tokens=1000)
    for name in ("node-1", "node-2", "node-3"):
        network.join(name)
    limiter = node.limiter_for(KEY, LIMITS)
    next_sync = 1.0
    for _ in range(70_000):
        clock.now += STEP
        if clock.now >= next_sync:
            node.sync()
            next_sync += 1.0
        limiter.try_acquire(500).settle(400)  # type: ignore[union-attr]
    start = time.perf_counter_ns()
    for _ in range(n):
        clock.now += STEP
        if clock.now >= next_sync:
            node.sync()
            next_sync += 1.0
        limiter.try_acquire(500).settle(400)  # type: ignore[union-attr]
    return (time.perf_counter_ns() - start) / n


def bench_async_acquire(n: int) -> float:
    """``await acquire(...)`` when a permit is free (no waiters): the worker's path."""

    async def run() -> float:
        clock = FakeClock(0.0)
        limiter = RateLimiter(clock=clock).limiter_for(KEY, LIMITS)
        for _ in range(70_000):
            clock.now += STEP
            (await limiter.acquire(500, deadline=clock.now + 30)).settle(400)
        start = time.perf_counter_ns()
        for _ in range(n):
            clock.now += STEP
            (await limiter.acquire(500, deadline=clock.now + 30)).settle(400)
        return (time.perf_counter_ns() - start) / n

    return asyncio.run(run())


def bench_baseline(n: int) -> float:
    """Comparable bookkeeping done bare: key lookup, log append/evict, sums, in-flight."""
    clock = FakeClock(0.0)
    table: dict[LimiterKey, list[object]] = {KEY: [deque(), 0, 0]}

    def acquire_settle(tokens: int, actual: int) -> None:
        now = clock()
        state = table[KEY]
        log: deque[list[float]] = state[0]  # type: ignore[assignment]
        horizon = now - 60.0
        while log and log[0][0] <= horizon:
            state[1] -= log.popleft()[1]  # type: ignore[operator]
        entry = [now, tokens]
        log.append(entry)
        state[1] += tokens  # type: ignore[operator]
        state[2] += 1  # type: ignore[operator]
        # settle
        state[2] -= 1  # type: ignore[operator]
        state[1] += actual - tokens  # type: ignore[operator]
        entry[1] = actual

    for _ in range(70_000):
        clock.now += STEP
        acquire_settle(500, 400)
    start = time.perf_counter_ns()
    for _ in range(n):
        clock.now += STEP
        acquire_settle(500, 400)
    return (time.perf_counter_ns() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    cases: list[tuple[str, Callable[[int], float]]] = [
        ("baseline: bare dict + deque", bench_baseline),
        ("exact: try_acquire + settle", bench_exact),
        ("exact: registry lookup + same", bench_exact_registry),
        ("exact: await acquire + settle", bench_async_acquire),
        ("approximate (4 nodes): same", bench_approximate),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for name, fn in cases:
            gc.collect()
            samples[name].append(fn(args.ops))
    print(f"python {sys.version.split()[0]}, {pinned}, {args.ops} ops x {args.repeats} runs")
    print(f"{'':32} {'best':>8} {'median':>8} {'best vs base':>13} {'target 5 us':>12}")
    base = min(samples[cases[0][0]])
    for name, _ in cases:
        best, median = min(samples[name]), statistics.median(samples[name])
        verdict = "" if name.startswith("baseline") else ("ok" if best <= 5000 else "OVER")
        print(
            f"{name:32} {best / 1000:6.2f}us {median / 1000:6.2f}us "
            f"{best / base:12.2f}x {verdict:>12}"
        )
    print("(per acquire + settle; best of the interleaved runs; vs base: over the bare")
    print(" bookkeeping in the same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
