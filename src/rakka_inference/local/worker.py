"""WorkerActor and ContextActor: the two tiers of a local replica's supervision (DESIGN §2).

::

    WorkerActor   stable, top level: takes requests from the engine's queue; supervises ↓
      └─ ContextActor   restartable: owns the ModelRunner (GPU context, weights) and the
                        tasks of the requests running on it

The ContextActor builds a runner from the engine's factory and loads its weights in
``on_start``, then starts one task per request it is handed. A task whose runner raises an
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
import enum
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rakka_inference.actors.actor import Actor, Terminated
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.actors.supervision import Directive, OneForOneStrategy
from rakka_inference.core.errors import (
    ActorError,
    BadRequest,
    ContextPoisoned,
    EngineError,
    InferenceError,
    InternalError,
    OutOfMemory,
    RequestCancelled,
    Unrecoverable,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest
from rakka_inference.core.runner import EmbeddingRunner, ModelRunner
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.tracing import NO_SPAN, Span
from rakka_inference.core.usage import Usage
from rakka_inference.engine.queue import QueueTicket

if TYPE_CHECKING:
    from rakka_inference.local.engine import LocalEngineCore

__all__ = [
    "CONTEXT_DIRECTIVES",
    "REPLICA_SUPERVISION",
    "TRANSITIONS",
    "ContextActor",
    "JobState",
    "LocalJob",
    "RunJob",
    "RunnerFailed",
    "WorkerActor",
    "not_an_embedding_model",
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


def not_an_embedding_model(request: EmbeddingRequest) -> BadRequest:
    return BadRequest(f"the model {request.model!r} does not serve embeddings", param="model")


# ---------------------------------------------------------------------- one request
# A request's record moves along TRANSITIONS (drawn in the engine module); the engine's
# ``end`` is the only way into ENDED, and so the only place a slot is given back.


class JobState(enum.Enum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    ENDED = "ended"


TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.DISPATCHED, JobState.ENDED}),
    JobState.DISPATCHED: frozenset({JobState.RUNNING, JobState.ENDED}),
    JobState.RUNNING: frozenset({JobState.ENDED}),
    JobState.ENDED: frozenset(),
}
"""Every legal move of a request; any other raises."""


@dataclass(eq=False, slots=True)
class LocalJob:
    """One request inside a local engine."""

    request: ChatRequest | EmbeddingRequest
    stream: BoundedStream[Any]
    deadline: float | None
    submitted_at: float
    state: JobState = JobState.QUEUED
    ticket: QueueTicket[LocalJob] | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    abort_error: InferenceError | None = None
    """Why the running task was cancelled; the first reason given wins."""
    started_at: float = 0.0
    first_chunk_at: float | None = None
    usage: Usage = field(default_factory=Usage)
    trace: Span = NO_SPAN
    """The caller's span at submit: the parent of this request's spans in the engine."""
    stage: Span = NO_SPAN
    """The span of the stage it is in: ``rakka.queue``, then ``rakka.engine``."""

    @property
    def dispatched(self) -> bool:
        """On its way to the context, holding a slot, not yet running."""
        return self.state is JobState.DISPATCHED

    def move(self, to: JobState) -> None:
        if to not in TRANSITIONS[self.state]:
            raise RuntimeError(
                f"request {self.request.request_id}: {self.state.value} -> {to.value}"
            )
        self.state = to


# ---------------------------------------------------------------------- actors


@dataclass(frozen=True, slots=True)
class RunJob:
    """Worker → context: run this (dispatched) request."""

    job: LocalJob


@dataclass(frozen=True, slots=True)
class RunnerFailed:
    """Request task → its context: the runner failed; let the supervisor decide."""

    error: Exception
    context: ContextActor


class WorkerActor(Actor[object]):
    """The stable tier: dispatches queued requests to the context and supervises it."""

    def __init__(self, engine: LocalEngineCore) -> None:
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

    def __init__(self, engine: LocalEngineCore) -> None:
        self.engine = engine
        self.runner: ModelRunner | None = None
        self._running: dict[asyncio.Task[None], LocalJob] = {}

    async def on_start(self) -> None:
        runner = self.engine.runner_factory()
        try:
            await runner.load_weights()
        except OutOfMemory as error:
            raise ContextPoisoned(f"out of memory loading the model: {error.message}") from error
        self.runner = runner
        self.engine.context_ready(runner)

    async def receive(self, message: RunJob | RunnerFailed) -> None:
        if isinstance(message, RunnerFailed):
            if message.context is self:
                raise message.error
            return  # about a context this one replaced: that poisoning is handled
        job = message.job
        if not job.dispatched:
            return  # ended on its way here (the client left, a deadline passed)
        runner = self.runner
        assert runner is not None
        task = asyncio.get_running_loop().create_task(
            self._serve(job, runner), name=f"request:{job.request.request_id}"
        )
        self.engine.begin(job, task)
        self._running[task] = job
        task.add_done_callback(functools.partial(self._settle, job))

    async def on_stop(self) -> None:
        engine = self.engine
        engine.context_down()
        if not self._running:
            return
        error = engine.teardown_error()
        for job in list(self._running.values()):
            engine.abort(job, error)  # cancels the task; the task ends the request
        await asyncio.gather(*self._running, return_exceptions=True)

    def _settle(self, job: LocalJob, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        # A task cancelled before its first step never ran its own ``finally``.
        self.engine.end(job, job.abort_error or RequestCancelled("the request was cancelled"))

    # ------------------------------------------------------------------ one request

    async def _serve(self, job: LocalJob, runner: ModelRunner) -> None:
        error: InferenceError | None = None
        supervise: Exception | None = None
        try:
            request = job.request
            if isinstance(request, EmbeddingRequest):
                if not isinstance(runner, EmbeddingRunner):
                    raise not_an_embedding_model(request)
                result = await runner.embed(request)
                job.usage = result.usage
                job.first_chunk_at = self.engine.clock()
                await job.stream.put(result)
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

    async def _stream(self, job: LocalJob, chunks: AsyncIterator[TokenChunk]) -> None:
        stream = job.stream
        clock = self.engine.clock
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    job.usage = job.usage + chunk.usage
                visible = chunk.visible
                if visible and job.first_chunk_at is None:
                    job.first_chunk_at = clock()
                await stream.put(chunk, commit=visible)
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
