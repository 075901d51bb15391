"""The circuit breakers of a process: one per (provider, endpoint, upstream model), shared.

A breaker guards what actually fails: one model at one endpoint. Deployments that call the
same model at the same endpoint share its :class:`CircuitBreaker`, so a failing upstream is
noticed once, not once per deployment; a deployment calling another model at that endpoint
has a breaker of its own, so one model's 5xx never opens the circuit of another. The
registry is a plain dictionary held by the process's ``RemoteServices``; the admin API lists
every breaker's snapshot through it, the gossip between workers finds a breaker by its key,
while the engines, the metrics and an operator's force-open or force-close reach a breaker
directly.

**One upstream, one config.** A shared breaker has one set of settings, so every deployment
on one key must set the same ``circuit_breaker`` (an unset table, the defaults, differs
from a set one). A deployment asking for a breaker that another deployment holds with other
settings is refused with a :class:`ConfigError` naming the field and both deployments —
never silently given the first one's settings, and never given a second breaker of its
own: two circuits judging one upstream by different rules would disagree about whether it
is up, and the admin API, the metrics and the gossip would each show one of them. The
same rule, and the same reasoning, as deployments sharing a rate limiter
(:class:`~rakka_inference.remote.factory.RemoteServices`).

The key comes from a deployment's config alone, through its provider adapter (which knows
the endpoint it calls): :func:`breaker_key`, the one place that forms it, for the engines
and for :func:`breaker_conflicts`, which finds the same conflicts in a config before any of
it runs — ``rakka validate`` reports them on the file's lines, with the message an apply
gives, and opens no connection and reads no secret to do so.

A deployment rebuilt with new settings (a reload) re-sets its own claim, and the breaker
takes the settings in place, keeping its state. An apply of a whole config stages its
claims (:class:`~rakka_inference.remote.shared_claims.SharedClaims`): deployments leaving
it, or changing their shared settings together, are not held to the old ones, and a
breaker that running deployments use keeps its settings until the apply commits — a
refused apply changes no breaker, and leaves none behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

from rakka_inference.core.config_rules import DeploymentIssue
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.providers.registry import adapter_for
from rakka_inference.remote.breaker import (
    BreakerKey,
    BreakerSnapshot,
    BreakerTransition,
    CircuitBreaker,
)
from rakka_inference.remote.shared_claims import SharedClaims

__all__ = ["BreakerRegistry", "breaker_conflicts", "breaker_key"]

log = logging.getLogger("rakka_inference.remote.breaker_registry")

_FIELD: Final = ("runtime_config", "circuit_breaker")


def breaker_key(deployment: Deployment) -> BreakerKey:
    """The breaker a remote ``deployment`` calls through: its provider, the endpoint its
    adapter calls, and the model it sends upstream. From the config alone: no connection is
    opened and no secret read. A :class:`ConfigError` for a local runtime."""
    adapter = adapter_for(deployment)
    return BreakerKey(adapter.provider, adapter.endpoint, deployment.upstream_model)


def breaker_conflicts(deployments: Sequence[Deployment]) -> Iterator[DeploymentIssue]:
    """Each remote deployment whose ``circuit_breaker`` differs from that of the first
    deployment (in order) on the same breaker: what :meth:`BreakerRegistry.get_or_create`
    refuses when the config is applied, found before (a
    :data:`~rakka_inference.core.config_rules.DeploymentCheck`)."""
    first: dict[BreakerKey, tuple[str, CircuitBreakerConfig]] = {}
    for position, deployment in enumerate(deployments):
        config = deployment.runtime_config
        if not isinstance(config, RemoteRuntimeConfig):
            continue
        key = breaker_key(deployment)
        holder, held = first.setdefault(key, (deployment.name, config.circuit_breaker))
        if held != config.circuit_breaker:
            yield DeploymentIssue(position, _FIELD, _conflict_message(key, deployment.name, holder))


class BreakerRegistry:
    """One breaker per (provider, endpoint, upstream model), shared by every deployment
    that calls it, all of them with the same settings."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        on_transition: Callable[[BreakerTransition], None] | None = None,
    ) -> None:
        self._clock = clock
        self._observers: list[Callable[[BreakerTransition], None]] = []
        if on_transition is not None:
            self._observers.append(on_transition)
        self._breakers: dict[BreakerKey, CircuitBreaker] = {}
        self._claims: SharedClaims[BreakerKey, CircuitBreakerConfig] = SharedClaims()
        """Which deployments hold each breaker, and with which settings."""
        self._made_in_apply: list[BreakerKey] = []
        """Breakers made while an apply is staged: dropped again if it is refused."""

    def get_or_create(
        self, key: BreakerKey, config: CircuitBreakerConfig, *, holder: str
    ) -> CircuitBreaker:
        """The breaker for ``key``, for deployment ``holder`` with its ``config``.

        Raises :class:`ConfigError` (and changes nothing) when another deployment holds the
        breaker with other settings. While an apply is staged, a breaker that running
        deployments use keeps their settings until :meth:`commit`.
        """
        other = self._claims.claim(key, holder, config)
        if other is not None:
            raise ConfigError([_conflict(key, holder, other)])
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(key, config, clock=self._clock, on_transition=self._notify)
            self._breakers[key] = breaker
            if self._claims.staging:
                self._made_in_apply.append(key)
        elif not self._claims.staging or self._claims.running(key) is None:
            breaker.reconfigure(config)
        return breaker

    def observe(self, observer: Callable[[BreakerTransition], None]) -> None:
        """Tell ``observer`` of every transition of every breaker from now on (metrics,
        gossip); an observer that raises is logged and the others are still told."""
        self._observers.append(observer)

    def _notify(self, transition: BreakerTransition) -> None:
        for observer in self._observers:
            try:
                observer(transition)
            except Exception:
                log.exception("a circuit observer failed on %s", transition.key)

    def stage(self, kept: Iterable[str]) -> None:
        """A config is about to be applied; the deployments named in ``kept`` stay as
        they run, every other one claims its breaker again as it is built."""
        self._claims.stage(kept)
        self._made_in_apply.clear()

    def commit(self) -> None:
        """The staged config runs from now on: each held breaker takes its holders'
        settings in place, keeping its state. Never awaits."""
        for key, config in self._claims.commit().items():
            self._breakers[key].reconfigure(config)
        self._made_in_apply.clear()

    def abort(self) -> None:
        """The staged config was refused: the running claims and settings stand, and the
        breakers the apply made are forgotten."""
        for key in self._claims.abort():
            if key in self._made_in_apply:  # one made before may be in a draining set's use
                self._breakers.pop(key, None)
        self._made_in_apply.clear()

    def get(self, key: BreakerKey) -> CircuitBreaker | None:
        """The breaker for ``key``, if one was made."""
        return self._breakers.get(key)

    def at_endpoint(self, provider: str, endpoint: str) -> tuple[CircuitBreaker, ...]:
        """The breakers of every model at ``endpoint`` of ``provider``."""
        return tuple(
            breaker
            for key, breaker in self._breakers.items()
            if key.provider == provider and key.endpoint == endpoint
        )

    def snapshots(self) -> tuple[BreakerSnapshot, ...]:
        """Every breaker's snapshot, in the order they were made."""
        return tuple(breaker.snapshot() for breaker in self._breakers.values())

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(self._breakers.values())

    def __len__(self) -> int:
        return len(self._breakers)


def _conflict(key: BreakerKey, deployment: str, holder: str) -> ConfigIssue:
    return ConfigIssue(
        "<deployment>",
        f"deployment {deployment!r}.{'.'.join(_FIELD)}",
        _conflict_message(key, deployment, holder),
    )


def _conflict_message(key: BreakerKey, deployment: str, holder: str) -> str:
    # The endpoint is left out: the message may reach an operator's client (an apply
    # through the admin API), and the key's provider and model say enough.
    return (
        f"deployment {deployment!r}.{'.'.join(_FIELD)} differs from deployment {holder!r}, "
        f"which calls the same upstream ({key.provider} model {key.model!r} at the same "
        "endpoint): deployments that share a circuit breaker must set the same "
        "circuit_breaker (unset is the defaults)"
    )
