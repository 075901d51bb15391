"""WorkerActor and ContextActor: the two tiers of a local replica's supervision (DESIGN §2).

::

    WorkerActor   stable, top level: takes requests from the engine's queue; supervises ↓
      └─ ContextActor   restartable: owns the ModelRunner (GPU context, weights) and the
                        tasks of the requests running on it

The ContextActor builds a runner from the engine's factory and loads its weights in
``on_start``, then starts one task per request it is handed. A runner whose context can be
lost between requests (an engine server process: a :class:`~rakka_inference.core.runner.
SupervisedRunner`) is watched by a task of the context too, and closed (the process
stopped) when the context stops. A task whose runner raises an
engine error (or a bug) ends its own request with that error and reports the error to its
ContextActor, which raises it from ``receive``: from there the kernel decides, by exception
type, with :data:`CONTEXT_DIRECTIVES` as the WorkerActor's strategy:

====================  ==========  ===============================================
error                 directive   effect
====================  ==========  ===============================================
ContextPoisoned       RESTART     a new runner, weights loaded again; the requests
                                  still running on the old one fail retryably;
                                  queued ones wait for the new context
OutOfMemory           RESUME      the context stays; only that request failed
Unrecoverable         STOP        the context stops; the WorkerActor, told as its
                                  watcher, fails the replica and stops
any other Exception   RESTART     a bug in the runner: its state is unknown
====================  ==========  ===============================================

At most ``max_restarts`` restarts within ``restart_window_s`` (3 in 60 s), counted by the
kernel on the actor system's clock. One more is escalated: the WorkerActor fails with it,
and its own strategy (:data:`REPLICA_SUPERVISION`) stops it — in ``on_failure`` it marks
the replica failed first, which fails every pending request retryably and calls the
engine's ``on_failed``.

Several requests of one batch can fail on one poisoned context at once; a report names
the ContextActor instance it came from, and a new instance ignores reports about an old
one, so one poisoning is one restart. Out of memory while *loading* weights is a context
that could not be built: it is raised as ContextPoisoned, to be retried within the limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from rakka_inference.actors.actor import Actor, Terminated
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.supervision import Directive, OneForOneStrategy
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    ActorError,
    ContextPoisoned,
    EngineError,
    InferenceError,
    InternalError,
    OutOfMemory,
    RequestCancelled,
    Unrecoverable,
)
from rakka_inference.core.messages import EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import Serving
from rakka_inference.core.runner import EmbeddingRunner, ModelRunner, SupervisedRunner
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.core import not_an_embedding_model
from rakka_inference.engine.jobs import Job, JobState

__all__ = [
    "CONTEXT_DIRECTIVES",
    "REPLICA_SUPERVISION",
    "ContextActor",
    "ContextHost",
    "RunJob",
    "RunnerFailed",
    "WorkerActor",
]

log = logging.getLogger("rakka_inference.local.worker")

CONTEXT_DIRECTIVES: Mapping[type[BaseException], Directive] = {
    ContextPoisoned: Directive.RESTART,
    OutOfMemory: Directive.RESUME,
    Unrecoverable: Directive.STOP,
    Exception: Directive.RESTART,
}
"""How the WorkerActor decides for its ContextActor, by exception type."""

REPLICA_SUPERVISION = OneForOneStrategy({Exception: Directive.STOP})
"""How a WorkerActor's own failure is decided: the replica stops (it is re-placed)."""


class ContextHost(Protocol):
    """What the two tiers need of their engine (:class:`~rakka_inference.local.engine.
    ContextHost`): its figures, its job table and its context hooks."""

    name: str
    serving: Serving
    clock: Callable[[], float]
    runner_factory: Callable[[], ModelRunner]
    max_restarts: int
    restart_window_s: float
    dispatcher: asyncio.Task[None] | None

    async def next_job(self) -> Job | None: ...

    def begin(self, job: Job, task: asyncio.Task[None], stage: str | None = None) -> None: ...

    def abort(self, job: Job, error: InferenceError) -> None: ...

    def end(self, job: Job, error: InferenceError | None) -> None: ...

    async def deliver(self, job: Job, chunk: TokenChunk) -> bool: ...

    async def deliver_embedding(self, job: Job, result: EmbeddingResult) -> None: ...

    def context_ready(self, runner: ModelRunner) -> None: ...

    def context_down(self) -> None: ...

    def settle(self, job: Job) -> None: ...

    def teardown_error(self) -> InferenceError: ...

    def fail(self, cause: Exception) -> None: ...


# ---------------------------------------------------------------------- actors


@dataclass(frozen=True, slots=True)
class RunJob:
    """Worker → context: run this (dispatched) request."""

    job: Job


@dataclass(frozen=True, slots=True)
class RunnerFailed:
    """Request task → its context: the runner failed; let the supervisor decide."""

    error: Exception
    context: ContextActor


class WorkerActor(Actor[object]):
    """The stable tier: dispatches queued requests to the context and supervises it."""

    def __init__(self, engine: ContextHost) -> None:
        self.engine = engine
        self.supervisor_strategy = OneForOneStrategy(
            CONTEXT_DIRECTIVES, max_restarts=engine.max_restarts, within_s=engine.restart_window_s
        )
        self._dispatcher: asyncio.Task[None] | None = None

    async def on_start(self) -> None:
        engine = self.engine
        # Room for every dispatched request and one failure report per running request.
        capacity = 2 * engine.serving.max_concurrent + 8
        context = self.context.spawn(
            lambda: ContextActor(engine), "context", mailbox_capacity=capacity
        )
        self.context.watch(context)
        # Dispatching waits (for slots, for a loaded context, for requests), so it runs on
        # a task of its own: the actor stays free to handle its child's failures.
        self._dispatcher = engine.dispatcher = asyncio.get_running_loop().create_task(
            self._dispatch(context), name=f"dispatch:{engine.name}"
        )

    async def _dispatch(self, context: ActorRef[RunJob | RunnerFailed]) -> None:
        engine = self.engine
        while (job := await engine.next_job()) is not None:
            try:
                context.tell(RunJob(job))
            except ActorError:
                engine.end(job, engine.teardown_error())

    async def on_terminated(self, event: Terminated) -> None:
        # Only the context is watched, and it stops on its own only when its runner is
        # unrecoverable: the replica is done.
        cause = event.cause
        self.engine.fail(cause if isinstance(cause, Exception) else Unrecoverable(repr(cause)))
        self.context.stop()

    async def on_failure(self, error: Exception, message: object) -> None:
        # The context escalated (restart limit reached), or this actor has a bug.
        self.engine.fail(error)

    async def on_stop(self) -> None:
        # on_stop runs only after on_start succeeded, which started the dispatcher.
        dispatcher = self._dispatcher
        assert dispatcher is not None
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)


class ContextActor(Actor[RunJob | RunnerFailed]):
    """The restartable tier: one runner, loaded, and the requests running on it."""

    def __init__(self, engine: ContextHost) -> None:
        self.engine = engine
        self.runner: ModelRunner | None = None
        self._running: dict[asyncio.Task[None], Job] = {}
        self._watch: asyncio.Task[None] | None = None
        self._supervised: SupervisedRunner | None = None

    async def on_start(self) -> None:
        runner = self.engine.runner_factory()
        try:
            await runner.load_weights()
        except OutOfMemory as error:
            raise ContextPoisoned(f"out of memory loading the model: {error.message}") from error
        self.runner = runner
        if isinstance(runner, SupervisedRunner):
            self._supervised = runner
            self._watch = asyncio.get_running_loop().create_task(
                self._watching(runner), name=f"watch:{self.engine.name}"
            )
        self.engine.context_ready(runner)

    async def receive(self, message: RunJob | RunnerFailed) -> None:
        if isinstance(message, RunnerFailed):
            if message.context is self:
                raise message.error
            return  # about a context this one replaced: that poisoning is handled
        job = message.job
        if job.state is not JobState.DISPATCHED:
            return  # ended on its way here (the client left, a deadline passed)
        runner = self.runner
        assert runner is not None
        task = asyncio.get_running_loop().create_task(
            self._serve(job, runner), name=f"request:{job.request.request_id}"
        )
        self.engine.begin(job, task, tracing.ENGINE)
        self._running[task] = job
        task.add_done_callback(self._settle)

    async def on_stop(self) -> None:
        engine = self.engine
        engine.context_down()
        watch = self._watch
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if self._running:
            error = engine.teardown_error()
            for job in list(self._running.values()):
                engine.abort(job, error)  # cancels the task; the task ends the request
            await asyncio.gather(*self._running, return_exceptions=True)
        supervised = self._supervised
        if supervised is not None:
            try:
                await supervised.close()
            except Exception:
                log.exception("engine %s: closing the runner failed", engine.name)

    async def _watching(self, runner: SupervisedRunner) -> None:
        """The runner's own supervision: a context lost between requests is a failure."""
        try:
            await runner.watch()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._report(error)

    def _settle(self, task: asyncio.Task[None]) -> None:
        job = self._running.pop(task, None)
        if job is not None:
            self.engine.settle(job)

    # ------------------------------------------------------------------ one request

    async def _serve(self, job: Job, runner: ModelRunner) -> None:
        error: InferenceError | None = None
        supervise: Exception | None = None
        try:
            request = job.request
            job.attempts = 1
            if isinstance(request, EmbeddingRequest):
                if not isinstance(runner, EmbeddingRunner):
                    raise not_an_embedding_model(request)
                await self.engine.deliver_embedding(job, await runner.embed(request))
            else:
                await self._stream(job, runner.execute(request))
        except asyncio.CancelledError:
            error = job.abort_error or RequestCancelled("the request was cancelled")
            raise
        except InferenceError as failure:
            # A runner that answers an abort with an error still ends for the abort's reason.
            error = job.abort_error or failure
            if isinstance(failure, EngineError):
                supervise = failure
        except Exception as bug:
            log.exception("engine %s: the runner failed unexpectedly", self.engine.name)
            error = InternalError(f"unexpected {type(bug).__name__} in the local runner")
            supervise = bug
        finally:
            # Release first, then report: a restart must find this request already ended.
            self.engine.end(job, error)
            if supervise is not None:
                self._report(supervise)

    async def _stream(self, job: Job, chunks: AsyncIterator[TokenChunk]) -> None:
        try:
            async for chunk in chunks:
                await self.engine.deliver(job, chunk)
        finally:
            # Abort the runner's work now (KV cache, batch slot), not when it is collected.
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    def _report(self, error: Exception) -> None:
        try:
            self.self_ref.tell(RunnerFailed(error, self))
        except ActorError:
            # The context is already going away; the failure changes nothing now.
            log.debug("engine %s: %r after the context stopped", self.engine.name, error)
