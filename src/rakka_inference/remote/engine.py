"""RemoteEngineCore and RemoteWorker: one remote replica's queue and worker pool.

The protocol of one request:

1. ``submit(request)`` (synchronous, no mailbox hop) checks capacity by the deployment's
   ``on_capacity_exhausted`` — ``reject`` and ``fallback`` refuse with
   :class:`Backpressure` when every worker is busy; ``queue`` queues it, by priority, up
   to ``queue_capacity`` and for at most ``queue_timeout_ms`` — and returns the request's
   :class:`BoundedStream` of chunks.
2. A free :class:`RemoteWorker` takes it: rate-limit permit (requests, estimated tokens,
   concurrency) → circuit breaker admission → session snapshot lease → one attempt by the
   runner, whose chunks go straight into the stream.
3. A failure goes to the breaker (it counts what counts), a 429 to the limiter (auto-tune,
   Retry-After blocks the key), and then to the retry policy: back off and try again, or
   rebuild the session after a 401 and try once more, or give up. **Nothing is retried
   once a chunk has gone into the stream**: the failure then ends the stream as
   :class:`StreamInterrupted`, and no content is ever duplicated.
4. At the end the permit is settled with the real token count, the budget reservation
   with the real cost (it was made in ``submit``), the breaker admission is settled
   exactly once, and ``on_complete`` receives a :class:`RequestReport` (outcome,
   attempts, usage, cost, latency, time to first token) for metrics and the log line.

If the consumer closes the stream — the client went away — the request is taken out of
the queue or its task is cancelled: the HTTP response closes (the provider sees the
connection end) and every permit is released.

With tracing on, ``submit`` keeps the caller's current span (the request's attempt) as the
parent of the stages here: ``rakka.queue``, ``rakka.rate_limit``, and one
``rakka.upstream`` per HTTP attempt, with a ``first_token`` event
(:mod:`rakka_inference.core.tracing`).

The queue belongs to the engine, not to the actors, so a worker restarted by its
supervisor finds every queued request still there. The load score used for routing is
``(queued + in flight) / capacity``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rakka_inference.actors.actor import Actor
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.actors.supervision import Directive, OneForOneStrategy
from rakka_inference.actors.system import ActorSystem
from rakka_inference.core import tracing
from rakka_inference.core.deployment import CapacityPolicy, RetryPolicy, Serving
from rakka_inference.core.errors import (
    Backpressure,
    BadRequest,
    InferenceError,
    InternalError,
    RateLimited,
    RequestCancelled,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResult,
    Priority,
)
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.tracing import NO_SPAN, Span
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetGate, BudgetHold
from rakka_inference.engine.queue import QueueTicket, RequestQueue
from rakka_inference.engine.report import RequestReport
from rakka_inference.providers.base import supports_embeddings
from rakka_inference.remote.breaker import BreakerState, CircuitBreaker
from rakka_inference.remote.ratelimit import PermitSource
from rakka_inference.remote.retry import RetryAction, RetryBudget
from rakka_inference.remote.runner import RemoteRunner
from rakka_inference.remote.session import SessionSnapshot

__all__ = ["RemoteEngineCore", "RemoteWorker"]

log = logging.getLogger("rakka_inference.remote.engine")


@dataclass(eq=False, slots=True)
class _Job:
    request: ChatRequest | EmbeddingRequest
    stream: BoundedStream[Any]
    """Chunks for a chat request; the one EmbeddingResult for an embeddings request."""
    deadline: float | None
    """The request's own deadline (clock time), if it has one."""
    submitted_at: float
    ticket: QueueTicket[_Job] | None = None
    hold: BudgetHold | None = None
    """The budget reservation, settled with the actual cost when the request ends."""
    timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None
    started_at: float = 0.0
    first_chunk_at: float | None = None
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    trace: Span = NO_SPAN
    """The caller's span at submit: the parent of this request's spans here."""
    queued: Span = NO_SPAN
    """The ``rakka.queue`` span while the request waits in the queue."""


class RemoteEngineCore:
    """One remote replica: queue, worker pool, and the failure policies around each call.

    Start it with :meth:`start` inside an :class:`ActorSystem`; stop it with :meth:`stop`.
    """

    def __init__(
        self,
        name: str,
        runner: RemoteRunner,
        *,
        limiter: PermitSource,
        breaker: CircuitBreaker,
        serving: Serving,
        retry: RetryPolicy,
        idempotent: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        on_complete: Callable[[RequestReport], None] | None = None,
        budget: BudgetGate | None = None,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        stream_capacity: int = 64,
    ) -> None:
        self.name = name
        self.default_max_output_tokens = default_max_output_tokens
        """The output cap the limiter estimates for a request that sets no max_tokens."""
        self.runner = runner
        self.limiter = limiter
        self.breaker = breaker
        self.serving = serving
        self.retry = retry
        self.idempotent = idempotent
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._on_complete = on_complete
        self._budget = budget
        self._stream_capacity = stream_capacity
        self._queue: RequestQueue[_Job] = RequestQueue(serving.queue_capacity)
        self._limit = serving.max_concurrent
        self._in_flight = 0
        self._gate: deque[asyncio.Future[None]] = deque()
        self._idle: asyncio.Event | None = None
        self._accepting = True
        self._actor: ActorRef[Any] | None = None
        # Workers belong to one epoch; a new epoch (the engine actor restarting) lets the
        # old workers finish their current request and leave, and new ones take over.
        self.worker_epoch = 0

    # ------------------------------------------------------------------ figures

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def capacity(self) -> int:
        return self._limit

    @property
    def healthy(self) -> bool:
        """False while this replica's circuit is open (routing skips it)."""
        if self.breaker.state is not BreakerState.OPEN:
            return True
        open_until = self.breaker.snapshot().open_until
        return open_until is not None and open_until <= self._clock()

    @property
    def open_for_s(self) -> float | None:
        """Seconds until this replica's open circuit lets a probe through (None: closed)."""
        if self.breaker.state is not BreakerState.OPEN:
            return None
        open_until = self.breaker.snapshot().open_until
        return None if open_until is None else max(0.0, open_until - self._clock())

    @property
    def load_score(self) -> float:
        """Queued plus in-flight requests over capacity: the router's measure."""
        return (len(self._queue) + self._in_flight) / max(1, self._limit)

    def set_concurrency_limit(self, limit: int) -> None:
        """Run at most ``limit`` requests at once (budget throttling halves it)."""
        self._limit = max(1, min(limit, self.serving.max_concurrent))
        self._open_gate()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, system: ActorSystem, name: str | None = None) -> None:
        """Start the engine actor and its ``max_concurrent`` workers."""
        await self.runner.load_weights()
        try:
            self._actor = system.spawn(lambda: _EngineActor(self), name or f"engine-{self.name}")
        except BaseException:
            await self.runner.session.aclose()
            raise

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new requests, let queued and running ones finish, then stop the workers."""
        self._accepting = False
        self._queue.close()
        if self._actor is not None:
            self._actor.stop()
            done = asyncio.ensure_future(self._actor.wait_terminated())
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                log.warning("engine %s: workers still busy after %gs", self.name, timeout)
        await self.runner.session.aclose()

    async def rebuild_session(self, cause: SessionRebuildCause) -> int:
        """Rotate credentials: new requests use a new session; running ones finish."""
        snapshot = await self.runner.session.rebuild(cause)
        return snapshot.generation

    # ------------------------------------------------------------------ submit

    def submit(
        self, request: ChatRequest, *, deadline: float | None = None
    ) -> BoundedStream[TokenChunk]:
        """Queue ``request``; its chunks arrive on the returned stream.

        Raises Backpressure (full, or shutting down) or what the budget gate raises.
        """
        return self._submit(request, request.priority, deadline)

    @property
    def serves_embeddings(self) -> bool:
        return supports_embeddings(self.runner.adapter)

    def submit_embedding(
        self, request: EmbeddingRequest, *, deadline: float | None = None
    ) -> BoundedStream[EmbeddingResult]:
        """Queue an embeddings request; the stream carries its one result.

        Same queue, permits, breaker and retries as a chat request. BadRequest when the
        provider serves no embeddings.
        """
        if not self.serves_embeddings:
            raise BadRequest(
                f"the model {request.model!r} does not serve embeddings", param="model"
            )
        return self._submit(request, Priority.NORMAL, deadline)

    def _submit(
        self, request: ChatRequest | EmbeddingRequest, priority: Priority, deadline: float | None
    ) -> BoundedStream[Any]:
        if not self._accepting:
            raise Backpressure(f"engine {self.name} is shutting down")
        busy = self._in_flight + len(self._queue) >= self._limit
        if busy and self.serving.on_capacity_exhausted is not CapacityPolicy.QUEUE:
            raise Backpressure(f"all {self._limit} workers of {self.name} are busy")
        hold = None if self._budget is None else self._budget.reserve(request)
        now = self._clock()
        queue_timeout = self.serving.queue_timeout_ms / 1000.0
        job = _Job(
            request=request,
            stream=BoundedStream(self._stream_capacity),
            deadline=deadline,
            submitted_at=now,
            hold=hold,
            trace=tracing.current(),
        )
        try:
            job.ticket = self._queue.put(job, priority)
        except BaseException:
            if hold is not None:
                hold.settle(None)  # never queued: nothing was spent
            raise
        job.queued = job.trace.child(tracing.QUEUE)
        job.timer = asyncio.get_running_loop().call_later(queue_timeout, self._expire, job)
        job.stream.on_close(lambda: self._cancel(job))
        return job.stream

    def _expire(self, job: _Job) -> None:
        ticket = job.ticket
        if ticket is not None and ticket.cancel():
            waited = self.serving.queue_timeout_ms / 1000.0
            self._end(job, Backpressure(f"waited {waited:g}s in the queue of {self.name}"))

    def _cancel(self, job: _Job) -> None:
        ticket = job.ticket
        if ticket is not None and ticket.cancel():
            if job.timer is not None:
                job.timer.cancel()
            self._end(job, RequestCancelled("the client went away while queued"))
        elif job.task is not None:
            job.task.cancel()

    # ------------------------------------------------------------------ workers

    @property
    def actor(self) -> ActorRef[Any] | None:
        """The engine's actor, parent of the workers (None before ``start``)."""
        return self._actor

    async def next_job(self, epoch: int) -> _Job | None:
        """Wait for a free slot under the concurrency limit and the next job. None when
        the queue is closed and empty, or when workers of ``epoch`` are released."""
        while self._in_flight >= self._limit and epoch == self.worker_epoch:
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._gate.append(gate)
            await gate
        if epoch != self.worker_epoch:
            return None
        return await self._queue.get()

    def release_workers(self) -> None:
        """Let the current workers go once their running request ends (queue untouched)."""
        self.worker_epoch += 1
        self._queue.release_getters()
        while self._gate:
            gate = self._gate.popleft()
            if not gate.done():
                gate.set_result(None)

    async def run(self, job: _Job) -> None:
        """Serve one job on its own task, so cancelling it never cancels the worker."""
        if job.timer is not None:
            job.timer.cancel()
        job.queued.end()
        job.queued = NO_SPAN
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._serve(job), name=job.request.request_id)
        job.task = task
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self._in_flight -= 1
            self._open_gate()

    def _open_gate(self) -> None:
        while self._gate and self._in_flight < self._limit:
            gate = self._gate.popleft()
            if not gate.done():
                gate.set_result(None)

    # ------------------------------------------------------------------ one request

    async def _serve(self, job: _Job) -> None:
        request = job.request
        job.started_at = self._clock()
        error: InferenceError | None = None
        estimate = request.estimated_prompt_tokens()
        if isinstance(request, ChatRequest):
            estimate += request.max_output_tokens(self.default_max_output_tokens)
        # Waiting for a rate-limit permit is waiting in line, bounded like the queue.
        permit_deadline = job.started_at + self.serving.queue_timeout_ms / 1000.0
        if job.deadline is not None:
            permit_deadline = min(permit_deadline, job.deadline)
        try:
            with job.trace.child(tracing.RATE_LIMIT):
                permit = await self.limiter.acquire(estimate, deadline=permit_deadline)
            try:
                await self._attempts(job)
            finally:
                permit.settle(job.usage.total_tokens)
        except InferenceError as failure:
            error = failure
        except asyncio.CancelledError:
            error = RequestCancelled("the client went away")
            raise
        except Exception as bug:
            log.exception("engine %s: unexpected failure", self.name)
            error = InternalError(f"unexpected {type(bug).__name__} in the remote engine")
        finally:
            self._end(job, error)

    async def _attempts(self, job: _Job) -> None:
        request = job.request
        budget = RetryBudget(self.retry, idempotent=self.idempotent, rng=self._rng)
        session = self.runner.session
        while True:
            admission = self.breaker.admit()
            snapshot = session.current
            job.attempts += 1
            upstream = job.trace.child(tracing.UPSTREAM)
            if upstream.recording:
                provider = self.runner.adapter.provider
                upstream.update({"rakka.provider": provider, "rakka.retry": job.attempts - 1})
            try:
                # Current while the runner sends: it records the HTTP status on this span.
                with upstream, upstream.activate(), snapshot.lease():
                    if isinstance(request, EmbeddingRequest):
                        await self._embed_once(job, request, snapshot)
                    else:
                        await self._chat_once(job, request, snapshot, upstream)
            except asyncio.CancelledError:
                self.breaker.release(admission)
                raise
            except RequestCancelled:
                self.breaker.release(admission)
                raise
            except InferenceError as error:
                self.breaker.record_failure(admission, error)
                if isinstance(error, RateLimited):
                    self.limiter.on_rate_limited(error.retry_after)
                decision = budget.decide(error, first_byte_sent=job.stream.committed)
                if decision.action is RetryAction.GIVE_UP:
                    final = decision.error or error
                    if job.stream.committed:
                        raise StreamInterrupted(
                            f"{final.message} (after part of the answer was sent)",
                            provider=final.provider,
                        ) from final
                    raise final from None
                if decision.action is RetryAction.REBUILD_SESSION:
                    await session.rebuild(
                        SessionRebuildCause.UNAUTHORIZED, seen_generation=snapshot.generation
                    )
                    continue
                if job.deadline is not None and self._clock() + decision.delay_s > job.deadline:
                    raise Timeout(
                        f"the request's deadline passes before the next retry ({error.message})",
                        phase=TimeoutPhase.DEADLINE,
                        provider=error.provider,
                    ) from error
                await self._sleep(decision.delay_s)
            else:
                self.breaker.record_success(admission)
                return

    async def _chat_once(
        self, job: _Job, request: ChatRequest, snapshot: SessionSnapshot, upstream: Span
    ) -> None:
        async for chunk in self.runner.attempt(request, snapshot):
            visible = chunk.visible
            if chunk.usage is not None:
                job.usage = job.usage + chunk.usage
            if visible and job.first_chunk_at is None:
                job.first_chunk_at = self._clock()
                upstream.event(tracing.FIRST_TOKEN)
            # A usage-only chunk (Anthropic's message_start) shows the client nothing: it
            # does not commit the stream, so a retry stays possible.
            await job.stream.put(chunk, commit=visible)

    async def _embed_once(
        self, job: _Job, request: EmbeddingRequest, snapshot: SessionSnapshot
    ) -> None:
        result = await self.runner.embed(request, snapshot)
        job.usage = result.usage
        job.first_chunk_at = self._clock()
        await job.stream.put(result)

    def _end(self, job: _Job, error: InferenceError | None) -> None:
        now = self._clock()
        started = job.started_at or now
        report = RequestReport(
            request_id=job.request.request_id,
            outcome="ok" if error is None else error.outcome,
            error=error,
            attempts=job.attempts,
            usage=job.usage,
            cost_usd=self.runner.estimate_cost(job.usage),
            queued_s=started - job.submitted_at,
            latency_s=now - job.submitted_at,
            ttft_s=None if job.first_chunk_at is None else job.first_chunk_at - job.submitted_at,
        )
        if job.hold is not None:
            job.hold.settle(report.cost_usd)
        if error is not None:
            job.queued.fail(error)  # still queued: it expired, or the client went away
        job.queued.end()
        # The consumer reads the report from the stream's trailer once the stream ends.
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


# ---------------------------------------------------------------------- actors


@dataclass(frozen=True, slots=True)
class _Pull:
    pass


_PULL = _Pull()


class RemoteWorker(Actor[_Pull]):
    """Takes one request at a time from the engine's queue and serves it."""

    def __init__(self, engine: RemoteEngineCore) -> None:
        self.engine = engine
        self.epoch = engine.worker_epoch

    async def on_start(self) -> None:
        self.self_ref.tell(_PULL)

    async def receive(self, message: _Pull) -> None:
        # One long receive: serve until the queue is closed and empty (the engine is
        # stopping; a graceful stop still serves everything queued) or this worker's
        # epoch is released (the engine actor is restarting).
        engine = self.engine
        while (job := await engine.next_job(self.epoch)) is not None:
            await engine.run(job)
        self.context.stop()


class _EngineActor(Actor[Any]):
    """The engine's place in the supervision tree: parent of its workers."""

    # A worker fails only on a bug of ours; restart it (the queue is the engine's).
    supervisor_strategy = OneForOneStrategy({Exception: Directive.RESTART})

    def __init__(self, engine: RemoteEngineCore) -> None:
        self.engine = engine

    async def on_start(self) -> None:
        for index in range(self.engine.serving.max_concurrent):
            self.context.spawn(lambda: RemoteWorker(self.engine), f"worker-{index}")

    async def receive(self, message: Any) -> Any:
        raise TypeError(f"engine actor takes no {type(message).__name__} messages")

    async def on_failure(self, error: Exception, message: Any) -> None:
        # A restart stops the workers first: let them go after their current request. The
        # queue is the engine's, so every queued request waits for the new workers.
        self.engine.release_workers()
