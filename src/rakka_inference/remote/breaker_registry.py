"""The circuit breakers of a process: one per (provider, endpoint), shared.

Deployments that call the same upstream endpoint share its :class:`CircuitBreaker`, so a
failing endpoint is noticed once, not once per deployment. The registry is a plain
dictionary held by the process's ``RemoteServices``; the admin API lists every breaker's
snapshot through it, while the engines, the metrics and an operator's force-open or
force-close reach a breaker directly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import (
    BreakerKey,
    BreakerSnapshot,
    BreakerTransition,
    CircuitBreaker,
)

__all__ = ["BreakerRegistry"]

log = logging.getLogger("rakka_inference.remote.breaker_registry")


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
        """The breaker for ``key``, made with ``config`` when it is the first asked for."""
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
        """The breaker for ``key``, if one was made."""
        return self._breakers.get(key)

    def snapshots(self) -> tuple[BreakerSnapshot, ...]:
        """Every breaker's snapshot, in the order they were made."""
        return tuple(breaker.snapshot() for breaker in self._breakers.values())

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self._breakers.values())

    def __len__(self) -> int:
        return len(self._breakers)
