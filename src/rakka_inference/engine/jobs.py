"""One request inside an engine, and the one table its state moves along.

::

    QUEUED ──► DISPATCHED ──► RUNNING ──► ENDED
       └──────────┴──────────────┴────────►┘

- QUEUED: in the engine's :class:`~rakka_inference.engine.queue.RequestQueue`, holding a
  budget reservation if the deployment has a budget.
- DISPATCHED: taken from the queue; it holds one of the engine's slots (``in_flight``) on
  its way to whatever serves it (a remote worker, a local context).
- RUNNING: a task of its own serves it; cancelling that task aborts the work.
- ENDED: final. :meth:`~rakka_inference.engine.core.EngineCore.end` is the only way in,
  and releases what the request held (queue entry or slot, timers, budget) exactly once,
  whatever ended it.

Both engines, remote and local, use this record and this table; a move the table lacks
raises :class:`~rakka_inference.core.errors.IllegalTransition` (a bug of ours).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any, Final

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest
from rakka_inference.core.states import StateTable
from rakka_inference.core.tracing import NO_SPAN, Span
from rakka_inference.core.usage import Usage
from rakka_inference.engine.budget import BudgetHold
from rakka_inference.engine.queue import QueueTicket
from rakka_inference.engine.stream import RequestStream

__all__ = ["JOB_STATES", "Job", "JobState"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    ENDED = "ended"


_J = JobState

JOB_STATES: Final = StateTable(
    {
        _J.QUEUED: frozenset({_J.DISPATCHED, _J.ENDED}),
        _J.DISPATCHED: frozenset({_J.RUNNING, _J.ENDED}),
        _J.RUNNING: frozenset({_J.ENDED}),
        _J.ENDED: frozenset(),
    }
)
"""Every legal move of a request inside an engine."""

_MOVES: Final = JOB_STATES.moves


@dataclass(eq=False, slots=True)
class Job:
    """One request inside an engine, from ``submit`` to its report."""

    request: ChatRequest | EmbeddingRequest
    stream: RequestStream[Any]
    """Chunks for a chat request; the one EmbeddingResult for an embeddings request."""
    deadline: float | None
    """The request's own deadline (engine clock), if it has one."""
    submitted_at: float
    max_wait_s: float | None = None
    """The client's own wait budget, when it asked for one: the most the request may wait
    between retries, and for a permit of a key blocked by a Retry-After, in all (a remote
    engine keeps the shorter of it and its retry policy's ``max_wait_ms``)."""
    state: JobState = JobState.QUEUED
    ticket: QueueTicket[Job] | None = None
    hold: BudgetHold | None = None
    """The budget reservation, settled with the actual cost when the request ends."""
    timer: asyncio.TimerHandle | None = None
    """Ends the request if it is still queued at its queue timeout or its deadline."""
    task: asyncio.Task[None] | None = None
    abort_error: InferenceError | None = None
    """Why the running task was cancelled; the first reason given wins."""
    started_at: float = 0.0
    first_chunk_at: float | None = None
    attempts: int = 0
    retried: list[str] = field(default_factory=list)
    """The outcome of each failed attempt that was tried again (``rate_limited`` ...)."""
    usage: Usage = field(default_factory=Usage)
    trace: Span = NO_SPAN
    """The caller's span at submit: the parent of this request's spans in the engine."""
    stage: Span = NO_SPAN
    """The span of the stage it is in: ``rakka.queue`` while queued, then the engine's."""

    def move(self, target: JobState) -> None:
        if target not in _MOVES[self.state]:  # three moves per request: kept cheap
            JOB_STATES.check(f"request {self.request.request_id}", self.state, target)
        self.state = target
