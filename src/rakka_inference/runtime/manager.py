"""DeploymentManager: the catalog of deployments, and every change to them while serving.

Each deployment runs as a **replica set**: one engine per replica, placed on a node, moved
along the lifecycle table of :mod:`rakka_inference.runtime.lifecycle`. The manager is the
only writer of the coordinator's routing table for the deployments it owns.

- :meth:`DeploymentManager.apply` is a diff-and-apply of a whole config: deployments that
  are new start, removed ones drain and stop, and a changed one is **hot-swapped** — a new
  replica set starts, is registered, and only then is the old one deregistered and left to
  drain (its queued and running requests finish on it). Nothing in flight is dropped. The
  whole config is checked first (every runtime buildable, every replica placeable); one
  that fails is rejected whole and the running one stays.
- :meth:`scale` adds or drains replicas; :meth:`rebuild_session` rotates credentials on
  every replica (in-flight requests finish on the old session); :meth:`drain` stops taking
  requests and lets the running ones finish.
- A replica that gives up (a local context poisoned four times in 60 s) is marked failed,
  deregistered, and placed again.

Draining happens in the background; :meth:`aclose` waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from rakka_inference.actors.stream import BoundedStream
from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import Config, Deployment, Serving
from rakka_inference.core.errors import ModelNotFound, OperationRefused
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.stream import TokenChunk
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.lifecycle import DeploymentState, Lifecycle
from rakka_inference.runtime.placement import Assignment, Placement
from rakka_inference.runtime.request import FallbackPolicy

__all__ = [
    "ApplyReport",
    "DeploymentManager",
    "DeploymentStatus",
    "Engine",
    "EngineFactory",
    "ReplicaStatus",
]

log = logging.getLogger("rakka_inference.manager")

S = DeploymentState


class Engine(Protocol):
    """What the manager needs of a replica's engine (remote or local)."""

    @property
    def name(self) -> str: ...

    @property
    def healthy(self) -> bool: ...

    @property
    def load_score(self) -> float: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def serving(self) -> Serving:
        """The deployment's serving settings (max_concurrent before any throttling)."""
        ...

    def submit(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> BoundedStream[TokenChunk]: ...

    def submit_embedding(
        self, request: EmbeddingRequest, *, deadline: float | None = None
    ) -> BoundedStream[EmbeddingResult]: ...

    def set_concurrency_limit(self, limit: int) -> None: ...

    async def start(self, system: ActorSystem, name: str | None = None) -> None: ...

    async def stop(self, timeout: float = 30.0) -> None: ...


class EngineFactory(Protocol):
    """Builds (not starts) the engine of replica ``index`` of a deployment."""

    def check(self, deployment: Deployment) -> None:
        """Raise ConfigError when this deployment cannot be built at all (before any change)."""
        ...

    async def build(
        self, deployment: Deployment, name: str, on_failed: Callable[[str], None]
    ) -> Engine:
        """The engine, called ``name``; ``on_failed(reason)`` is how it says it gave up."""
        ...


class ReplicaWatcher(Protocol):
    """Told when a replica starts or stops taking requests (metrics)."""

    def replica_up(self, deployment: str, engine: Engine) -> None: ...

    def replica_down(self, deployment: str, engine: Engine) -> None: ...


@dataclass(eq=False, slots=True)
class _Replica:
    index: int
    engine: Engine
    lifecycle: Lifecycle
    assignment: Assignment | None = None


@dataclass(eq=False, slots=True)
class _ReplicaSet:
    deployment: Deployment
    generation: int
    lifecycle: Lifecycle
    replicas: list[_Replica] = field(default_factory=list)


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


@dataclass(frozen=True, slots=True)
class ApplyReport:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


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
        self.system = system
        self.coordinator = coordinator
        self.factory = factory
        self.policies: MutableMapping[str, FallbackPolicy] = (
            policies if policies is not None else {}
        )
        self.watcher = watcher
        self.placement = placement
        self.drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._sets: dict[str, _ReplicaSet] = {}
        self._draining: set[asyncio.Task[None]] = set()
        self._draining_sets: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._started = 0

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
        statuses = []
        for name in sorted(self._sets):
            current = self._sets[name]
            history = current.lifecycle.history
            statuses.append(
                DeploymentStatus(
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
                    draining_sets=self._draining_sets.get(name, 0),
                    last_change=history[-1].cause if history else None,
                )
            )
        return statuses

    # ------------------------------------------------------------------ apply

    async def apply(self, config: Config) -> ApplyReport:
        """Make the running deployments those of ``config``: add, hot-swap, remove.

        Checked whole first; ConfigError (or PlacementFailed) leaves everything as it was.
        """
        async with self._lock:
            wanted = {d.name: d for d in config.deployments}
            added = [d for name, d in wanted.items() if name not in self._sets]
            changed = [
                d
                for name, d in wanted.items()
                if name in self._sets and self._sets[name].deployment != d
            ]
            removed = [name for name in self._sets if name not in wanted]
            for deployment in (*added, *changed):
                self.factory.check(deployment)
            if self.placement is not None:  # PlacementFailed rejects the whole config
                self.placement.plan(
                    [*added, *changed],
                    generations={
                        d.name: self._sets[d.name].generation + 1 if d.name in self._sets else 1
                        for d in (*added, *changed)
                    },
                )
            for name in removed:
                await self._retire(name, f"removed from the config ({len(wanted)} deployments)")
            # New and changed sets start before any routing changes, so a start failure
            # leaves the running deployments untouched.
            fresh: list[tuple[Deployment, _ReplicaSet]] = []
            try:
                for deployment in (*added, *changed):
                    started = await self._start_set(deployment)
                    fresh.append((deployment, started))
            except BaseException:
                for _, replica_set in fresh:
                    await self._stop_unregistered(replica_set, "another deployment failed")
                raise
            for deployment in changed:
                self.coordinator.set_aliases(deployment.name, ())
            for deployment, replica_set in fresh:
                old = self._sets.get(deployment.name)
                self._serve(replica_set, "hot-swap" if old else "added")
                if old is not None:
                    self._retire_set(old, f"replaced by generation {replica_set.generation}")
            for deployment in wanted.values():
                self.policies[deployment.name] = FallbackPolicy(
                    fallbacks=deployment.fallbacks,
                    capacity_policy=deployment.serving.on_capacity_exhausted,
                )
            for deployment in (*added, *changed):
                self.coordinator.set_aliases(deployment.name, deployment.aliases)
            return ApplyReport(
                added=tuple(d.name for d in added),
                changed=tuple(d.name for d in changed),
                removed=tuple(removed),
                unchanged=tuple(n for n in wanted if n not in {d.name for d in (*added, *changed)}),
            )

    # ------------------------------------------------------------------ operations

    async def scale(self, name: str, replicas: int) -> DeploymentStatus:
        """Run ``replicas`` replicas of ``name``: start more, or drain the extra ones."""
        if replicas < 1:
            raise OperationRefused(f"a deployment needs at least 1 replica, not {replicas}")
        async with self._lock:
            current = self._serving(name, "scale")
            have = len(current.replicas)
            if replicas > have:
                started = [
                    await self._start_replica(current, index) for index in range(have, replicas)
                ]
                for replica in started:
                    current.replicas.append(replica)
                    self._register(current, replica, "scaled up")
            for replica in current.replicas[replicas:]:
                self._deregister(current, replica, f"scaled down to {replicas}")
                self._spawn_drain(name, [replica])
            del current.replicas[replicas:]
            current.deployment = replace(current.deployment, replicas=replicas)
        return next(s for s in self.describe() if s.name == name)

    async def rebuild_session(self, name: str) -> list[int]:
        """Rotate credentials on every replica; returns each new session generation."""
        current = self._serving(name, "rebuild its session")
        generations = []
        for replica in current.replicas:
            rebuild = getattr(replica.engine, "rebuild_session", None)
            if rebuild is None:
                raise OperationRefused(f"deployment {name!r} has no session to rebuild")
            generations.append(int(await rebuild(SessionRebuildCause.OPERATOR)))
        return generations

    async def drain(self, name: str) -> None:
        """Stop taking requests for ``name``; wait for the running ones to finish."""
        async with self._lock:
            current = self._serving(name, "drain")
            current.lifecycle.move(S.DRAINING, "drained by an operator")
            for replica in current.replicas:
                self._deregister(current, replica, "drained by an operator")
        await self._drain_replicas(current.replicas)
        current.lifecycle.move(S.STOPPED, "drained by an operator")

    async def remove(self, name: str) -> None:
        """Drain ``name`` and forget it."""
        async with self._lock:
            self._current(name)
            await self._retire(name, "removed by an operator")

    async def aclose(self) -> None:
        """Drain every deployment and wait for every drain to end."""
        async with self._lock:
            for name in list(self._sets):
                await self._retire(name, "shutting down")
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)

    # ------------------------------------------------------------------ internals

    def _current(self, name: str) -> _ReplicaSet:
        current = self._sets.get(name)
        if current is None:
            raise ModelNotFound(f"the deployment {name!r} does not exist", param="deployment")
        return current

    def _serving(self, name: str, action: str) -> _ReplicaSet:
        current = self._current(name)
        if current.lifecycle.state is not S.SERVING:
            raise OperationRefused(
                f"cannot {action}: deployment {name!r} is {current.lifecycle.state.value}"
            )
        return current

    async def _start_set(self, deployment: Deployment) -> _ReplicaSet:
        previous = self._sets.get(deployment.name)
        generation = 1 if previous is None else previous.generation + 1
        replica_set = _ReplicaSet(
            deployment,
            generation,
            Lifecycle(f"deployment {deployment.name!r} (generation {generation})", self._clock),
        )
        try:
            for index in range(deployment.replicas):
                replica_set.replicas.append(await self._start_replica(replica_set, index))
        except BaseException as error:
            replica_set.lifecycle.move(S.FAILED, f"start failed: {type(error).__name__}")
            await self._stop_unregistered(replica_set, "start failed")
            raise
        return replica_set

    async def _start_replica(self, replica_set: _ReplicaSet, index: int) -> _Replica:
        deployment = replica_set.deployment
        holder: list[_Replica] = []
        name = f"{deployment.name}-{index}"
        if replica_set.generation > 1:
            name += f".g{replica_set.generation}"
        engine = await self.factory.build(
            deployment, name, lambda reason: self._failed(replica_set, holder, reason)
        )
        replica = _Replica(index, engine, Lifecycle(f"replica {engine.name!r}", self._clock))
        holder.append(replica)
        try:
            if self.placement is not None:
                replica.assignment = self.placement.place(
                    deployment, index, generation=replica_set.generation
                )
            self._started += 1  # actor names stay unique across replacements
            await engine.start(self.system, f"engine-{engine.name}-{self._started}")
        except BaseException:
            replica.lifecycle.move(S.FAILED, "start failed")
            await engine.stop(timeout=0)
            self._release(replica)
            raise
        return replica

    def _serve(self, replica_set: _ReplicaSet, cause: str) -> None:
        name = replica_set.deployment.name
        for replica in replica_set.replicas:
            self._register(replica_set, replica, cause)
        replica_set.lifecycle.move(S.SERVING, cause)
        self._sets[name] = replica_set
        log.info(
            "deployment %s serving (%s): %s x%d, generation %d",
            name,
            cause,
            replica_set.deployment.runtime.value,
            len(replica_set.replicas),
            replica_set.generation,
        )

    def _register(self, replica_set: _ReplicaSet, replica: _Replica, cause: str) -> None:
        name = replica_set.deployment.name
        self.coordinator.register(name, replica.engine)
        replica.lifecycle.move(S.SERVING, cause)
        if self.watcher is not None:
            self.watcher.replica_up(name, replica.engine)

    def _deregister(self, replica_set: _ReplicaSet, replica: _Replica, cause: str) -> None:
        name = replica_set.deployment.name
        self.coordinator.deregister(name, replica.engine.name)
        if replica.lifecycle.can(S.DRAINING):
            replica.lifecycle.move(S.DRAINING, cause)
        if self.watcher is not None:
            self.watcher.replica_down(name, replica.engine)

    def _retire_set(self, replica_set: _ReplicaSet, cause: str) -> None:
        """Deregister a serving set now; drain and stop it in the background."""
        replica_set.lifecycle.move(S.DRAINING, cause)
        for replica in replica_set.replicas:
            self._deregister(replica_set, replica, cause)
        self._spawn_drain(replica_set.deployment.name, replica_set.replicas, replica_set)

    async def _retire(self, name: str, cause: str) -> None:
        current = self._sets.pop(name)
        if current.lifecycle.state is S.SERVING:
            self._retire_set(current, cause)
        self.coordinator.remove(name)
        self.policies.pop(name, None)

    def _spawn_drain(
        self, name: str, replicas: Iterable[_Replica], replica_set: _ReplicaSet | None = None
    ) -> None:
        batch = list(replicas)
        self._draining_sets[name] = self._draining_sets.get(name, 0) + 1

        async def drain() -> None:
            try:
                await self._drain_replicas(batch)
                if replica_set is not None and replica_set.lifecycle.can(S.STOPPED):
                    replica_set.lifecycle.move(S.STOPPED, "drained")
            finally:
                self._draining_sets[name] -= 1
                if not self._draining_sets[name]:
                    del self._draining_sets[name]

        task = asyncio.get_running_loop().create_task(drain(), name=f"drain-{name}")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def _drain_replicas(self, replicas: Iterable[_Replica]) -> None:
        async def one(replica: _Replica) -> None:
            await replica.engine.stop(timeout=self.drain_timeout_s)
            self._release(replica)
            if replica.lifecycle.can(S.STOPPED):
                replica.lifecycle.move(S.STOPPED, "drained")

        await asyncio.gather(*(one(r) for r in replicas))

    async def _stop_unregistered(self, replica_set: _ReplicaSet, cause: str) -> None:
        for replica in replica_set.replicas:
            await replica.engine.stop(timeout=0)
            self._release(replica)
            if replica.lifecycle.can(S.STOPPED):
                replica.lifecycle.move(S.STOPPED, cause)
        if replica_set.lifecycle.can(S.STOPPED):
            replica_set.lifecycle.move(S.STOPPED, cause)

    def _failed(self, replica_set: _ReplicaSet, holder: list[_Replica], reason: str) -> None:
        """A replica gave up: deregister it and place a new one in its slot."""
        if not holder or holder[0] not in replica_set.replicas:
            return  # it failed while starting, or after it left the set
        replica = holder[0]
        name = replica_set.deployment.name
        log.warning("deployment %s: replica %s failed: %s", name, replica.engine.name, reason)
        if replica.lifecycle.state is S.SERVING:
            self.coordinator.deregister(name, replica.engine.name)
            if self.watcher is not None:
                self.watcher.replica_down(name, replica.engine)
        if replica.lifecycle.can(S.FAILED):
            replica.lifecycle.move(S.FAILED, reason)
        self._spawn(self._replace(replica_set, replica, reason), f"replace-{name}")

    async def _replace(self, replica_set: _ReplicaSet, failed: _Replica, reason: str) -> None:
        await failed.engine.stop(timeout=0)
        self._release(failed)
        async with self._lock:
            if replica_set.lifecycle.state is not S.SERVING or failed not in replica_set.replicas:
                return
            failed.lifecycle.move(S.PENDING, f"placed again after: {reason}")
            try:
                fresh = await self._start_replica(replica_set, failed.index)
            except Exception:
                log.exception(
                    "deployment %s: replacing a failed replica failed", replica_set.deployment.name
                )
                return
            position = replica_set.replicas.index(failed)
            replica_set.replicas[position] = fresh
            self._register(replica_set, fresh, f"replaced a failed replica ({reason})")

    def _release(self, replica: _Replica) -> None:
        if self.placement is not None and replica.assignment is not None:
            self.placement.release(replica.assignment)
            replica.assignment = None

    def placements(self) -> tuple[Any, ...]:
        """Nodes and what occupies them (empty without a placement policy)."""
        return () if self.placement is None else self.placement.snapshot()

    def _spawn(self, work: Awaitable[Any], name: str) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)
