"""One key's strict limiter in a worker: it spends the authority's leases locally.

:class:`LeasedLimiter` is what a
:class:`~rakka_inference.remote.strict_lease_unix.LeaseClient` hands out per key; the
client does its round trips (:mod:`rakka_inference.remote.strict_lease_wire` lines over
a Unix socket), the limiter decides when to ask, for how much, and what to admit.

Admission
---------
The limiter admits from its current lease while the lease is valid (its clock before the
request's send time ``+ ttl``) and has room; otherwise it starts one lease request (one in
flight per key) and denies, and its FIFO waiters
(:class:`~rakka_inference.remote.ratelimit.WaitingLimiter`) are woken when the answer
comes. It asks for the waiting demand (waiters and their token estimates) or twice what
its last lease served, whichever is more, so at a steady rate a lease grows to a ttl of
traffic in a few round trips. A refusal for a Retry-After (another holder's 429, for which
the authority blocks the key) blocks the key here too, so every waiter measures it against
its wait budget, as after a 429 of its own (:mod:`~rakka_inference.remote.ratelimit_waiting`).

Returns
-------
A settled permit gives its unused tokens back to the lease while the lease is valid; what
a lease leaves unused at its end, and every later settlement of its permits, rides back on
the key's next lease request (or the ``release`` at close), never in a message of its own.
A return that may have been lost with a connection is not sent again: the authority counts
it as used, the safe side.

Outages
-------
If the authority cannot be reached the limiter never admits without a lease (strict means
strict): its denials (``DenialReason.SHARE``: no lease in hand) last ``retry_delay`` s,
after which the next request connects again, and ``acquire`` raises
:class:`~rakka_inference.core.errors.RateLimitExceeded` at its deadline (or once the next
try would fall after it). Concurrency is local: ``ceil(C / holders)`` (see
:mod:`rakka_inference.remote.strict_lease`). Utilisation snapshots say ``mode="strict"``
and show the local view: the current lease's spend.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import (
    CONCURRENCY_RETRY_HINT,
    AutoTune,
    Clock,
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    RateLimitUtilization,
    Sleep,
    WaitingLimiter,
    scaled,
)
from rakka_inference.remote.strict_lease import LeaseGrant, LeaseRefusal, LeaseReturn
from rakka_inference.remote.strict_lease_wire import MAX_RETURNS, encode_limited

__all__ = ["LeaseChannel", "LeasedLimiter", "LeasedLimiters"]


class LeaseChannel(Protocol):
    """How a :class:`LeasedLimiter` reaches the authority: over a Unix socket
    (:class:`~rakka_inference.remote.strict_lease_unix.LeaseClient`), or a Ray actor call."""

    @property
    def holders(self) -> int:
        """How many processes share each key (each applies ``ceil(C / holders)``)."""
        ...

    lease_ttl: float
    retry_delay: float
    """How long the authority counts as unreachable after a failed round trip."""

    async def lease(
        self,
        key: LimiterKey,
        limits: RateLimits,
        want: tuple[int, int],
        need: int,
        returns: list[LeaseReturn],
    ) -> LeaseGrant | LeaseRefusal:
        """One round trip; :class:`ConnectionError` when there is no answer."""
        ...

    def tell(self, line: bytes) -> None:
        """A notice without an answer (a provider 429), sent when it can be."""
        ...


_FETCH_STEP = 0.01
"""How long a denial lasts while a lease request is in flight (its answer wakes waiters)."""


class _LocalLease:
    __slots__ = ("charged", "expires_at", "lease_id", "requests", "tokens", "used")

    def __init__(self, grant: LeaseGrant, expires_at: float) -> None:
        self.lease_id = grant.lease_id
        self.requests = grant.requests
        self.tokens = grant.tokens
        self.expires_at = expires_at
        self.used = 0
        self.charged = 0


class LeasedLimiter(WaitingLimiter):
    """One key's strict limiter in a worker: spends leases of the authority (see the
    module docstring). Its ``utilization`` is the local view: the current lease's spend."""

    __slots__ = (
        "_client",
        "_conc",
        "_down_until",
        "_fetch",
        "_in_flight",
        "_last_served",
        "_lease",
        "_refusal",
        "_returns",
        "_waiting",
        "_waiting_tokens",
        "limits",
    )
    mode = "strict"

    def __init__(
        self,
        key: LimiterKey,
        limits: RateLimits,
        client: LeaseChannel,
        *,
        clock: Clock,
        sleep: Sleep,
        autotune: AutoTune | None = None,
    ) -> None:
        super().__init__(key, clock, sleep, autotune)
        self._client = client
        self._lease: _LocalLease | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._refusal: Denial | None = None
        self._down_until = -math.inf
        self._returns: dict[int, list[int]] = {}
        """Per lease id: [unused requests, unused tokens (negative: overrun)]."""
        self._last_served = (0, 0)
        self._in_flight = 0
        self._waiting = 0
        self._waiting_tokens = 0
        self.reconfigure(limits)

    def reconfigure(self, limits: RateLimits) -> None:
        """Apply new limits; the lease in hand is kept, the next request carries them."""
        self.limits = limits
        conc = limits.concurrent_requests
        self._conc = None if conc is None else math.ceil(conc / self._client.holders)

    # -- core

    def _current(self, now: float) -> _LocalLease | None:
        """The valid lease, after retiring an expired one."""
        lease = self._lease
        if lease is not None and now >= lease.expires_at:
            self._retire()
            return None
        return lease

    def _retire(self) -> None:
        lease = self._lease
        if lease is not None:
            self._lease = None
            self._last_served = (lease.used, lease.charged)
            unused = max(0, lease.requests - lease.used)  # used > requests: RPM is off
            self._give_back(lease.lease_id, unused, lease.tokens - lease.charged)

    def _give_back(self, lease_id: int, requests: int, tokens: int) -> None:
        entry = self._returns.setdefault(lease_id, [0, 0])
        entry[0] += requests
        entry[1] += tokens

    def _take_returns(self) -> list[LeaseReturn]:
        taken = []
        for lease_id in list(self._returns)[:MAX_RETURNS]:
            requests, tokens = self._returns.pop(lease_id)
            taken.append(LeaseReturn(lease_id, requests, max(0, tokens), max(0, -tokens)))
        return taken

    def _check(self, tokens: int, now: float) -> Denial | None:
        blocked = self._blocked(now)
        if blocked is not None:
            return blocked
        if self._conc is not None and self._in_flight >= self._conc:
            return Denial(now + CONCURRENCY_RETRY_HINT, DenialReason.CONCURRENCY)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        if rpm is None and tpm is None:
            return None
        if tpm is not None and tokens > tpm:
            return Denial(math.inf, DenialReason.TOO_LARGE)
        lease = self._current(now)
        if (
            lease is not None
            and (rpm is None or lease.used < lease.requests)
            and (tpm is None or lease.charged + tokens <= lease.tokens)
        ):
            return None
        if self._refusal is not None and now < self._refusal.retry_at:
            return self._refusal
        if now < self._down_until:
            return Denial(self._down_until, DenialReason.SHARE)
        if self._fetch is None:
            used, charged = self._last_served if lease is None else (lease.used, lease.charged)
            want = (
                max(1, self._waiting, 2 * used),
                max(tokens, self._waiting_tokens, 2 * charged),
            )
            self._fetch = asyncio.create_task(self._fetch_lease(want, tokens), name="lease")
        return Denial(now + _FETCH_STEP, DenialReason.SHARE)

    async def _fetch_lease(self, want: tuple[int, int], need: int) -> None:
        sent = self._clock()
        try:
            result = await self._client.lease(
                self.key, self.limits, want, need, self._take_returns()
            )
        except ConnectionError:
            self._down_until = self._clock() + self._client.retry_delay
            self._notify()
            return
        finally:
            self._fetch = None
        if isinstance(result, LeaseGrant):
            self._retire()
            ttl = min(result.ttl, self._client.lease_ttl)
            self._lease = _LocalLease(result, sent + ttl)
            self._refusal = None
        else:
            if result.reason is DenialReason.RETRY_AFTER:  # another holder's 429
                self._block_until(result.retry_at)
            self._refusal = Denial(result.retry_at, result.reason)
        self._notify()

    def _grant(self, tokens: int, now: float) -> Permit:
        self._in_flight += 1
        lease, limits = self._lease, self.limits
        if lease is None or limits.requests_per_minute is limits.tokens_per_minute is None:
            return Permit(self, now, tokens, -1)
        lease.used += 1
        lease.charged += tokens
        return Permit(self, now, tokens, lease.lease_id)

    def _finish(self, permit: Permit, actual_tokens: int | None) -> None:
        self._in_flight -= 1
        if actual_tokens is not None and actual_tokens != permit.tokens and permit.slot >= 0:
            unused = permit.tokens - actual_tokens
            permit.tokens = actual_tokens
            lease = self._current(self._clock())
            if lease is not None and lease.lease_id == permit.slot:
                lease.charged -= unused
            else:
                self._give_back(permit.slot, 0, unused)
        self._notify()

    async def acquire(
        self, tokens: int, *, deadline: float, wait_budget: float = math.inf
    ) -> Permit:
        """Wait (FIFO) for a permit until ``deadline``, and for a Retry-After block within
        ``wait_budget``; see :class:`WaitingLimiter`."""
        self._waiting += 1
        self._waiting_tokens += tokens
        try:
            return await super().acquire(tokens, deadline=deadline, wait_budget=wait_budget)
        finally:
            self._waiting -= 1
            self._waiting_tokens -= tokens

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A provider 429: block locally and tell the authority (blocks every holder)."""
        super().on_rate_limited(retry_after)
        self._client.tell(encode_limited(self.key, retry_after))

    async def _close(self) -> list[LeaseReturn]:
        """Stop: no more leases; what is unused goes back."""
        self._down_until = math.inf
        self._refusal = None
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)
        self._retire()
        self._notify()
        returns = []
        while self._returns:
            returns.extend(self._take_returns())
        return returns

    # -- metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def utilization(self) -> RateLimitUtilization:
        now = self._clock()
        lease = self._current(now)
        factor = self._factor.at(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        return RateLimitUtilization(
            key=self.key,
            mode=self.mode,
            requests_in_window=0 if lease is None else lease.used,
            tokens_in_window=0 if lease is None else lease.charged,
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
        return f"LeasedLimiter({self.key.provider}/{self.key.model}, in_flight={self._in_flight})"


class LeasedLimiters:
    """One channel's limiters, one per key: what its
    :class:`~rakka_inference.remote.distributed_limit.StrictAuthority` hands out."""

    __slots__ = ("_autotune", "_channel", "_clock", "_limiters", "_sleep")

    def __init__(
        self, channel: LeaseChannel, *, clock: Clock, sleep: Sleep, autotune: AutoTune | None
    ) -> None:
        self._channel = channel
        self._clock = clock
        self._sleep = sleep
        self._autotune = autotune
        self._limiters: dict[LimiterKey, LeasedLimiter] = {}

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> LeasedLimiter:
        """The key's limiter, created on first use; new limits reconfigure it."""
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = LeasedLimiter(
                key,
                limits,
                self._channel,
                clock=self._clock,
                sleep=self._sleep,
                autotune=self._autotune,
            )
            self._limiters[key] = limiter
        elif limiter.limits != limits:
            limiter.reconfigure(limits)
        return limiter

    def utilization(self) -> list[RateLimitUtilization]:
        return [limiter.utilization() for limiter in self._limiters.values()]

    async def close(self) -> list[LeaseReturn]:
        """Stop every limiter; the permits they leave unused, to give back."""
        returns: list[LeaseReturn] = []
        for limiter in self._limiters.values():
            returns.extend(await limiter._close())
        return returns
