"""Rate limits per (provider, API key, model): exact on one node, waiting, auto-tuned.

A :class:`SlidingWindowLimiter` enforces, for one :class:`LimiterKey`, up to three limits of
:class:`~rakka_inference.core.policies.RateLimits`: requests per minute (RPM), tokens per
minute (TPM) and concurrent requests. ``None`` leaves a limit off. :class:`RateLimiter` is
the per-process registry (``limiter_for(key, limits)`` gets or creates one).

This module is the public face of rate limiting; the pieces live beside it and are
re-exported here:

* :mod:`~rakka_inference.remote.ratelimit_types`: keys, permits (estimate, then settle),
  denials, utilisation snapshots and the :class:`PermitSource` interface;
* :mod:`~rakka_inference.remote.ratelimit_policies`: the auto-tune :class:`RateFactor`
  and :class:`Gcra` spacing;
* :mod:`~rakka_inference.remote.ratelimit_waiting`: :class:`WaitingLimiter`, the FIFO
  waiting and the answer to a provider 429 shared by every limiter.

The window: a sliding log with running sums
-------------------------------------------
Every grant is appended to a log (a deque, in time order) as the :class:`Permit` itself,
carrying its grant time and its current token charge; two running sums, ``len(log)`` and
``tokens``, hold the requests and tokens of the log. Before each decision the entries
with ``granted_at <= now - 60`` are popped from the left (each entry is popped once, so
eviction is amortised O(1) per grant). A request of ``t`` tokens is admitted at ``now``
iff ``len(log) + 1 <= RPM`` and ``tokens + t <= TPM``.

*Exactness.* Take any window ``[a, a + 60)`` and its last admission, at ``s``. Every
other admission of the window lies in ``(s - 60, s]``, so it was still in the log when
``s`` was decided, and the check at ``s`` bounded the lot: admitted requests <= RPM and
admitted tokens <= TPM in **every** sliding 60 s window, with no bucketing error. The whole
allowance may be spent as a burst (providers allow it). ``RateLimits.smoothing`` adds,
on top of the log, a generic cell-rate check (GCRA, zero burst tolerance): requests are
spaced at least ``60 / RPM`` s apart and a request of ``t`` tokens delays the next by
``60 t / TPM`` s. The log still guarantees the window; smoothing only spreads it.

When a denial is computed, ``retry_at`` is the earliest time the log alone would admit
the request: the grant time of the ``k``-th oldest entry plus 60 s for requests, and for
tokens the time by which enough of the oldest entries have left (a scan from the left,
as long as the number of entries that must leave).

Auto-tune and Retry-After
-------------------------
``on_rate_limited(retry_after)`` reports a provider 429. It cuts the effective rate by the
auto-tune :class:`RateFactor` (halved, floored at 0.1, once per second, recovering
additively; see :mod:`~rakka_inference.remote.ratelimit_policies`), with the recovery
starting when the Retry-After ends. A Retry-After blocks the whole key until then: every
acquire on the key waits or is denied, not only the request that got the 429, and one
waits only while the block fits its request's wait budget (``acquire(..., wait_budget=)``,
see :mod:`~rakka_inference.remote.ratelimit_waiting`). The
effective rate never exceeds the configured one, so the window guarantee is kept while
tuned.

All time comes from an injected ``clock`` (monotonic seconds) and all waiting from an
injected ``sleep``, so tests run on a fake clock in milliseconds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Protocol

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit_policies import AutoTune, Gcra, RateFactor, scaled
from rakka_inference.remote.ratelimit_types import (
    CONCURRENCY_RETRY_HINT,
    WINDOW_SECONDS,
    Clock,
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    PermitSource,
    RateLimitUtilization,
    Sleep,
)
from rakka_inference.remote.ratelimit_waiting import WaitingLimiter

__all__ = [
    "WINDOW_SECONDS",
    "CONCURRENCY_RETRY_HINT",
    "Clock",
    "Sleep",
    "LimiterKey",
    "DenialReason",
    "Denial",
    "Permit",
    "PermitSource",
    "RateLimitUtilization",
    "AutoTune",
    "RateFactor",
    "Gcra",
    "scaled",
    "WaitingLimiter",
    "SlidingWindowLimiter",
    "RateLimiter",
    "LimiterRegistry",
]

_MIN_STEP = 1e-3
"""A denial's ``retry_at`` is at least this far ahead, so a waiter can never spin."""

# --------------------------------------------------------------------------- exact


class SlidingWindowLimiter(WaitingLimiter):
    """The exact limiter of one key on one node (and the in-process strict authority)."""

    __slots__ = (
        "_conc",
        "_evicted",
        "_granted",
        "_in_flight",
        "_log",
        "_req_gcra",
        "_rpm",
        "_smoothing",
        "_tok_gcra",
        "_tokens",
        "_tpm",
        "_window",
        "limits",
    )
    mode = "exact"

    def __init__(
        self,
        key: LimiterKey,
        limits: RateLimits,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        autotune: AutoTune | None = None,
        window: float = WINDOW_SECONDS,
    ) -> None:
        super().__init__(key, clock, sleep, autotune)
        self._window = window
        self._log: deque[Permit] = deque()
        self._tokens = 0
        self._evicted = 0
        self._granted = 0
        self._in_flight = 0
        self._req_gcra = Gcra()
        self._tok_gcra = Gcra()
        self.reconfigure(limits)

    def reconfigure(self, limits: RateLimits) -> None:
        """Apply new limits (a config reload); the log and permits in flight are kept."""
        self.limits = limits
        self._rpm = limits.requests_per_minute
        self._tpm = limits.tokens_per_minute
        self._conc = limits.concurrent_requests
        self._smoothing = limits.smoothing

    # -- core

    def _evict(self, now: float) -> None:
        horizon = now - self._window
        log = self._log
        while log and log[0].granted_at <= horizon:
            self._tokens -= log.popleft().tokens
            self._evicted += 1

    def _check(self, tokens: int, now: float) -> Denial | None:
        blocked = self._blocked(now)
        if blocked is not None:
            return blocked
        conc = self._conc
        if conc is not None and self._in_flight >= conc:
            return Denial(now + CONCURRENCY_RETRY_HINT, DenialReason.CONCURRENCY)
        rpm, tpm = self._rpm, self._tpm
        if rpm is None and tpm is None:
            return None
        if tpm is not None and tokens > tpm:
            return Denial(math.inf, DenialReason.TOO_LARGE)
        self._evict(now)
        factor = self._factor.at(now)
        retry_at, reason = now, DenialReason.REQUESTS
        if rpm is not None:
            excess = len(self._log) + 1 - scaled(rpm, factor)
            if excess > 0:
                retry_at = self._log[excess - 1].granted_at + self._window
            if self._smoothing and self._req_gcra.tat > retry_at:
                retry_at = self._req_gcra.tat
        if tpm is not None:
            at = self._tokens_free_at(tokens, tpm, factor, now)
            if self._smoothing:
                at = max(at, self._tok_gcra.tat)
            if at > retry_at:
                retry_at, reason = at, DenialReason.TOKENS
        if retry_at <= now:
            return None
        return Denial(max(retry_at, now + _MIN_STEP), reason)

    def _tokens_free_at(self, tokens: int, tpm: int, factor: float, now: float) -> float:
        """When the window has room for ``tokens`` more (``now`` if it has already)."""
        limit = scaled(tpm, factor)
        earliest = now
        if tokens > limit:  # only a recovered rate can take it: wait for that too
            earliest = self._factor.time_to_reach(tokens / tpm, now)
            limit = tokens
        excess = self._tokens + tokens - limit
        if excess <= 0:
            return earliest
        for permit in self._log:
            excess -= permit.tokens
            if excess <= 0:
                return max(earliest, permit.granted_at + self._window)
        raise AssertionError("the log cannot hold more tokens than its running sum")

    def _grant(self, tokens: int, now: float) -> Permit:
        self._in_flight += 1
        if self._rpm is None and self._tpm is None:
            return Permit(self, now, tokens, -1)
        permit = Permit(self, now, tokens, self._granted)
        self._granted += 1
        self._log.append(permit)
        self._tokens += tokens
        if self._smoothing:
            factor = self._factor.at(now)
            if self._rpm is not None:
                self._req_gcra.charge(now, 1, scaled(self._rpm, factor) / self._window)
            if self._tpm is not None:
                self._tok_gcra.charge(now, tokens, scaled(self._tpm, factor) / self._window)
        return permit

    def _finish(self, permit: Permit, actual_tokens: int | None) -> None:
        self._in_flight -= 1
        if actual_tokens is not None and actual_tokens != permit.tokens:
            delta = actual_tokens - permit.tokens
            permit.tokens = actual_tokens
            if permit.slot >= self._evicted:  # still in the log: the window sees it
                self._tokens += delta
            if self._smoothing and self._tpm is not None:
                rate = scaled(self._tpm, self._factor.at(self._clock())) / self._window
                self._tok_gcra.adjust(delta, rate)
        self._notify()

    # -- signals and metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def utilization(self) -> RateLimitUtilization:
        now = self._clock()
        self._evict(now)
        factor = self._factor.at(now)
        rpm, tpm = self._rpm, self._tpm
        return RateLimitUtilization(
            key=self.key,
            mode=self.mode,
            requests_in_window=len(self._log),
            tokens_in_window=self._tokens,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            effective_requests_per_minute=None if rpm is None else scaled(rpm, factor),
            effective_tokens_per_minute=None if tpm is None else scaled(tpm, factor),
            concurrent_in_use=self._in_flight,
            concurrent_limit=self._conc,
            waiters=len(self._waiters),
            rate_factor=factor,
            blocked_for=max(0.0, self._blocked_until - now),
        )

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter({self.key!r}, in_flight={self._in_flight})"


# --------------------------------------------------------------------------- registry


class LimiterRegistry(Protocol):
    """Where replicas get each key's limiter: :class:`RateLimiter` in one process, a
    :class:`~rakka_inference.remote.distributed_limit.DistributedRateLimiter` on a node of
    many workers or a cluster."""

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> PermitSource: ...

    def utilization(self) -> list[RateLimitUtilization]: ...

    def discard(self, key: LimiterKey) -> None:
        """Forget ``key``'s limiter (an apply that made it was refused): a later
        :meth:`limiter_for` makes a new one."""
        ...


class RateLimiter:
    """The per-process registry of exact limiters, one per key.

    It is also the in-process *strict authority* of the distributed limiter
    (:class:`~rakka_inference.remote.distributed_limit.StrictAuthority`): nodes that share
    one instance share exact limits.
    """

    __slots__ = ("_autotune", "_clock", "_limiters", "_sleep")

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        autotune: AutoTune | None = None,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._autotune = AutoTune() if autotune is None else autotune
        self._limiters: dict[LimiterKey, SlidingWindowLimiter] = {}

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> SlidingWindowLimiter:
        """The key's limiter, created on first use; new limits reconfigure it."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = SlidingWindowLimiter(
                key, limits, clock=self._clock, sleep=self._sleep, autotune=self._autotune
            )
            self._limiters[key] = limiter
        elif limiter.limits != limits:
            limiter.reconfigure(limits)
        return limiter

    def get(self, key: LimiterKey) -> SlidingWindowLimiter | None:
        return self._limiters.get(key)

    def discard(self, key: LimiterKey) -> None:
        self._limiters.pop(key, None)

    def utilization(self) -> list[RateLimitUtilization]:
        return [limiter.utilization() for limiter in self._limiters.values()]

    def __len__(self) -> int:
        return len(self._limiters)

    def __contains__(self, key: object) -> bool:
        return key in self._limiters
