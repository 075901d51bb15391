"""Local-engine replicas on a Ray cluster: one actor per replica, reached by streaming calls.

A remote deployment's replicas live in every gateway (a request to a provider never crosses
nodes). A local deployment's replicas hold a model and its memory, so the cluster runs each
once: :class:`RayLocalReplica` is one replica as a Ray actor, named by its deployment and
index (``rakka-local-<deployment>-<index>``), placed by the deployment manager with the GPUs
the deployment needs (``num_gpus``: :func:`~rakka_inference.runtime.placement.gpus_needed`),
so Ray puts it on a node that has them. Inside, it is the same two-tier local engine as in
one process (:class:`~rakka_inference.local.engine.LocalEngineCore`: the WorkerActor and
its restartable ContextActor).

Every gateway reaches it through :class:`RayReplicaEngine`, an
:class:`~rakka_inference.runtime.replica_set.Engine` of the gateway's own topology: a chat
request is one Ray streaming call (``num_returns="streaming"``) whose items are the
engine's chunks, then its :class:`~rakka_inference.engine.report.RequestReport`; an
embeddings request is one call. The deadline travels as the seconds left. A replica that
cannot be reached (its actor, or its node, is gone) fails the request with
:class:`~rakka_inference.core.errors.ReplicaUnavailable` before anything reached the client,
so another replica or the deployment's fallback serves it, and the proxy finds the
replica again by name once the manager has placed it anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import ray

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    Backpressure,
    ConfigError,
    InferenceError,
    ReplicaUnavailable,
    SecretError,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import Serving
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.engine.report import RequestReport
from rakka_inference.engine.stream import RequestStream
from rakka_inference.runtime.replica_set import Engine
from rakka_inference.runtime.replicas import EngineBuilder

__all__ = [
    "LOCAL_PREFIX",
    "RayLocalReplica",
    "RayReplicaEngine",
    "deployment_fingerprint",
    "local_replica_name",
    "replica_index",
]

log = logging.getLogger("rakka_inference.cluster.ray_local")

LOCAL_PREFIX = "rakka-local-"
UNAVAILABLE_FOR_S = 1.0
"""How long a replica that could not be reached counts as unhealthy (routing avoids it)."""

T = TypeVar("T")


def local_replica_name(deployment: Deployment, index: int) -> str:
    """The actor name of replica ``index`` of the local deployment: its name, index and
    config fingerprint, so a changed deployment's new replicas start beside the old ones
    and each gateway reaches the ones of the config it runs."""
    return f"{LOCAL_PREFIX}{deployment.name}-{index}-{deployment_fingerprint(deployment)}"


def replica_index(deployment: str, engine_name: str) -> int:
    """The index in a replica's engine name (``<deployment>-<index>``, maybe ``.g<n>``)."""
    return int(engine_name[len(deployment) + 1 :].split(".", 1)[0])


def deployment_fingerprint(deployment: Deployment) -> str:
    """Whether two configs of a deployment are the same (its replicas are replaced when not).
    Built from its repr, which never shows a secret's value."""
    return hashlib.sha256(repr(deployment).encode()).hexdigest()[:16]


class RayLocalReplica:
    """One replica of a local deployment, as a Ray actor (see the module docstring)."""

    def __init__(self, source: str, base_dir: str) -> None:
        self.source = source
        self.base_dir = Path(base_dir)
        self.engine: Engine | None = None
        self.system: ActorSystem | None = None
        self.deployment = ""
        self.index = 0
        self.fingerprint = ""
        self.failure: str | None = None

    async def start(self, text: str, deployment: str, index: int) -> dict[str, Any]:
        """Load the replica of ``deployment`` in the config ``text``; what it is, or why not."""
        if self.engine is not None:
            return self.describe()
        try:
            config = parse_config(text, self.source, base_dir=self.base_dir)
            chosen = config.deployment(deployment)
            builder = EngineBuilder()
            builder.check(chosen)
            self.system = ActorSystem(f"local-{deployment}-{index}")
            # Ray gave this actor its GPUs (``num_gpus``) and set CUDA_VISIBLE_DEVICES
            # to them: an engine process the replica starts gets the same ones.
            gpus = tuple(str(gpu) for gpu in ray.get_gpu_ids())
            engine = await builder.build(chosen, f"{deployment}-{index}", self._failed, gpus=gpus)
            await engine.start(self.system)
        except (ConfigError, SecretError, KeyError) as error:
            return {"ok": False, "status": 400, "message": str(error)}
        self.engine = engine
        self.deployment, self.index = deployment, index
        self.fingerprint = deployment_fingerprint(chosen)
        return self.describe()

    def _failed(self, reason: str) -> None:
        self.failure = reason
        log.error("local replica %s-%d gave up: %s", self.deployment, self.index, reason)

    def describe(self) -> dict[str, Any]:
        engine = self.engine
        return {
            "ok": engine is not None,
            "node": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "deployment": self.deployment,
            "index": self.index,
            "fingerprint": self.fingerprint,
            "healthy": engine is not None and engine.healthy and self.failure is None,
            "in_flight": 0 if engine is None else engine.in_flight,
            "queued": 0 if engine is None else engine.queued,
            "capacity": 0 if engine is None else engine.capacity,
            "failure": self.failure,
        }

    async def chat(self, request: ChatRequest, timeout: float | None) -> AsyncIterator[object]:
        """The answer's chunks, then its report (a Ray streaming call)."""
        stream = self._engine().submit(request, deadline=_deadline(timeout))
        try:
            async for chunk in stream:
                yield chunk
        except InferenceError:
            pass  # the report carries it
        finally:
            stream.close()
        yield _report_of(stream)

    async def embed(
        self, request: EmbeddingRequest, timeout: float | None
    ) -> tuple[EmbeddingResult | None, RequestReport]:
        stream = self._engine().submit_embedding(request, deadline=_deadline(timeout))
        result: EmbeddingResult | None = None
        try:
            async for item in stream:
                result = item
        except InferenceError:
            pass
        finally:
            stream.close()
        return result, _report_of(stream)

    def _engine(self) -> Engine:
        if self.engine is None:
            raise ReplicaUnavailable("the replica has not started")
        return self.engine

    async def stop(self, grace_s: float) -> None:
        if self.engine is not None:
            await self.engine.stop(timeout=grace_s)
        if self.system is not None:
            await self.system.shutdown(timeout=grace_s)

    async def close(self) -> None:
        from rakka_inference.cluster.ray_transport import exit_this_actor  # noqa: PLC0415

        exit_this_actor()


def _deadline(timeout: float | None) -> float | None:
    loop = asyncio.get_running_loop()
    return None if timeout is None else loop.time() + timeout


def _report_of(stream: RequestStream[Any]) -> RequestReport:
    report = stream.report
    if report is None:  # pragma: no cover - an engine always reports
        raise ReplicaUnavailable("the replica's engine ended without a report")
    return report


class RayReplicaEngine:
    """A gateway's way to one local replica on the cluster (see the module docstring)."""

    def __init__(
        self,
        namespace: str,
        deployment: Deployment,
        index: int,
        name: str,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.namespace = namespace
        self.deployment = deployment
        self.index = index
        self._name = name
        self._clock = clock
        self._actor = local_replica_name(deployment, index)
        self._handle: Any = None
        self._in_flight = 0
        self._limit = deployment.serving.max_concurrent
        self._unhealthy_until = -math.inf
        self._relays: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ Engine

    @property
    def name(self) -> str:
        return self._name

    @property
    def healthy(self) -> bool:
        return self._clock() >= self._unhealthy_until

    @property
    def load_score(self) -> float:
        return self._in_flight / max(1, self._limit)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return 0

    @property
    def capacity(self) -> int:
        return self._limit

    @property
    def serving(self) -> Serving:
        return self.deployment.serving

    def set_concurrency_limit(self, limit: int) -> None:
        self._limit = limit

    async def start(self, system: ActorSystem, name: str | None = None) -> None:
        """Nothing to start here: the replica is the deployment manager's actor."""

    async def stop(self, timeout: float = 30.0) -> None:
        """Let the requests this gateway relays finish (within ``timeout``)."""
        if self._relays:
            await asyncio.wait(set(self._relays), timeout=timeout)

    def submit(
        self,
        request: ChatRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[TokenChunk]:
        # max_wait_s bounds the waits between a remote engine's retries; a local replica
        # has none, so it is not sent.
        stream: RequestStream[TokenChunk] = RequestStream()
        self._spawn(stream, self._relay_chat(request, deadline, stream), request.request_id)
        return stream

    def submit_embedding(
        self,
        request: EmbeddingRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[EmbeddingResult]:
        stream: RequestStream[EmbeddingResult] = RequestStream()
        self._spawn(stream, self._relay_embedding(request, deadline, stream), request.request_id)
        return stream

    # ------------------------------------------------------------------ relays

    def _spawn(self, stream: RequestStream[Any], relay: Any, request_id: str) -> None:
        if self._in_flight >= self._limit:
            relay.close()
            self._fail(
                stream, Backpressure(f"replica {self._name} is at its limit"), request_id, None
            )
            return
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(relay)
        self._relays.add(task)

        def abort() -> None:  # the client went away: stop the replica's work
            task.cancel()

        stream.on_close(abort)

        def done(finished: asyncio.Task[None]) -> None:
            self._relays.discard(finished)
            self._in_flight -= 1

        task.add_done_callback(done)

    async def _relay_chat(
        self, request: ChatRequest, deadline: float | None, stream: RequestStream[TokenChunk]
    ) -> None:
        started = self._clock()
        generator: Any = None
        try:
            generator = (
                self._replica()
                .chat.options(num_returns="streaming")
                .remote(request, self._timeout(deadline))
            )
            async for ref in generator:
                item = await ref
                if isinstance(item, RequestReport):
                    self._end(stream, item)
                    return
                await stream.put(item)
            raise ReplicaUnavailable(f"replica {self._name} ended its answer without a report")
        except asyncio.CancelledError:
            if generator is not None:
                with contextlib.suppress(Exception):
                    ray.cancel(generator)
            raise
        except (ray.exceptions.RayError, ValueError, ReplicaUnavailable) as error:
            self._fail(stream, self._unavailable(error), request.request_id, started)

    async def _relay_embedding(
        self,
        request: EmbeddingRequest,
        deadline: float | None,
        stream: RequestStream[EmbeddingResult],
    ) -> None:
        started = self._clock()
        try:
            answer = await self._replica().embed.remote(request, self._timeout(deadline))
            result, report = answer
            if result is not None:
                await stream.put(result)
            self._end(stream, report)
        except (ray.exceptions.RayError, ValueError) as error:
            self._fail(stream, self._unavailable(error), request.request_id, started)

    def _replica(self) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self._actor, namespace=self.namespace)
        return self._handle

    def _timeout(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - self._clock())

    def _unavailable(self, error: BaseException) -> ReplicaUnavailable:
        self._handle = None  # found again by name: the manager may have placed it anew
        self._unhealthy_until = self._clock() + UNAVAILABLE_FOR_S
        if isinstance(error, ReplicaUnavailable):
            return error
        log.warning("local replica %s is unreachable: %r", self._actor, error)
        return ReplicaUnavailable(
            f"replica {self._name} of {self.deployment.name!r} is unreachable"
        )

    @staticmethod
    def _end(stream: RequestStream[Any], report: RequestReport) -> None:
        stream.report = report
        if report.error is not None:
            stream.fail(report.error)
        else:
            stream.finish()

    def _fail(
        self,
        stream: RequestStream[Any],
        error: InferenceError,
        request_id: str,
        started: float | None,
    ) -> None:
        elapsed = 0.0 if started is None else max(0.0, self._clock() - started)
        stream.report = RequestReport(
            request_id=request_id,
            outcome=error.outcome,
            error=error,
            attempts=0,
            usage=Usage(),
            cost_usd=None,
            queued_s=0.0,
            latency_s=elapsed,
            ttft_s=None,
        )
        stream.fail(error)
