"""BudgetBook: the budget ledgers of a configuration, one per deployment, and the cost
report over them (:mod:`rakka_inference.engine.budget` sets out the ledger's protocol)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from rakka_inference.core.deployment import Config
from rakka_inference.core.pricing import PriceTable, resolve_price
from rakka_inference.engine.budget import (
    DAY_S,
    BudgetEvent,
    BudgetLedger,
    BudgetSnapshot,
    CostReportRow,
)

__all__ = ["BudgetBook"]

log = logging.getLogger("rakka_inference.engine.budget")


class BudgetBook:
    """One :class:`BudgetLedger` per deployment that has a budget."""

    def __init__(self, ledgers: Iterable[BudgetLedger] = ()) -> None:
        self._ledgers: dict[str, BudgetLedger] = {}
        for ledger in ledgers:
            if ledger.deployment in self._ledgers:
                raise ValueError(f"two ledgers for deployment {ledger.deployment!r}")
            self._ledgers[ledger.deployment] = ledger

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        prices: PriceTable | None = None,
        clock: Callable[[], float] = time.time,
        default_max_output_tokens: int | None = None,
        on_event: Callable[[BudgetEvent], None] | None = None,
        on_throttle: Callable[[str, bool], None] | None = None,
    ) -> BudgetBook:
        """Ledgers for ``config``'s deployments with a ``budget``, priced like their
        adapters (the deployment's ``pricing``, else ``prices``, else the shipped table).
        Each reserves with its runtime config's default output cap unless
        ``default_max_output_tokens`` overrides it. ``on_throttle`` is called with the
        deployment's name."""
        ledgers: list[BudgetLedger] = []
        for deployment in config.deployments:
            if deployment.budget is None:
                continue
            price = resolve_price(
                deployment.upstream_model,
                deployment.pricing,
                prices,
                local=not deployment.is_remote,
            )
            if price is None:
                log.warning(
                    "deployment %s: no price for model %s, so its budget is not enforced",
                    deployment.name,
                    deployment.model,
                )
            elif not deployment.is_remote and deployment.pricing is None:
                log.warning(
                    "deployment %s: a local engine costs nothing unless its deployment sets "
                    "pricing, so its budget never binds",
                    deployment.name,
                )
            ledgers.append(
                BudgetLedger(
                    deployment.name,
                    deployment.budget,
                    price,
                    clock=clock,
                    default_max_output_tokens=deployment.runtime_config.default_max_output_tokens
                    if default_max_output_tokens is None
                    else default_max_output_tokens,
                    on_event=on_event,
                    on_throttle=None
                    if on_throttle is None
                    else _bind(on_throttle, deployment.name),
                    model=deployment.model,
                )
            )
        return cls(ledgers)

    def ledger(self, name: str) -> BudgetLedger | None:
        """The deployment's ledger, or ``None`` when it has no budget."""
        return self._ledgers.get(name)

    @property
    def ledgers(self) -> tuple[BudgetLedger, ...]:
        return tuple(self._ledgers.values())

    def snapshot(self) -> list[BudgetSnapshot]:
        return [ledger.snapshot() for ledger in self._ledgers.values()]

    def report(self, window_s: float = DAY_S) -> list[CostReportRow]:
        """Settled cost per deployment and model over the last ``window_s`` seconds."""
        rows = [ledger.cost(window_s) for ledger in self._ledgers.values()]
        return sorted(rows, key=lambda row: (row.deployment, row.model))


def _bind(callback: Callable[[str, bool], None], name: str) -> Callable[[bool], None]:
    def on_throttle(throttled: bool) -> None:
        callback(name, throttled)

    return on_throttle
