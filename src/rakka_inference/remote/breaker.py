"""A circuit breaker per (provider, endpoint): stop calling an upstream that keeps failing.

The states and what moves between them, all in :data:`TRANSITIONS`::

    CLOSED ──TRIP──────────────► OPEN ──OPEN_ELAPSED──► HALF_OPEN ──PROBE_SUCCEEDED──► CLOSED
                                  ▲                        │
                                  └──────PROBE_FAILED──────┘
    any state ──FORCE_OPEN──► OPEN          any state ──FORCE_CLOSE──► CLOSED
    HALF_OPEN ──PROBE_RELEASED──► HALF_OPEN (a probe ended with no verdict; its slot frees)

An event the table does not list for the current state raises :class:`InternalError`:
the breaker's own bookkeeping went wrong, which is a bug, never a runtime condition.

The protocol for a caller, on the hot path, with no await and no actor hop::

    admission = breaker.admit()            # raises CircuitOpen to fail fast
    try:
        response = await call_upstream()
    except InferenceError as error:
        breaker.record_failure(admission, error)
        raise
    except BaseException:
        breaker.release(admission)          # cancelled: no verdict on the upstream
        raise
    else:
        breaker.record_success(admission)

Each admission is settled exactly once; settling it twice raises :class:`InternalError`.

Counting:

- Only failures whose class sets ``counts_for_breaker`` (5xx, timeouts, network and
  protocol errors) count. A 429, a 400, a content filter — the upstream answering
  correctly — neither count nor reset the streak: they say nothing about the upstream's
  health either way. A success resets it.
- ``failure_threshold`` consecutive counted failures trip the circuit (TRIP).
- With ``failure_rate_threshold`` set, the circuit also trips when, over the last
  ``failure_rate_window_ms``, at least ``failure_rate_min_calls`` calls finished and the
  counted failures among them reached that fraction. Non-counted failures are left out of
  both counts. The window is ten time buckets, so memory is bounded and the window's edge
  is exact to a tenth of its length.
- Outcomes of calls that finish while the circuit is open or half-open do not count,
  except the probes' own.

Open periods: a trip opens for ``open_duration_ms``; each failed probe doubles the period,
up to ``max_open_duration_ms``; closing resets it. The end of an open period is noticed
lazily, by the next :meth:`CircuitBreaker.admit`, which moves to HALF_OPEN and admits up
to ``half_open_max_probes`` concurrent probes; the others fail fast. A probe that
succeeds closes the circuit; one that fails with a counted error re-opens it. A probe that
fails with a non-counted error, or is released, is no verdict: its slot frees for the next
caller.

Times come from the injected monotonic ``clock``, in seconds; ``opened_at`` and
``retry_at`` are on that clock. Every transition is reported to ``on_transition`` with a
cause in words, for logs, metrics and the admin API.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeAlias

from rakka_inference.actors import Actor
from rakka_inference.core.deployment import CircuitBreakerConfig
from rakka_inference.core.errors import (
    CircuitOpen,
    InferenceError,
    InternalError,
    NetworkError,
    ProtocolError,
    Timeout,
)

__all__ = [
    "TRANSITIONS",
    "Admission",
    "BreakerCommand",
    "BreakerEvent",
    "BreakerKey",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "CircuitBreakerActor",
    "ForceClose",
    "ForceOpen",
    "GetSnapshot",
    "next_state",
]

log = logging.getLogger("rakka_inference.remote.breaker")


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerEvent(enum.Enum):
    TRIP = "trip"
    OPEN_ELAPSED = "open_elapsed"
    PROBE_SUCCEEDED = "probe_succeeded"
    PROBE_FAILED = "probe_failed"
    PROBE_RELEASED = "probe_released"
    FORCE_OPEN = "force_open"
    FORCE_CLOSE = "force_close"


_S = BreakerState
_E = BreakerEvent

TRANSITIONS: Mapping[tuple[BreakerState, BreakerEvent], BreakerState] = MappingProxyType(
    {
        (_S.CLOSED, _E.TRIP): _S.OPEN,
        (_S.CLOSED, _E.FORCE_OPEN): _S.OPEN,
        (_S.CLOSED, _E.FORCE_CLOSE): _S.CLOSED,
        (_S.OPEN, _E.OPEN_ELAPSED): _S.HALF_OPEN,
        (_S.OPEN, _E.FORCE_OPEN): _S.OPEN,
        (_S.OPEN, _E.FORCE_CLOSE): _S.CLOSED,
        (_S.HALF_OPEN, _E.PROBE_SUCCEEDED): _S.CLOSED,
        (_S.HALF_OPEN, _E.PROBE_FAILED): _S.OPEN,
        (_S.HALF_OPEN, _E.PROBE_RELEASED): _S.HALF_OPEN,
        (_S.HALF_OPEN, _E.FORCE_OPEN): _S.OPEN,
        (_S.HALF_OPEN, _E.FORCE_CLOSE): _S.CLOSED,
    }
)
"""(state, event) → next state. The breaker's whole state machine."""


def next_state(state: BreakerState, event: BreakerEvent) -> BreakerState:
    """The state after ``event`` in ``state``; InternalError if the table has no such move."""
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise InternalError(
            f"circuit breaker: event {event.name} is illegal in state {state.name}"
        ) from None


@dataclass(frozen=True, slots=True)
class BreakerKey:
    """What one breaker guards. Deployments calling the same endpoint share its breaker."""

    provider: str
    endpoint: str

    def __str__(self) -> str:
        return f"{self.provider} at {self.endpoint}"


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    key: BreakerKey
    from_state: BreakerState
    to_state: BreakerState
    event: BreakerEvent
    cause: str
    at: float
    open_until: float | None
    """When the open period ends; set when ``to_state`` is OPEN."""


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    key: BreakerKey
    state: BreakerState
    """As last observed: OPEN with ``open_until`` past means the next caller probes."""
    consecutive_failures: int
    opened_at: float | None
    open_until: float | None
    open_duration_s: float
    """The length of the next automatic open period (grows with failed probes)."""
    probes_in_flight: int
    cause: str
    """The cause of the last transition ("" before the first)."""


class Admission:
    """Leave to call the upstream once. Settle it with exactly one of the breaker's
    ``record_success``, ``record_failure`` or ``release``.

    ``probe`` is True for a half-open probe, whose outcome decides the circuit's state.
    """

    __slots__ = ("_breaker", "_epoch", "_settled", "probe")

    def __init__(self, breaker: CircuitBreaker, epoch: int, *, probe: bool) -> None:
        self._breaker = breaker
        self._epoch = epoch
        self._settled = False
        self.probe = probe

    @property
    def settled(self) -> bool:
        return self._settled

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "call"
        return f"Admission({kind}, {'settled' if self._settled else 'open'})"


class CircuitBreaker:
    """The breaker for one (provider, endpoint). Synchronous; see the module docstring."""

    def __init__(
        self,
        key: BreakerKey,
        config: CircuitBreakerConfig,
        *,
        clock: Callable[[], float],
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        _validate(config)
        self.key = key
        self.config = config
        self._clock = clock
        self._on_transition = on_transition
        self._state = BreakerState.CLOSED
        self._epoch = 0  # bumped on every transition: tells a stale probe from a live one
        self._streak: Counter[str] = Counter()  # consecutive counted failures, by label
        self._base_open_s = config.open_duration_ms / 1000.0
        self._max_open_s = config.max_open_duration_ms / 1000.0
        self._open_duration_s = self._base_open_s
        self._opened_at: float | None = None
        self._open_until: float | None = None
        self._open_cause = ""
        self._last_cause = ""
        self._probes = 0
        self._window = (
            None
            if config.failure_rate_threshold is None
            else _FailureWindow(config.failure_rate_window_ms / 1000.0)
        )

    @property
    def state(self) -> BreakerState:
        return self._state

    # ------------------------------------------------------------------ hot path

    def admit(self) -> Admission:
        """Leave to call the upstream now, or raise :class:`CircuitOpen`."""
        if self._state is BreakerState.CLOSED:
            return Admission(self, self._epoch, probe=False)
        now = self._clock()
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            assert self._opened_at is not None
            if now < self._open_until:
                raise self._refusal(now)
            period = _seconds(self._open_until - self._opened_at)
            self._fire(BreakerEvent.OPEN_ELAPSED, now, f"open for {period}; probing")
        if self._probes >= self.config.half_open_max_probes:
            raise self._refusal(now)
        self._probes += 1
        return Admission(self, self._epoch, probe=True)

    def record_success(self, admission: Admission) -> None:
        self._settle(admission)
        if self._is_live_probe(admission):
            self._probes -= 1
            self._fire(BreakerEvent.PROBE_SUCCEEDED, self._clock(), "probe succeeded")
        elif self._state is BreakerState.CLOSED:
            self._streak.clear()
            if self._window is not None:
                self._window.record(self._clock(), failed=False)

    def record_failure(self, admission: Admission, error: InferenceError) -> None:
        self._settle(admission)
        if self._is_live_probe(admission):
            if not error.counts_for_breaker:
                self._release_probe()
                return
            self._probes -= 1
            self._open_duration_s = min(self._max_open_s, self._open_duration_s * 2)
            self._open(BreakerEvent.PROBE_FAILED, f"probe failed: {_describe(error)}")
            return
        if self._state is not BreakerState.CLOSED or not error.counts_for_breaker:
            return
        self._streak[_label(error)] += 1
        rate_cause = None
        if self._window is not None:
            now = self._clock()
            self._window.record(now, failed=True)
            rate_cause = self._rate_cause(self._window, now)
        if self._streak.total() >= self.config.failure_threshold:
            self._open(BreakerEvent.TRIP, self._streak_cause())
        elif rate_cause is not None:
            self._open(BreakerEvent.TRIP, rate_cause)

    def release(self, admission: Admission) -> None:
        """Settle an admission whose call ended with no verdict (cancelled, say)."""
        self._settle(admission)
        if self._is_live_probe(admission):
            self._release_probe()

    # ------------------------------------------------------------------ operator

    def force_open(self, duration_s: float) -> None:
        """Open now for ``duration_s`` seconds, with no probes; then half-open as usual."""
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be a positive number, got {duration_s!r}")
        now = self._clock()
        cause = f"forced open by operator for {_seconds(duration_s)}"
        self._opened_at, self._open_until, self._open_cause = now, now + duration_s, cause
        self._fire(BreakerEvent.FORCE_OPEN, now, cause)

    def force_close(self) -> None:
        """Close now and forget every failure counted so far."""
        self._fire(BreakerEvent.FORCE_CLOSE, self._clock(), "forced closed by operator")

    def snapshot(self) -> BreakerSnapshot:
        return BreakerSnapshot(
            key=self.key,
            state=self._state,
            consecutive_failures=self._streak.total(),
            opened_at=self._opened_at,
            open_until=self._open_until,
            open_duration_s=self._open_duration_s,
            probes_in_flight=self._probes,
            cause=self._last_cause,
        )

    # ------------------------------------------------------------------ internals

    def _settle(self, admission: Admission) -> None:
        if admission._breaker is not self:
            raise InternalError(f"admission settled on the wrong circuit breaker ({self.key})")
        if admission._settled:
            raise InternalError(f"admission for {self.key} settled twice")
        admission._settled = True

    def _is_live_probe(self, admission: Admission) -> bool:
        # A probe admitted before the last transition (say, a force_close) is stale: its
        # outcome is then an ordinary call's.
        return admission.probe and admission._epoch == self._epoch

    def _release_probe(self) -> None:
        # A self-loop of the table: checked like any move, but not reported, since neither
        # the state nor the open period changes.
        self._state = next_state(self._state, BreakerEvent.PROBE_RELEASED)
        self._probes -= 1

    def _open(self, event: BreakerEvent, cause: str) -> None:
        now = self._clock()
        duration = self._open_duration_s
        self._opened_at, self._open_until, self._open_cause = now, now + duration, cause
        self._fire(event, now, f"{cause}; open for {_seconds(duration)}")

    def _fire(self, event: BreakerEvent, now: float, cause: str) -> None:
        previous = self._state
        state = next_state(previous, event)
        self._state = state
        self._epoch += 1
        self._last_cause = cause
        if state is not BreakerState.HALF_OPEN:
            self._probes = 0
        if state is BreakerState.CLOSED:
            self._streak.clear()
            if self._window is not None:
                self._window.clear()
            self._open_duration_s = self._base_open_s
            self._opened_at = self._open_until = None
            self._open_cause = ""
        if self._on_transition is None:
            return
        open_until = self._open_until if state is BreakerState.OPEN else None
        transition = BreakerTransition(self.key, previous, state, event, cause, now, open_until)
        try:
            self._on_transition(transition)
        except Exception:
            # An observer's bug must not break the hot path that fired the transition.
            log.exception("on_transition failed for the circuit breaker of %s", self.key)

    def _refusal(self, now: float) -> CircuitOpen:
        retry_at: float | None = None
        retry_after: float | None = None
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            retry_at = self._open_until
            wait = max(0.0, retry_at - now)
            retry_after = wait
            detail = f"{self._open_cause}; next probe in {_seconds(wait)}"
        else:
            detail = f"{self._probes} probe(s) in flight after: {self._open_cause}"
        state = self._state.value.replace("_", "-")
        return CircuitOpen(
            f"circuit for {self.key} is {state} ({detail})",
            provider=self.key.provider,
            opened_at=self._opened_at,
            retry_at=retry_at,
            retry_after=retry_after,
        )

    def _streak_cause(self) -> str:
        count = self._streak.total()
        if len(self._streak) == 1:
            (label,) = self._streak
            if label.isdigit():
                return f"opened after {count} consecutive {label} responses"
        parts = ", ".join(f"{label} ×{n}" for label, n in self._streak.most_common())  # noqa: RUF001
        return f"opened after {count} consecutive failures ({parts})"

    def _rate_cause(self, window: _FailureWindow, now: float) -> str | None:
        threshold = self.config.failure_rate_threshold
        assert threshold is not None
        calls, failures = window.totals(now)
        if calls < self.config.failure_rate_min_calls or failures < threshold * calls:
            return None
        return (
            f"failure rate {failures / calls:.0%} over {_seconds(window.length_s)} ({calls} calls)"
        )


class _FailureWindow:
    """Finished calls and counted failures over a sliding window, in ten time buckets."""

    BUCKETS = 10

    __slots__ = ("_buckets", "_width", "length_s")

    def __init__(self, length_s: float) -> None:
        self.length_s = length_s
        self._width = length_s / self.BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures]

    def record(self, now: float, *, failed: bool) -> None:
        index = self._expire(now)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, 0, 0])
        bucket = buckets[-1]
        bucket[1] += 1
        bucket[2] += failed

    def totals(self, now: float) -> tuple[int, int]:
        self._expire(now)
        return sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets)

    def clear(self) -> None:
        self._buckets.clear()

    def _expire(self, now: float) -> int:
        buckets = self._buckets
        index = int(now // self._width)
        if buckets:
            index = max(index, buckets[-1][0])  # a clock never goes back; be safe if it does
        while buckets and buckets[0][0] <= index - self.BUCKETS:
            buckets.popleft()
        return index


def _validate(config: CircuitBreakerConfig) -> None:
    problems = [
        message
        for failed, message in (
            (config.failure_threshold < 1, "failure_threshold must be >= 1"),
            (config.open_duration_ms <= 0, "open_duration_ms must be > 0"),
            (
                config.max_open_duration_ms < config.open_duration_ms,
                "max_open_duration_ms must be >= open_duration_ms",
            ),
            (config.half_open_max_probes < 1, "half_open_max_probes must be >= 1"),
            (
                config.failure_rate_threshold is not None
                and not 0 < config.failure_rate_threshold <= 1,
                "failure_rate_threshold must be in (0, 1]",
            ),
            (config.failure_rate_window_ms <= 0, "failure_rate_window_ms must be > 0"),
            (config.failure_rate_min_calls < 1, "failure_rate_min_calls must be >= 1"),
        )
        if failed
    ]
    if problems:
        raise ValueError("; ".join(problems))


def _label(error: InferenceError) -> str:
    """How a failure is named in a trip's cause: a status code, or what kind of failure."""
    if isinstance(error, Timeout):
        return "timeout"
    if isinstance(error, NetworkError):
        return "network error"
    if isinstance(error, ProtocolError):
        return "protocol error"
    if error.upstream_status is not None:
        return str(error.upstream_status)
    return type(error).__name__


def _describe(error: InferenceError) -> str:
    name = type(error).__name__
    if isinstance(error, Timeout):
        return f"{name} ({error.phase.value})"
    return name if error.upstream_status is None else f"{name} {error.upstream_status}"


def _seconds(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


# --------------------------------------------------------------------------- admin


@dataclass(frozen=True, slots=True)
class ForceOpen:
    duration_s: float


@dataclass(frozen=True, slots=True)
class ForceClose:
    pass


@dataclass(frozen=True, slots=True)
class GetSnapshot:
    pass


BreakerCommand: TypeAlias = ForceOpen | ForceClose | GetSnapshot


class CircuitBreakerActor(Actor[BreakerCommand]):
    """The admin face of one breaker. Every command replies with the breaker's snapshot.

    Callers on the hot path hold the :class:`CircuitBreaker` itself and never ask this
    actor; the breaker outlives restarts of the actor, which only holds a reference.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    async def receive(self, message: BreakerCommand) -> Any:
        command: object = message  # the mailbox is untyped at run time
        if isinstance(command, ForceOpen):
            self.breaker.force_open(command.duration_s)
        elif isinstance(command, ForceClose):
            self.breaker.force_close()
        elif not isinstance(command, GetSnapshot):
            return await super().receive(message)
        return self.breaker.snapshot()


class BreakerRegistry:
    """One breaker per (provider, endpoint), shared by every deployment that calls it.

    The first deployment to ask for a key sets its breaker's config; a later one asking
    with a different config shares the existing breaker, and the difference is logged.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self._clock = clock
        self._on_transition = on_transition
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}

    def get_or_create(self, key: BreakerKey, config: CircuitBreakerConfig) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(
                key, config, clock=self._clock, on_transition=self._on_transition
            )
            self._breakers[key] = breaker
        elif breaker.config != config:
            log.warning(
                "circuit breaker for %s is shared; keeping its first config %r, not %r",
                key,
                breaker.config,
                config,
            )
        return breaker

    def get(self, key: BreakerKey) -> CircuitBreaker | None:
        return self._breakers.get(key)

    def snapshots(self) -> tuple[BreakerSnapshot, ...]:
        return tuple(breaker.snapshot() for breaker in self._breakers.values())

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self._breakers.values())

    def __len__(self) -> int:
        return len(self._breakers)
