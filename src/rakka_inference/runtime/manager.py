"""DeploymentManager: the catalog of deployments, and every change to them while serving.

Each deployment runs as a **replica set** (:mod:`rakka_inference.runtime.replica_set`): one
engine per replica, placed on a node, moved along the lifecycle table of
:mod:`rakka_inference.runtime.lifecycle`. The manager decides which set serves each
deployment; it is the only writer of the coordinator's routing table for them.

:meth:`DeploymentManager.apply` makes the running deployments those of a whole config, all
or nothing, in three steps:

1. **check** — every deployment within :data:`MAX_REPLICAS`, every new or changed one
   buildable (its credential set and readable), every replica placeable, every alias free,
   no two deployments on one rate limiter with different limits. Nothing has started yet;
   every issue found is in the one :class:`~rakka_inference.core.errors.ConfigError`.
2. **start** — every new or changed replica set is built and started (credentials
   resolved, weights loaded), none of them registered, against a *staged* config
   (:class:`~rakka_inference.runtime.replica_set.StagesConfig`): the rate limiters, circuit
   breakers and cost ledgers the running sets use keep their settings. The running sets
   keep serving. One that fails stops every set this apply started, the staged config is
   dropped, and the config is rejected with a ConfigError naming the deployment and the
   cause.
3. **swap** — only when all started: the staged config is committed (shared limits,
   breaker settings and ledgers change here), the new sets are registered, the changed
   ones **hot-swapped** (the old set is deregistered and left to drain: its queued and
   running requests finish on it), the removed ones deregistered and drained. This step
   never awaits, so no request sees half of one config and half of the other.

A rejected config leaves the old one serving whole. :meth:`scale` adds or drains replicas;
:meth:`rebuild_session` rotates credentials on every replica (in-flight requests finish on
the old session); :meth:`drain` stops taking requests and lets the running ones finish.
Draining happens in the background; :meth:`aclose` waits for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import MAX_REPLICAS, Config, Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue, ModelNotFound, OperationRefused
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.runtime.capabilities import RebuildsSession
from rakka_inference.runtime.config_diff import ApplyReport, ConfigDiff, check_aliases, refusal
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.lifecycle import DeploymentState
from rakka_inference.runtime.placement import Placement
from rakka_inference.runtime.replica_set import (
    Engine,
    EngineFactory,
    Replica,
    ReplicaSet,
    ReplicaSupervisor,
    ReplicaWatcher,
    StagesConfig,
)
from rakka_inference.runtime.request import FallbackPolicy

__all__ = [
    "MAX_REPLICAS",
    "ApplyReport",
    "DeploymentManager",
    "DeploymentStatus",
    "Engine",
    "EngineFactory",
    "ReplicaStatus",
    "ReplicaWatcher",
]

log = logging.getLogger("rakka_inference.manager")

S = DeploymentState


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    name: str
    state: DeploymentState
    healthy: bool
    in_flight: int
    queued: int
    capacity: int


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    """One deployment as the admin API and ``rakka status`` show it."""

    name: str
    state: DeploymentState
    runtime: str
    model: str
    generation: int
    aliases: tuple[str, ...]
    replicas: tuple[ReplicaStatus, ...]
    draining_sets: int
    last_change: str | None


class DeploymentManager:
    """Deployments, their replica sets and states; the coordinator's one writer."""

    def __init__(
        self,
        system: ActorSystem,
        coordinator: DpCoordinator,
        factory: EngineFactory,
        *,
        policies: MutableMapping[str, FallbackPolicy] | None = None,
        watcher: ReplicaWatcher | None = None,
        placement: Placement | None = None,
        drain_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordinator = coordinator
        self.factory = factory
        self.placement = placement
        self.policies: MutableMapping[str, FallbackPolicy] = (
            policies if policies is not None else {}
        )
        self._replicas = ReplicaSupervisor(
            system,
            coordinator,
            factory,
            watcher=watcher,
            placement=placement,
            drain_timeout_s=drain_timeout_s,
            clock=clock,
        )
        self._lock = self._replicas.lock
        self._sets: dict[str, ReplicaSet] = {}

    @property
    def drain_timeout_s(self) -> float:
        """How long a retired replica may take to finish its requests."""
        return self._replicas.drain_timeout_s

    @drain_timeout_s.setter
    def drain_timeout_s(self, seconds: float) -> None:
        self._replicas.drain_timeout_s = seconds

    # ------------------------------------------------------------------ reading

    @property
    def deployments(self) -> dict[str, Deployment]:
        return {name: current.deployment for name, current in self._sets.items()}

    def engines(self, name: str) -> list[Engine]:
        """The engines of ``name``'s current replica set."""
        return [replica.engine for replica in self._current(name).replicas]

    def state(self, name: str) -> DeploymentState:
        return self._current(name).lifecycle.state

    def describe(self) -> list[DeploymentStatus]:
        return [self._describe(name, self._sets[name]) for name in sorted(self._sets)]

    def placements(self) -> tuple[Any, ...]:
        """Nodes and what occupies them (empty without a placement policy)."""
        return self._replicas.placements()

    def _describe(self, name: str, current: ReplicaSet) -> DeploymentStatus:
        history = current.lifecycle.history
        return DeploymentStatus(
            name=name,
            state=current.lifecycle.state,
            runtime=current.deployment.runtime.value,
            model=current.deployment.model,
            generation=current.generation,
            aliases=current.deployment.aliases,
            replicas=tuple(
                ReplicaStatus(
                    r.engine.name,
                    r.lifecycle.state,
                    r.engine.healthy,
                    r.engine.in_flight,
                    r.engine.queued,
                    r.engine.capacity,
                )
                for r in current.replicas
            ),
            draining_sets=self._replicas.draining_sets(name),
            last_change=history[-1].cause if history else None,
        )

    # ------------------------------------------------------------------ apply

    async def apply(self, config: Config) -> ApplyReport:
        """Make the running deployments those of ``config``: add, hot-swap, remove.

        All or nothing: ConfigError (a deployment unbuildable, or one that did not start)
        or PlacementFailed leaves every running deployment as it was, serving.
        """
        async with self._lock:
            diff = ConfigDiff.between(self.deployments, config)
            self._check(diff)
            staged = self.factory if isinstance(self.factory, StagesConfig) else None
            if staged is not None:
                staged.stage(diff.kept)
            try:
                fresh = await self._start_all(diff.starting)
            except BaseException:
                if staged is not None:
                    staged.abort()  # the running config's limits and ledgers stand
                raise
            if staged is not None:
                staged.commit()
            self._swap(diff, fresh)
            return diff.report()

    def _check(self, diff: ConfigDiff) -> None:
        """Everything that can be known before starting anything; raises, changes nothing."""
        too_many = [
            ConfigIssue(
                "<config>",
                f"deployment {d.name!r}: replicas",
                f"must be at most {MAX_REPLICAS}, not {d.replicas}",
            )
            for d in diff.wanted.values()
            if d.replicas > MAX_REPLICAS
        ]
        if too_many:
            raise ConfigError(too_many)
        check_aliases(diff.wanted.values())
        unbuildable: list[ConfigIssue] = []
        cause: BaseException | None = None
        for deployment in diff.starting:
            try:
                self.factory.check(deployment)
            except ConfigError as error:  # every one is said, not the first alone
                unbuildable.extend(error.issues)
                cause = error.__cause__
        if unbuildable:
            raise ConfigError(unbuildable) from cause
        if self.placement is not None:
            impossible = [
                ConfigIssue("<config>", f"deployment {deployment.name!r}.{field}", reason)
                for deployment in diff.starting
                if (problem := self.placement.impossible(deployment)) is not None
                for field, reason in (problem,)
            ]
            if impossible:
                raise ConfigError(impossible)
        if self.placement is not None:  # PlacementFailed rejects the whole config
            self.placement.plan(
                list(diff.starting),
                generations={d.name: self._generation(d.name) for d in diff.starting},
            )

    async def _start_all(self, deployments: Iterable[Deployment]) -> list[ReplicaSet]:
        """Start a set for each deployment, none registered; on a failure, stop them all."""
        fresh: list[ReplicaSet] = []
        deployment: Deployment | None = None
        try:
            for deployment in deployments:
                fresh.append(
                    await self._replicas.start_set(deployment, self._generation(deployment.name))
                )
        except BaseException as error:
            for replica_set in fresh:
                await self._replicas.stop_unregistered(replica_set, "another deployment failed")
            refused = refusal(deployment, error)
            if refused is error:
                raise
            raise refused from error
        return fresh

    def _swap(self, diff: ConfigDiff, fresh: list[ReplicaSet]) -> None:
        """Serve the started sets and retire what they replace. Never awaits: atomic."""
        for name in diff.removed:
            self._forget(name, f"removed from the config ({len(diff.wanted)} deployments)")
        for deployment in diff.changed:
            self.coordinator.set_aliases(deployment.name, ())
        for replica_set in fresh:
            name = replica_set.deployment.name
            old = self._sets.get(name)
            self._replicas.serve(replica_set, "hot-swap" if old else "added")
            self._sets[name] = replica_set
            if old is not None and old.lifecycle.state is S.SERVING:
                self._replicas.retire(old, f"replaced by generation {replica_set.generation}")
        for deployment in diff.wanted.values():
            self.policies[deployment.name] = FallbackPolicy(
                fallbacks=deployment.fallbacks,
                capacity_policy=deployment.serving.on_capacity_exhausted,
            )
        for deployment in diff.starting:
            self.coordinator.set_aliases(deployment.name, deployment.aliases)

    def _generation(self, name: str) -> int:
        previous = self._sets.get(name)
        return 1 if previous is None else previous.generation + 1

    # ------------------------------------------------------------------ operations

    async def scale(self, name: str, replicas: int) -> DeploymentStatus:
        """Run ``replicas`` replicas of ``name``: start more, or drain the extra ones.

        Scaling up is all or nothing too: a replica that fails to start stops the others
        this call started, and the set stays as it was.
        """
        if replicas < 1:
            raise OperationRefused(f"a deployment needs at least 1 replica, not {replicas}")
        if replicas > MAX_REPLICAS:
            raise OperationRefused(
                f"a deployment runs at most {MAX_REPLICAS} replicas, not {replicas}"
            )
        async with self._lock:
            current = self._serving(name, "scale")
            started: list[Replica] = []
            try:
                for index in range(len(current.replicas), replicas):
                    replica = await self._replicas.start_replica(current, index)
                    started.append(replica)  # kept one by one: a failure stops these
            except BaseException:
                await self._replicas.stop_replicas(started, "another replica failed to start")
                raise
            for replica in started:
                current.replicas.append(replica)
                self._replicas.register(current, replica, "scaled up")
            for replica in current.replicas[replicas:]:
                self._replicas.deregister(current, replica, f"scaled down to {replicas}")
                self._replicas.spawn_drain(name, [replica])
            del current.replicas[replicas:]
            current.deployment = replace(current.deployment, replicas=replicas)
            return self._describe(name, current)

    async def rebuild_session(self, name: str) -> list[int]:
        """Rotate credentials on every replica; returns each new session generation."""
        current = self._serving(name, "rebuild its session")
        generations = []
        for replica in current.replicas:
            if not isinstance(replica.engine, RebuildsSession):
                raise OperationRefused(f"deployment {name!r} has no session to rebuild")
            generations.append(await replica.engine.rebuild_session(SessionRebuildCause.OPERATOR))
        return generations

    async def drain(self, name: str) -> None:
        """Stop taking requests for ``name``; wait for the running ones to finish."""
        async with self._lock:
            current = self._serving(name, "drain")
            current.lifecycle.move(S.DRAINING, "drained by an operator")
            for replica in current.replicas:
                self._replicas.deregister(current, replica, "drained by an operator")
        await self._replicas.drain_replicas(current.replicas)
        current.lifecycle.move(S.STOPPED, "drained by an operator")

    async def remove(self, name: str) -> None:
        """Drain ``name`` and forget it."""
        async with self._lock:
            self._current(name)
            self._forget(name, "removed by an operator")

    async def aclose(self) -> None:
        """Drain every deployment and wait for every drain to end."""
        async with self._lock:
            for name in list(self._sets):
                self._forget(name, "shutting down")
        await self._replicas.aclose()

    # ------------------------------------------------------------------ internals

    def _current(self, name: str) -> ReplicaSet:
        current = self._sets.get(name)
        if current is None:
            raise ModelNotFound(f"the deployment {name!r} does not exist", param="deployment")
        return current

    def _serving(self, name: str, action: str) -> ReplicaSet:
        current = self._current(name)
        if current.lifecycle.state is not S.SERVING:
            raise OperationRefused(
                f"cannot {action}: deployment {name!r} is {current.lifecycle.state.value}"
            )
        return current

    def _forget(self, name: str, cause: str) -> None:
        """Deregister ``name`` (draining its set in the background) and drop it."""
        current = self._sets.pop(name)
        if current.lifecycle.state is S.SERVING:
            self._replicas.retire(current, cause)
        self.coordinator.remove(name)
        self.policies.pop(name, None)
