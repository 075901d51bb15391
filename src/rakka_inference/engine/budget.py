"""Per-deployment spend budgets: reserve a request's worst case, settle its real cost.

A :class:`BudgetLedger` enforces one deployment's
:class:`~rakka_inference.core.policies.Budget` (``max_spend_per_hour``,
``max_spend_per_day``, ``on_exceeded``). A
:class:`~rakka_inference.engine.budget_book.BudgetBook` holds the ledgers of a
configuration and writes the cost report.

The protocol
------------
1. **Reserve** at admission (:meth:`BudgetLedger.reserve`), before the request is queued.
   The reservation is the request's *maximum* cost: its estimated prompt tokens at the
   input price plus its output cap (``max_tokens``, else ``default_max_output_tokens``;
   times ``n`` choices; nothing for embeddings) at the output price. The check and the
   reservation happen in one synchronous call, with no ``await`` between them.
2. **Settle** when the request ends (:meth:`BudgetReservation.settle`), success or
   failure: the reservation is withdrawn and the actual cost recorded in the current
   bucket. ``None`` (cost unknown) records nothing. Settling twice is a no-op.

*Spend* in a window is the settled cost recorded in it plus every outstanding
reservation. Reservations are held apart from the buckets, so one counts in both windows
until it is settled, however long the request runs (a reservation never rolls off), and a
request settled in a later bucket than it was reserved in is charged in the bucket of its
settlement.

The windows
-----------
Settled costs sit in two rings of fixed-size buckets: 61 one-minute buckets for the hour
and 97 fifteen-minute buckets for the day. The extra bucket makes a cost count for *at
least* the full window: a cost recorded at ``t`` leaves the hour between 60 and 61 minutes
after ``t`` (when its minute bucket drops out of the ring) and the day between 24 h and
24 h 15 min after. Each ring keeps a running total, so a reserve or settle is O(1) (a
clock jump clears at most the ring's size, a constant); memory is constant. Only a refusal
scans a ring (at most 97 buckets), to compute ``retry_after``. Amounts are integers in
nano-dollars, so running totals never drift; reservations round up and limits round down.

The clock is wall time (``time.time``): budgets are per hour and per day. A clock that
steps back charges the newest bucket until it catches up.

What exceeding a limit does (``on_exceeded``)
---------------------------------------------
- ``reject``: a request whose reservation would take spend over a limit is refused with
  :class:`~rakka_inference.core.errors.BudgetExceeded` (HTTP 429). Its ``retry_after`` is
  the seconds until enough settled cost rolls off for the request to fit; ``math.inf``
  for a request whose maximum cost alone exceeds the limit (it is refused until it sets a
  lower ``max_tokens``: the gateway tells the client not to retry it); where outstanding
  reservations are in the way, the earliest it could fit were they settled at nothing, or
  ``None`` when only they are (they are released as their requests end).
- ``warn``: the request is admitted.
- ``throttle``: the request is admitted and ``on_throttle(True)`` is called (the engine
  halves its concurrency); ``on_throttle(False)`` when spend is back under every limit.

Under every policy a :class:`BudgetEvent` is sent to ``on_event`` once per *crossing*:
``exceeded=True`` when a window's spend goes from at-or-under its limit to over it, and
``exceeded=False`` when it comes back — to at most :data:`RECOVERY` of the limit (95%),
not merely under it. Spend that hovers at a limit, a reservation taking it over and the
settlement bringing it back, would otherwise throttle and release the engine, and send a
pair of events, with every request. The state is re-evaluated on every reserve, settle
and query (``spent_last_*``, :meth:`~BudgetLedger.snapshot`), so roll-off is noticed on
the next of those; a ``/metrics`` scrape is enough to lift a throttle on an idle
deployment. A callback that raises is logged; it does not undo the accounting.

The overshoot bound (``reject``)
--------------------------------
Take a window with limit ``L`` and write ``S(t)`` for its spend at ``t``. An admission
happens only if ``S + r <= L`` (``r`` the new reservation), so right after the latest
admission ``t0 <= t``, ``S(t0) <= L``. After ``t0`` spend changes only by roll-off
(``<= 0``), refusals (``0``) and settlements, each replacing ``r_i`` by the actual cost
``a_i``, once per request; only requests in flight at ``t0`` can settle after it. Hence::

    S(t) <= L + sum over i in F(t0), settled by t, of max(0, a_i - r_i)

where ``F(t0)`` is the set of requests reserved and not yet settled right after ``t0``.
Consequences:

- if every request costs at most its reservation, spend, and with it settled spend,
  **never exceeds the limit**, however many requests run concurrently;
- otherwise the overshoot is at most the sum of the excesses ``(a_i - r_i)+`` of at most
  ``|F|`` requests, and ``|F| <= replicas x (max_concurrent + queue_capacity)`` when the
  engine reserves at submission. Excess comes from a provider ignoring ``max_tokens`` or
  from a prompt estimate that is low (about 4 bytes per token). The overshoot does not
  compound: nothing more is admitted until spend is back under ``L - r``;
- with no price known the reservation is ``0``, so every request's settled cost is excess.

``warn`` and ``throttle`` admit past the limit by design and have no bound.

Without a price, a ledger reserves nothing and counts only what is settled: the engine
settles ``None`` for a model it cannot price, so such a budget is not enforced
(:meth:`BudgetBook.from_config` logs a warning for each one). Ledgers are not
thread-safe: they are meant for one asyncio event loop.
"""

from __future__ import annotations

import enum
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from rakka_inference.core.errors import BudgetExceeded
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest
from rakka_inference.core.policies import Budget, BudgetAction, ModelPrice
from rakka_inference.engine.spend_ring import SpendRing

__all__ = [
    "BudgetEvent",
    "BudgetLedger",
    "BudgetReservation",
    "BudgetSnapshot",
    "BudgetWindow",
    "CostReportRow",
    "RECOVERY",
]

log = logging.getLogger("rakka_inference.engine.budget")


class BudgetHold(Protocol):
    """A budget reservation: the request's maximum cost, held until it is settled."""

    def settle(self, actual_cost_usd: float | None) -> None:
        """Replace the hold with the actual cost (once; later calls do nothing)."""
        ...


class BudgetGate(Protocol):
    """Spend control as an engine sees it: reserve at admission, settle at the end."""

    def reserve(self, request: ChatRequest | EmbeddingRequest) -> BudgetHold:
        """Hold the request's maximum cost; raise BudgetExceeded to refuse it."""
        ...


_NANO_PER_USD = 1_000_000_000
_NANO_PER_MICRO = 1_000
"""Prices are USD per million tokens: tokens x price is micro-dollars."""
HOUR_S = 3600.0
DAY_S = 86_400.0
_HOUR_BUCKET_S, _HOUR_BUCKETS = 60.0, 61
_DAY_BUCKET_S, _DAY_BUCKETS = 900.0, 97
RECOVERY = 0.95
"""A window over its limit counts as back once spend is at most this share of the limit."""

_T = TypeVar("_T")


class BudgetWindow(enum.StrEnum):
    HOUR = "hour"
    DAY = "day"


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetEvent:
    """A window's spend crossed its limit (``exceeded``) or came back under it."""

    deployment: str
    window: BudgetWindow
    exceeded: bool
    spent_usd: float
    limit_usd: float
    action: BudgetAction
    at: float
    """Clock time of the crossing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetSnapshot:
    """A ledger's state, for ``/metrics`` and the admin API. Spend = settled + reserved."""

    deployment: str
    action: BudgetAction
    limit_hour_usd: float | None
    limit_day_usd: float | None
    settled_last_hour_usd: float
    settled_last_day_usd: float
    reserved_usd: float
    """Outstanding reservations: they count in both windows."""
    in_flight: int
    exceeded: tuple[BudgetWindow, ...]
    throttled: bool
    price_known: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class CostReportRow:
    """Settled cost of one deployment and model over the report's window."""

    deployment: str
    model: str
    window_s: float
    spent_usd: float
    requests: int
    """Requests settled in the window."""
    reserved_usd: float
    limit_hour_usd: float | None
    limit_day_usd: float | None


def _usd(nano: int) -> float:
    return nano / _NANO_PER_USD


def _actual_nano(cost_usd: float | None) -> int:
    # None is an unknown price; NaN, infinities and negatives are not costs either.
    if cost_usd is None or not math.isfinite(cost_usd) or cost_usd <= 0:
        return 0
    return round(cost_usd * _NANO_PER_USD)


class BudgetReservation:
    """One admitted request's hold on the budget. Settle it exactly once, when it ends."""

    __slots__ = ("_ledger", "_nano", "_settled")

    def __init__(self, ledger: BudgetLedger, nano: int) -> None:
        self._ledger = ledger
        self._nano = nano
        self._settled = False

    @property
    def reserved_usd(self) -> float:
        return _usd(self._nano)

    @property
    def settled(self) -> bool:
        return self._settled

    def settle(self, actual_cost_usd: float | None) -> None:
        """Replace the reservation by the actual cost (``None``: unknown, counts 0).

        Idempotent: only the first call counts.
        """
        if self._settled:
            return
        self._settled = True
        self._ledger._settle(self._nano, _actual_nano(actual_cost_usd))

    def __repr__(self) -> str:
        state = "settled" if self._settled else "outstanding"
        return f"BudgetReservation({self._ledger.deployment}, ${self.reserved_usd:.6f}, {state})"


class BudgetLedger:
    """Rolling hourly and daily spend of one deployment, enforcing its budget."""

    def __init__(
        self,
        deployment: str,
        budget: Budget,
        price: ModelPrice | None,
        *,
        clock: Callable[[], float] = time.time,
        default_max_output_tokens: int = 4096,
        on_event: Callable[[BudgetEvent], None] | None = None,
        on_throttle: Callable[[bool], None] | None = None,
        model: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.budget = budget
        self.price = price
        self.model = deployment if model is None else model
        self.default_max_output_tokens = default_max_output_tokens
        self.on_event = on_event
        self.on_throttle = on_throttle
        """Public so an engine started later can attach; see :attr:`throttled`."""
        self._clock = clock
        now = clock()
        self._hour = SpendRing(_HOUR_BUCKET_S, _HOUR_BUCKETS, now)
        self._day = SpendRing(_DAY_BUCKET_S, _DAY_BUCKETS, now)
        self._limits: tuple[tuple[BudgetWindow, SpendRing, int, float], ...] = tuple(
            (window, ring, math.floor(limit * _NANO_PER_USD), limit)
            for window, ring, limit in (
                (BudgetWindow.HOUR, self._hour, budget.max_spend_per_hour),
                (BudgetWindow.DAY, self._day, budget.max_spend_per_day),
            )
            if limit is not None
        )
        self._reserved = 0
        self._in_flight = 0
        self._over: set[BudgetWindow] = set()
        self._throttled = False

    # ------------------------------------------------------------------ admission

    def max_cost_usd(self, request: ChatRequest | EmbeddingRequest) -> float:
        """What :meth:`reserve` would hold for ``request``."""
        return _usd(self._max_cost_nano(request))

    def _max_cost_nano(self, request: ChatRequest | EmbeddingRequest) -> int:
        if self.price is None:
            return 0
        output = 0
        if isinstance(request, ChatRequest):
            output = request.reserved_output_tokens(self.default_max_output_tokens)
        micro = (
            request.estimated_prompt_tokens() * self.price.input_per_mtok
            + output * self.price.output_per_mtok
        )
        return math.ceil(micro * _NANO_PER_MICRO)

    def reserve(self, request: ChatRequest | EmbeddingRequest) -> BudgetReservation:
        """Hold ``request``'s maximum cost, or raise BudgetExceeded (policy ``reject``)."""
        nano = self._max_cost_nano(request)
        now = self._refresh()
        blocked = [
            (window, ring, limit, usd)
            for window, ring, limit, usd in self._limits
            if ring.total + self._reserved + nano > limit
        ]
        if blocked and self.budget.on_exceeded is BudgetAction.REJECT:
            raise self._refusal(now, nano, blocked)
        self._reserved += nano
        self._in_flight += 1
        self._evaluate(now)
        return BudgetReservation(self, nano)

    def _refusal(
        self, now: float, nano: int, blocked: list[tuple[BudgetWindow, SpendRing, int, float]]
    ) -> BudgetExceeded:
        window, ring, _, usd = blocked[0]
        spent = _usd(ring.total + self._reserved)
        return BudgetExceeded(
            f"deployment {self.deployment!r} would exceed its budget of ${usd:.2f} per "
            f"{window.value}: ${spent:.4f} spent or reserved, this request may cost up to "
            f"${_usd(nano):.4f}",
            retry_after=self._retry_after(now, nano, blocked),
        )

    def _retry_after(
        self, now: float, nano: int, blocked: list[tuple[BudgetWindow, SpendRing, int, float]]
    ) -> float | None:
        """When the refused request may fit: the latest, over the windows in its way, of
        the time until enough settled spend rolls off; ``math.inf`` when its maximum cost
        alone passes a limit (it never fits: the client must lower ``max_tokens``).

        Where outstanding reservations are in the way too, roll-off alone cannot make room:
        the time is then when it could at the earliest, were every reservation settled at
        nothing (``None`` when only reservations are in the way — they are released as
        their requests end, which no one knows in advance)."""
        waits: list[float] = []
        for _, ring, limit, _ in blocked:
            if nano > limit:
                return math.inf
            wait = ring.seconds_until_freed(now, ring.total + self._reserved + nano - limit)
            if wait is None:  # reservations in the way: a lower bound, if roll-off is too
                settled_over = ring.total + nano - limit
                if settled_over <= 0:
                    continue
                wait = ring.seconds_until_freed(now, settled_over)
                assert wait is not None  # nano <= limit: the ring holds what must go
            waits.append(wait)
        return max(waits) if waits else None

    def _settle(self, reserved: int, actual: int) -> None:
        now = self._refresh()
        self._reserved -= reserved
        self._in_flight -= 1
        self._hour.add(actual)
        self._day.add(actual)
        self._evaluate(now)

    # ------------------------------------------------------------------ state

    def _refresh(self) -> float:
        now = self._clock()
        self._hour.advance(now)
        self._day.advance(now)
        self._evaluate(now)
        return now

    def _evaluate(self, now: float) -> None:
        events: list[BudgetEvent] = []
        for window, ring, limit, usd in self._limits:
            spent = ring.total + self._reserved
            was_over = window in self._over
            over = spent > (limit * RECOVERY if was_over else limit)
            if over == was_over:
                continue
            if over:
                self._over.add(window)
            else:
                self._over.discard(window)
            events.append(
                BudgetEvent(
                    deployment=self.deployment,
                    window=window,
                    exceeded=over,
                    spent_usd=_usd(spent),
                    limit_usd=usd,
                    action=self.budget.on_exceeded,
                    at=now,
                )
            )
        throttled = self.budget.on_exceeded is BudgetAction.THROTTLE and bool(self._over)
        changed = throttled != self._throttled
        self._throttled = throttled
        for event in events:
            self._notify(self.on_event, event)
        if changed:
            self._notify(self.on_throttle, throttled)

    def _notify(self, callback: Callable[[_T], None] | None, value: _T) -> None:
        if callback is None:
            return
        try:
            callback(value)
        except Exception:
            log.exception("budget %s: callback %r failed", self.deployment, callback)

    # ------------------------------------------------------------------ figures

    @property
    def throttled(self) -> bool:
        """Whether a ``throttle`` budget is over a limit (as of the last reserve/settle/query)."""
        return self._throttled

    @property
    def in_flight(self) -> int:
        """Reservations not yet settled."""
        return self._in_flight

    def spent_last_hour(self) -> float:
        """USD settled in the last hour plus outstanding reservations."""
        self._refresh()
        return _usd(self._hour.total + self._reserved)

    def spent_last_day(self) -> float:
        """USD settled in the last day plus outstanding reservations."""
        self._refresh()
        return _usd(self._day.total + self._reserved)

    def snapshot(self) -> BudgetSnapshot:
        self._refresh()
        return BudgetSnapshot(
            deployment=self.deployment,
            action=self.budget.on_exceeded,
            limit_hour_usd=self.budget.max_spend_per_hour,
            limit_day_usd=self.budget.max_spend_per_day,
            settled_last_hour_usd=_usd(self._hour.total),
            settled_last_day_usd=_usd(self._day.total),
            reserved_usd=_usd(self._reserved),
            in_flight=self._in_flight,
            exceeded=tuple(window for window in BudgetWindow if window in self._over),
            throttled=self._throttled,
            price_known=self.price is not None,
        )

    def cost(self, window_s: float) -> CostReportRow:
        """Settled cost over the last ``window_s`` seconds (at most a day), to bucket
        precision: one minute up to an hour, fifteen minutes beyond."""
        if not 0 < window_s <= DAY_S:
            raise ValueError(f"a cost window is more than 0 s and at most a day, not {window_s}")
        now = self._refresh()
        ring = self._hour if window_s <= HOUR_S else self._day
        nano, count = ring.within(now, window_s)
        return CostReportRow(
            deployment=self.deployment,
            model=self.model,
            window_s=window_s,
            spent_usd=_usd(nano),
            requests=count,
            reserved_usd=_usd(self._reserved),
            limit_hour_usd=self.budget.max_spend_per_hour,
            limit_day_usd=self.budget.max_spend_per_day,
        )

    def __repr__(self) -> str:
        return f"BudgetLedger({self.deployment!r}, {self.budget.on_exceeded.value})"
