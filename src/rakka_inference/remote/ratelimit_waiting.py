"""What every limiter shares: a FIFO queue over a non-waiting core, and the 429 answer.

Waiting
-------
``try_acquire(tokens)`` is the non-waiting core: a :class:`Permit` or a
:class:`Denial` ``(retry_at, reason)``. ``await acquire(tokens, deadline=...)`` waits in a
FIFO queue: only the head of the queue tries, so a later caller cannot overtake an
earlier one and no waiter starves. The head sleeps (through the injected ``sleep``) until
the denial's ``retry_at``, and any permit ending wakes it at once, so concurrency waiters
wake on release, not by polling. When no permit can be had by the deadline, ``acquire``
raises :class:`~rakka_inference.core.errors.RateLimitExceeded` with ``retry_after``
(seconds until one could be had) as soon as that is known, without waiting for nothing.
``try_acquire`` itself does not queue: callers that mix it with ``acquire`` may overtake.

The wait budget
---------------
Waiting for capacity (the window to slide, a concurrency slot, a lease) is waiting in line,
bounded by the ``deadline`` alone. Waiting out a provider's Retry-After block of the key is
waiting for the upstream's say-so, and the request's *wait budget* bounds that too (the
retry policy's ``max_wait_ms``, or the shorter one its client asked for: the same budget
that bounds its waits between retries, :mod:`~rakka_inference.remote.retry`).
``acquire(..., wait_budget=s)`` takes what is left of it, in seconds. Whenever a waiter
looks (on arrival, and on every wake, at the head of the queue or behind it) and the key
is blocked for longer than its budget has left, it is answered at once with
:class:`~rakka_inference.core.errors.RateLimitExceeded` carrying the time left of the block
(in whole seconds, rounded up: a ``Retry-After`` the client can act on), instead of waiting.
A block that ends within the budget is waited out as any denial; the time a waiter spends
while the key is blocked is spent from its budget and reported on the permit
(:attr:`Permit.blocked_s <rakka_inference.remote.ratelimit_types.Permit.blocked_s>`), so the
caller's retries get only what is left. A new or longer block wakes every waiter, so each
measures it against its own budget.

A subclass supplies ``_check`` (why not, and until when) and ``_grant`` (take the permit),
and calls ``_notify`` whenever something is freed.

The provider's 429
------------------
Every limiter answers a provider 429 the same way, so it is kept here too:
``on_rate_limited(retry_after)`` blocks the key until the Retry-After ends (``_check``
starts with :meth:`WaitingLimiter._blocked`) and cuts the auto-tuned :class:`RateFactor`,
whose recovery starts when the block ends. A subclass reads the factor (``_factor``) to
scale its limits, and merges a block learnt elsewhere (another node's, the strict
authority's) with :meth:`WaitingLimiter._block_until`, which wakes the waiters.
"""

from __future__ import annotations

import abc
import asyncio
import math
from collections import deque
from typing import ClassVar

from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.remote.ratelimit_policies import AutoTune, RateFactor
from rakka_inference.remote.ratelimit_types import (
    CONCURRENCY_RETRY_HINT,
    Clock,
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    RateLimitUtilization,
    Sleep,
)
from rakka_inference.remote.retry import whole_seconds

__all__ = ["WaitingLimiter"]


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.wake: asyncio.Future[None] = loop.create_future()

    def notify(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)


class WaitingLimiter(abc.ABC):
    """What every limiter shares: FIFO waiters over a ``_check``/``_grant`` core, and the
    provider's 429 signal (the Retry-After block and the auto-tuned rate factor)."""

    __slots__ = ("_blocked_until", "_clock", "_factor", "_sleep", "_waiters", "key")
    mode: ClassVar[str]

    def __init__(
        self, key: LimiterKey, clock: Clock, sleep: Sleep, autotune: AutoTune | None
    ) -> None:
        self.key = key
        self._clock = clock
        self._sleep = sleep
        self._waiters: deque[_Waiter] = deque()
        self._blocked_until = -math.inf
        self._factor = RateFactor(AutoTune() if autotune is None else autotune)

    @abc.abstractmethod
    def _check(self, tokens: int, now: float) -> Denial | None:
        """Why ``tokens`` cannot be granted at ``now``, or None. Must not change the state
        the caller can see (it may evict expired entries)."""

    @abc.abstractmethod
    def _grant(self, tokens: int, now: float) -> Permit: ...

    @abc.abstractmethod
    def utilization(self) -> RateLimitUtilization: ...

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A provider 429: lower the effective rate; block the key for ``retry_after`` s."""
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._block_until(now + retry_after)
        self._factor.cut(now, recover_from=max(now, self._blocked_until))

    def _block_until(self, until: float) -> None:
        """Block the key until ``until`` (clock time); blocks merge by max. A new or longer
        block wakes every waiter, so each measures it against its own wait budget."""
        if until > self._blocked_until:
            self._blocked_until = until
            for waiter in self._waiters:
                waiter.notify()

    def _blocked(self, now: float) -> Denial | None:
        """The denial of a key blocked by a Retry-After at ``now``, or None."""
        if now < self._blocked_until:
            return Denial(self._blocked_until, DenialReason.RETRY_AFTER)
        return None

    def try_acquire(self, tokens: int) -> Permit | Denial:
        """A permit for a call estimated at ``tokens``, or why not and until when."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self._clock()
        denial = self._check(tokens, now)
        return self._grant(tokens, now) if denial is None else denial

    async def acquire(
        self, tokens: int, *, deadline: float, wait_budget: float = math.inf
    ) -> Permit:
        """Wait (FIFO) for a permit until ``deadline`` (clock time).

        ``wait_budget`` is what is left of the request's wait budget, in seconds: a key
        blocked by a provider's Retry-After for longer is answered at once, and the time
        waited while it is blocked is spent from it (the permit's ``blocked_s``). Raises
        :class:`RateLimitExceeded` with ``retry_after`` when no permit can be had by then.
        """
        if not self._waiters:
            first = self.try_acquire(tokens)
            if isinstance(first, Permit):
                return first
            self._give_up_if_blocked_too_long(wait_budget)
            self._give_up_if_too_late(first, deadline)
        blocked_s = 0.0
        waiter = _Waiter(asyncio.get_running_loop())
        self._waiters.append(waiter)
        try:
            while True:
                if waiter.wake.done():
                    waiter.wake = asyncio.get_running_loop().create_future()
                self._give_up_if_blocked_too_long(wait_budget - blocked_s)
                if self._waiters[0] is waiter:
                    result = self.try_acquire(tokens)
                    if isinstance(result, Permit):
                        result.blocked_s = blocked_s
                        return result
                    self._give_up_if_too_late(result, deadline)
                    if result.reason is DenialReason.CONCURRENCY:
                        wake_at = deadline
                    else:
                        wake_at = result.retry_at
                else:
                    wake_at = deadline
                now = self._clock()
                if now >= deadline:
                    raise self._exceeded(tokens, now)
                blocked_until = self._blocked_until
                await self._wait(waiter, min(wake_at, deadline) - now)
                if now < blocked_until:
                    blocked_s += min(self._clock(), blocked_until) - now
        finally:
            was_head = self._waiters[0] is waiter
            self._waiters.remove(waiter)
            if was_head:
                self._notify()

    def _give_up_if_blocked_too_long(self, budget_left: float) -> None:
        """Raise when the key's Retry-After block outlasts what the waiter may still wait."""
        now = self._clock()
        blocked_for = self._blocked_until - now
        if blocked_for <= 0 or blocked_for <= budget_left:
            return
        retry_after = whole_seconds(blocked_for)
        raise RateLimitExceeded(
            f"no rate-limit permit for {self.key.model}: {self.key.provider} asked to wait "
            f"{retry_after:g}s, more than the {max(0.0, budget_left):g}s left of the "
            "request's wait budget",
            provider=self.key.provider,
            retry_after=retry_after,
        )

    def _give_up_if_too_late(self, denial: Denial, deadline: float) -> None:
        if denial.reason is DenialReason.CONCURRENCY:
            return
        if denial.retry_at > deadline or math.isinf(denial.retry_at):
            raise self._error(denial, self._clock())

    def _exceeded(self, tokens: int, now: float) -> RateLimitExceeded:
        denial = self._check(tokens, now)
        if denial is None:  # a permit is free but an earlier waiter is ahead
            denial = Denial(now, DenialReason.CONCURRENCY)
        return self._error(denial, now)

    def _error(self, denial: Denial, now: float) -> RateLimitExceeded:
        if denial.reason is DenialReason.CONCURRENCY:
            retry_after: float | None = CONCURRENCY_RETRY_HINT
        elif math.isinf(denial.retry_at):
            # The request alone passes a limit: it never fits. Any other endless denial (a
            # limiter closed for shutdown) says nothing of when to come back.
            retry_after = math.inf if denial.reason is DenialReason.TOO_LARGE else None
        else:
            retry_after = max(0.0, denial.retry_at - now)
        return RateLimitExceeded(
            f"no rate-limit permit for {self.key.model} in time ({denial.reason.value})",
            provider=self.key.provider,
            retry_after=retry_after,
        )

    async def _wait(self, waiter: _Waiter, delay: float) -> None:
        if math.isinf(delay):
            await waiter.wake
            return
        timer = asyncio.ensure_future(self._sleep(delay))
        try:
            await asyncio.wait((waiter.wake, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()

    def _notify(self) -> None:
        """Something was freed: let the head waiter look again."""
        if self._waiters:
            self._waiters[0].notify()
