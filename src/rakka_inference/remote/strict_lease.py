"""Strict rate limits across processes by leases: the authority's exact record (sans-I/O).

With ``RateLimits.strict`` one process (the supervisor) is the *authority* of a key and
the worker processes (the *holders*) take permits from it by **leases**, never by one call
per request: a lease is a batch of permits (``requests``, ``tokens``) that the holder may
spend locally for ``ttl`` seconds after it asked. This module is the authority's side,
pure arithmetic on an injected clock; the line protocol both sides speak is
:mod:`rakka_inference.remote.strict_lease_wire`, carried over a Unix socket by
:mod:`rakka_inference.remote.strict_lease_unix`.

The record and its exactness
----------------------------
Per key the authority keeps every lease it granted, in grant order, with two running sums
(requests, tokens), and admits by a sliding window of length ``window + ttl`` over
**grant** times: a lease of ``r`` requests and ``t`` tokens is granted at ``g`` only if the
leases granted in ``(g - window - ttl, g]`` plus ``(r, t)`` stay within the limits. A
holder spends a lease only while its own clock is before *its send time* ``+ ttl``; the
request was sent before ``g``, so every use of the lease falls in ``[g, g + ttl)``.

*Exactness.* Take any window ``[a, a + window)`` of **use** times. A use at ``u`` in it comes
from a lease granted at ``g`` with ``u - ttl < g <= u``, so ``g`` is in ``(a - ttl, a +
window)``. Let ``g*`` be the last such grant: every other one lies in ``(g* - window - ttl,
g*]``, was in the record when ``g*`` was decided, and that check bounded the lot. So in
every window of use times at most RPM requests, and at most TPM tokens whenever each call
uses no more than its estimate. Unused permits that a holder returns are removed from the
record (they were never used), an overrun (actual above estimate) is added to it, and a
lease never returned counts in full (the safe side) until it leaves the window. Holders
measure durations on their own monotonic clocks; only their rates must agree. The price
of exactness: a grant is held ``ttl`` s longer than its use could last, at most
``ttl / (window + ttl)`` of the throughput (1.6 % at the defaults) when nothing is returned.

Lease size
----------
A grant is ``min(want, what the window allows now, cap)`` with ``cap = max(1, ceil(2 * L *
ttl / window))`` for a limit ``L`` (RPM for requests, TPM for tokens, the latter never
below the holder's ``need``: the estimate of its next call, which a grant always covers).
A lease thus covers up to two ttl's worth of the fair rate: at high limits one round trip
serves many requests, and at low limits no holder takes the whole window at once while
the others wait: they take turns. A limit that is ``None`` is not counted (the grant is
the want). Smoothing is not applied to leases.

Signals
-------
:meth:`LeaseAuthority.on_rate_limited` is a provider 429 seen by a holder: no lease for the
key until the Retry-After ends (blocks merge by max), and the auto-tuned
:class:`~rakka_inference.remote.ratelimit.RateFactor` of the key is cut, as in the exact
limiter. Concurrency limits are not leased: each of ``N`` holders applies ``ceil(C / N)``
locally, since exact concurrency across processes would need a call per request end.

Surviving a restart
-------------------
:meth:`LeaseAuthority.snapshot` is the whole record as bytes (format and validation in
:mod:`rakka_inference.remote.strict_lease_state`): per key its limits, live leases (returns
and overruns applied), Retry-After block and auto-tune factor, plus the ttl, the window and
the next lease id. :meth:`LeaseAuthority.restore` rebuilds it; ids go on from the
snapshot's, so no id is issued twice. :attr:`LeaseAuthority.dirty`, a change counter, moves
on every change that matters (a grant, a release that changes a lease, a 429 that blocks
or cuts, new limits for a key), never on a refusal that changes nothing nor on evictions.

*The guarantee.* Restored from a snapshot taken after the last change, on a clock that
means the same times (a wall clock across nodes), an authority admits as if it had never
stopped: every later request gets the answer the original would have given. So its host
persists a snapshot whenever ``dirty`` moved, before it replies to a grant: a change after
the last snapshot is lost (a grant no holder learnt of is harmless). A clock behind the
snapshot's times only keeps restored leases longer (the safe side), and so does a restore
with a shorter ttl: restored leases still count until their own ``window + ttl`` ends.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import NamedTuple

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import (
    WINDOW_SECONDS,
    AutoTune,
    Clock,
    DenialReason,
    LimiterKey,
    RateFactor,
    RateLimitUtilization,
    scaled,
)
from rakka_inference.remote.strict_lease_state import (
    AuthorityState,
    FactorState,
    KeyState,
    LeaseState,
    SnapshotError,
    decode_state,
    encode_state,
)

__all__ = [
    "LeaseAuthority",
    "LeaseGrant",
    "LeaseRefusal",
    "LeaseReturn",
    "SnapshotError",
    "lease_cap",
]

_MIN_STEP = 1e-3


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """Permits the holder may spend until its send time ``+ ttl`` (its own clock)."""

    lease_id: int
    requests: int
    tokens: int
    ttl: float


@dataclass(frozen=True, slots=True)
class LeaseRefusal:
    """No lease now; ``retry_at`` is the asker's clock time (``inf``: never)."""

    retry_at: float
    retry_after: float | None
    reason: DenialReason


class LeaseReturn(NamedTuple):
    """What a holder gives back of one lease: permits never used, tokens over estimate."""

    lease_id: int
    unused_requests: int
    unused_tokens: int
    overrun_tokens: int


def lease_cap(limit: int, ttl: float, window: float) -> int:
    """The most one lease may take of a limit: two ttl's worth of the fair rate."""
    return max(1, math.ceil(2 * limit * ttl / window))


class _Lease:
    __slots__ = ("granted_at", "lease_id", "record", "requests", "tokens")

    def __init__(
        self, record: _KeyRecord, lease_id: int, granted_at: float, requests: int, tokens: int
    ) -> None:
        self.record = record
        self.lease_id = lease_id
        self.granted_at = granted_at
        self.requests = requests
        self.tokens = tokens


class _KeyRecord:
    __slots__ = ("blocked_until", "factor", "leases", "limits", "requests", "tokens")

    def __init__(self, autotune: AutoTune) -> None:
        self.limits = RateLimits()
        self.leases: deque[_Lease] = deque()
        self.requests = 0
        self.tokens = 0
        self.blocked_until = -math.inf
        self.factor = RateFactor(autotune)


class LeaseAuthority:
    """The exact record of every strict key's leases: see the module docstring."""

    __slots__ = (
        "_autotune",
        "_clock",
        "_dirty",
        "_leases",
        "_next_id",
        "_records",
        "_span",
        "ttl",
        "window",
    )

    def __init__(
        self,
        clock: Clock,
        *,
        lease_ttl: float = 1.0,
        window: float = WINDOW_SECONDS,
        autotune: AutoTune | None = None,
    ) -> None:
        if lease_ttl <= 0 or window <= 0:
            raise ValueError("lease_ttl and window must be > 0")
        self._clock = clock
        self.ttl = lease_ttl
        self.window = window
        self._span = window + lease_ttl
        self._autotune = AutoTune() if autotune is None else autotune
        self._records: dict[LimiterKey, _KeyRecord] = {}
        self._leases: dict[int, _Lease] = {}
        self._next_id = 1
        self._dirty = 0

    @property
    def dirty(self) -> int:
        """A change counter: it differs from a value read earlier exactly when the record
        changed since in a way a snapshot must hold (see "Surviving a restart")."""
        return self._dirty

    def _record(self, key: LimiterKey) -> _KeyRecord:
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = _KeyRecord(self._autotune)
        return record

    def _evict(self, record: _KeyRecord, now: float) -> None:
        horizon = now - self._span
        leases = record.leases
        while leases and leases[0].granted_at <= horizon:
            lease = leases.popleft()
            record.requests -= lease.requests
            record.tokens -= lease.tokens
            del self._leases[lease.lease_id]

    def _free_at(self, record: _KeyRecord, excess: int, tokens: bool) -> float:
        """When enough of the oldest leases have left to free ``excess`` (> 0)."""
        for lease in record.leases:
            excess -= lease.tokens if tokens else lease.requests
            if excess <= 0:
                return lease.granted_at + self._span
        raise AssertionError("the record cannot hold more than its running sums")

    def request(
        self,
        key: LimiterKey,
        limits: RateLimits,
        want_requests: int,
        want_tokens: int,
        *,
        need_tokens: int = 0,
    ) -> LeaseGrant | LeaseRefusal:
        """A lease of up to ``want_requests`` requests and ``want_tokens`` tokens (at least
        ``need_tokens``, the asker's next call), or why not and until when. The key takes
        ``limits`` (the latest asker's wins)."""
        if min(want_requests, want_tokens, need_tokens) < 0:
            raise ValueError("a lease request must not be negative")
        now = self._clock()
        record = self._record(key)
        if record.limits != limits:
            record.limits = limits
            self._dirty += 1
        self._evict(record, now)
        if now < record.blocked_until:
            return self._refuse(record.blocked_until, DenialReason.RETRY_AFTER, now)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm == 0 or tpm == 0:  # a zero limit admits nothing, ever
            return self._refuse(math.inf, DenialReason.TOO_LARGE, now)
        factor = record.factor.at(now)
        requests, tokens = max(1, want_requests), max(want_tokens, need_tokens)
        retry_at, reason = now, DenialReason.REQUESTS
        if rpm is not None:
            limit = scaled(rpm, factor)
            room = limit - record.requests
            if room < 1:
                retry_at = self._free_at(record, 1 - room, tokens=False)
            requests = min(requests, room, lease_cap(limit, self.ttl, self.window))
        if tpm is not None:
            if need_tokens > tpm:
                return self._refuse(math.inf, DenialReason.TOO_LARGE, now)
            limit = scaled(tpm, factor)
            at = now
            if need_tokens > limit:  # only a recovered rate can take it
                at = record.factor.time_to_reach(need_tokens / tpm, now)
                limit = need_tokens
            room = limit - record.tokens
            if need_tokens > room:
                at = max(at, self._free_at(record, need_tokens - room, tokens=True))
            if at > retry_at:
                retry_at, reason = at, DenialReason.TOKENS
            cap = max(need_tokens, lease_cap(limit, self.ttl, self.window))
            tokens = min(tokens, room, cap)
        if retry_at > now:
            return self._refuse(max(retry_at, now + _MIN_STEP), reason, now)
        lease = _Lease(record, self._next_id, now, requests, tokens)
        self._next_id += 1
        record.leases.append(lease)
        record.requests += requests
        record.tokens += tokens
        self._leases[lease.lease_id] = lease
        self._dirty += 1
        return LeaseGrant(lease.lease_id, requests, tokens, self.ttl)

    @staticmethod
    def _refuse(retry_at: float, reason: DenialReason, now: float) -> LeaseRefusal:
        retry_after = None if math.isinf(retry_at) else retry_at - now
        return LeaseRefusal(retry_at, retry_after, reason)

    def release(
        self,
        lease_id: int,
        unused_requests: int = 0,
        unused_tokens: int = 0,
        overrun_tokens: int = 0,
    ) -> bool:
        """Take back a lease's unused permits and charge its overrun. False when the lease
        has already left the record (nothing of it counts any more) or was never granted."""
        if min(unused_requests, unused_tokens, overrun_tokens) < 0:
            raise ValueError("a return must not be negative")
        lease = self._leases.get(lease_id)
        if lease is None:
            return False
        record = lease.record
        requests = min(unused_requests, lease.requests)
        lease.requests -= requests
        record.requests -= requests
        tokens = max(0, lease.tokens - unused_tokens + overrun_tokens)
        record.tokens += tokens - lease.tokens
        if requests or tokens != lease.tokens:
            self._dirty += 1
        lease.tokens = tokens
        return True

    def on_rate_limited(self, key: LimiterKey, retry_after: float | None) -> None:
        """A provider 429 seen by a holder: block the key's leases, cut its rate."""
        now = self._clock()
        record = self._record(key)
        before = (record.blocked_until, FactorState.of(record.factor))
        if retry_after is not None and retry_after > 0:
            record.blocked_until = max(record.blocked_until, now + retry_after)
        record.factor.cut(now, recover_from=max(now, record.blocked_until))
        if (record.blocked_until, FactorState.of(record.factor)) != before:
            self._dirty += 1

    def snapshot(self) -> bytes:
        """The whole record as bytes, expired leases left out (see "Surviving a restart")."""
        now = self._clock()
        keys = []
        for key, record in self._records.items():
            self._evict(record, now)
            leases = tuple(
                LeaseState(lease.lease_id, lease.granted_at, lease.requests, lease.tokens)
                for lease in record.leases
            )
            factor = FactorState.of(record.factor)
            keys.append(KeyState(key, record.limits, record.blocked_until, factor, leases))
        return encode_state(AuthorityState(self._next_id, self.ttl, self.window, tuple(keys)))

    @classmethod
    def restore(
        cls,
        data: bytes,
        clock: Clock,
        *,
        lease_ttl: float | None = None,
        window: float | None = None,
        autotune: AutoTune | None = None,
    ) -> LeaseAuthority:
        """The authority a :meth:`snapshot` was taken of, on ``clock``. ``lease_ttl`` and
        ``window`` default to the snapshot's. Raises :class:`SnapshotError` for anything but
        a valid snapshot."""
        state = decode_state(data)
        authority = cls(
            clock,
            lease_ttl=state.ttl if lease_ttl is None else lease_ttl,
            window=state.window if window is None else window,
            autotune=autotune,
        )
        authority._next_id = state.next_lease_id
        # A restored lease may be in use for the snapshot's ttl: under a shorter one it
        # keeps counting until its own window + ttl ends, as if granted that much later.
        shift = max(0.0, state.ttl - authority.ttl)
        for key_state in state.keys:
            record = authority._record(key_state.key)
            record.limits = key_state.limits
            record.blocked_until = key_state.blocked_until
            key_state.factor.apply(record.factor)
            for lease_id, granted_at, requests, tokens in key_state.leases:
                lease = _Lease(record, lease_id, granted_at + shift, requests, tokens)
                record.leases.append(lease)
                record.requests += lease.requests
                record.tokens += lease.tokens
                authority._leases[lease.lease_id] = lease
        return authority

    def utilization(self) -> list[RateLimitUtilization]:
        """Each key's leased permits in the record (``window + ttl`` of grants)."""
        now = self._clock()
        snapshots = []
        for key, record in self._records.items():
            self._evict(record, now)
            factor = record.factor.at(now)
            rpm, tpm = record.limits.requests_per_minute, record.limits.tokens_per_minute
            snapshots.append(
                RateLimitUtilization(
                    key=key,
                    mode="strict",
                    requests_in_window=record.requests,
                    tokens_in_window=record.tokens,
                    requests_per_minute=rpm,
                    tokens_per_minute=tpm,
                    effective_requests_per_minute=None if rpm is None else scaled(rpm, factor),
                    effective_tokens_per_minute=None if tpm is None else scaled(tpm, factor),
                    concurrent_in_use=0,
                    concurrent_limit=record.limits.concurrent_requests,
                    waiters=0,
                    rate_factor=factor,
                    blocked_for=max(0.0, record.blocked_until - now),
                )
            )
        return snapshots
