"""Optional OpenTelemetry tracing: one trace per request, one span per stage.

Off unless configured (``[tracing] enabled = true``, or :func:`configure` with a
``TracerProvider``). Off, every call here returns or acts on :data:`NO_SPAN`, whose methods
do nothing, and OpenTelemetry is never imported: the package is an optional extra
(``pip install 'rakka-inference[otel]'``). On, :mod:`rakka_inference.observe.tracing`
installs the OpenTelemetry backend behind the same calls.

The spans of one request (names and attributes are stable; attributes are ``rakka.*``
unless OpenTelemetry's conventions name them)::

    rakka.request        RequestActor: routing, the fallback walk, every chunk
    ├── rakka.route      the coordinator picks a replica of one deployment
    ├── rakka.attempt    one replica of one deployment tried (one per fallback or retry
    │   │                on another replica); the engine's spans are its children
    │   ├── rakka.queue       waiting in the replica's request queue
    │   ├── rakka.rate_limit  waiting for the rate-limit permit        (remote engine)
    │   ├── rakka.upstream    one HTTP attempt, one per retry            (remote engine)
    │   │                     event ``first_token``: the first visible chunk arrived
    │   └── rakka.engine      the local runner serving the request       (local engine)
    ├── rakka.route      ... the next replica or fallback deployment
    └── rakka.attempt    ...

==================  ======================================================================
span                attributes
==================  ======================================================================
rakka.request       ``rakka.request.id``, ``gen_ai.request.model`` (as the client named
                    it), ``rakka.deployment`` and ``rakka.replica`` (the last tried),
                    ``rakka.outcome``, ``rakka.attempts`` (upstream attempts, all
                    replicas), ``rakka.fallbacks``, ``gen_ai.usage.input_tokens``,
                    ``gen_ai.usage.output_tokens``, ``rakka.cost_usd``, ``rakka.ttft_ms``
rakka.route         ``rakka.deployment``, ``rakka.replica``
rakka.attempt       ``rakka.deployment``, ``rakka.replica``, ``rakka.fallback.index`` (0:
                    the model's own deployment), ``rakka.fallback.cause`` (the error type
                    that ended the previous attempt, on every attempt after the first)
rakka.upstream      ``rakka.provider``, ``rakka.retry`` (0: the first try),
                    ``http.response.status_code``, ``rakka.retry_after_s`` (when the
                    provider asked for a wait)
rakka.queue,        none of their own: their time, and their error if they end in one
rakka.rate_limit,
rakka.engine
==================  ======================================================================

A span that ends in an error gets status ERROR described by the error's type name, and
``error.type`` and ``rakka.outcome`` attributes. The error's message is never recorded (an
upstream's message may quote the request), nor are prompts, answers, headers or keys: the
attributes above are the whole list. A client that goes away ends its spans with outcome
``cancelled`` and no error status.

A client's trace is joined: the gateway hands the request's W3C Trace Context headers
(``traceparent``, ``tracestate``) to :func:`start_span`, and the request span becomes a
child of the client's span, in the client's trace. Headers that do not parse start a trace
of its own, as no headers do.

Sampling is decided once, for the request span (parent-based: a caller's own trace
decides; else ``sample_ratio``). A request left out gets no spans below it — its stages are
:data:`NO_SPAN` — so it costs little more than tracing off. The costs, off, on and
sampled out, are measured in ``bench/tracing.py`` (the figures are in ``bench/README.md``).

Parents are passed explicitly, never through a context variable held across an ``await``
or a ``yield``: the RequestActor is an async generator running on the connection's task,
and an engine serves the request on a task of its own. The one hand-over is
:meth:`Span.activate` around the (synchronous) ``submit``: the engine reads the attempt
span with :func:`current` and keeps it with the request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from types import TracebackType
from typing import Final, Protocol, Self, TypeAlias

from rakka_inference.core.errors import InferenceError, RequestCancelled

__all__ = [
    "ATTEMPT",
    "ENGINE",
    "FIRST_TOKEN",
    "NO_SPAN",
    "QUEUE",
    "RATE_LIMIT",
    "REQUEST",
    "ROUTE",
    "UPSTREAM",
    "AttributeValue",
    "Attributes",
    "Span",
    "Backend",
    "current",
    "enabled",
    "install",
    "is_cancellation",
    "outcome_of",
    "start_span",
    "traces_with",
]

REQUEST: Final = "rakka.request"
ROUTE: Final = "rakka.route"
ATTEMPT: Final = "rakka.attempt"
QUEUE: Final = "rakka.queue"
RATE_LIMIT: Final = "rakka.rate_limit"
UPSTREAM: Final = "rakka.upstream"
ENGINE: Final = "rakka.engine"
FIRST_TOKEN: Final = "first_token"  # noqa: S105 - an event name, not a secret

AttributeValue: TypeAlias = str | bool | int | float
Attributes: TypeAlias = Mapping[str, AttributeValue | None]
"""Span attributes; a ``None`` value is left out."""

_NO_CONTEXT: Final = contextlib.nullcontext()


def is_cancellation(error: BaseException) -> bool:
    """The client went away (or the request was aborted): not a failure of ours."""
    return isinstance(error, RequestCancelled | asyncio.CancelledError | GeneratorExit)


def outcome_of(error: BaseException) -> str:
    """The outcome label for ``error``: ``cancelled`` when the client went away."""
    if is_cancellation(error):
        return "cancelled"
    if isinstance(error, InferenceError):
        return error.outcome
    return "internal_error"


class Span:
    """One stage of a request. This class is the span of disabled tracing: it records
    nothing, and its children are itself (:data:`NO_SPAN`)."""

    __slots__ = ()

    recording: bool = False
    """Whether attributes are kept: check it before computing any."""

    def child(self, name: str) -> Span:
        """A new span, started now, whose parent is this one."""
        return self

    def set(self, key: str, value: AttributeValue | None) -> None:
        """Set one attribute (``None``: leave it out)."""

    def update(self, attributes: Attributes) -> None:
        """Set attributes (``None`` values are left out)."""

    def event(self, name: str) -> None:
        """Record that ``name`` happened now."""

    def fail(self, error: BaseException, outcome: str | None = None) -> None:
        """Mark the stage failed by ``error``: its type, never its message."""

    def end(self) -> None:
        """End the span (once)."""

    def activate(self) -> contextlib.AbstractContextManager[object]:
        """Make this the current span for a synchronous block (see :func:`current`)."""
        return _NO_CONTEXT

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self.fail(error)
        self.end()


NO_SPAN: Final = Span()
"""The span of disabled tracing."""


class Backend(Protocol):
    """What records spans when tracing is on."""

    @property
    def provider(self) -> object: ...

    def start_span(self, name: str, remote_parent: Mapping[str, str] | None = None) -> Span: ...

    def current(self) -> Span: ...


_backend: Backend | None = None


def enabled() -> bool:
    """Whether spans are being recorded."""
    return _backend is not None


TRACE_HEADERS: Final = (b"traceparent", b"tracestate")
"""The W3C Trace Context request headers, lower-case as ASGI gives them."""


def start_span(name: str, remote_parent: Mapping[str, str] | None = None) -> Span:
    """Start a request's root span: a child of the span ``remote_parent``'s W3C Trace
    Context headers name, when they name one; else of the current span, if any."""
    backend = _backend
    return NO_SPAN if backend is None else backend.start_span(name, remote_parent)


def current() -> Span:
    """The current span, to be the parent of stages that run on another task
    (:data:`NO_SPAN` when it is not being recorded: nothing is traced below it)."""
    backend = _backend
    return NO_SPAN if backend is None else backend.current()


def traces_with(provider: object) -> bool:
    """Whether spans go to ``provider`` now."""
    return _backend is not None and _backend.provider is provider


def install(backend: Backend | None) -> None:
    """Record spans with ``backend`` from now on; ``None`` turns tracing off.

    :mod:`rakka_inference.observe.tracing` installs the OpenTelemetry backend; this module
    only holds the switch, so engines trace without importing OpenTelemetry.
    """
    global _backend  # noqa: PLW0603 - one switch for the process, read on every request
    _backend = backend
