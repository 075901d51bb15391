"""The circuit breaker of one upstream: stop calling a (provider, endpoint, model) that keeps
failing.

A plain synchronous object, not an actor: the engine's workers call it inline, and the
operator's force-open and force-close (admin API) call it directly. One per upstream model
at an endpoint — what actually fails: one model of a provider may be down while another
on the same endpoint serves — shared by every deployment calling it, kept by
:class:`~rakka_inference.remote.breaker_registry.BreakerRegistry`.

The states and what moves between them, all in :data:`TRANSITIONS`::

    CLOSED ──TRIP──────────────► OPEN ──OPEN_ELAPSED──► HALF_OPEN ──PROBE_SUCCEEDED──► CLOSED
                                  ▲                        │
                                  └──────PROBE_FAILED──────┘
    any state ──FORCE_OPEN──► OPEN          any state ──FORCE_CLOSE──► CLOSED
    HALF_OPEN ──PROBE_RELEASED──► HALF_OPEN (a probe ended with no verdict; its slot frees)

An event the table does not list for the current state raises :class:`InternalError`:
the breaker's own bookkeeping went wrong, which is a bug, never a runtime condition.

The protocol for a caller, on the hot path, with no await and no actor hop::

    admission = breaker.admit(subject)     # raises CircuitOpen to fail fast
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
  both counts (:class:`~rakka_inference.remote.breaker_counting.FailureWindow`).
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

A refusal is for a client to read: :class:`CircuitOpen` names the failing upstream by the
caller's ``subject`` ("deployment 'gpt4o-a' (openai)"; by default the key's
:attr:`BreakerKey.label`), says when to come back and why the circuit opened — never the
endpoint's URL or host, which only the operator's log and admin API show::

    deployment 'gpt4o-a' (openai): circuit open, retry in 12s (opened after 10 consecutive
    503 responses)
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from rakka_inference.core.errors import CircuitOpen, InferenceError, InternalError
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker_counting import (
    FailureWindow,
    describe_failure,
    failure_label,
    format_seconds,
    streak_cause,
    validate_config,
)

__all__ = [
    "TRANSITIONS",
    "Admission",
    "BreakerEvent",
    "BreakerKey",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
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
    """What one breaker guards: one upstream model at one endpoint of a provider.
    Deployments calling the same model at the same endpoint share its breaker."""

    provider: str
    endpoint: str
    model: str
    """The model name sent upstream."""

    @property
    def label(self) -> str:
        """The upstream in words a client may read: no URL, no host."""
        return f"{self.provider} model {self.model!r}"

    def __str__(self) -> str:
        """For the operator's log: with the endpoint."""
        return f"{self.label} at {self.endpoint}"


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
    """The breaker for one (provider, endpoint, model). Synchronous; see the module docstring."""

    def __init__(
        self,
        key: BreakerKey,
        config: CircuitBreakerConfig,
        *,
        clock: Callable[[], float],
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        validate_config(config)
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
        self._window: FailureWindow | None = None
        self._set_window(config)

    @property
    def state(self) -> BreakerState:
        return self._state

    # ------------------------------------------------------------------ hot path

    def admit(self, subject: str | None = None) -> Admission:
        """Leave to call the upstream now, or raise :class:`CircuitOpen`, which names the
        upstream by ``subject`` (the key's label when None)."""
        if self._state is BreakerState.CLOSED:
            return Admission(self, self._epoch, probe=False)
        now = self._clock()
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            assert self._opened_at is not None
            if now < self._open_until:
                raise self._refusal(now, subject)
            period = format_seconds(self._open_until - self._opened_at)
            self._fire(BreakerEvent.OPEN_ELAPSED, now, f"open for {period}; probing")
        if self._probes >= self.config.half_open_max_probes:
            raise self._refusal(now, subject)
        self._probes += 1
        return Admission(self, self._epoch, probe=True)

    def refusal(self, subject: str | None = None) -> CircuitOpen | None:
        """The :class:`CircuitOpen` :meth:`admit` would raise now, or None when it would
        admit. Changes nothing: no transition, no probe taken."""
        if self._state is BreakerState.CLOSED:
            return None
        now = self._clock()
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            return self._refusal(now, subject) if now < self._open_until else None
        if self._probes >= self.config.half_open_max_probes:
            return self._refusal(now, subject)
        return None

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
            self._open(BreakerEvent.PROBE_FAILED, f"probe failed: {describe_failure(error)}")
            return
        if self._state is not BreakerState.CLOSED or not error.counts_for_breaker:
            return
        self._streak[failure_label(error)] += 1
        rate_cause = None
        if self._window is not None:
            now = self._clock()
            self._window.record(now, failed=True)
            rate_cause = self._window.trip_cause(now, self.config)
        if self._streak.total() >= self.config.failure_threshold:
            self._open(BreakerEvent.TRIP, streak_cause(self._streak))
        elif rate_cause is not None:
            self._open(BreakerEvent.TRIP, rate_cause)

    def release(self, admission: Admission) -> None:
        """Settle an admission whose call ended with no verdict (cancelled, say)."""
        self._settle(admission)
        if self._is_live_probe(admission):
            self._release_probe()

    # ------------------------------------------------------------------ operator

    def force_open(self, duration_s: float, *, by: str = "operator") -> None:
        """Open now for ``duration_s`` seconds, with no probes; then half-open as usual.
        ``by`` names who forced it in the cause (another worker's circuit, say)."""
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"duration_s must be a positive number, got {duration_s!r}")
        now = self._clock()
        cause = f"forced open by {by} for {format_seconds(duration_s)}"
        self._opened_at, self._open_until, self._open_cause = now, now + duration_s, cause
        self._fire(BreakerEvent.FORCE_OPEN, now, cause)

    def force_close(self, *, by: str = "operator") -> None:
        """Close now and forget every failure counted so far."""
        self._fire(BreakerEvent.FORCE_CLOSE, self._clock(), f"forced closed by {by}")

    def reconfigure(self, config: CircuitBreakerConfig) -> None:
        """Take ``config`` from now on (its deployments' settings changed together, say on
        a reload), keeping the state: an open circuit stays open for the period it
        opened with, and the streak counted so far stands against the new threshold."""
        validate_config(config)
        if config == self.config:
            return
        self.config = config
        self._base_open_s = config.open_duration_ms / 1000.0
        self._max_open_s = config.max_open_duration_ms / 1000.0
        if self._state is BreakerState.CLOSED:
            self._open_duration_s = self._base_open_s
        else:
            grown = max(self._base_open_s, self._open_duration_s)
            self._open_duration_s = min(self._max_open_s, grown)
        self._set_window(config)

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

    def _set_window(self, config: CircuitBreakerConfig) -> None:
        if config.failure_rate_threshold is None:
            self._window = None
            return
        length_s = config.failure_rate_window_ms / 1000.0
        if self._window is None or self._window.length_s != length_s:
            self._window = FailureWindow(length_s)

    def _settle(self, admission: Admission) -> None:
        if admission._breaker is not self:
            raise InternalError(
                f"admission settled on the wrong circuit breaker ({self.key.label})"
            )
        if admission._settled:
            raise InternalError(f"admission for {self.key.label} settled twice")
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
        self._fire(event, now, f"{cause}; open for {format_seconds(duration)}")

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
        log.log(
            logging.WARNING if state is BreakerState.OPEN else logging.INFO,
            "circuit %s %s -> %s: %s",
            self.key,
            previous.value,
            state.value,
            cause,
        )
        if self._on_transition is None:
            return
        open_until = self._open_until if state is BreakerState.OPEN else None
        transition = BreakerTransition(self.key, previous, state, event, cause, now, open_until)
        try:
            self._on_transition(transition)
        except Exception:
            # An observer's bug must not break the hot path that fired the transition.
            log.exception("on_transition failed for the circuit breaker of %s", self.key)

    def _refusal(self, now: float, subject: str | None) -> CircuitOpen:
        retry_at: float | None = None
        retry_after: float | None = None
        if self._state is BreakerState.OPEN:
            assert self._open_until is not None
            retry_at = self._open_until
            wait = max(0.0, retry_at - now)
            retry_after = wait
            # Whole seconds, rounded up as the Retry-After header says them.
            status = f"circuit open, retry in {max(1, math.ceil(wait))}s"
        else:
            status = f"circuit half-open, {self._probes} probe(s) in flight"
        return CircuitOpen(
            f"{subject or self.key.label}: {status} ({self._open_cause})",
            provider=self.key.provider,
            opened_at=self._opened_at,
            retry_at=retry_at,
            retry_after=retry_after,
        )
