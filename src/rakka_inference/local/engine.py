"""LocalEngineCore: one local replica — the shared engine core plus two-tier supervision.

Admission, the queue, slots, the budget gate, deadlines, cancellation, the job table and
the report are the shared :class:`~rakka_inference.engine.core.EngineCore`'s, exactly as
for a remote replica. What is local's own lives in :mod:`rakka_inference.local.worker`::

    LocalEngineCore (this module: the replica, its context hooks, failing it)
      └─ WorkerActor   (stable; takes requests from the queue, hands them to the context)
           └─ ContextActor (restartable; owns the ModelRunner and the running requests)

A request moves along the one job table (:mod:`rakka_inference.engine.jobs`): QUEUED in
the engine's queue, DISPATCHED once the worker took it (it holds a slot on its way to the
context), RUNNING while a task of the context iterates the runner for it, ENDED once the
runner has let go of it — so a slot is free only once the work is.

Failures (decided by the kernel's supervision; see the worker module): a request whose
runner failed fails with that error. Requests caught in a context rebuild, or in a replica
that failed, fail with a retryable :class:`ContextPoisoned`, so the request can go to
another replica when nothing has reached its client yet; after the first visible chunk any
failure ends the stream as :class:`StreamInterrupted`. When the replica gives up,
:attr:`LocalEngineCore.failed` turns true and ``on_failed(cause)`` is called once: the owner
deregisters the replica and places a new one.

With tracing on, a request's stages here are spans under the caller's span at ``submit``:
``rakka.queue`` while QUEUED, ``rakka.engine`` while RUNNING (the runner serving it), each
ended by the move out of its state (:mod:`rakka_inference.core.tracing`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.errors import (
    ActorDead,
    Backpressure,
    ContextPoisoned,
    InferenceError,
    OperationRefused,
    RequestCancelled,
)
from rakka_inference.core.messages import DEFAULT_MAX_OUTPUT_TOKENS, EmbeddingRequest
from rakka_inference.core.policies import Serving
from rakka_inference.core.runner import BatchingRunner, EmbeddingRunner, ModelRunner
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetGate
from rakka_inference.engine.core import EngineCore, not_an_embedding_model
from rakka_inference.engine.jobs import Job, JobState
from rakka_inference.local.engine_metrics import EngineLoad
from rakka_inference.local.worker import REPLICA_SUPERVISION, WorkerActor

__all__ = ["LocalEngineCore", "ReportsLoad"]

log = logging.getLogger("rakka_inference.local.engine")


@runtime_checkable
class ReportsLoad(Protocol):
    """A runner whose engine reports its own load (an engine server's metrics)."""

    @property
    def engine_load(self) -> EngineLoad | None: ...


class LocalEngineCore(EngineCore):
    """One local replica. Start it with :meth:`start` inside an :class:`ActorSystem`.

    ``runner_factory`` builds a fresh runner for every context (the first, and one per
    rebuild); the context calls its ``load_weights()`` before serving.
    """

    def __init__(
        self,
        name: str,
        runner_factory: Callable[[], ModelRunner],
        *,
        serving: Serving,
        clock: Callable[[], float] = time.monotonic,
        budget: BudgetGate | None = None,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        on_failed: Callable[[Exception], None] | None = None,
        max_restarts: int = 3,
        restart_window_s: float = 60.0,
        stream_capacity: int = 64,
    ) -> None:
        super().__init__(
            name,
            serving=serving,
            clock=clock,
            budget=budget,
            default_max_output_tokens=default_max_output_tokens,
            stream_capacity=stream_capacity,
        )
        self.runner_factory = runner_factory
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self._on_failed = on_failed
        self._ready = asyncio.Event()
        self._stopping = False
        self._started: asyncio.Future[None] | None = None
        self._worker: ActorRef[Any] | None = None
        self.dispatcher: asyncio.Task[None] | None = None
        """The worker's dispatching task; cancelled by the worker, or by ``stop`` after a
        forced actor shutdown."""
        self.runner: ModelRunner | None = None
        """The current context's runner (None before the first one is loaded)."""
        self.generation = 0
        """How many contexts have been loaded: 1 after start, +1 per rebuild."""
        self.failure: Exception | None = None

    # ------------------------------------------------------------------ figures

    @property
    def context_restarts(self) -> int:
        """Contexts rebuilt since the replica started (poisoned, or out of memory loading)."""
        return max(0, self.generation - 1)

    @property
    def batch_size(self) -> int | None:
        """Requests in the runner's decode batch, where the runner batches (else None)."""
        runner = self.runner
        return runner.batch_size if isinstance(runner, BatchingRunner) else None

    @property
    def engine_load(self) -> EngineLoad | None:
        """The load the runner's engine reports of itself (an engine server), if any."""
        runner = self.runner
        return runner.engine_load if isinstance(runner, ReportsLoad) else None

    @property
    def load_score(self) -> float:
        """The router's measure: queued plus in-flight requests over capacity, plus what
        the engine reports where it does — its KV-cache use (0 to 1) and the requests
        waiting inside it over capacity — so of two replicas with as many requests, the one
        with room in its KV cache is preferred."""
        score = super().load_score
        load = self.engine_load
        if load is not None:
            score += load.kv_cache_usage or 0.0
            score += (load.waiting or 0.0) / max(1, self._limit)
        return score

    @property
    def failed(self) -> bool:
        """The replica gave up (restart limit, unrecoverable error): it serves nothing more."""
        return self.failure is not None

    @property
    def healthy(self) -> bool:
        """Started, not failed and not stopping: routing may send requests here."""
        return self._worker is not None and self._worker.is_alive and self._accepting

    @property
    def actor(self) -> ActorRef[Any] | None:
        """The replica's WorkerActor (None before ``start``)."""
        return self._worker

    def refusal(self) -> str:
        state = "has failed" if self.failed else "is shutting down"
        return f"engine {self.name} {state}"

    def check_embeddings(self, request: EmbeddingRequest) -> None:
        if self.runner is not None and not isinstance(self.runner, EmbeddingRunner):
            raise not_an_embedding_model(request)

    def cost_of(self, usage: Usage) -> float | None:
        runner = self.runner
        return None if runner is None else runner.estimate_cost(usage)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, system: ActorSystem, name: str | None = None) -> None:
        """Start the worker and its context; return once the first runner is loaded.

        Raises the failure if the replica gives up before that (``on_failed`` is called too).
        """
        if self._worker is not None:
            raise OperationRefused(f"engine {self.name} is already started")
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._started = started
        worker = system.spawn(
            lambda: WorkerActor(self), name or f"engine-{self.name}", supervisor=REPLICA_SUPERVISION
        )
        self._worker = worker
        terminated = asyncio.ensure_future(worker.wait_terminated())
        either: set[asyncio.Future[Any]] = {started, terminated}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            terminated.cancel()
        if not started.done():
            # The actors were stopped from outside (a forced shutdown) before they loaded.
            started.cancel()
            raise ActorDead(worker.path, "stopped before the model was loaded")
        started.result()

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish for up to ``timeout``
        seconds, then stop the actors; what is still running then is cancelled."""
        self._accepting = False
        self._stopping = True
        self._queue.close()
        worker = self._worker
        if worker is not None:
            if not self.failed and not await self.wait_idle(timeout):
                log.warning("engine %s: requests still running after %gs", self.name, timeout)
            worker.stop()
            await worker.wait_terminated()
        if self.dispatcher is not None:
            self.dispatcher.cancel()
            await asyncio.gather(self.dispatcher, return_exceptions=True)
        # Left over: never started (no worker) or orphaned by a forced actor shutdown.
        for job in list(self._jobs):
            running = job.state is JobState.RUNNING
            unserved = Backpressure(f"engine {self.name} stopped before serving the request")
            self.abort(job, self.teardown_error() if running else unserved)
        tasks = [job.task for job in self._jobs if job.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ the actors' side

    async def next_job(self) -> Job | None:
        """For the worker: wait for a free slot, a loaded context and a queued request,
        and take the request (it holds a slot from now on). None once the queue is closed
        and empty."""
        # Only this coroutine takes slots (one worker per engine), so a slot seen free
        # stays free while it waits for the context and the queue.
        while self._in_flight >= self._limit:
            await self.wait_for_slot()
        await self._ready.wait()
        while (job := await self._queue.get()) is not None and not self.take(job):
            pass  # its deadline passed while it was queued: it is ended
        return job

    def context_ready(self, runner: ModelRunner) -> None:
        """For the context: a runner is loaded; dispatching may go on."""
        self.runner = runner
        self.generation += 1
        self._ready.set()
        if self._started is not None and not self._started.done():
            self._started.set_result(None)

    def context_down(self) -> None:
        """For the context: it is going away; hold dispatching until the next one."""
        self._ready.clear()

    def teardown_error(self) -> InferenceError:
        """Why the requests still running on a context that goes away are cancelled."""
        if self.failure is not None:
            return ContextPoisoned(
                f"replica {self.name} failed ({type(self.failure).__name__}); try another"
            )
        if self._stopping:
            return RequestCancelled(f"engine {self.name} stopped before the request finished")
        return ContextPoisoned(f"the model context of {self.name} was rebuilt")

    def fail(self, cause: Exception) -> None:
        """The replica gives up (once): refuse new requests, fail every pending one with a
        retryable error, and call ``on_failed(cause)``."""
        if self.failure is not None:
            return
        self.failure = cause
        self._accepting = False
        self._queue.close()
        log.error("engine %s: replica failed: %r", self.name, cause)
        for job in list(self._jobs):
            self.abort(job, self.teardown_error())
        started = self._started
        if started is not None and not started.done():
            started.set_exception(cause)
        if self._on_failed is not None:
            try:
                self._on_failed(cause)
            except Exception:
                log.exception("engine %s: on_failed hook failed", self.name)
