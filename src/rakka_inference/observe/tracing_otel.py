"""The OpenTelemetry side of :mod:`rakka_inference.core.tracing`: imported only when tracing is on.

:class:`OtelBackend` makes :class:`OtelSpan` s on a ``TracerProvider``'s tracer;
:class:`ConfiguredTracing` builds that provider from ``[tracing]`` — service name,
parent-based ratio sampling, and a batching exporter (OTLP over HTTP, the console, or
none) — and shuts it down, exporting what is left, when the server stops.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from rakka_inference.core import tracing
from rakka_inference.core.deployment import TracingConfig
from rakka_inference.core.errors import InferenceError
from rakka_inference.core.tracing import NO_SPAN, Attributes, AttributeValue, Span

__all__ = ["ConfiguredTracing", "OtelBackend", "OtelSpan"]

_INSTRUMENTATION = "rakka_inference"
_TRACE_CONTEXT = TraceContextTextMapPropagator()


def _recorded(tracer: trace.Tracer, span: trace.Span) -> Span:
    # A span the sampler left out is not followed: its stages are the no-op span, which
    # makes a request that is not sampled nearly as cheap as tracing off.
    return OtelSpan(tracer, span) if span.is_recording() else NO_SPAN


class OtelSpan(Span):
    """A :class:`~.tracing.Span` backed by a recording OpenTelemetry span."""

    __slots__ = ("_context", "_span", "_tracer")

    recording = True

    def __init__(self, tracer: trace.Tracer, span: trace.Span) -> None:
        self._tracer = tracer
        self._span = span
        self._context: Context | None = None
        """This span as a parent, made once for all its children."""

    def child(self, name: str) -> Span:
        if self._context is None:
            self._context = trace.set_span_in_context(self._span)
        return _recorded(self._tracer, self._tracer.start_span(name, context=self._context))

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def update(self, attributes: Attributes) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def event(self, name: str) -> None:
        self._span.add_event(name)

    def fail(self, error: BaseException, outcome: str | None = None) -> None:
        self._span.set_attribute("rakka.outcome", outcome or tracing.outcome_of(error))
        if isinstance(error, InferenceError) and error.retry_after is not None:
            self._span.set_attribute("rakka.retry_after_s", error.retry_after)
        if tracing.is_cancellation(error):
            return  # the client went away: not an error of ours
        self._span.set_attribute("error.type", type(error).__name__)
        self._span.set_status(Status(StatusCode.ERROR, type(error).__name__))

    def end(self) -> None:
        self._span.end()

    def activate(self) -> contextlib.AbstractContextManager[object]:
        return trace.use_span(
            self._span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        )


class OtelBackend:
    """Starts spans on ``provider``'s tracer for :mod:`.tracing`."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer(_INSTRUMENTATION)

    def start_span(self, name: str, remote_parent: Mapping[str, str] | None = None) -> Span:
        # Only the W3C headers are read: a malformed ``traceparent`` extracts to no parent,
        # and the span starts a trace of its own.
        context = _TRACE_CONTEXT.extract(remote_parent) if remote_parent else None
        return _recorded(self._tracer, self._tracer.start_span(name, context=context))

    def current(self) -> Span:
        return _recorded(self._tracer, trace.get_current_span())


class ConfiguredTracing:
    """The provider built from ``[tracing]``, installed as :mod:`.tracing`'s."""

    def __init__(self, provider: SdkTracerProvider) -> None:
        self.provider = provider

    @classmethod
    def install(cls, config: TracingConfig) -> ConfiguredTracing:
        provider = SdkTracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        exporter = _exporter(config)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        tracing.install(OtelBackend(provider))
        return cls(provider)

    def shutdown(self) -> None:
        """Stop tracing with this provider and export the spans still buffered."""
        if tracing.traces_with(self.provider):
            tracing.install(None)
        self.provider.shutdown()


def _exporter(config: TracingConfig) -> SpanExporter | None:
    if config.exporter == "console":
        return ConsoleSpanExporter()
    if config.exporter == "otlp":
        # Its own package, in the otel extra but not the test one: imported by name.
        otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
        exporter: SpanExporter = otlp.OTLPSpanExporter(endpoint=config.endpoint)
        return exporter
    return None
