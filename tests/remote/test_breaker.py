"""The circuit breaker: one transition table, counted failures, probes, operator commands."""

from __future__ import annotations

import logging
import math

import pytest

from rakka_inference.core.errors import (
    BadRequest,
    CircuitOpen,
    ContentFiltered,
    InferenceError,
    InternalError,
    NetworkError,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import (
    TRANSITIONS,
    Admission,
    BreakerEvent,
    BreakerKey,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
    next_state,
)
from rakka_inference.testkit.clock import FakeClock

KEY = BreakerKey("openai", "https://api.openai.com/v1", "gpt-4o")
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def http_503() -> ServerError:
    return ServerError("openai returned HTTP 503", provider="openai", upstream_status=503)


def timeout() -> Timeout:
    return Timeout("no first byte in 30s", phase=TimeoutPhase.FIRST_BYTE)


class Harness:
    """A breaker on a fake clock that records every transition."""

    def __init__(self, config: CircuitBreakerConfig | None = None) -> None:
        self.clock = FakeClock()
        self.transitions: list[BreakerTransition] = []
        self.breaker = CircuitBreaker(
            KEY,
            config or CircuitBreakerConfig(),
            clock=self.clock,
            on_transition=self.transitions.append,
        )

    def fail(self, error: InferenceError | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.breaker.record_failure(self.breaker.admit(), error or http_503())

    def succeed(self) -> None:
        self.breaker.record_success(self.breaker.admit())

    def trip(self) -> None:
        self.fail(times=self.breaker.config.failure_threshold)
        assert self.breaker.state is OPEN

    @property
    def causes(self) -> list[str]:
        return [t.cause for t in self.transitions]


# --------------------------------------------------------------------------- the table


def test_the_table_is_the_whole_state_machine() -> None:
    assert next_state(CLOSED, BreakerEvent.TRIP) is OPEN
    assert next_state(OPEN, BreakerEvent.OPEN_ELAPSED) is HALF_OPEN
    assert next_state(HALF_OPEN, BreakerEvent.PROBE_SUCCEEDED) is CLOSED
    assert next_state(HALF_OPEN, BreakerEvent.PROBE_FAILED) is OPEN
    assert next_state(HALF_OPEN, BreakerEvent.PROBE_RELEASED) is HALF_OPEN
    for state in BreakerState:
        assert next_state(state, BreakerEvent.FORCE_OPEN) is OPEN
        assert next_state(state, BreakerEvent.FORCE_CLOSE) is CLOSED
    with pytest.raises(TypeError):
        TRANSITIONS[CLOSED, BreakerEvent.TRIP] = CLOSED  # type: ignore[index]


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (state, event)
        for state in BreakerState
        for event in BreakerEvent
        if (state, event) not in TRANSITIONS
    ],
)
def test_the_table_rejects_illegal_transitions(state: BreakerState, event: BreakerEvent) -> None:
    with pytest.raises(InternalError, match=f"{event.name} is illegal in state {state.name}"):
        next_state(state, event)


def test_illegal_moves_exist_for_every_state() -> None:
    illegal = {(s, e) for s in BreakerState for e in BreakerEvent if (s, e) not in TRANSITIONS}
    assert (OPEN, BreakerEvent.TRIP) in illegal
    assert (CLOSED, BreakerEvent.PROBE_SUCCEEDED) in illegal
    assert (CLOSED, BreakerEvent.OPEN_ELAPSED) in illegal


# --------------------------------------------------------------------------- counting


def test_opens_after_threshold_consecutive_counted_failures() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=3))
    h.fail(times=2)
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().consecutive_failures == 2
    assert h.transitions == []
    h.fail()
    assert h.breaker.state is OPEN
    [transition] = h.transitions
    assert transition == BreakerTransition(
        KEY,
        CLOSED,
        OPEN,
        BreakerEvent.TRIP,
        "opened after 3 consecutive 503 responses; open for 30s",
        1000.0,
        1030.0,
    )


def test_the_cause_breaks_mixed_failures_down() -> None:
    h = Harness()
    h.fail(http_503(), times=6)
    h.fail(timeout(), times=3)
    h.fail(NetworkError("reset"))
    assert h.causes == [
        "opened after 10 consecutive failures (503 ×6, timeout ×3, network error ×1); "  # noqa: RUF001
        "open for 30s"
    ]


def test_a_streak_of_one_kind_that_is_not_a_status() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=4))
    h.fail(timeout(), times=4)
    assert h.causes == ["opened after 4 consecutive failures (timeout ×4); open for 30s"]  # noqa: RUF001


def test_other_failure_labels() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=2))
    h.fail(ProtocolError("bad frame"))
    h.fail(ServerError("no status"))
    assert h.causes[0].startswith(
        "opened after 2 consecutive failures (protocol error ×1, ServerError ×1)"  # noqa: RUF001
    )


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("429", upstream_status=429),
        BadRequest("400", upstream_status=400),
        ContentFiltered("filtered", upstream_status=400),
    ],
)
def test_non_counted_failures_neither_count_nor_reset(error: InferenceError) -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=3))
    h.fail(times=2)
    h.fail(error, times=20)
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().consecutive_failures == 2
    h.fail()
    assert h.breaker.state is OPEN


def test_a_success_resets_the_streak() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=3))
    h.fail(times=2)
    h.succeed()
    assert h.breaker.snapshot().consecutive_failures == 0
    h.fail(times=2)
    assert h.breaker.state is CLOSED


def test_calls_finishing_while_open_do_not_count() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=2))
    slow = [h.breaker.admit() for _ in range(4)]
    h.breaker.record_failure(slow[0], http_503())
    h.breaker.record_failure(slow[1], http_503())
    assert h.breaker.state is OPEN
    h.breaker.record_failure(slow[2], http_503())
    h.breaker.record_success(slow[3])
    assert len(h.transitions) == 1
    assert h.breaker.snapshot().open_until == 1030.0


# --------------------------------------------------------------------------- open


def test_open_fails_fast_with_when_to_retry() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(12.5)
    with pytest.raises(CircuitOpen) as caught:
        h.breaker.admit()
    error = caught.value
    assert error.provider == "openai"
    assert error.opened_at == 1000.0
    assert error.retry_at == 1030.0
    assert error.retry_after == pytest.approx(17.5)
    assert error.message == (
        "openai model 'gpt-4o': circuit open, retry in 18s "
        "(opened after 10 consecutive 503 responses)"
    )
    # The caller names itself; the endpoint's URL and host are never in the text.
    with pytest.raises(CircuitOpen) as named:
        h.breaker.admit("deployment 'gpt4o-a' (openai)")
    assert named.value.message == (
        "deployment 'gpt4o-a' (openai): circuit open, retry in 18s "
        "(opened after 10 consecutive 503 responses)"
    )
    assert "api.openai.com" not in named.value.message
    assert str(KEY) == "openai model 'gpt-4o' at https://api.openai.com/v1"  # for the log
    assert KEY.label == "openai model 'gpt-4o'"


def test_a_refusal_is_told_without_a_transition() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=1, half_open_max_probes=1))
    assert h.breaker.refusal() is None  # closed
    h.trip()
    h.clock.advance(0.2)
    refusal = h.breaker.refusal("deployment 'a' (openai)")
    assert refusal is not None
    assert refusal.message == (
        "deployment 'a' (openai): circuit open, retry in 30s "
        "(opened after 1 consecutive 503 responses)"
    )
    assert refusal.retry_after == pytest.approx(29.8)
    h.clock.advance(30)
    assert h.breaker.refusal() is None  # the next admit probes...
    assert h.breaker.state is OPEN  # ... but telling so moved nothing
    assert len(h.transitions) == 1
    probe = h.breaker.admit()
    half_open = h.breaker.refusal()
    assert half_open is not None
    assert half_open.retry_after is None
    h.breaker.release(probe)
    assert h.breaker.refusal() is None  # a probe slot is free again
    # Under a second left still says a whole second, like the Retry-After header.
    h.breaker.force_open(0.25)
    forced = h.breaker.refusal()
    assert forced is not None
    assert "retry in 1s (forced open by operator for 0.25s)" in forced.message


def test_half_open_is_entered_lazily_at_admission() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    assert h.breaker.state is OPEN  # nothing has looked yet
    admission = h.breaker.admit()
    assert admission.probe
    assert h.breaker.state is HALF_OPEN
    assert h.transitions[-1].event is BreakerEvent.OPEN_ELAPSED
    assert h.transitions[-1].cause == "open for 30s; probing"
    assert h.transitions[-1].open_until is None
    assert h.breaker.snapshot().probes_in_flight == 1


def test_only_max_probes_run_at_once() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    probe = h.breaker.admit()
    with pytest.raises(CircuitOpen) as caught:
        h.breaker.admit()
    assert caught.value.retry_at is None
    assert caught.value.retry_after is None
    assert caught.value.message.startswith(
        "openai model 'gpt-4o': circuit half-open, 1 probe(s) in flight (opened after 10"
    )
    h.breaker.record_success(probe)
    assert h.breaker.state is CLOSED


def test_several_probes_when_configured() -> None:
    h = Harness(CircuitBreakerConfig(half_open_max_probes=2))
    h.trip()
    h.clock.advance(30)
    first, second = h.breaker.admit(), h.breaker.admit()
    assert first.probe
    assert second.probe
    with pytest.raises(CircuitOpen):
        h.breaker.admit()
    h.breaker.record_success(first)
    assert h.breaker.state is CLOSED
    # The other probe is now stale: its outcome is an ordinary call's.
    h.breaker.record_failure(second, http_503())
    assert h.breaker.state is CLOSED
    assert h.breaker.snapshot().consecutive_failures == 1


def test_probe_success_closes_and_resets_the_open_duration() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    h.fail()  # the probe fails: open for 60 s
    assert h.breaker.snapshot().open_duration_s == 60.0
    h.clock.advance(60)
    h.succeed()
    assert h.breaker.state is CLOSED
    snapshot = h.breaker.snapshot()
    assert snapshot == BreakerSnapshot(
        key=KEY,
        state=CLOSED,
        consecutive_failures=0,
        opened_at=None,
        open_until=None,
        open_duration_s=30.0,
        probes_in_flight=0,
        cause="probe succeeded",
    )
    h.trip()
    assert h.transitions[-1].open_until == h.clock.now + 30.0


def test_probe_failure_doubles_the_open_duration_up_to_the_cap() -> None:
    h = Harness(CircuitBreakerConfig(open_duration_ms=30_000, max_open_duration_ms=100_000))
    h.trip()
    periods = []
    for _ in range(4):
        h.clock.advance(1000)
        h.fail(timeout())
        last = h.transitions[-1]
        assert last.event is BreakerEvent.PROBE_FAILED
        assert last.open_until is not None
        periods.append(last.open_until - last.at)
    assert periods == [60.0, 100.0, 100.0, 100.0]
    assert h.transitions[2].cause == "probe failed: Timeout (first_byte); open for 60s"


def test_probe_failure_cause_names_the_status() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    h.fail()
    assert h.causes[-1] == "probe failed: ServerError 503; open for 60s"
    with pytest.raises(CircuitOpen) as caught:
        h.breaker.admit()
    assert caught.value.opened_at == 1030.0
    assert caught.value.retry_at == 1090.0


def test_release_frees_the_probe_slot() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    probe = h.breaker.admit()
    h.breaker.release(probe)
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.snapshot().probes_in_flight == 0
    assert h.transitions[-1].event is BreakerEvent.OPEN_ELAPSED  # a release is not reported
    assert h.breaker.admit().probe


def test_a_non_counted_probe_failure_is_no_verdict() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    h.fail(RateLimited("429", upstream_status=429))
    assert h.breaker.state is HALF_OPEN
    assert h.breaker.snapshot().probes_in_flight == 0
    h.succeed()
    assert h.breaker.state is CLOSED


def test_release_of_an_ordinary_call_changes_nothing() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=2))
    h.fail()
    h.breaker.release(h.breaker.admit())
    assert h.breaker.snapshot().consecutive_failures == 1


# --------------------------------------------------------------------------- settling


def test_an_admission_settles_exactly_once() -> None:
    h = Harness()
    admission = h.breaker.admit()
    assert repr(admission) == "Admission(call, open)"
    h.breaker.record_success(admission)
    assert admission.settled
    assert repr(admission) == "Admission(call, settled)"
    with pytest.raises(InternalError, match="settled twice"):
        h.breaker.record_success(admission)
    with pytest.raises(InternalError, match="settled twice"):
        h.breaker.record_failure(admission, http_503())
    with pytest.raises(InternalError, match="settled twice"):
        h.breaker.release(admission)


def test_an_admission_settles_only_on_its_own_breaker() -> None:
    h = Harness()
    other = CircuitBreaker(
        BreakerKey("anthropic", "x", "claude"), CircuitBreakerConfig(), clock=h.clock
    )
    admission: Admission = other.admit()
    with pytest.raises(InternalError, match="wrong circuit breaker"):
        h.breaker.record_success(admission)


# --------------------------------------------------------------------------- failure rate


RATE = CircuitBreakerConfig(
    failure_threshold=100,
    failure_rate_threshold=0.5,
    failure_rate_window_ms=60_000,
    failure_rate_min_calls=20,
)


def test_failure_rate_opens_over_the_window() -> None:
    h = Harness(RATE)
    for _ in range(9):
        h.succeed()
        h.fail()
        h.clock.advance(1)
    h.succeed()
    assert h.breaker.state is CLOSED  # 19 calls: under the minimum
    h.fail()
    assert h.breaker.state is OPEN
    assert h.causes == ["failure rate 50% over 60s (20 calls); open for 30s"]


def test_failure_rate_below_threshold_stays_closed() -> None:
    h = Harness(RATE)
    for _ in range(30):
        h.succeed()
        h.succeed()
        h.fail()
    assert h.breaker.state is CLOSED


def test_failure_rate_forgets_calls_outside_the_window() -> None:
    h = Harness(RATE)
    for _ in range(15):
        h.succeed()
        h.succeed()
        h.fail()
    assert h.breaker.state is CLOSED  # 33%
    h.clock.advance(61)
    for _ in range(4):
        h.fail()
    assert h.breaker.state is CLOSED  # only these 4 calls are left in the window
    h.clock.advance(5)
    for _ in range(8):
        h.succeed()
        h.fail()
    # 12 of 20 failed; had the old calls counted it would be 27 of 65.
    assert h.breaker.state is OPEN
    assert h.causes == ["failure rate 60% over 60s (20 calls); open for 30s"]


def test_failure_rate_ignores_non_counted_failures() -> None:
    h = Harness(RATE)
    for _ in range(50):
        h.fail(RateLimited("429"))
    for _ in range(9):
        h.fail()
        h.succeed()
    h.fail()
    assert h.breaker.state is CLOSED  # 19 counted calls, the 429s are not calls here


def test_failure_rate_window_is_cleared_on_close() -> None:
    h = Harness(RATE)
    for _ in range(9):
        h.fail()
        h.succeed()
    h.breaker.force_close()
    for _ in range(2):
        h.fail()
    assert h.breaker.state is CLOSED


def test_failure_rate_window_tolerates_a_clock_going_back() -> None:
    h = Harness(RATE)
    h.succeed()
    h.clock.now -= 30
    for _ in range(9):
        h.fail()
        h.succeed()
    assert h.breaker.state is CLOSED
    h.fail()
    assert h.breaker.state is OPEN


# --------------------------------------------------------------------------- operator


def test_force_open_stays_open_without_probes_then_half_opens() -> None:
    h = Harness()
    h.breaker.force_open(120)
    assert h.transitions[-1] == BreakerTransition(
        KEY,
        CLOSED,
        OPEN,
        BreakerEvent.FORCE_OPEN,
        "forced open by operator for 120s",
        1000.0,
        1120.0,
    )
    h.clock.advance(119.9)
    with pytest.raises(CircuitOpen, match="forced open by operator for 120s"):
        h.breaker.admit()
    h.clock.advance(0.1)
    assert h.breaker.admit().probe
    assert h.breaker.state is HALF_OPEN


def test_force_open_while_probing_drops_the_probes() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    probe = h.breaker.admit()
    h.breaker.force_open(10)
    assert h.breaker.snapshot().probes_in_flight == 0
    h.breaker.record_success(probe)  # stale: decides nothing
    assert h.breaker.state is OPEN
    h.breaker.force_open(5)  # OPEN → OPEN replaces the period
    assert h.breaker.snapshot().open_until == h.clock.now + 5


@pytest.mark.parametrize("duration", [0.0, -1.0, math.inf, math.nan])
def test_force_open_needs_a_positive_duration(duration: float) -> None:
    with pytest.raises(ValueError, match="duration_s"):
        Harness().breaker.force_open(duration)


def test_force_close_closes_now_and_resets() -> None:
    h = Harness()
    h.trip()
    h.clock.advance(30)
    h.fail()  # doubled
    h.breaker.force_close()
    assert h.breaker.state is CLOSED
    snapshot = h.breaker.snapshot()
    assert snapshot.consecutive_failures == 0
    assert snapshot.open_duration_s == 30.0
    assert snapshot.cause == "forced closed by operator"
    assert h.transitions[-1].from_state is OPEN
    assert not h.breaker.admit().probe


def test_every_transition_is_reported_with_a_cause() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=1))
    h.fail()
    h.clock.advance(30)
    h.fail()
    h.clock.advance(60)
    h.succeed()
    h.breaker.force_open(5)
    h.breaker.force_close()
    h.breaker.force_close()
    assert [(t.from_state, t.to_state, t.event) for t in h.transitions] == [
        (CLOSED, OPEN, BreakerEvent.TRIP),
        (OPEN, HALF_OPEN, BreakerEvent.OPEN_ELAPSED),
        (HALF_OPEN, OPEN, BreakerEvent.PROBE_FAILED),
        (OPEN, HALF_OPEN, BreakerEvent.OPEN_ELAPSED),
        (HALF_OPEN, CLOSED, BreakerEvent.PROBE_SUCCEEDED),
        (CLOSED, OPEN, BreakerEvent.FORCE_OPEN),
        (OPEN, CLOSED, BreakerEvent.FORCE_CLOSE),
        (CLOSED, CLOSED, BreakerEvent.FORCE_CLOSE),
    ]
    assert h.causes == [
        "opened after 1 consecutive 503 responses; open for 30s",
        "open for 30s; probing",
        "probe failed: ServerError 503; open for 60s",
        "open for 60s; probing",
        "probe succeeded",
        "forced open by operator for 5s",
        "forced closed by operator",
        "forced closed by operator",
    ]
    assert all(t.key == KEY for t in h.transitions)


def test_a_failing_observer_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def explode(transition: BreakerTransition) -> None:
        raise RuntimeError("metrics down")

    clock = FakeClock()
    breaker = CircuitBreaker(
        KEY, CircuitBreakerConfig(failure_threshold=1), clock=clock, on_transition=explode
    )
    with caplog.at_level(logging.ERROR, logger="rakka_inference.remote.breaker"):
        breaker.record_failure(breaker.admit(), http_503())
    assert breaker.state is OPEN
    assert "on_transition failed" in caplog.text


def test_no_observer_is_fine() -> None:
    breaker = CircuitBreaker(KEY, CircuitBreakerConfig(failure_threshold=1), clock=FakeClock())
    breaker.record_failure(breaker.admit(), http_503())
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (CircuitBreakerConfig(failure_threshold=0), "failure_threshold"),
        (CircuitBreakerConfig(open_duration_ms=0), "open_duration_ms must be > 0"),
        (
            CircuitBreakerConfig(open_duration_ms=10_000, max_open_duration_ms=5000),
            "max_open_duration_ms",
        ),
        (CircuitBreakerConfig(half_open_max_probes=0), "half_open_max_probes"),
        (CircuitBreakerConfig(failure_rate_threshold=0.0), "failure_rate_threshold"),
        (CircuitBreakerConfig(failure_rate_threshold=1.5), "failure_rate_threshold"),
        (CircuitBreakerConfig(failure_rate_window_ms=0), "failure_rate_window_ms"),
        (CircuitBreakerConfig(failure_rate_min_calls=0), "failure_rate_min_calls"),
    ],
)
def test_config_is_validated(config: CircuitBreakerConfig, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        CircuitBreaker(KEY, config, clock=FakeClock())


# --------------------------------------------------------------------------- reconfigure


def test_reconfigure_keeps_the_state_and_applies_from_now_on() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=5))
    h.fail(times=2)
    h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=5))  # the same: no change
    h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=3, open_duration_ms=10_000))
    assert h.breaker.snapshot().consecutive_failures == 2
    assert h.breaker.snapshot().open_duration_s == 10.0
    h.fail()  # the third counts against the new threshold
    assert h.breaker.state is OPEN
    assert h.breaker.snapshot().open_until == 1010.0


def test_reconfigure_while_open_keeps_the_grown_period_within_the_new_bounds() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=1, open_duration_ms=10_000))
    h.trip()
    h.clock.advance(10)
    h.breaker.record_failure(h.breaker.admit(), http_503())  # a failed probe: 20 s next
    assert h.breaker.snapshot().open_duration_s == 20.0
    h.breaker.reconfigure(
        CircuitBreakerConfig(
            failure_threshold=1, open_duration_ms=5_000, max_open_duration_ms=15_000
        )
    )
    assert h.breaker.state is OPEN
    assert h.breaker.snapshot().open_until == 1030.0  # the period it opened with stands
    assert h.breaker.snapshot().open_duration_s == 15.0
    h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=1, open_duration_ms=40_000))
    assert h.breaker.snapshot().open_duration_s == 40.0


def test_reconfigure_adds_and_drops_the_failure_rate_window() -> None:
    h = Harness(CircuitBreakerConfig(failure_threshold=100))
    h.breaker.reconfigure(RATE)
    h.fail(times=RATE.failure_rate_min_calls - 1)
    # Another rate over the same window keeps the calls counted so far.
    h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=100, failure_rate_threshold=0.9))
    h.fail()
    assert h.breaker.state is OPEN
    h.breaker.force_close()
    h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=100))
    h.fail(times=RATE.failure_rate_min_calls)
    assert h.breaker.state is CLOSED


def test_reconfigure_validates() -> None:
    h = Harness()
    with pytest.raises(ValueError, match="failure_threshold"):
        h.breaker.reconfigure(CircuitBreakerConfig(failure_threshold=0))
    assert h.breaker.config == CircuitBreakerConfig()
