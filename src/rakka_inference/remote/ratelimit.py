"""Rate limits per (provider, API key, model): exact on one node, waiting, auto-tuned.

A :class:`SlidingWindowLimiter` enforces, for one :class:`LimiterKey`, up to three limits of
:class:`~rakka_inference.core.deployment.RateLimits`: requests per minute (RPM), tokens per
minute (TPM) and concurrent requests. ``None`` leaves a limit off. :class:`RateLimiter` is
the per-process registry (``limiter_for(key, limits)`` gets or creates one).

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

Tokens: estimate, then settle
-----------------------------
A permit is charged the caller's estimate (prompt estimate + ``max_tokens``, one number)
when granted. ``permit.settle(actual)`` replaces the charge by the actual usage (the
window frees the difference at once); ``permit.release()`` ends a cancelled or failed
call and keeps the estimate charged, since the provider may have counted it. Either one
ends the permit: it returns its concurrency slot exactly once, and any later
``settle``/``release`` is a no-op. The window guarantee holds for the settled charges
whenever ``actual <= estimate``; a call that uses more than its estimate is charged the
excess as well (later admissions see it), but the excess itself could not be refused.

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

Auto-tune and Retry-After
-------------------------
``on_rate_limited(retry_after)`` reports a provider 429. The effective rate (RPM and TPM
alike) is multiplied by ``AutoTune.decrease`` (0.5), never below ``AutoTune.floor``
(0.1 of the configured rate), and at most once per ``AutoTune.cooldown_s`` (1 s), so a
burst of 429s from requests that were in flight together counts once. It then recovers
additively by ``AutoTune.recovery_per_s`` (0.01 of the configured rate per second: from
0.5 back to 1.0 in 50 s), starting when the Retry-After ends. A Retry-After blocks the
whole key until then: every acquire on the key waits or is denied, not only the request
that got the 429. The effective rate never exceeds the configured one, so the window
guarantee is kept while tuned.

All time comes from an injected ``clock`` (monotonic seconds) and all waiting from an
injected ``sleep``, so tests run on a fake clock in milliseconds.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Protocol

from rakka_inference.core.deployment import RateLimits
from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.core.secrets import Secret

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
    "WaitingLimiter",
    "SlidingWindowLimiter",
    "RateLimiter",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

WINDOW_SECONDS = 60.0
CONCURRENCY_RETRY_HINT = 1.0
"""Seconds a concurrency denial suggests: a slot frees when any call ends, which is unknown."""
_MIN_STEP = 1e-3
"""A denial's ``retry_at`` is at least this far ahead, so a waiter can never spin."""


class LimiterKey(NamedTuple):
    """What a provider rate-limits: one API key (by fingerprint) on one model."""

    provider: str
    key_fingerprint: str
    model: str

    @classmethod
    def for_credential(cls, provider: str, credential: Secret, model: str) -> LimiterKey:
        return cls(provider, credential.fingerprint(), model)


class DenialReason(enum.StrEnum):
    CONCURRENCY = "concurrent_requests"
    REQUESTS = "requests_per_minute"
    TOKENS = "tokens_per_minute"
    RETRY_AFTER = "retry_after"
    """The provider said Retry-After; the whole key waits."""
    TOO_LARGE = "too_large"
    """The request alone needs more tokens than the limit allows: it can never pass."""
    SHARE = "node_share"
    """Approximate mode: this node has used its share of the current sync epoch."""


class Denial(NamedTuple):
    """No permit now. ``retry_at`` (clock time) is the earliest a permit could be had."""

    retry_at: float
    reason: DenialReason


class _PermitOwner(Protocol):
    def _finish(self, permit: Permit, actual_tokens: int | None) -> None: ...


class Permit:
    """The right to make one provider call. End it exactly once: settle or release.

    ``tokens`` is what the window is charged now: the estimate, then the actual usage once
    settled. A permit is also a context manager that releases it on exit unless settled.
    """

    __slots__ = ("_done", "_owner", "estimated_tokens", "granted_at", "slot", "tokens")

    def __init__(self, owner: _PermitOwner, granted_at: float, tokens: int, slot: int) -> None:
        self._owner = owner
        self._done = False
        self.granted_at = granted_at
        self.estimated_tokens = tokens
        self.tokens = tokens
        self.slot = slot
        """The owner's bookkeeping: log sequence number (exact) or time bucket (approximate)."""

    @property
    def released(self) -> bool:
        return self._done

    def settle(self, actual_tokens: int) -> None:
        """End the call with its actual token usage. No-op if the permit already ended."""
        if actual_tokens < 0:
            raise ValueError("actual_tokens must be >= 0")
        if not self._done:
            self._done = True
            self._owner._finish(self, actual_tokens)

    def release(self) -> None:
        """End a cancelled or failed call; the estimate stays charged. No-op if ended."""
        if not self._done:
            self._done = True
            self._owner._finish(self, None)

    def __enter__(self) -> Permit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "ended" if self._done else "held"
        return f"Permit(tokens={self.tokens}, granted_at={self.granted_at}, {state})"


@dataclass(frozen=True, slots=True)
class RateLimitUtilization:
    """A point-in-time snapshot of one key's limiter, for metrics and the admin API."""

    key: LimiterKey
    mode: str
    """``exact`` (one node or the strict authority) or ``approximate`` (CRDT)."""
    requests_in_window: int
    tokens_in_window: int
    requests_per_minute: int | None
    tokens_per_minute: int | None
    effective_requests_per_minute: int | None
    """After auto-tune; equal to the configured rate when no 429 was seen recently."""
    effective_tokens_per_minute: int | None
    concurrent_in_use: int
    concurrent_limit: int | None
    waiters: int
    rate_factor: float
    blocked_for: float
    """Seconds left of a provider Retry-After block (0 when not blocked)."""
    over_spend_bound_requests: float = 0.0
    """Worst-case requests admitted above the limit in any window (0: exact)."""
    over_spend_bound_tokens: float = 0.0

    @property
    def request_utilization(self) -> float | None:
        """Requests in the window over the configured RPM."""
        rpm = self.requests_per_minute
        return None if rpm is None else self.requests_in_window / rpm

    @property
    def token_utilization(self) -> float | None:
        tpm = self.tokens_per_minute
        return None if tpm is None else self.tokens_in_window / tpm


class PermitSource(Protocol):
    """What a worker asks for permits. Exact, approximate and strict limiters all are one;
    a remote strict authority (a cluster singleton) will be one too."""

    @property
    def key(self) -> LimiterKey: ...

    def try_acquire(self, tokens: int) -> Permit | Denial: ...

    async def acquire(self, tokens: int, *, deadline: float) -> Permit: ...

    def on_rate_limited(self, retry_after: float | None) -> None: ...

    def utilization(self) -> RateLimitUtilization: ...


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoTune:
    """How a provider 429 lowers the effective rate and how it comes back."""

    enabled: bool = True
    decrease: float = 0.5
    """Multiplicative decrease applied on a 429."""
    floor: float = 0.1
    """The effective rate never drops below this fraction of the configured rate."""
    recovery_per_s: float = 0.01
    """Additive recovery, as a fraction of the configured rate per second."""
    cooldown_s: float = 1.0
    """At most one decrease per this many seconds (429s of concurrent calls count once)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError("floor must be in (0, 1]")
        if self.recovery_per_s <= 0.0 or self.cooldown_s < 0.0:
            raise ValueError("recovery_per_s must be > 0 and cooldown_s >= 0")


class RateFactor:
    """The auto-tuned fraction of the configured rate: ``min(1, base + r * (t - since))``."""

    __slots__ = ("_base", "_last_cut", "_since", "config")

    def __init__(self, config: AutoTune) -> None:
        self.config = config
        self._base = 1.0
        self._since = -math.inf
        self._last_cut = -math.inf

    def at(self, now: float) -> float:
        if self._base >= 1.0:
            return 1.0
        factor = self._base + self.config.recovery_per_s * max(0.0, now - self._since)
        if factor >= 1.0:
            self._base = 1.0
            return 1.0
        return factor

    def cut(self, now: float, *, recover_from: float) -> None:
        """Apply one multiplicative decrease (unless disabled or within the cooldown)."""
        config = self.config
        if not config.enabled or now - self._last_cut < config.cooldown_s:
            return
        self._base = max(config.floor, self.at(now) * config.decrease)
        self._since = recover_from
        self._last_cut = now

    def time_to_reach(self, factor: float, now: float) -> float:
        """The earliest time >= now at which the factor is at least ``factor``."""
        if self.at(now) >= factor:
            return now
        if factor > 1.0:
            return math.inf
        return max(now, self._since + (factor - self._base) / self.config.recovery_per_s)


class Gcra:
    """Generic cell-rate algorithm, zero burst tolerance: after a grant of cost ``c`` at
    ``rate`` per second, the next grant may come ``c / rate`` seconds later."""

    __slots__ = ("tat",)

    def __init__(self) -> None:
        self.tat = -math.inf
        """Theoretical arrival time: the earliest time of the next grant."""

    def charge(self, now: float, cost: float, rate: float) -> None:
        self.tat = max(self.tat, now) + cost / rate

    def adjust(self, cost_delta: float, rate: float) -> None:
        self.tat += cost_delta / rate


def scaled(limit: int, factor: float) -> int:
    """A configured limit under the auto-tune factor (never below 1)."""
    return limit if factor >= 1.0 else max(1, int(limit * factor))


# --------------------------------------------------------------------------- waiting


class _Waiter:
    __slots__ = ("wake",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.wake: asyncio.Future[None] = loop.create_future()

    def notify(self) -> None:
        if not self.wake.done():
            self.wake.set_result(None)


class WaitingLimiter(abc.ABC):
    """The waiting half shared by every limiter: FIFO waiters over a ``_check``/``_grant`` core."""

    __slots__ = ("_clock", "_sleep", "_waiters", "key")
    mode: ClassVar[str]

    def __init__(self, key: LimiterKey, clock: Clock, sleep: Sleep) -> None:
        self.key = key
        self._clock = clock
        self._sleep = sleep
        self._waiters: deque[_Waiter] = deque()

    @abc.abstractmethod
    def _check(self, tokens: int, now: float) -> Denial | None:
        """Why ``tokens`` cannot be granted at ``now``, or None. Must not change the state
        the caller can see (it may evict expired entries)."""

    @abc.abstractmethod
    def _grant(self, tokens: int, now: float) -> Permit: ...

    @abc.abstractmethod
    def on_rate_limited(self, retry_after: float | None) -> None: ...

    @abc.abstractmethod
    def utilization(self) -> RateLimitUtilization: ...

    def try_acquire(self, tokens: int) -> Permit | Denial:
        """A permit for a call estimated at ``tokens``, or why not and until when."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        now = self._clock()
        denial = self._check(tokens, now)
        return self._grant(tokens, now) if denial is None else denial

    async def acquire(self, tokens: int, *, deadline: float) -> Permit:
        """Wait (FIFO) for a permit until ``deadline`` (clock time).

        Raises :class:`RateLimitExceeded` with ``retry_after`` when none can be had by then.
        """
        if not self._waiters:
            first = self.try_acquire(tokens)
            if isinstance(first, Permit):
                return first
            self._give_up_if_too_late(first, deadline)
        waiter = _Waiter(asyncio.get_running_loop())
        self._waiters.append(waiter)
        try:
            while True:
                if waiter.wake.done():
                    waiter.wake = asyncio.get_running_loop().create_future()
                if self._waiters[0] is waiter:
                    result = self.try_acquire(tokens)
                    if isinstance(result, Permit):
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
                await self._wait(waiter, min(wake_at, deadline) - now)
        finally:
            was_head = self._waiters[0] is waiter
            self._waiters.remove(waiter)
            if was_head:
                self._notify()

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
            retry_after = None
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


# --------------------------------------------------------------------------- exact


class SlidingWindowLimiter(WaitingLimiter):
    """The exact limiter of one key on one node (and the in-process strict authority)."""

    __slots__ = (
        "_blocked_until",
        "_conc",
        "_evicted",
        "_factor",
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
        super().__init__(key, clock, sleep)
        self._window = window
        self._log: deque[Permit] = deque()
        self._tokens = 0
        self._evicted = 0
        self._granted = 0
        self._in_flight = 0
        self._blocked_until = -math.inf
        self._factor = RateFactor(AutoTune() if autotune is None else autotune)
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
        if now < self._blocked_until:
            return Denial(self._blocked_until, DenialReason.RETRY_AFTER)
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

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A provider 429: lower the effective rate; block the key for ``retry_after`` s."""
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._blocked_until = max(self._blocked_until, now + retry_after)
        self._factor.cut(now, recover_from=max(now, self._blocked_until))

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

    def utilization(self) -> list[RateLimitUtilization]:
        return [limiter.utilization() for limiter in self._limiters.values()]

    def __len__(self) -> int:
        return len(self._limiters)

    def __contains__(self, key: object) -> bool:
        return key in self._limiters
