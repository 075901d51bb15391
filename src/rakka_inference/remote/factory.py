"""Wiring one remote replica from a :class:`~rakka_inference.core.deployment.Deployment`.

``build_remote_engine`` picks the adapter from the registry, the credential provider the
runtime config and the registry answer for (an API key reference, an Azure Entra ID token,
or a Vertex service account), a session over pooled transports, the rate limiter for the
(provider, key fingerprint, model) key and the circuit breaker for the (provider, endpoint)
key — shared with every other replica and deployment that uses the same key or endpoint —
and returns an engine ready to ``start``, its limiter estimating with the runtime config's
default output-token cap (the one its budget ledger reserves with and the adapter sends).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.engine.budget import BudgetGate
from rakka_inference.providers.registry import adapter_for
from rakka_inference.remote.breaker import BreakerKey
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.credentials import deployment_credential
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.ratelimit import LimiterKey, RateLimiter
from rakka_inference.remote.runner import RemoteRunner
from rakka_inference.remote.session import RemoteSession
from rakka_inference.remote.transports.base import DEFAULT_MAX_CONNECTIONS
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.wire.http import HttpTransport

__all__ = ["RemoteServices", "build_remote_engine"]


@dataclass
class RemoteServices:
    """What remote replicas share in one process: limiters, breakers, clocks."""

    limiters: RateLimiter = field(default_factory=RateLimiter)
    breakers: BreakerRegistry = field(default_factory=lambda: BreakerRegistry(clock=time.monotonic))
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: random.Random = field(default_factory=random.Random)
    prices: PriceTable | None = None
    transport_factory: Callable[[RemoteRuntimeConfig], HttpTransport] | None = None


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
    limiter = services.limiters.limiter_for(
        LimiterKey.for_credential(
            adapter.provider, await snapshot.credential(), deployment.upstream_model
        ),
        config.rate_limits,
    )
    breaker = services.breakers.get_or_create(
        BreakerKey(adapter.provider, adapter.endpoint), config.circuit_breaker
    )
    runner = RemoteRunner(adapter, session, config, deployment.runtime)
    return RemoteEngineCore(
        name or f"{deployment.name}-{replica}",
        runner,
        limiter=limiter,
        breaker=breaker,
        serving=deployment.serving,
        retry=config.retry,
        idempotent=deployment.idempotent,
        clock=services.clock,
        sleep=services.sleep,
        rng=services.rng,
        budget=budget,
        default_max_output_tokens=config.default_max_output_tokens,
    )
