"""RequestActor: the life of one request, from routing to its last chunk.

One RequestActor runs per request, on the request's own task (the HTTP connection's), so
its chunks reach the client through exactly one bounded stream — the engine's — with no
mailbox hop. Nothing sends it messages; cancelling its task (the client went away) is its
only signal, and closes the engine stream, which cancels the upstream call and releases
every permit.

The protocol:

1. Resolve the model (a deployment or an alias) and walk the deployment's ``fallbacks`` in
   order. For each: ask the coordinator for the least-loaded healthy replica, submit, and
   pass chunks on as they come.
2. A failure **before the first visible chunk** moves on to the next deployment when it is
   one a different deployment can cure: the circuit is open, no rate-limit permit in time,
   backpressure, the budget is spent, a timeout, or a 5xx / network failure whose retries
   are spent. A deployment whose ``on_capacity_exhausted`` is ``reject`` answers
   backpressure to the client instead. Anything else (a bad request, a content filter)
   is the client's answer as it is.
3. After the first visible chunk nothing is retried or re-routed: a failure ends the
   stream (the gateway then sends an error event and ``[DONE]``). Content is never
   duplicated.
4. At the end, one structured log line: request id, deployment, replica, attempts, outcome,
   latency, time to first token, tokens and cost — never a secret, never prompt text.

With tracing on, the request is the root span ``rakka.request`` (the same figures as the
log line), with a ``rakka.route`` and a ``rakka.attempt`` span for every replica tried; the
attempt span is current while the engine takes the request, so the engine's spans are its
children (:mod:`rakka_inference.core.tracing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    Backpressure,
    BadRequest,
    CircuitOpen,
    ContextPoisoned,
    EngineError,
    InferenceError,
    InternalError,
    NetworkError,
    OutOfMemory,
    Refused,
    ReplicaUnavailable,
    ServerError,
    Timeout,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import CapacityPolicy
from rakka_inference.core.stream import ChatCompletion, ChunkAggregator, TokenChunk
from rakka_inference.core.tracing import Span
from rakka_inference.engine.report import RequestRecord
from rakka_inference.engine.stream import RequestStream

__all__ = ["MAX_WAIT_HEADER", "RequestActor", "RoutedReplica", "Router", "client_max_wait_s"]

log = logging.getLogger("rakka_inference.requests")

# Failures a different deployment can cure. (A retryable upstream error reaches us only
# once its retries are spent: the engine retried it already.)
_FALLBACK_ON: tuple[type[InferenceError], ...] = (
    Refused,
    Timeout,
    ServerError,
    NetworkError,
    ContextPoisoned,
    OutOfMemory,
    ReplicaUnavailable,
)


MAX_WAIT_HEADER: Final = b"x-rakka-max-wait-ms"
"""The request header with which a client shortens its wait budget: the most its request
may wait between retries, and for a rate-limit key that an upstream's Retry-After blocks,
in all, in whole milliseconds. It never lengthens the deployment's ``retry.max_wait_ms``."""


def client_max_wait_s(value: str | None) -> float | None:
    """The wait budget a client asked for with :data:`MAX_WAIT_HEADER`, in seconds (None
    when it asked for none). BadRequest naming the header when it is not a whole number
    of milliseconds >= 0."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()):
        raise BadRequest(
            f"{MAX_WAIT_HEADER.decode()} must be a whole number of milliseconds >= 0",
            param=MAX_WAIT_HEADER.decode(),
        )
    return int(text) / 1000.0


class RoutedReplica(Protocol):
    """What the request needs of the replica the coordinator picked."""

    @property
    def name(self) -> str: ...

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


class Router(Protocol):
    """The coordinator's routing surface."""

    def resolve(self, model: str) -> str:
        """The deployment name for a model name or alias (ModelNotFound otherwise)."""
        ...

    def route_deployment(self, deployment: str, exclude: Collection[str] = ()) -> RoutedReplica: ...


@dataclass(frozen=True, slots=True)
class FallbackPolicy:
    """What the request walk needs to know about one deployment."""

    fallbacks: tuple[str, ...] = ()
    capacity_policy: CapacityPolicy = CapacityPolicy.QUEUE


_Submit = Callable[["RoutedReplica"], RequestStream[Any]]


def _visible(item: TokenChunk | EmbeddingResult) -> bool:
    if isinstance(item, EmbeddingResult):
        return True
    return item.visible


class RequestActor:
    """Routes one request, walks fallbacks before the first byte, streams its chunks."""

    def __init__(
        self,
        request: ChatRequest | EmbeddingRequest,
        router: Router,
        policies: Mapping[str, FallbackPolicy],
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_done: Callable[[RequestRecord], None] | None = None,
        trace_parent: Mapping[str, str] | None = None,
    ) -> None:
        self.request = request
        self._trace_parent = trace_parent
        """The client's W3C Trace Context headers, when tracing is on and it sent them."""
        self._router = router
        self._policies = policies
        self._deadline = deadline
        self._max_wait_s = max_wait_s
        """The client's wait budget between retries (:data:`MAX_WAIT_HEADER`), if any."""
        self._clock = clock
        self._on_done = on_done
        self.record = RequestRecord(request_id=request.request_id, model=request.model)

    def chunks(self) -> AsyncGenerator[TokenChunk, None]:
        """The answer's chunks; raises the typed error that ended the request."""
        request = self.request
        assert isinstance(request, ChatRequest)
        return self._run(
            lambda replica: replica.submit(
                request, deadline=self._deadline, max_wait_s=self._max_wait_s
            )
        )

    async def completion(self) -> ChatCompletion:
        """The whole answer, for a non-streaming client."""
        aggregator = ChunkAggregator()
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                aggregator.add(chunk)
        return aggregator.result()

    async def embedding(self) -> EmbeddingResult:
        """The vectors of an embeddings request (same routing and fallbacks as chat)."""
        request = self.request
        assert isinstance(request, EmbeddingRequest)
        result: EmbeddingResult | None = None
        walk = self._run(
            lambda replica: replica.submit_embedding(
                request, deadline=self._deadline, max_wait_s=self._max_wait_s
            )
        )
        async with contextlib.aclosing(walk):
            async for item in walk:
                result = item
        if result is None:  # pragma: no cover - an engine always delivers one or fails
            raise InternalError("the engine ended an embeddings request without a result")
        return result

    async def _run(self, submit: _Submit) -> AsyncGenerator[Any, None]:
        started = self._clock()
        record = self.record
        span = tracing.start_span(tracing.REQUEST, self._trace_parent)
        walk = self._walk(started, submit, span)
        try:
            async for chunk in walk:
                yield chunk
        except BaseException as error:
            record.outcome = _outcome(error)
            span.fail(error, record.outcome)
            raise
        finally:
            # Closing the walk now (not when it is collected) closes the engine stream,
            # which cancels the upstream call and frees its permits at once.
            await walk.aclose()
            record.latency_s = self._clock() - started
            self._finish()
            if span.recording:
                span.update(_span_attributes(record))
            span.end()

    async def _walk(self, started: float, submit: _Submit, span: Span) -> AsyncGenerator[Any, None]:
        record = self.record
        first = self._router.resolve(self.request.model)
        targets = [first, *self._policies.get(first, FallbackPolicy()).fallbacks]
        last_error: InferenceError | None = None
        for index, target in enumerate(targets):
            record.tried.append(target)
            record.deployment = target
            policy = self._policies.get(target, FallbackPolicy())
            failed: list[str] = []  # replicas whose engine failed this request retryably
            while True:
                committed = False
                replica_name: str | None = None
                try:
                    replica = self._route(span, target, failed)
                    replica_name = record.replica = replica.name
                    with span.child(tracing.ATTEMPT) as attempt:
                        if attempt.recording:
                            attempt.update(_attempt_attributes(target, index, replica, last_error))
                        with attempt.activate():  # the engine's spans become its children
                            stream = submit(replica)
                        try:
                            async for chunk in stream:
                                if chunk.usage is not None:
                                    record.usage = record.usage + chunk.usage
                                if not committed and _visible(chunk):
                                    committed = True
                                    record.ttft_s = self._clock() - started
                                yield chunk
                        finally:
                            stream.close()  # a no-op once finished; else cancels the upstream
                            self._take_report(stream)
                    return
                except InferenceError as error:
                    if committed:
                        raise
                    if isinstance(error, EngineError) and error.retryable and replica_name:
                        # A poisoned or out-of-memory context: another replica may serve it.
                        failed.append(replica_name)
                        last_error = error
                        continue
                    if failed and isinstance(error, CircuitOpen):
                        error = last_error or error  # every replica failed it: say why
                    if not self._falls_back(error, policy):
                        raise error from None
                    log.info(
                        "request %s: %s from %s, trying the next deployment",
                        record.request_id,
                        type(error).__name__,
                        target,
                    )
                    last_error = error
                    break
        assert last_error is not None
        raise last_error

    def _route(self, span: Span, deployment: str, exclude: Collection[str]) -> RoutedReplica:
        """The coordinator's pick of a replica, under a ``rakka.route`` span."""
        with span.child(tracing.ROUTE) as route:
            replica = self._router.route_deployment(deployment, exclude)
            if route.recording:
                route.update({"rakka.deployment": deployment, "rakka.replica": replica.name})
            return replica

    @staticmethod
    def _falls_back(error: InferenceError, policy: FallbackPolicy) -> bool:
        if isinstance(error, Backpressure) and policy.capacity_policy is CapacityPolicy.REJECT:
            return False
        return isinstance(error, _FALLBACK_ON)

    def _take_report(self, stream: RequestStream[Any]) -> None:
        if stream.report is not None:
            self.record.add(stream.report)

    def _finish(self) -> None:
        record = self.record
        log.info("request", extra={"request": record.as_log_fields()})
        if self._on_done is not None:
            self._on_done(record)


def _attempt_attributes(
    deployment: str, index: int, replica: RoutedReplica, cause: InferenceError | None
) -> dict[str, tracing.AttributeValue | None]:
    return {
        "rakka.deployment": deployment,
        "rakka.replica": replica.name,
        "rakka.fallback.index": index,
        "rakka.fallback.cause": None if cause is None else type(cause).__name__,
    }


def _span_attributes(record: RequestRecord) -> dict[str, tracing.AttributeValue | None]:
    """The request span's figures: the log line's, never a secret, never prompt text."""
    return {
        "rakka.request.id": record.request_id,
        "gen_ai.request.model": record.model,
        "rakka.deployment": record.deployment,
        "rakka.replica": record.replica,
        "rakka.outcome": record.outcome,
        "rakka.attempts": record.attempts,
        "rakka.fallbacks": max(0, len(record.tried) - 1),
        "gen_ai.usage.input_tokens": record.usage.input_tokens,
        "gen_ai.usage.output_tokens": record.usage.output_tokens,
        "rakka.cost_usd": record.cost_usd,
        "rakka.ttft_ms": None if record.ttft_s is None else round(record.ttft_s * 1000, 3),
    }


def _outcome(error: BaseException) -> str:
    if isinstance(error, InferenceError):
        return error.outcome
    if isinstance(error, GeneratorExit | asyncio.CancelledError):
        return "cancelled"
    return "internal_error"
