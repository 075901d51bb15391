"""LocalEngineCore: one local replica — its queue, its slots, and its two-tier supervision.

The same surface as :class:`~rakka_inference.remote.engine.RemoteEngineCore` (``name``,
``load_score``, ``healthy``, ``in_flight``, ``queued``, ``capacity``, ``submit``,
``start``, ``stop``, ``on_complete``), so the coordinator and the gateway treat both alike.
The actors behind it live in :mod:`rakka_inference.local.worker`::

    LocalEngineCore (this module: queue, slots, accounting)
      └─ WorkerActor   (stable; takes requests from the queue, hands them to the context)
           └─ ContextActor (restartable; owns the ModelRunner and the running requests)

One request goes through one state table, :data:`~rakka_inference.local.worker.TRANSITIONS`::

    QUEUED ──► DISPATCHED ──► RUNNING ──► ENDED
       └──────────┴──────────────┴────────►┘

QUEUED: in the engine's :class:`~rakka_inference.engine.queue.RequestQueue`. DISPATCHED:
the worker took it and it holds a slot, on its way to the context. RUNNING: a task of the
context iterates the runner for it. ENDED is terminal, and :meth:`LocalEngineCore.end` is
the only way in: it releases what the request held — its queue entry, or its slot —
exactly once, whatever ended it (success, failure, the client leaving while queued or while
running, a poisoned context, a failed replica, a stop). A RUNNING request is ended by its
own task, after the runner has let go of it, so a slot is free only once the work is.

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
from typing import Any

from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.actors.system import ActorSystem
from rakka_inference.core import tracing
from rakka_inference.core.deployment import CapacityPolicy, Serving
from rakka_inference.core.errors import (
    ActorDead,
    Backpressure,
    ContextPoisoned,
    InferenceError,
    RequestCancelled,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult, Priority
from rakka_inference.core.runner import EmbeddingRunner, ModelRunner
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.tracing import NO_SPAN
from rakka_inference.engine.queue import RequestQueue
from rakka_inference.engine.report import RequestReport
from rakka_inference.local.worker import (
    REPLICA_SUPERVISION,
    JobState,
    LocalJob,
    WorkerActor,
    not_an_embedding_model,
)

__all__ = ["LocalEngineCore"]

log = logging.getLogger("rakka_inference.runtime.engine")


class LocalEngineCore:
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
        on_complete: Callable[[RequestReport], None] | None = None,
        on_failed: Callable[[Exception], None] | None = None,
        max_restarts: int = 3,
        restart_window_s: float = 60.0,
        stream_capacity: int = 64,
    ) -> None:
        self.name = name
        self.runner_factory = runner_factory
        self.serving = serving
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self.clock = clock
        self._on_complete = on_complete
        self._on_failed = on_failed
        self._stream_capacity = stream_capacity
        self._queue: RequestQueue[LocalJob] = RequestQueue(serving.queue_capacity)
        self._jobs: set[LocalJob] = set()
        self._limit = serving.max_concurrent
        self._in_flight = 0
        self._slot_free = asyncio.Event()
        self._ready = asyncio.Event()
        self._accepting = True
        self._stopping = False
        self._idle: asyncio.Future[None] | None = None
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
    def in_flight(self) -> int:
        """Requests holding a slot (dispatched or running)."""
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def capacity(self) -> int:
        return self._limit

    @property
    def failed(self) -> bool:
        """The replica gave up (restart limit, unrecoverable error): it serves nothing more."""
        return self.failure is not None

    @property
    def healthy(self) -> bool:
        """Started, not failed and not stopping: routing may send requests here."""
        return self._worker is not None and self._worker.is_alive and self._accepting

    @property
    def load_score(self) -> float:
        """Queued plus in-flight requests over capacity: the router's measure."""
        return (len(self._queue) + self._in_flight) / max(1, self._limit)

    @property
    def actor(self) -> ActorRef[Any] | None:
        """The replica's WorkerActor (None before ``start``)."""
        return self._worker

    def set_concurrency_limit(self, limit: int) -> None:
        """Run at most ``limit`` requests at once (budget throttling halves it)."""
        self._limit = max(1, min(limit, self.serving.max_concurrent))
        self._open_gate()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, system: ActorSystem, name: str | None = None) -> None:
        """Start the worker and its context; return once the first runner is loaded.

        Raises the failure if the replica gives up before that (``on_failed`` is called too).
        """
        if self._worker is not None:
            raise RuntimeError(f"engine {self.name} is already started")
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
            if self._jobs and not self.failed:
                idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._idle = idle
                try:
                    await asyncio.wait_for(asyncio.shield(idle), timeout)
                except TimeoutError:
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

    # ------------------------------------------------------------------ submit

    def submit(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> BoundedStream[TokenChunk]:
        """Queue ``request``; its chunks arrive on the returned stream.

        Raises Backpressure when full (by ``on_capacity_exhausted``), stopping or failed.
        """
        stream: BoundedStream[TokenChunk] = BoundedStream(self._stream_capacity)
        self._admit(request, stream, deadline, request.priority)
        return stream

    def submit_embedding(
        self, request: EmbeddingRequest, *, deadline: float | None = None
    ) -> BoundedStream[EmbeddingResult]:
        """Queue an embeddings request; the stream carries exactly one result."""
        if self.runner is not None and not isinstance(self.runner, EmbeddingRunner):
            raise not_an_embedding_model(request)
        stream: BoundedStream[EmbeddingResult] = BoundedStream(1)
        self._admit(request, stream, deadline, Priority.NORMAL)
        return stream

    def _admit(
        self,
        request: ChatRequest | EmbeddingRequest,
        stream: BoundedStream[Any],
        deadline: float | None,
        priority: Priority,
    ) -> None:
        if not self._accepting:
            state = "has failed" if self.failed else "is shutting down"
            raise Backpressure(f"engine {self.name} {state}")
        busy = self._in_flight + len(self._queue) >= self._limit
        if busy and self.serving.on_capacity_exhausted is not CapacityPolicy.QUEUE:
            raise Backpressure(f"all {self._limit} slots of {self.name} are busy")
        now = self.clock()
        job = LocalJob(request=request, stream=stream, deadline=deadline, submitted_at=now)
        job.ticket = self._queue.put(job, priority)
        job.trace = tracing.current()
        job.stage = job.trace.child(tracing.QUEUE)
        self._jobs.add(job)
        loop = asyncio.get_running_loop()
        job.timers.append(
            loop.call_later(self.serving.queue_timeout_ms / 1000.0, self._expire, job)
        )
        if deadline is not None:
            job.timers.append(loop.call_later(max(0.0, deadline - now), self._deadline, job))
        stream.on_close(lambda: self.abort(job, RequestCancelled("the client went away")))

    def _expire(self, job: LocalJob) -> None:
        if job.state is JobState.QUEUED:
            waited = self.serving.queue_timeout_ms / 1000.0
            self.end(job, Backpressure(f"waited {waited:g}s in the queue of {self.name}"))

    def _deadline(self, job: LocalJob) -> None:
        error = Timeout("the request's deadline passed", phase=TimeoutPhase.DEADLINE)
        self.abort(job, error)

    # ------------------------------------------------------------------ the actors' side

    async def next_job(self) -> LocalJob | None:
        """For the worker: wait for a free slot, a loaded context and a queued request,
        and move the request to DISPATCHED (it holds a slot from now on). None once the
        queue is closed and empty."""
        # Only this coroutine takes slots (one worker per engine), so a slot seen free
        # stays free while it waits for the context and the queue.
        while self._in_flight >= self._limit:
            self._slot_free.clear()
            await self._slot_free.wait()
        await self._ready.wait()
        job = await self._queue.get()
        if job is None:
            return None
        job.move(JobState.DISPATCHED)
        job.stage.end()
        job.stage = NO_SPAN
        self._in_flight += 1
        return job

    def begin(self, job: LocalJob, task: asyncio.Task[None]) -> None:
        """For the context: ``job`` now runs on ``task``."""
        job.move(JobState.RUNNING)
        job.task = task
        job.started_at = self.clock()
        job.stage = job.trace.child(tracing.ENGINE)

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

    # ------------------------------------------------------------------ ending

    def abort(self, job: LocalJob, error: InferenceError) -> None:
        """End ``job`` with ``error``: at once if it is not running, else by cancelling its
        task (which ends it once the runner has let go)."""
        if job.state is JobState.RUNNING:
            job.abort_error = job.abort_error or error  # the first reason given wins
            assert job.task is not None
            job.task.cancel()
        else:
            self.end(job, error)

    def end(self, job: LocalJob, error: InferenceError | None) -> None:
        """End ``job`` and release what it holds. Idempotent: only the first call counts."""
        previous = job.state
        if previous is JobState.ENDED:
            return
        job.move(JobState.ENDED)
        if previous is JobState.QUEUED:
            assert job.ticket is not None
            job.ticket.cancel()  # False when a drain already took it: counted there
        else:
            assert self._in_flight > 0, "a slot was released twice"
            self._in_flight -= 1
            self._open_gate()
        for timer in job.timers:
            timer.cancel()
        self._jobs.discard(job)
        if error is not None:
            job.stage.fail(error)
        job.stage.end()
        if error is not None and job.stream.committed and not isinstance(error, RequestCancelled):
            interrupted = StreamInterrupted(f"{error.message} (after part of the answer was sent)")
            interrupted.__cause__ = error
            error = interrupted
        self._report(job, error)
        if not self._jobs and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _open_gate(self) -> None:
        if self._in_flight < self._limit:
            self._slot_free.set()

    def _report(self, job: LocalJob, error: InferenceError | None) -> None:
        now = self.clock()
        started = job.started_at or now
        runner = self.runner
        report = RequestReport(
            request_id=job.request.request_id,
            outcome="ok" if error is None else error.outcome,
            error=error,
            attempts=0 if job.task is None else 1,
            usage=job.usage,
            cost_usd=None if runner is None else runner.estimate_cost(job.usage),
            queued_s=started - job.submitted_at,
            latency_s=now - job.submitted_at,
            ttft_s=None if job.first_chunk_at is None else job.first_chunk_at - job.submitted_at,
        )
        job.stream.trailer = report
        if error is None:
            job.stream.finish()
        else:
            job.stream.fail(error)
        if self._on_complete is None:
            return
        try:
            self._on_complete(report)
        except Exception:
            log.exception("engine %s: on_complete hook failed", self.name)
