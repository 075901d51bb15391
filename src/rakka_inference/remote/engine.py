"""RemoteEngineCore and RemoteWorker: one remote replica's worker pool and the failure
policies around each provider call.

Admission, the queue, slots, deadlines, cancellation and the report are the shared
:class:`~rakka_inference.engine.core.EngineCore`'s. What is remote's own:

1. A free :class:`RemoteWorker` takes a queued request (it then holds a slot) and serves
   it on a task of its own: rate-limit permit (requests, estimated tokens, concurrency;
   waiting for it is bounded like the queue, and a key blocked by an upstream's Retry-After
   is waited out only within the request's wait budget, see 2.) → circuit breaker
   admission → session snapshot lease → one attempt by the runner, whose chunks go
   straight into the stream.
2. A failure goes to the breaker (it counts what counts), a 429 to the limiter (auto-tune,
   Retry-After blocks the key), and then to the retry policy: back off and try again, or
   rebuild the session after a 401 and try once more, or give up. **Nothing is retried
   once a visible chunk has gone into the stream**: the failure then ends the stream as
   :class:`StreamInterrupted`, and no content is ever duplicated. A retry whose wait
   would pass the request's wait budget (the retry policy's ``max_wait_ms``, or the
   shorter one the client asked for at ``submit``) is not waited for: a 429 is answered
   at once as :class:`RateLimitExceeded` with the upstream's remaining Retry-After, so
   the client hears back while it still listens, or the caller falls back
   (:mod:`~rakka_inference.remote.retry`). The same budget bounds the wait for a permit
   while the key is blocked by an earlier 429's Retry-After: a request arriving then is
   answered at once when the block outlasts its budget, and otherwise spends from its
   budget what it waited (:mod:`~rakka_inference.remote.ratelimit_waiting`). A retry whose
   wait would pass the request's deadline is not started either.
3. At the end the permit is settled with the real token count and the breaker admission
   exactly once; the engine core settles the budget and writes the report.

If the consumer closes the stream — the client went away — the request is taken out of
the queue or its task is cancelled: the HTTP response closes (the provider sees the
connection end) and every permit is released.

With tracing on, the stages here are spans under the caller's span at ``submit``:
``rakka.queue``, ``rakka.rate_limit``, and one ``rakka.upstream`` per HTTP attempt, with a
``first_token`` event (:mod:`rakka_inference.core.tracing`).

The workers belong to the engine, not the queue to the workers: a worker restarted by its
supervisor finds every queued request still there."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rakka_inference.actors.actor import Actor
from rakka_inference.actors.ref import ActorRef
from rakka_inference.actors.supervision import Directive, OneForOneStrategy
from rakka_inference.actors.system import ActorSystem
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    CircuitOpen,
    InferenceError,
    InternalError,
    RateLimited,
    RequestCancelled,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import (
    DEFAULT_MAX_OUTPUT_TOKENS,
    ChatRequest,
    EmbeddingRequest,
)
from rakka_inference.core.policies import RetryPolicy, Serving
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetGate
from rakka_inference.engine.core import EngineCore, not_an_embedding_model
from rakka_inference.engine.jobs import Job
from rakka_inference.providers.base import supports_embeddings
from rakka_inference.remote.breaker import BreakerState, CircuitBreaker
from rakka_inference.remote.ratelimit import PermitSource
from rakka_inference.remote.retry import RetryAction, RetryBudget
from rakka_inference.remote.runner import RemoteRunner

__all__ = ["RemoteEngineCore", "RemoteWorker"]

log = logging.getLogger("rakka_inference.remote.engine")


class RemoteEngineCore(EngineCore):
    """One remote replica: worker pool, and the failure policies around each call.

    Start it with :meth:`start` inside an :class:`ActorSystem`; stop it with :meth:`stop`.
    """

    slot_noun = "workers"

    def __init__(
        self,
        name: str,
        runner: RemoteRunner,
        *,
        limiter: PermitSource,
        breaker: CircuitBreaker,
        serving: Serving,
        retry: RetryPolicy,
        deployment: str | None = None,
        idempotent: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        budget: BudgetGate | None = None,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
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
        self.runner = runner
        self.limiter = limiter
        self.breaker = breaker
        self.retry = retry
        self.idempotent = idempotent
        self.deployment = deployment or name
        """The deployment this replica serves, as its errors name it."""
        self._circuit_subject = f"deployment {self.deployment!r} ({breaker.key.provider})"
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._actor: ActorRef[Any] | None = None
        # Workers belong to one epoch; a new epoch (the engine actor restarting) lets the
        # old workers finish their current request and leave, and new ones take over.
        self.worker_epoch = 0

    # ------------------------------------------------------------------ figures

    @property
    def healthy(self) -> bool:
        """False while this replica's circuit is open (routing skips it)."""
        if self.breaker.state is not BreakerState.OPEN:
            return True
        open_until = self.breaker.snapshot().open_until
        return open_until is not None and open_until <= self.clock()

    @property
    def open_for_s(self) -> float | None:
        """Seconds until this replica's open circuit lets a probe through (None: closed)."""
        if self.breaker.state is not BreakerState.OPEN:
            return None
        open_until = self.breaker.snapshot().open_until
        return None if open_until is None else max(0.0, open_until - self.clock())

    def circuit_refusal(self) -> CircuitOpen | None:
        """Why this replica's circuit refuses a request now, in words for the client (the
        deployment and provider, never the endpoint); None when it would admit one."""
        return self.breaker.refusal(self._circuit_subject)

    @property
    def serves_embeddings(self) -> bool:
        return supports_embeddings(self.runner.adapter)

    def check_embeddings(self, request: EmbeddingRequest) -> None:
        if not self.serves_embeddings:
            raise not_an_embedding_model(request)

    def cost_of(self, usage: Usage) -> float | None:
        return self.runner.estimate_cost(usage)

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

    # ------------------------------------------------------------------ workers

    @property
    def actor(self) -> ActorRef[Any] | None:
        """The engine's actor, parent of the workers (None before ``start``)."""
        return self._actor

    async def next_job(self, epoch: int) -> Job | None:
        """Wait for a free slot under the concurrency limit and the next job, and take it.
        None when the queue is closed and empty, or when workers of ``epoch`` are released."""
        while self._in_flight >= self._limit and epoch == self.worker_epoch:
            await self.wait_for_slot()
        if epoch != self.worker_epoch:
            return None
        while (job := await self._queue.get()) is not None and not self.take(job):
            pass  # its deadline passed while it was queued: it is ended
        return job

    def release_workers(self) -> None:
        """Let the current workers go once their running request ends (queue untouched)."""
        self.worker_epoch += 1
        self._queue.release_getters()
        self._wake_slot_waiters(everyone=True)

    async def run(self, job: Job) -> None:
        """Serve one job on its own task, so cancelling it never cancels the worker."""
        task = asyncio.get_running_loop().create_task(self._serve(job), name=job.request.request_id)
        self.begin(job, task)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            self.settle(job)

    # ------------------------------------------------------------------ one request

    async def _serve(self, job: Job) -> None:
        request = job.request
        error: InferenceError | None = None
        estimate = request.estimated_prompt_tokens()
        if isinstance(request, ChatRequest):
            estimate += request.reserved_output_tokens(self.default_max_output_tokens)
        # Waiting for a rate-limit permit is waiting in line, bounded like the queue; but a
        # key blocked by the upstream's Retry-After is waited out only within the wait
        # budget, which that wait spends as a retry's would.
        permit_deadline = job.started_at + self.serving.queue_timeout_ms / 1000.0
        if job.deadline is not None:
            permit_deadline = min(permit_deadline, job.deadline)
        budget = RetryBudget(
            self.retry, idempotent=self.idempotent, rng=self._rng, max_wait_s=job.max_wait_s
        )
        try:
            with job.trace.child(tracing.RATE_LIMIT):
                permit = await self.limiter.acquire(
                    estimate, deadline=permit_deadline, wait_budget=budget.max_wait_s
                )
            budget.spend(permit.blocked_s)
            try:
                await self._attempts(job, budget)
            finally:
                permit.settle(job.usage.total_tokens)
        except InferenceError as failure:
            error = job.abort_error or failure
        except asyncio.CancelledError:
            error = job.abort_error or RequestCancelled("the client went away")
            raise
        except Exception as bug:
            log.exception("engine %s: unexpected failure", self.name)
            error = InternalError(f"unexpected {type(bug).__name__} in the remote engine")
        finally:
            self.end(job, error)

    async def _attempts(self, job: Job, budget: RetryBudget) -> None:
        request = job.request
        session = self.runner.session
        while True:
            admission = self.breaker.admit(self._circuit_subject)
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
                        result = await self.runner.embed(request, snapshot)
                        await self.deliver_embedding(job, result)
                    else:
                        async for chunk in self.runner.attempt(request, snapshot):
                            if await self.deliver(job, chunk):
                                upstream.event(tracing.FIRST_TOKEN)
            except (asyncio.CancelledError, RequestCancelled):
                self.breaker.release(admission)
                raise
            except InferenceError as error:
                self.breaker.record_failure(admission, error)
                if isinstance(error, RateLimited):
                    self.limiter.on_rate_limited(error.retry_after)
                decision = budget.decide(
                    error, first_byte_sent=job.stream.committed, now=self.clock()
                )
                if decision.action is RetryAction.GIVE_UP:
                    raise (decision.error or error) from None
                job.retried.append(error.outcome)
                if decision.action is RetryAction.REBUILD_SESSION:
                    await session.rebuild(
                        SessionRebuildCause.UNAUTHORIZED, seen_generation=snapshot.generation
                    )
                    continue
                if job.deadline is not None and self.clock() + decision.delay_s > job.deadline:
                    raise Timeout(
                        f"the request's deadline passes before the next retry ({error.message})",
                        phase=TimeoutPhase.DEADLINE,
                        provider=error.provider,
                    ) from error
                await self._sleep(decision.delay_s)
            else:
                self.breaker.record_success(admission)
                return


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
