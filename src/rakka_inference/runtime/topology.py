"""The serving topology of one process: actor system, deployments, coordinator, gateway.

:class:`Topology` wires a :class:`~rakka_inference.core.deployment.Config` into running
replicas through the :class:`~rakka_inference.runtime.manager.DeploymentManager` (which
builds each replica's engine with an
:class:`~rakka_inference.runtime.replicas.EngineBuilder` and registers it with the
coordinator), the :class:`~rakka_inference.observe.metrics.InferenceMetrics` behind
``/metrics``, and the :class:`ApiGateway` in front. ``start`` and ``stop`` are the ASGI
lifespan of ``rakka serve``: stopping lets every queued and running request finish before
the engines close. Every config it applies — the first, a reload, an admin apply — first
goes through the one ``adapt`` function it was given: what this process makes of a config
(``rakka serve`` points a config asking for ``[cluster].mock_providers`` at the mocks it
runs).

**Who may call it** (:class:`GatewayAccess`): the client keys, the admin key and the web
origins of ``[cluster]``, read from the file the gateway started from, and again on every
reload (:meth:`Topology.reload`: SIGHUP, ``POST /admin/reload``; on a node of many workers
and on Ray, the group's reload), never from a config posted to ``POST /admin/deployments``,
which changes the deployments alone. A reload reads every key before anything changes —
one that is not set or cannot be read refuses the whole reload, and the old keys stay —
and swaps the new ones in in the same step as the deployments, with no await between: a
request is checked against the old keys or the new ones, never a mix, never none.

With ``[tracing] enabled = true``, ``start`` installs the OpenTelemetry tracer provider
first and ``stop`` shuts it down last, exporting the spans still buffered
(:mod:`rakka_inference.observe.tracing`). Tracing is read at start: a reload that changes
``[tracing]`` takes effect at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import OperationRefused
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.secrets import Secret
from rakka_inference.engine.budget_book import BudgetBook
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe import tracing
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.observe.tracing import Tracing
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.runtime.admin import AdminApi
from rakka_inference.runtime.capabilities import HasCircuit, HasContext, HasLimiter
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.gateway import ApiGateway
from rakka_inference.runtime.manager import ApplyReport, DeploymentManager, Engine
from rakka_inference.runtime.placement import NodeInventory, Placement
from rakka_inference.runtime.replicas import (
    DEFAULT_RUNNERS,
    EngineBuilder,
    LocalEngineFactory,
    RunnerFactory,
)
from rakka_inference.runtime.request import FallbackPolicy

__all__ = ["GatewayAccess", "Topology", "provider_label", "with_access_of"]

log = logging.getLogger("rakka_inference.topology")


def provider_label(deployment: Deployment) -> str:
    """The provider a deployment's metrics are labelled with (never a key or a URL)."""
    return deployment.provider_label


@dataclass(frozen=True, slots=True)
class GatewayAccess:
    """Who may call a gateway, as read from a config's ``[cluster]`` (see the module)."""

    client_keys: tuple[Secret, ...]
    """Keys a client may send; none: the gateway is open."""
    admin_key: Secret | None
    """The admin API's key; None: the admin API is closed."""
    cors_origins: tuple[str, ...]
    """Web origins a browser may call from."""

    @classmethod
    def read(cls, cluster: ClusterConfig) -> GatewayAccess:
        """Every key of ``cluster`` read now: a SecretError naming the first that cannot be."""
        admin = cluster.admin_api_key
        return cls(
            tuple(ref.resolve() for ref in cluster.client_api_keys),
            None if admin is None else admin.resolve(),
            tuple(cluster.cors_origins),
        )


def with_access_of(config: Config, cluster: ClusterConfig) -> Config:
    """``config`` with the client keys, admin key and web origins of ``cluster`` (a
    gateway started again takes them from the file its group last read, not from a config
    posted to the admin API)."""
    access = replace(
        config.cluster,
        client_api_keys=cluster.client_api_keys,
        admin_api_key=cluster.admin_api_key,
        cors_origins=cluster.cors_origins,
    )
    return replace(config, cluster=access)


class _MetricsWatcher:
    def __init__(self, metrics: InferenceMetrics, builder: EngineBuilder) -> None:
        self.metrics = metrics
        self.builder = builder

    def replica_up(self, deployment: str, engine: Engine) -> None:
        self.metrics.watch_replica(deployment, _Gauges(engine))

    def replica_down(self, deployment: str, engine: Engine) -> None:
        self.metrics.unwatch_replica(deployment, engine.name)


class _Gauges:
    """A replica's figures as the metrics read them (a local engine has no breaker or
    limiter: those series are left out for it)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.breaker = engine.breaker if isinstance(engine, HasCircuit) else None
        self.limiter = engine.limiter if isinstance(engine, HasLimiter) else None
        self.context = engine if isinstance(engine, HasContext) else None

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def in_flight(self) -> int:
        return self._engine.in_flight

    @property
    def queued(self) -> int:
        return self._engine.queued

    @property
    def capacity(self) -> int:
        return self._engine.capacity


class Topology:
    """Everything one ``rakka serve`` process runs."""

    def __init__(
        self,
        config: Config,
        *,
        services: RemoteServices | None = None,
        runners: Mapping[RuntimeKind, RunnerFactory] | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
        reload_source: Callable[[], Config] | None = None,
        placement: Placement | None = None,
        local_engines: LocalEngineFactory | None = None,
        adapt: Callable[[Config], Config] | None = None,
    ) -> None:
        self.config = config
        self._adapt = adapt
        """What this process makes of every config before applying it (see the module)."""
        self.services = services or RemoteServices()
        self.system = ActorSystem(config.cluster.name)
        self.coordinator = DpCoordinator(rng=self.services.rng)
        self.metrics = InferenceMetrics()
        self._on_record = on_record
        self._reload_source = reload_source
        self.builder = EngineBuilder(
            self.services,
            runners={**DEFAULT_RUNNERS, **(runners or {})},
            local_engines=local_engines,
        )
        self.policies: dict[str, FallbackPolicy] = {}
        self.manager = DeploymentManager(
            self.system,
            self.coordinator,
            self.builder,
            policies=self.policies,
            watcher=_MetricsWatcher(self.metrics, self.builder),
            # Where local replicas run elsewhere (a Ray cluster's actors), Ray places them.
            placement=(
                placement
                if placement is not None or local_engines is not None
                else Placement(NodeInventory.local())
            ),
        )
        self._providers: dict[str, str] = {}
        self._models: dict[str, str] = {}
        """Each deployment's upstream model, for the metrics' ``model`` label."""
        self._tracing: Tracing | None = None
        self.access = GatewayAccess.read(config.cluster)
        """Who may call this gateway now."""
        self.gateway = ApiGateway(
            self.coordinator,
            self.policies,
            client_keys=self.access.client_keys,
            on_record=self._record,
            on_startup=self.start,
            on_shutdown=self.stop,
            metrics=self.metrics,
            providers=self._providers,
            clock=self.services.clock,  # deadlines are on the engines' clock
            cors_origins=config.cluster.cors_origins,
        )
        self.admin = AdminApi(self, self.access.admin_key)
        self.gateway.admin = self.admin
        self.services.breakers.observe(self.metrics.circuit_transition)
        self.builder.on_budget_event = self.metrics.budget_event

    @property
    def budgets(self) -> BudgetBook:
        """Every deployment's cost ledger (the admin API's cost report)."""
        return self.builder.budgets

    async def start(self) -> None:
        """Start tracing if configured; build, start and register every replica."""
        if self.config.tracing.enabled and self._tracing is None:
            self._tracing = tracing.setup(self.config.tracing)
        await self.apply(self.config)

    async def apply(self, config: Config, *, access: GatewayAccess | None = None) -> ApplyReport:
        """Apply ``config`` while serving (hot-swap changed deployments), all or nothing.

        A config the manager rejects (ConfigError, PlacementFailed) changes nothing here
        either: the running config, its providers and budgets stay as they were. ``config``
        goes through ``adapt`` first, and the adapted config is the one that runs.
        ``access``, given by a reload: who may call the gateway from now on, swapped in
        with the deployments, in the same step.
        """
        if self._adapt is not None:
            config = self._adapt(config)
        if config.tracing != self.config.tracing:
            log.warning("[tracing] changed: the change takes effect at the next start")
        report = await self.manager.apply(config)
        if access is not None:  # no await since the deployments' swap: one step for requests
            self._use_access(access)
        self.config = config
        self._providers.clear()
        self._providers.update({d.name: provider_label(d) for d in config.deployments})
        self._models.clear()
        self._models.update({d.name: d.upstream_model for d in config.deployments})
        for name in self.manager.deployments:
            self.builder.watch_throttle(name, self.manager.engines(name))
        for name in report.removed:
            self.builder.forget(name)
        return report

    async def reload(self) -> ApplyReport:
        """Read the config again from where it came from and apply it (SIGHUP, admin).

        The client and admin keys are read again too (a rotated key file): all of them
        first, so a key that cannot be read refuses the reload (SecretError) and the old
        keys stay; they are swapped in with the deployments (see the module).

        OperationRefused without a config file; ConfigError for a file that fails to load
        or apply, SecretError for a key that cannot be read (nothing changes).
        """
        if self._reload_source is None:
            raise OperationRefused("cannot reload: the gateway was not started from a file")
        config = self._reload_source()
        return await self.apply(config, access=GatewayAccess.read(config.cluster))

    def _use_access(self, access: GatewayAccess) -> None:
        """Take ``access`` from now on: each key set swapped in by one assignment."""
        self.access = access
        self.gateway.use_client_keys(access.client_keys)
        self.gateway.use_cors(access.cors_origins)
        self.admin.use_key(access.admin_key)

    async def stop(self, timeout: float = 30.0) -> None:
        """Let queued and running requests finish, then close every engine."""
        self.manager.drain_timeout_s = timeout
        try:
            await self.manager.aclose()
            await self.system.shutdown(timeout=timeout)
        finally:
            if self._tracing is not None:
                # Exporting what is buffered may wait on the collector: not on the loop.
                await asyncio.to_thread(self._tracing.shutdown)
                self._tracing = None

    def _record(self, record: RequestRecord) -> None:
        deployment = record.deployment or ""
        self.metrics.record(
            record, self._providers.get(deployment, ""), self._models.get(deployment, "")
        )
        if self._on_record is not None:
            self._on_record(record)
