"""EngineCore: what every engine does with a request between ``submit`` and its report.

A replica's engine — remote (:class:`~rakka_inference.remote.engine.RemoteEngineCore`) or
local (:class:`~rakka_inference.local.engine.LocalEngineCore`) — is this class plus how it
serves a request once it holds a slot. Written once, here:

- **Admission** (``submit``, synchronous, no mailbox hop). Shutting down → ``Backpressure``.
  Every slot busy → ``Backpressure`` unless ``on_capacity_exhausted = "queue"``. Then the
  budget gate reserves the request's maximum cost (``BudgetExceeded`` refuses it), and the
  request is queued by priority, up to ``queue_capacity``; a full queue releases the
  reservation and refuses.
- **Waiting**: a request waits at most ``queue_timeout_ms`` in the queue (then
  ``Backpressure``), and never past its own deadline (then a typed ``Timeout``). One
  timer per request, while it is queued. The deadline bounds *waiting* — in the queue here,
  for a rate-limit permit and before a retry in the remote engine — not work that is
  running: a stream that is producing is bounded by its own phase timeouts (first byte,
  between bytes, total), never cut in the middle by the gateway's request deadline.
- **Slots**: ``in_flight`` requests hold a slot (dispatched or running), at most
  ``capacity`` of them (``set_concurrency_limit``: the budget's throttle halves it).
- **Cancellation**: the consumer closing the stream (the client went away) takes a queued
  request out at once, and cancels a running one's task: the serving code aborts its work
  (closes the HTTP response, frees the batch slot) before the request ends.
- **The end**, through :meth:`EngineCore.end` only (the job table in
  :mod:`rakka_inference.engine.jobs`): release the queue entry or the slot, the timers and
  the budget reservation (settled with the actual cost), write the typed
  :class:`~rakka_inference.engine.report.RequestReport` onto the stream, and end the
  stream. A failure after the first visible chunk ends it as ``StreamInterrupted``:
  nothing is retried then, so no content is ever duplicated.

With tracing on, a request's stages are spans under the caller's span at ``submit``:
``rakka.queue`` while it is queued, then the engine's own.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    Backpressure,
    BadRequest,
    InferenceError,
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
from rakka_inference.core.policies import CapacityPolicy, Serving
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.tracing import NO_SPAN
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetGate
from rakka_inference.engine.jobs import Job, JobState
from rakka_inference.engine.queue import RequestQueue
from rakka_inference.engine.report import RequestReport
from rakka_inference.engine.stream import RequestStream

__all__ = ["EngineCore", "not_an_embedding_model"]

log = logging.getLogger("rakka_inference.engine")


def not_an_embedding_model(request: EmbeddingRequest) -> BadRequest:
    return BadRequest(f"the model {request.model!r} does not serve embeddings", param="model")


class EngineCore(abc.ABC):
    """One replica's admission, queue, slots, job table and reports."""

    slot_noun = "slots"
    """What a slot is called in a refusal: ``all 4 slots of x are busy``."""

    def __init__(
        self,
        name: str,
        *,
        serving: Serving,
        clock: Callable[[], float] = time.monotonic,
        budget: BudgetGate | None = None,
        default_max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS,
        stream_capacity: int = 64,
    ) -> None:
        self.name = name
        self.serving = serving
        self.clock = clock
        self.budget = budget
        self.default_max_output_tokens = default_max_output_tokens
        """The output cap assumed for a request that sets no max_tokens (the runtime's)."""
        self._stream_capacity = stream_capacity
        self._queue: RequestQueue[Job] = RequestQueue(serving.queue_capacity)
        self._jobs: set[Job] = set()
        self._limit = serving.max_concurrent
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._accepting = True
        self._idle: asyncio.Future[None] | None = None

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
    def load_score(self) -> float:
        """Queued plus in-flight requests over capacity: the router's measure."""
        return (len(self._queue) + self._in_flight) / max(1, self._limit)

    def set_concurrency_limit(self, limit: int) -> None:
        """Run at most ``limit`` requests at once (budget throttling halves it)."""
        self._limit = max(1, min(limit, self.serving.max_concurrent))
        self._wake_slot_waiters()

    # ------------------------------------------------------------------ what differs

    @abc.abstractmethod
    def cost_of(self, usage: Usage) -> float | None:
        """The USD cost of ``usage`` here (None when the price is unknown)."""

    def check_embeddings(self, request: EmbeddingRequest) -> None:  # noqa: B027 - optional
        """Raise BadRequest when this replica cannot serve embeddings."""

    def refusal(self) -> str:
        """Why a request is refused while the engine does not accept any."""
        return f"engine {self.name} is shutting down"

    # ------------------------------------------------------------------ submit

    def submit(
        self,
        request: ChatRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[TokenChunk]:
        """Queue ``request``; its chunks arrive on the returned stream. ``max_wait_s`` is
        the client's own wait budget between retries, if it asked for one.

        Raises Backpressure (full, stopping or failed) or what the budget gate raises.
        """
        stream: RequestStream[TokenChunk] = RequestStream(self._stream_capacity)
        self._admit(request, stream, deadline, request.priority, max_wait_s)
        return stream

    def submit_embedding(
        self,
        request: EmbeddingRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[EmbeddingResult]:
        """Queue an embeddings request; the stream carries its one result.

        Same admission, queue and budget as a chat request. BadRequest when the replica
        serves no embeddings.
        """
        self.check_embeddings(request)
        stream: RequestStream[EmbeddingResult] = RequestStream(1)
        self._admit(request, stream, deadline, Priority.NORMAL, max_wait_s)
        return stream

    def _admit(
        self,
        request: ChatRequest | EmbeddingRequest,
        stream: RequestStream[Any],
        deadline: float | None,
        priority: Priority,
        max_wait_s: float | None = None,
    ) -> None:
        if not self._accepting:
            raise Backpressure(self.refusal())
        busy = self._in_flight + len(self._queue) >= self._limit
        if busy and self.serving.on_capacity_exhausted is not CapacityPolicy.QUEUE:
            raise Backpressure(f"all {self._limit} {self.slot_noun} of {self.name} are busy")
        hold = None if self.budget is None else self.budget.reserve(request)
        now = self.clock()
        job = Job(
            request=request,
            stream=stream,
            deadline=deadline,
            submitted_at=now,
            max_wait_s=max_wait_s,
            hold=hold,
        )
        try:
            job.ticket = self._queue.put(job, priority)
        except BaseException:
            if hold is not None:
                hold.settle(None)  # never queued: nothing was spent
            raise
        job.trace = tracing.current()
        job.stage = job.trace.child(tracing.QUEUE)
        self._jobs.add(job)
        loop = asyncio.get_running_loop()
        waited_at = now + self.serving.queue_timeout_ms / 1000.0
        expires_at = waited_at if deadline is None else min(waited_at, deadline)
        job.timer = loop.call_later(max(0.0, expires_at - now), self._expire, job)
        stream.on_close(lambda: self.abort(job, RequestCancelled("the client went away")))

    def _expire(self, job: Job) -> None:
        if job.state is JobState.QUEUED:
            self.end(job, self._waited_too_long(job))

    def _waited_too_long(self, job: Job) -> InferenceError:
        if job.deadline is not None and job.deadline <= self.clock():
            return Timeout(
                "the request's deadline passed while it was queued", phase=TimeoutPhase.DEADLINE
            )
        waited = self.serving.queue_timeout_ms / 1000.0
        return Backpressure(f"waited {waited:g}s in the queue of {self.name}")

    # ------------------------------------------------------------------ slots

    async def wait_for_slot(self) -> None:
        """Wait once for a slot to be given back (or for :meth:`wake_slot_waiters`)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot_waiters.append(waiter)
        await waiter

    def _wake_slot_waiters(self, everyone: bool = False) -> None:
        waiters = self._slot_waiters
        while waiters and (everyone or self._in_flight < self._limit):
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def take(self, job: Job) -> bool:
        """``job`` leaves the queue and holds a slot from now on; False (and the job ended)
        when its deadline passed while it was queued."""
        if job.timer is not None:
            job.timer.cancel()
        if job.deadline is not None and job.deadline <= self.clock():
            self.end(job, self._waited_too_long(job))
            return False
        job.move(JobState.DISPATCHED)
        job.stage.end()
        job.stage = NO_SPAN
        self._in_flight += 1
        return True

    def begin(self, job: Job, task: asyncio.Task[None], stage: str | None = None) -> None:
        """``job`` runs on ``task`` now (under a ``stage`` span, when named).

        Whoever runs the task calls :meth:`settle` once it is done: a task cancelled before
        its first step never runs its own ``finally``, so only that ends its request.
        """
        job.move(JobState.RUNNING)
        job.task = task
        job.started_at = self.clock()
        if stage is not None:
            job.stage = job.trace.child(stage)

    def settle(self, job: Job) -> None:
        """``job``'s task is done: end the request if the task did not (idempotent)."""
        self.end(job, job.abort_error or RequestCancelled("the request was cancelled"))

    # ------------------------------------------------------------------ delivering

    async def deliver(self, job: Job, chunk: TokenChunk) -> bool:
        """Pass ``chunk`` on to the consumer; True when it is the first visible one.

        A chunk that shows the client nothing (usage only) does not commit the stream, so
        a retry or another replica stays possible after it.
        """
        if chunk.usage is not None:
            job.usage = job.usage + chunk.usage
        visible = chunk.visible
        first = visible and job.first_chunk_at is None
        if first:
            job.first_chunk_at = self.clock()
        await job.stream.put(chunk, commit=visible)
        return first

    async def deliver_embedding(self, job: Job, result: EmbeddingResult) -> None:
        job.usage = result.usage
        job.first_chunk_at = self.clock()
        await job.stream.put(result)

    # ------------------------------------------------------------------ ending

    def abort(self, job: Job, error: InferenceError) -> None:
        """End ``job`` with ``error``: at once if it is not running, else by cancelling its
        task (which ends it once the work has let go)."""
        if job.state is JobState.RUNNING:
            job.abort_error = job.abort_error or error  # the first reason given wins
            assert job.task is not None
            job.task.cancel()
        else:
            self.end(job, error)

    def end(self, job: Job, error: InferenceError | None) -> None:
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
            self._wake_slot_waiters()
        if job.timer is not None:
            job.timer.cancel()
        self._jobs.discard(job)
        if error is not None:
            job.stage.fail(error)
        job.stage.end()
        if (
            error is not None
            and job.stream.committed
            and not isinstance(error, RequestCancelled | StreamInterrupted)
        ):
            interrupted = StreamInterrupted(
                f"{error.message} (after part of the answer was sent)", provider=error.provider
            )
            interrupted.__cause__ = error
            error = interrupted
        self._report(job, error)
        if not self._jobs and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _report(self, job: Job, error: InferenceError | None) -> None:
        now = self.clock()
        started = job.started_at or now
        cost = self.cost_of(job.usage)
        report = RequestReport(
            request_id=job.request.request_id,
            outcome="ok" if error is None else error.outcome,
            error=error,
            attempts=job.attempts,
            usage=job.usage,
            cost_usd=cost,
            queued_s=started - job.submitted_at,
            latency_s=now - job.submitted_at,
            ttft_s=None if job.first_chunk_at is None else job.first_chunk_at - job.submitted_at,
            retried=tuple(job.retried),
        )
        if job.hold is not None:
            job.hold.settle(cost)
        job.stream.report = report
        if error is None:
            job.stream.finish()
        else:
            job.stream.fail(error)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every admitted request to end."""
        if not self._jobs:
            return True
        idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle = idle
        try:
            await asyncio.wait_for(asyncio.shield(idle), timeout)
        except TimeoutError:
            return False
        return True
