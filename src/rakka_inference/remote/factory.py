"""Wiring one remote replica from a :class:`~rakka_inference.core.deployment.Deployment`.

``build_remote_engine`` picks the adapter from the registry, the credential provider the
runtime config and the registry answer for (an API key reference, an Azure Entra ID token,
or a Vertex service account), a session over pooled transports, the rate limiter for the
(provider, key fingerprint, model) key (:func:`~rakka_inference.core.config_rules.
shared_limit_key`, the config checks' key: the fingerprint of the credential the config
names, a service account's rather than the token it is exchanged for) and the circuit
breaker for the (provider, endpoint, upstream model) key — shared with every other replica
and deployment that uses the same key, or calls the same model at the same endpoint — and
returns an engine ready to ``start``, its limiter estimating with the runtime config's
default output-token cap (the one its budget ledger reserves with and the adapter sends).

A shared limiter has one set of limits, so every deployment on one limiter key must set
the same ``rate_limits`` (an unset table, unlimited, differs from a set one). The config
checks say so before anything starts (:func:`~rakka_inference.core.config_rules.
shared_limit_conflicts`, by the same key); :class:`RemoteServices` says so again as each
limiter is claimed: a deployment asking for a limiter another deployment holds with other
limits is refused with a :class:`ConfigError` naming both, never silently reconfigured.
A deployment rebuilt with new limits outside an apply re-sets its own claim.

An apply of a whole config is staged (:meth:`RemoteServices.stage`, then :meth:`~
RemoteServices.commit` or :meth:`~RemoteServices.abort`; see
:mod:`~rakka_inference.remote.shared_claims`): deployments leaving the config, or changing
their shared limits together, are not held to the old ones, and a limiter that running
deployments use keeps their limits until the apply commits, so a refused apply changes no
running limit.

Breakers follow the same rule: deployments sharing one set the same ``circuit_breaker``,
or the later one is refused with a :class:`ConfigError` naming the field
(:class:`~rakka_inference.remote.breaker_registry.BreakerRegistry`), and the same stage,
commit and abort hold their claims.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from rakka_inference.core.config_rules import LimitConflict, shared_limit_key
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue, SecretError
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.engine.budget import BudgetGate
from rakka_inference.providers.registry import adapter_for
from rakka_inference.remote.breaker_registry import BreakerRegistry, breaker_key
from rakka_inference.remote.credentials import deployment_credential
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.ratelimit import LimiterKey, LimiterRegistry, PermitSource, RateLimiter
from rakka_inference.remote.runner import RemoteRunner
from rakka_inference.remote.session import RemoteSession
from rakka_inference.remote.shared_claims import SharedClaims
from rakka_inference.remote.transports.base import DEFAULT_MAX_CONNECTIONS
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.wire.http import HttpTransport

__all__ = ["RemoteServices", "build_remote_engine"]


@dataclass
class RemoteServices:
    """What remote replicas share in one process: limiters, breakers, clocks."""

    limiters: LimiterRegistry = field(default_factory=RateLimiter)
    """One process's exact limiters, or a node's or cluster's distributed ones."""
    breakers: BreakerRegistry = field(default_factory=lambda: BreakerRegistry(clock=time.monotonic))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    prices: PriceTable | None = None
    transport_factory: Callable[[RemoteRuntimeConfig], HttpTransport] | None = None
    limit_claims: SharedClaims[LimiterKey, RateLimits] = field(default_factory=SharedClaims)
    """Which deployments hold each limiter key, and with which limits."""

    def stage(self, kept: Iterable[str]) -> None:
        """A config is about to be applied; the deployments named in ``kept`` stay as they
        run (their claims stand), every other one claims its limiter and breaker again as
        its engines are built. Nothing running changes until :meth:`commit`."""
        names = tuple(kept)
        self.limit_claims.stage(names)
        self.breakers.stage(names)

    def commit(self) -> None:
        """The staged config runs from now on: each held limiter takes its holders' limits
        and each breaker its holders' settings. Never awaits."""
        for key, limits in self.limit_claims.commit().items():
            self.limiters.limiter_for(key, limits)
        self.breakers.commit()

    def abort(self) -> None:
        """The staged config was refused: every claim, limit and setting stands, and the
        limiters and breakers that only the refused config held are forgotten."""
        for key in self.limit_claims.abort():
            self.limiters.discard(key)
        self.breakers.abort()

    def claim_limiter(self, key: LimiterKey, deployment: Deployment) -> PermitSource:
        """``key``'s shared limiter for ``deployment``; a :class:`ConfigError` when another
        deployment holds it with other limits (nothing is changed then)."""
        config = deployment.runtime_config
        assert isinstance(config, RemoteRuntimeConfig)
        other = self.limit_claims.claim(key, deployment.name, config.rate_limits)
        if other is not None:
            credentials = f"{_reference(config)}, the key deployment {other!r} sends"
            conflict = LimitConflict(
                deployment.name, other, (key.provider, credentials, key.model), 0
            )
            path = f"deployment {deployment.name!r}.runtime_config.rate_limits"
            raise ConfigError([ConfigIssue("<deployment>", path, conflict.message)])
        # Running deployments using this limiter keep their limits until the apply commits.
        # (Where the new limits switch between strict and approximate, a node's limiter is
        # another object: that one is taken, and the running one is not touched.)
        running = self.limit_claims.running(key)
        if (
            self.limit_claims.staging
            and running is not None
            and running.strict == config.rate_limits.strict
        ):
            return self.limiters.limiter_for(key, running)
        return self.limiters.limiter_for(key, config.rate_limits)


def _limit_key(deployment: Deployment, credential: Secret) -> tuple[str, str, str]:
    key = shared_limit_key(deployment, credential)
    assert key is not None  # a remote deployment
    return key


def _reference(config: RemoteRuntimeConfig) -> str:
    ref = config.credential
    return "unset" if ref is None else ref.describe()


def _transport_factory(
    services: RemoteServices, config: RemoteRuntimeConfig, connections: int
) -> Callable[[], HttpTransport]:
    if services.transport_factory is not None:
        custom = services.transport_factory
        return lambda: custom(config)
    # One pooled connection per worker at least: a worker waiting for a connection would
    # spend its first-byte time in the pool and count as a timeout against the provider.
    size = max(DEFAULT_MAX_CONNECTIONS, connections)
    return lambda: create_transport(http2=config.http2, max_connections=size)


async def build_remote_engine(
    deployment: Deployment,
    services: RemoteServices,
    *,
    replica: int = 0,
    name: str | None = None,
    budget: BudgetGate | None = None,
) -> RemoteEngineCore:
    """A remote replica of ``deployment``, its session started (the credential resolved)."""
    config = deployment.runtime_config
    if not isinstance(config, RemoteRuntimeConfig):
        raise ConfigError(
            [
                ConfigIssue(
                    "<deployment>",
                    f"deployment {deployment.name!r}.runtime",
                    f"runtime {deployment.runtime.value!r} is not a remote runtime",
                )
            ]
        )
    adapter = adapter_for(deployment, services.prices)
    session = RemoteSession(
        _transport_factory(services, config, deployment.serving.max_concurrent),
        deployment_credential(
            deployment,
            config,
            # A token exchange gets its own small transport, closed with the session.
            _transport_factory(services, config, 1),
        ),
        clock=services.clock,
    )
    snapshot = await session.start()
    try:
        # Keyed by the credential the config names (a Vertex AI service account, not the
        # token it is exchanged for): the key the config checks compare.
        ref = config.credential
        credential = await snapshot.credential() if ref is None else ref.resolve()
        key = LimiterKey(*_limit_key(deployment, credential))
        limiter = services.claim_limiter(key, deployment)
        breaker = services.breakers.get_or_create(
            breaker_key(deployment), config.circuit_breaker, holder=deployment.name
        )
    except (ConfigError, SecretError):
        await session.aclose()
        raise
    runner = RemoteRunner(adapter, session, config, deployment.runtime)
    return RemoteEngineCore(
        name or f"{deployment.name}-{replica}",
        runner,
        limiter=limiter,
        breaker=breaker,
        deployment=deployment.name,
        serving=deployment.serving,
        retry=config.retry,
        idempotent=deployment.idempotent,
        clock=services.clock,
        sleep=services.sleep,
        rng=services.rng,
        budget=budget,
        default_max_output_tokens=config.default_max_output_tokens,
    )
