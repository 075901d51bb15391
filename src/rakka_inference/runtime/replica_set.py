"""Replica sets and their supervisor: start, register, drain, stop, and place again.

A deployment runs as a :class:`ReplicaSet`, one engine per replica, each moved along the
table of :mod:`rakka_inference.runtime.lifecycle`. The :class:`ReplicaSupervisor` does the
moves that touch engines and the coordinator; *which* set serves a deployment is the
catalog's decision (:class:`~rakka_inference.runtime.manager.DeploymentManager`).

- :meth:`ReplicaSupervisor.start_set` builds and starts every replica of a set and
  registers none: a set that started takes no request until :meth:`~ReplicaSupervisor.serve`.
  A set that fails to start is stopped whole before the error leaves.
- :meth:`~ReplicaSupervisor.serve` registers a started set; it never awaits, so a caller
  swapping several sets in one go does so between two requests.
- :meth:`~ReplicaSupervisor.retire` deregisters a serving set at once and drains it in the
  background: its queued and running requests finish on it.
- A replica that gives up (a local context poisoned four times in 60 s) is deregistered,
  marked failed, and a fresh one is placed in its slot.

Draining and replacing happen in background tasks; :meth:`~ReplicaSupervisor.aclose` waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import Serving
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.stream import RequestStream
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.lifecycle import DeploymentState, Lifecycle
from rakka_inference.runtime.placement import Assignment, Placement

__all__ = [
    "Engine",
    "EngineFactory",
    "Replica",
    "ReplicaSet",
    "ReplicaSupervisor",
    "ReplicaWatcher",
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
        self,
        request: ChatRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[TokenChunk]: ...

    def submit_embedding(
        self,
        request: EmbeddingRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[EmbeddingResult]: ...

    def set_concurrency_limit(self, limit: int) -> None: ...

    async def start(self, system: ActorSystem, name: str | None = None) -> None: ...

    async def stop(self, timeout: float = 30.0) -> None: ...


class EngineFactory(Protocol):
    """Builds (not starts) the engine of replica ``index`` of a deployment."""

    def check(self, deployment: Deployment) -> None:
        """Raise ConfigError when this deployment cannot be built at all (before any change)."""
        ...

    async def build(
        self,
        deployment: Deployment,
        name: str,
        on_failed: Callable[[str], None],
        *,
        gpus: tuple[str, ...] = (),
    ) -> Engine:
        """The engine, called ``name``, on the ``gpus`` placement gave it;
        ``on_failed(reason)`` is how it says it gave up."""
        ...


@runtime_checkable
class StagesConfig(Protocol):
    """A factory with state shared across deployments (rate limiters, circuit breakers,
    cost ledgers) that an apply changes all or nothing: the new engines are built against
    a staged config, and what running engines use changes only when the apply commits."""

    def stage(self, kept: Iterable[Deployment]) -> None:
        """An apply begins; ``kept`` are the running deployments it leaves as they are."""
        ...

    def commit(self) -> None:
        """The apply's engines serve from now on (called in the swap: never awaits)."""
        ...

    def abort(self) -> None:
        """The apply was refused: everything stays as it was before :meth:`stage`."""
        ...


class ReplicaWatcher(Protocol):
    """Told when a replica starts or stops taking requests (metrics)."""

    def replica_up(self, deployment: str, engine: Engine) -> None: ...

    def replica_down(self, deployment: str, engine: Engine) -> None: ...


@dataclass(eq=False, slots=True)
class Replica:
    index: int
    engine: Engine
    lifecycle: Lifecycle
    assignment: Assignment | None = None


@dataclass(eq=False, slots=True)
class ReplicaSet:
    deployment: Deployment
    generation: int
    lifecycle: Lifecycle
    replicas: list[Replica] = field(default_factory=list)


class ReplicaSupervisor:
    """Starts, registers, drains and replaces the replicas of every set it is given."""

    def __init__(
        self,
        system: ActorSystem,
        coordinator: DpCoordinator,
        factory: EngineFactory,
        *,
        watcher: ReplicaWatcher | None = None,
        placement: Placement | None = None,
        drain_timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.system = system
        self.coordinator = coordinator
        self.factory = factory
        self.watcher = watcher
        self.placement = placement
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.lock = asyncio.Lock()
        """Held by every change to a set's membership (the manager's, and replacements)."""
        self._background: set[asyncio.Task[None]] = set()
        self._draining_sets: dict[str, int] = {}
        self._started = 0

    def draining_sets(self, name: str) -> int:
        """How many of ``name``'s retired sets (or scaled-down batches) are still draining."""
        return self._draining_sets.get(name, 0)

    # ------------------------------------------------------------------ starting

    async def start_set(self, deployment: Deployment, generation: int) -> ReplicaSet:
        """Build and start every replica of a new set; register none of them."""
        replica_set = ReplicaSet(
            deployment,
            generation,
            Lifecycle(f"deployment {deployment.name!r} (generation {generation})", self.clock),
        )
        try:
            for index in range(deployment.replicas):
                replica_set.replicas.append(await self.start_replica(replica_set, index))
        except BaseException as error:
            replica_set.lifecycle.move(S.FAILED, f"start failed: {type(error).__name__}")
            await self.stop_unregistered(replica_set, "start failed")
            raise
        return replica_set

    async def start_replica(self, replica_set: ReplicaSet, index: int) -> Replica:
        """Build, place and start replica ``index`` of ``replica_set`` (not registered)."""
        deployment = replica_set.deployment
        holder: list[Replica] = []
        name = f"{deployment.name}-{index}"
        if replica_set.generation > 1:
            name += f".g{replica_set.generation}"
        assignment = None
        if self.placement is not None:
            assignment = self.placement.place(deployment, index, generation=replica_set.generation)
        try:
            engine = await self.factory.build(
                deployment,
                name,
                lambda reason: self._failed(replica_set, holder, reason),
                gpus=() if assignment is None else assignment.gpus,
            )
        except BaseException:
            if assignment is not None and self.placement is not None:
                self.placement.release(assignment)
            raise
        replica = Replica(index, engine, Lifecycle(f"replica {engine.name!r}", self.clock))
        replica.assignment = assignment
        holder.append(replica)
        try:
            self._started += 1  # actor names stay unique across replacements
            await engine.start(self.system, f"engine-{engine.name}-{self._started}")
        except BaseException:
            replica.lifecycle.move(S.FAILED, "start failed")
            await engine.stop(timeout=0)
            self.release(replica)
            raise
        return replica

    async def stop_unregistered(self, replica_set: ReplicaSet, cause: str) -> None:
        """Stop a set that never served (nothing was routed to it): no drain."""
        await self.stop_replicas(replica_set.replicas, cause)
        if replica_set.lifecycle.can(S.STOPPED):
            replica_set.lifecycle.move(S.STOPPED, cause)

    async def stop_replicas(self, replicas: Iterable[Replica], cause: str) -> None:
        """Stop replicas that were never registered, at once."""
        for replica in replicas:
            await replica.engine.stop(timeout=0)
            self.release(replica)
            if replica.lifecycle.can(S.STOPPED):
                replica.lifecycle.move(S.STOPPED, cause)

    # ------------------------------------------------------------------ routing

    def serve(self, replica_set: ReplicaSet, cause: str) -> None:
        """Register a started set: it takes requests from now on. Never awaits."""
        for replica in replica_set.replicas:
            # One that gave up while the set was starting is being placed again: its
            # replacement registers itself.
            if replica.lifecycle.state is S.PENDING:
                self.register(replica_set, replica, cause)
        replica_set.lifecycle.move(S.SERVING, cause)
        log.info(
            "deployment %s serving (%s): %s x%d, generation %d",
            replica_set.deployment.name,
            cause,
            replica_set.deployment.runtime.value,
            len(replica_set.replicas),
            replica_set.generation,
        )

    def register(self, replica_set: ReplicaSet, replica: Replica, cause: str) -> None:
        name = replica_set.deployment.name
        self.coordinator.register(name, replica.engine)
        replica.lifecycle.move(S.SERVING, cause)
        if self.watcher is not None:
            self.watcher.replica_up(name, replica.engine)

    def deregister(self, replica_set: ReplicaSet, replica: Replica, cause: str) -> None:
        name = replica_set.deployment.name
        self.coordinator.deregister(name, replica.engine.name)
        if replica.lifecycle.can(S.DRAINING):
            replica.lifecycle.move(S.DRAINING, cause)
        if self.watcher is not None:
            self.watcher.replica_down(name, replica.engine)

    # ------------------------------------------------------------------ draining

    def retire(self, replica_set: ReplicaSet, cause: str) -> None:
        """Deregister a serving set now; drain and stop it in the background."""
        replica_set.lifecycle.move(S.DRAINING, cause)
        for replica in replica_set.replicas:
            self.deregister(replica_set, replica, cause)
        self.spawn_drain(replica_set.deployment.name, replica_set.replicas, replica_set)

    def spawn_drain(
        self, name: str, replicas: Iterable[Replica], replica_set: ReplicaSet | None = None
    ) -> None:
        """Drain deregistered replicas in the background (and then stop their set)."""
        batch = list(replicas)
        self._draining_sets[name] = self._draining_sets.get(name, 0) + 1

        async def drain() -> None:
            try:
                await self.drain_replicas(batch)
                if replica_set is not None and replica_set.lifecycle.can(S.STOPPED):
                    replica_set.lifecycle.move(S.STOPPED, "drained")
            finally:
                self._draining_sets[name] -= 1
                if not self._draining_sets[name]:
                    del self._draining_sets[name]

        self._spawn(drain(), f"drain-{name}")

    async def drain_replicas(self, replicas: Iterable[Replica]) -> None:
        """Let every request on ``replicas`` finish (up to the drain timeout); stop them."""

        async def one(replica: Replica) -> None:
            await replica.engine.stop(timeout=self.drain_timeout_s)
            self.release(replica)
            if replica.lifecycle.can(S.STOPPED):
                replica.lifecycle.move(S.STOPPED, "drained")

        await asyncio.gather(*(one(r) for r in replicas))

    async def aclose(self) -> None:
        """Wait for every drain and replacement under way."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------------ failures

    def _failed(self, replica_set: ReplicaSet, holder: list[Replica], reason: str) -> None:
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

    async def _replace(self, replica_set: ReplicaSet, failed: Replica, reason: str) -> None:
        await failed.engine.stop(timeout=0)
        self.release(failed)
        async with self.lock:
            if replica_set.lifecycle.state is not S.SERVING or failed not in replica_set.replicas:
                return
            failed.lifecycle.move(S.PENDING, f"placed again after: {reason}")
            try:
                fresh = await self.start_replica(replica_set, failed.index)
            except Exception:
                log.exception(
                    "deployment %s: replacing a failed replica failed", replica_set.deployment.name
                )
                return
            position = replica_set.replicas.index(failed)
            replica_set.replicas[position] = fresh
            self.register(replica_set, fresh, f"replaced a failed replica ({reason})")

    # ------------------------------------------------------------------ placement

    def release(self, replica: Replica) -> None:
        if self.placement is not None and replica.assignment is not None:
            self.placement.release(replica.assignment)
            replica.assignment = None

    def placements(self) -> tuple[Any, ...]:
        """Nodes and what occupies them (empty without a placement policy)."""
        return () if self.placement is None else self.placement.snapshot()

    def _spawn(self, work: Awaitable[None], name: str) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run(), name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
