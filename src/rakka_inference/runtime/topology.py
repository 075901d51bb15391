"""The serving topology of one process: actor system, engines, coordinator, gateway.

:class:`Topology` turns a :class:`~rakka_inference.core.deployment.Config` into running
replicas — one remote engine per replica of each deployment, registered with the
coordinator under the deployment's name and aliases — and the :class:`ApiGateway` in front
of them. ``start`` and ``stop`` are the ASGI lifespan of ``rakka serve``: stopping lets
every queued and running request finish before the engines close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import Config
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.gateway import ApiGateway
from rakka_inference.runtime.request import FallbackPolicy, RequestRecord

__all__ = ["Topology"]

log = logging.getLogger("rakka_inference.topology")


class Topology:
    """Everything one ``rakka serve`` process runs."""

    def __init__(
        self,
        config: Config,
        *,
        services: RemoteServices | None = None,
        on_record: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        unsupported = [d for d in config.deployments if not d.is_remote]
        if unsupported:
            raise ConfigError(
                [
                    ConfigIssue(
                        "<config>",
                        f"deployment {d.name!r}.runtime",
                        f"runtime {d.runtime.value!r} is a local runtime, which this build "
                        "does not serve yet (local runners come with the operations work)",
                    )
                    for d in unsupported
                ]
            )
        self.config = config
        self.services = services or RemoteServices()
        self.system = ActorSystem(config.cluster.name)
        self.coordinator = DpCoordinator(rng=self.services.rng)
        self.engines: list[RemoteEngineCore] = []
        policies = {
            d.name: FallbackPolicy(
                fallbacks=d.fallbacks, capacity_policy=d.serving.on_capacity_exhausted
            )
            for d in config.deployments
        }
        keys = [ref.resolve() for ref in config.cluster.client_api_keys]
        self.gateway = ApiGateway(
            self.coordinator,
            policies,
            client_keys=keys,
            on_record=on_record,
            on_startup=self.start,
            on_shutdown=self.stop,
        )

    async def start(self) -> None:
        """Build, start and register every replica."""
        for deployment in self.config.deployments:
            for replica in range(deployment.replicas):
                engine = await build_remote_engine(deployment, self.services, replica=replica)
                await engine.start(self.system, f"engine-{deployment.name}-{replica}")
                self.engines.append(engine)
                self.coordinator.register(deployment.name, engine)
            self.coordinator.set_aliases(deployment.name, deployment.aliases)
            log.info(
                "deployment %s serving: %s x%d",
                deployment.name,
                deployment.runtime.value,
                deployment.replicas,
            )

    async def stop(self, timeout: float = 30.0) -> None:
        """Let queued and running requests finish, then close every engine."""
        for engine in self.engines:
            await engine.stop(timeout=timeout)
        self.engines.clear()
        await self.system.shutdown(timeout=timeout)
