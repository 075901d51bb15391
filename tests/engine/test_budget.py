"""Budgets: reservations, rolling windows, the three policies, the overshoot bound, the report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.deployment import Config, Deployment
from rakka_inference.core.errors import BudgetExceeded
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    SamplingParams,
)
from rakka_inference.core.policies import Budget, BudgetAction, ModelPrice
from rakka_inference.core.pricing import LOCAL_PRICE, PriceTable
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind, VllmConfig
from rakka_inference.engine.budget import BudgetEvent, BudgetLedger, BudgetReservation, BudgetWindow
from rakka_inference.engine.budget_book import BudgetBook
from rakka_inference.testkit.clock import FakeClock

T0 = 100 * 86_400.0
"""A start time on a minute, quarter-hour and day boundary, so bucket edges are exact."""
HOUR_LEAVES = 61 * 60.0
"""A cost recorded at the start of a minute leaves the hour window this long after."""
DAY_LEAVES = 97 * 900.0

# $1 per output token and nothing for input: a request with max_tokens=k reserves $k.
DOLLAR_PER_TOKEN = ModelPrice(input_per_mtok=0.0, output_per_mtok=1_000_000.0)


def chat(max_tokens: int | None = None, *, n: int = 1, text: str = "hello") -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=(ChatMessage.user(text),),
        sampling=SamplingParams(max_tokens=max_tokens, n=n),
    )


def ledger_for(
    budget: Budget,
    clock: FakeClock,
    *,
    price: ModelPrice | None = DOLLAR_PER_TOKEN,
    events: list[BudgetEvent] | None = None,
    throttles: list[bool] | None = None,
) -> BudgetLedger:
    return BudgetLedger(
        "d",
        budget,
        price,
        clock=clock,
        on_event=None if events is None else events.append,
        on_throttle=None if throttles is None else throttles.append,
    )


def hourly(limit: float, action: BudgetAction = BudgetAction.REJECT) -> Budget:
    return Budget(max_spend_per_hour=limit, on_exceeded=action)


# --------------------------------------------------------------------------- reservations


def test_reservation_is_prompt_at_input_price_plus_output_cap_at_output_price() -> None:
    price = ModelPrice(input_per_mtok=2.0, output_per_mtok=8.0)
    ledger = BudgetLedger(
        "d", hourly(100.0), price, clock=FakeClock(T0), default_max_output_tokens=1000
    )
    request = chat(100, n=2, text="x" * 400)
    prompt = request.estimated_prompt_tokens()
    assert ledger.max_cost_usd(request) == pytest.approx((prompt * 2.0 + 200 * 8.0) / 1e6)
    # No max_tokens: the ledger's default cap.
    uncapped = chat(text="x" * 400)
    assert ledger.reserve(uncapped).reserved_usd == pytest.approx((prompt * 2.0 + 1000 * 8.0) / 1e6)
    # Embeddings generate nothing: input only.
    embedding = EmbeddingRequest(model="e", inputs=("a" * 40, "b" * 8))
    assert ledger.max_cost_usd(embedding) == pytest.approx(12 * 2.0 / 1e6)
    assert ledger.in_flight == 1
    assert ledger.spent_last_hour() == pytest.approx((prompt * 2.0 + 8000.0) / 1e6)


def test_the_default_output_cap_is_4096_tokens() -> None:
    ledger = BudgetLedger("d", hourly(1e6), DOLLAR_PER_TOKEN, clock=FakeClock(T0))
    assert ledger.max_cost_usd(chat()) == 4096.0


def test_settle_replaces_the_reservation_by_the_actual_cost() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(100.0), clock)
    reservation = ledger.reserve(chat(10))
    assert ledger.snapshot().reserved_usd == 10.0
    reservation.settle(3.5)
    snapshot = ledger.snapshot()
    assert (snapshot.reserved_usd, snapshot.settled_last_hour_usd, snapshot.in_flight) == (
        0.0,
        3.5,
        0,
    )
    assert ledger.spent_last_hour() == ledger.spent_last_day() == 3.5


def test_settle_is_idempotent() -> None:
    ledger = ledger_for(hourly(100.0), FakeClock(T0))
    reservation = ledger.reserve(chat(10))
    assert "outstanding" in repr(reservation)
    reservation.settle(3.0)
    reservation.settle(50.0)
    reservation.settle(None)
    assert reservation.settled
    assert "settled" in repr(reservation)
    assert ledger.spent_last_hour() == 3.0
    assert ledger.in_flight == 0
    assert ledger.cost(3600).requests == 1


@pytest.mark.parametrize("actual", [None, math.nan, math.inf, -1.0, 0.0])
def test_an_unknown_or_meaningless_cost_settles_as_nothing(actual: float | None) -> None:
    ledger = ledger_for(hourly(100.0), FakeClock(T0))
    ledger.reserve(chat(10)).settle(actual)
    assert ledger.spent_last_hour() == 0.0
    assert ledger.snapshot().in_flight == 0


def test_a_reservation_counts_until_settled_however_long_the_request_runs() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(Budget(max_spend_per_hour=100.0, max_spend_per_day=100.0), clock)
    reservation = ledger.reserve(chat(5))
    clock.now = T0 + 2 * 86_400.0
    assert ledger.spent_last_hour() == ledger.spent_last_day() == 5.0
    reservation.settle(4.0)
    assert ledger.spent_last_hour() == ledger.spent_last_day() == 4.0


def test_a_request_settled_in_a_later_bucket_is_charged_when_it_settles() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(100.0), clock)
    reservation = ledger.reserve(chat(5))
    clock.now = T0 + 3000.0
    reservation.settle(4.0)
    assert ledger.snapshot().reserved_usd == 0.0
    # The bucket the reservation was made in rolls off; the cost stays.
    clock.now = T0 + HOUR_LEAVES
    assert ledger.spent_last_hour() == 4.0
    clock.now = T0 + 3000.0 + HOUR_LEAVES - 0.001
    assert ledger.spent_last_hour() == 4.0
    clock.now = T0 + 3000.0 + HOUR_LEAVES
    assert ledger.spent_last_hour() == 0.0


# --------------------------------------------------------------------------- windows


def test_a_cost_leaves_the_hour_between_60_and_61_minutes_after() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(100.0), clock)
    ledger.reserve(chat(5)).settle(5.0)
    clock.now = T0 + 3600.0
    assert ledger.spent_last_hour() == 5.0
    clock.now = T0 + HOUR_LEAVES - 0.001
    assert ledger.spent_last_hour() == 5.0
    clock.now = T0 + HOUR_LEAVES
    assert ledger.spent_last_hour() == 0.0
    assert ledger.spent_last_day() == 5.0


def test_a_cost_leaves_the_day_between_24h_and_24h15_after() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(Budget(max_spend_per_day=100.0), clock)
    ledger.reserve(chat(5)).settle(5.0)
    clock.now = T0 + 86_400.0
    assert ledger.spent_last_day() == 5.0
    clock.now = T0 + DAY_LEAVES - 0.001
    assert ledger.spent_last_day() == 5.0
    clock.now = T0 + DAY_LEAVES
    assert ledger.spent_last_day() == 0.0


def test_costs_roll_off_bucket_by_bucket() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(100.0), clock)
    for minute in range(5):
        clock.now = T0 + 60.0 * minute + 30.0
        ledger.reserve(chat(1)).settle(1.0)
    assert ledger.spent_last_hour() == 5.0
    for gone in range(1, 6):
        clock.now = T0 + HOUR_LEAVES + 60.0 * (gone - 1)
        assert ledger.spent_last_hour() == 5.0 - gone


def test_a_clock_stepping_back_charges_the_newest_bucket() -> None:
    clock = FakeClock(T0 + 120.0)
    ledger = ledger_for(hourly(100.0), clock)
    ledger.reserve(chat(1)).settle(1.0)
    clock.now = T0
    ledger.reserve(chat(2)).settle(2.0)
    assert ledger.spent_last_hour() == 3.0
    assert ledger.cost(60.0).spent_usd == 3.0
    clock.now = T0 + 120.0 + HOUR_LEAVES
    assert ledger.spent_last_hour() == 0.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=900.0),
            st.integers(min_value=1, max_value=9),
            st.integers(min_value=0, max_value=9),
        ),
        max_size=60,
    )
)
def test_the_rings_agree_with_a_log_of_every_cost(steps: list[tuple[float, int, int]]) -> None:
    """The O(1) rings against a brute-force log of (settled at, cost) pairs."""
    clock = FakeClock(T0)
    ledger = ledger_for(Budget(max_spend_per_hour=50.0, max_spend_per_day=200.0), clock)
    log: list[tuple[float, float]] = []
    outstanding: list[BudgetReservation] = []
    for wait, cap, actual in steps:
        clock.advance(wait)
        with contextlib.suppress(BudgetExceeded):
            outstanding.append(ledger.reserve(chat(cap)))
        if outstanding and actual % 2 == 0:
            reservation = outstanding.pop(0)
            cost = min(float(actual), reservation.reserved_usd)
            reservation.settle(cost)
            log.append((clock.now, cost))
        reserved = sum(r.reserved_usd for r in outstanding)

        def counted(width: float, size: int) -> float:
            now = math.floor(clock.now / width)
            return sum(cost for at, cost in log if now < math.floor(at / width) + size)

        assert ledger.spent_last_hour() == pytest.approx(counted(60.0, 61) + reserved)
        assert ledger.spent_last_day() == pytest.approx(counted(900.0, 97) + reserved)
        assert ledger.spent_last_hour() <= 50.0
        assert ledger.spent_last_day() <= 200.0


# --------------------------------------------------------------------------- policies


def test_reject_refuses_what_would_exceed_and_says_when_to_retry() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(10.0), clock)
    reservation = ledger.reserve(chat(6))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(5))
    # Only the outstanding reservation is in the way: roll-off cannot make room.
    assert refused.value.retry_after is None
    assert refused.value.http_status == 429
    assert "per hour" in refused.value.message
    reservation.settle(6.0)
    clock.now = T0 + 600.0
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(5))
    assert refused.value.retry_after == HOUR_LEAVES - 600.0
    ledger.reserve(chat(4))  # fits exactly: 6 + 4 = 10
    clock.now = T0 + HOUR_LEAVES
    ledger.reserve(chat(5))
    assert ledger.spent_last_hour() == 9.0


def test_reject_on_the_day_limit() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(Budget(max_spend_per_day=10.0), clock)
    ledger.reserve(chat(8)).settle(8.0)
    clock.now = T0 + 4000.0
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(3))
    assert refused.value.retry_after == DAY_LEAVES - 4000.0
    assert "per day" in refused.value.message


def test_with_both_limits_in_the_way_retry_after_is_the_later_one() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(Budget(max_spend_per_hour=10.0, max_spend_per_day=15.0), clock)
    ledger.reserve(chat(9)).settle(9.0)
    clock.now = T0 + HOUR_LEAVES
    ledger.reserve(chat(5)).settle(5.0)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(6))
    assert refused.value.retry_after == DAY_LEAVES - HOUR_LEAVES
    # A request whose maximum alone exceeds the limit never fits.
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(16))
    assert refused.value.retry_after == math.inf


def test_with_reservations_and_settled_spend_in_the_way_retry_after_is_the_earliest() -> None:
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(10.0), clock)
    in_flight = ledger.reserve(chat(8))
    ledger.reserve(chat(2)).settle(9.0)  # it cost more than it reserved: $9 settled
    clock.now = T0 + 600.0
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(3))
    # Roll-off alone cannot make room while $8 is reserved; were it settled at nothing,
    # $2 of the $9 must still leave the hour: not before then.
    assert refused.value.retry_after == HOUR_LEAVES - 600.0
    in_flight.settle(0.0)
    clock.now = T0 + HOUR_LEAVES
    ledger.reserve(chat(3))


def test_warn_admits_and_reports_each_crossing_once() -> None:
    clock = FakeClock(T0)
    events: list[BudgetEvent] = []
    ledger = ledger_for(hourly(10.0, BudgetAction.WARN), clock, events=events)
    first = ledger.reserve(chat(6))
    second = ledger.reserve(chat(6))
    third = ledger.reserve(chat(1))
    assert [(e.window, e.exceeded) for e in events] == [(BudgetWindow.HOUR, True)]
    assert events[0].spent_usd == 12.0
    assert events[0].limit_usd == 10.0
    assert events[0].action is BudgetAction.WARN
    assert events[0].at == T0
    assert ledger.snapshot().exceeded == (BudgetWindow.HOUR,)
    assert not ledger.throttled
    for reservation in (first, second, third):
        reservation.settle(0.0)
    assert [e.exceeded for e in events] == [True, False]
    ledger.reserve(chat(11))
    assert [e.exceeded for e in events] == [True, False, True]


def test_warn_on_the_day_window() -> None:
    events: list[BudgetEvent] = []
    ledger = ledger_for(
        Budget(max_spend_per_day=5.0, on_exceeded=BudgetAction.WARN),
        FakeClock(T0),
        events=events,
    )
    ledger.reserve(chat(6))
    assert [(e.window, e.exceeded) for e in events] == [(BudgetWindow.DAY, True)]


def test_throttle_turns_on_once_and_off_when_spend_is_back_under() -> None:
    clock = FakeClock(T0)
    events: list[BudgetEvent] = []
    throttles: list[bool] = []
    ledger = ledger_for(
        hourly(10.0, BudgetAction.THROTTLE), clock, events=events, throttles=throttles
    )
    first = ledger.reserve(chat(6))
    second = ledger.reserve(chat(6))
    third = ledger.reserve(chat(3))
    assert throttles == [True]
    assert ledger.throttled
    assert ledger.snapshot().throttled
    second.settle(0.0)  # 6 + 3 reserved: back under
    assert throttles == [True, False]
    fourth = ledger.reserve(chat(2))
    assert throttles == [True, False, True]
    first.settle(6.0)
    third.settle(3.0)
    fourth.settle(2.0)
    assert throttles == [True, False, True]  # 11 settled: still over
    # Roll-off is noticed on the next query.
    clock.now = T0 + HOUR_LEAVES
    assert ledger.spent_last_hour() == 0.0
    assert throttles == [True, False, True, False]
    assert [e.exceeded for e in events] == [True, False, True, False]


def test_spend_hovering_at_the_limit_does_not_flip_the_throttle_per_request() -> None:
    """Back means at most 95% of the limit: a reservation taking spend over and its
    settlement bringing it just under do not release and throttle again each time."""
    events: list[BudgetEvent] = []
    throttles: list[bool] = []
    ledger = ledger_for(
        hourly(10.0, BudgetAction.THROTTLE), FakeClock(T0), events=events, throttles=throttles
    )
    base = ledger.reserve(chat(10))  # exactly at the limit: not over
    assert throttles == []
    for _ in range(5):
        ledger.reserve(chat(1)).settle(0.0)  # 11 reserved, then 10 again
    assert throttles == [True]
    base.settle(9.6)  # under the limit, not yet back to 95% of it
    assert ledger.throttled
    assert ledger.snapshot().exceeded == (BudgetWindow.HOUR,)
    ledger.reserve(chat(1)).settle(0.0)  # 10.6 while reserved, 9.6 after
    assert throttles == [True]
    assert [e.exceeded for e in events] == [True]


def test_back_at_95_percent_of_the_limit_lifts_the_throttle() -> None:
    throttles: list[bool] = []
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(10.0, BudgetAction.THROTTLE), clock, throttles=throttles)
    ledger.reserve(chat(11)).settle(9.5)
    assert throttles == [True, False]  # 9.5 settled is exactly 95%: back


def test_a_failing_callback_is_logged_and_the_accounting_stands(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def explode(_: object) -> None:
        raise RuntimeError("boom")

    ledger = BudgetLedger(
        "d",
        hourly(1.0, BudgetAction.THROTTLE),
        DOLLAR_PER_TOKEN,
        clock=FakeClock(T0),
        on_event=explode,
        on_throttle=explode,
    )
    with caplog.at_level(logging.ERROR, logger="rakka_inference.engine.budget"):
        reservation = ledger.reserve(chat(2))
    assert len(caplog.records) == 2
    assert ledger.throttled
    reservation.settle(2.0)
    assert ledger.spent_last_hour() == 2.0


# --------------------------------------------------------------------------- no price


def test_without_a_price_nothing_is_reserved_and_only_settled_cost_counts() -> None:
    clock = FakeClock(T0)
    events: list[BudgetEvent] = []
    ledger = ledger_for(hourly(10.0), clock, price=None, events=events)
    assert ledger.max_cost_usd(chat(1000)) == 0.0
    first = ledger.reserve(chat(1000))
    assert first.reserved_usd == 0.0
    first.settle(None)
    assert ledger.spent_last_hour() == 0.0
    # A cost known some other way still counts, and can overshoot: the reservation was 0.
    ledger.reserve(chat(1000)).settle(12.0)
    assert ledger.spent_last_hour() == 12.0
    assert [e.exceeded for e in events] == [True]
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve(chat(1))
    assert refused.value.retry_after == HOUR_LEAVES
    assert not ledger.snapshot().price_known


# --------------------------------------------------------------------------- the bound


async def _pause(rng: random.Random) -> None:
    for _ in range(rng.randint(0, 4)):
        await asyncio.sleep(0)


@pytest.mark.parametrize("seed", range(5))
async def test_concurrent_requests_never_push_spend_over_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(T0)
    ledger = ledger_for(hourly(50.0), clock)
    peak = 0.0
    outcomes = {"admitted": 0, "refused": 0}

    def check() -> None:
        nonlocal peak
        snapshot = ledger.snapshot()
        assert snapshot.settled_last_hour_usd <= 50.0
        assert snapshot.settled_last_hour_usd + snapshot.reserved_usd <= 50.0
        peak = max(peak, snapshot.settled_last_hour_usd + snapshot.reserved_usd)

    async def request() -> None:
        await _pause(rng)
        try:
            reservation = ledger.reserve(chat(rng.randint(1, 6)))
        except BudgetExceeded:
            outcomes["refused"] += 1
            return
        outcomes["admitted"] += 1
        check()
        await _pause(rng)
        clock.advance(rng.uniform(0.0, 20.0))
        reservation.settle(rng.uniform(0.0, reservation.reserved_usd))
        check()

    await asyncio.gather(*(request() for _ in range(100)))
    assert outcomes["admitted"] > 0
    assert outcomes["refused"] > 0
    assert peak > 40.0  # the limit was what held spend back
    assert ledger.in_flight == 0


@pytest.mark.parametrize("seed", range(5))
async def test_overshoot_stays_within_the_excess_of_requests_in_flight_at_the_last_admission(
    seed: int,
) -> None:
    rng = random.Random(seed)
    limit = 20.0
    ledger = ledger_for(hourly(limit), FakeClock(T0))
    in_flight: set[BudgetReservation] = set()
    at_last_admission: set[BudgetReservation] = set()
    excess = 0.0
    peak = 0.0

    def check() -> None:
        nonlocal peak
        spend = ledger.spent_last_hour()
        # Nano-dollar rounding can add one nano-dollar per request.
        assert spend <= limit + excess + 1e-9 * len(at_last_admission)
        peak = max(peak, spend)

    async def request() -> None:
        nonlocal at_last_admission, excess
        await _pause(rng)
        try:
            reservation = ledger.reserve(chat(rng.randint(1, 4)))
        except BudgetExceeded:
            check()
            return
        in_flight.add(reservation)
        at_last_admission = set(in_flight)
        excess = 0.0
        check()
        await _pause(rng)
        actual = reservation.reserved_usd * rng.uniform(0.5, 3.0)
        reservation.settle(actual)
        in_flight.discard(reservation)
        if reservation in at_last_admission:
            excess += max(0.0, actual - reservation.reserved_usd)
        check()

    await asyncio.gather(*(request() for _ in range(100)))
    assert peak > limit  # costs above the reservations did overshoot, within the bound


# --------------------------------------------------------------------------- the book


def _config() -> Config:
    def openai(
        name: str, model: str, budget: Budget | None = None, pricing: ModelPrice | None = None
    ) -> Deployment:
        return Deployment(
            name=name,
            model=model,
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(),
            budget=budget,
            pricing=pricing,
        )

    return Config(
        deployments=(
            openai(
                "zeta",
                "openai/gpt-4o",
                budget=Budget(max_spend_per_hour=10.0, on_exceeded=BudgetAction.THROTTLE),
            ),
            openai(
                "alpha",
                "gpt-4o-mini",
                budget=Budget(max_spend_per_day=100.0),
                pricing=DOLLAR_PER_TOKEN,
            ),
            openai("free", "gpt-4o"),
            Deployment(
                name="local",
                model="mystery-model",
                runtime=RuntimeKind.VLLM,
                runtime_config=VllmConfig(),
                budget=Budget(max_spend_per_hour=1.0),
            ),
        )
    )


def test_the_book_holds_a_ledger_per_budgeted_deployment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prices = PriceTable({"gpt-4o": ModelPrice(input_per_mtok=0.0, output_per_mtok=2e6)})
    throttles: list[tuple[str, bool]] = []
    with caplog.at_level(logging.WARNING, logger="rakka_inference.engine.budget"):
        book = BudgetBook.from_config(
            _config(),
            prices=prices,
            clock=FakeClock(T0),
            on_throttle=lambda name, on: throttles.append((name, on)),
        )
    assert [r.getMessage() for r in caplog.records] == [
        "deployment local: a local engine costs nothing unless its deployment sets pricing, "
        "so its budget never binds"
    ]
    assert book.ledger("free") is None
    zeta, alpha, local = (book.ledger(name) for name in ("zeta", "alpha", "local"))
    assert zeta is not None
    assert alpha is not None
    assert local is not None
    assert zeta.max_cost_usd(chat(3)) == 6.0  # the table's price, routing prefix removed
    assert alpha.max_cost_usd(chat(3)) == 3.0  # the deployment's own price
    assert local.price == LOCAL_PRICE
    assert [ledger.deployment for ledger in book.ledgers] == ["zeta", "alpha", "local"]
    zeta.reserve(chat(6))
    assert throttles == [("zeta", True)]
    assert [s.deployment for s in book.snapshot()] == ["zeta", "alpha", "local"]
    assert repr(zeta) == "BudgetLedger('zeta', throttle)"


def test_the_report_groups_cost_per_deployment_and_model() -> None:
    clock = FakeClock(T0)
    book = BudgetBook.from_config(
        _config(), prices=PriceTable({"gpt-4o": DOLLAR_PER_TOKEN}), clock=clock
    )
    zeta, alpha = book.ledger("zeta"), book.ledger("alpha")
    assert zeta is not None
    assert alpha is not None
    zeta.reserve(chat(1)).settle(1.0)
    alpha.reserve(chat(4)).settle(4.0)
    clock.now = T0 + 1200.0
    zeta.reserve(chat(2)).settle(2.0)
    alpha.reserve(chat(9))  # outstanding
    last_ten_minutes = book.report(600.0)
    assert [(r.deployment, r.model, r.spent_usd, r.requests) for r in last_ten_minutes] == [
        ("alpha", "gpt-4o-mini", 0.0, 0),
        ("local", "mystery-model", 0.0, 0),
        ("zeta", "openai/gpt-4o", 2.0, 1),
    ]
    assert last_ten_minutes[0].reserved_usd == 9.0
    assert last_ten_minutes[0].limit_day_usd == 100.0
    assert last_ten_minutes[2].limit_hour_usd == 10.0
    assert last_ten_minutes[2].window_s == 600.0
    assert [(r.spent_usd, r.requests) for r in book.report(3600.0)] == [
        (4.0, 1),
        (0.0, 0),
        (3.0, 2),
    ]
    clock.now = T0 + 5 * 3600.0
    assert [r.spent_usd for r in book.report(3600.0)] == [0.0, 0.0, 0.0]
    assert [r.spent_usd for r in book.report()] == [4.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="at most a day"):
        book.report(86_401.0)
    with pytest.raises(ValueError, match="at most a day"):
        book.report(0.0)


def test_a_book_takes_one_ledger_per_deployment() -> None:
    clock = FakeClock(T0)
    with pytest.raises(ValueError, match="two ledgers"):
        BudgetBook([ledger_for(hourly(1.0), clock), ledger_for(hourly(2.0), clock)])
    assert BudgetBook().report() == []
