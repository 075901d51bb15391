"""OpenTelemetry tracing end to end: the official openai SDK → uvicorn → the gateway →
engines → the OpenAI-format mock (or a local mock runner), with an in-memory exporter.

One trace per request; the span tree of a success, a 429 retried, a fallback, a stream, an
error; nothing secret or prompt-like in any span; and no span at all when tracing is off.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from rakka_inference.core import tracing
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment, TracingConfig
from rakka_inference.core.errors import ConfigError, ServerError
from rakka_inference.core.policies import Jitter, RetryPolicy, Timeouts
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind, TransformersConfig
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe import tracing as otel_tracing
from rakka_inference.observe.tracing_otel import ConfiguredTracing
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript
from rakka_inference.testkit.serving import serving

MAIN_KEY = "sk-upstream-trace-main-0001"
BACKUP_KEY = "sk-upstream-trace-backup-0002"
CLIENT_KEY = "rk-trace-client-0001"
PROMPT = "tell me about the zanzibar-quokka-7731"


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory, for this test only (the global provider is never set)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel_tracing.configure(provider)
    try:
        yield exporter
    finally:
        otel_tracing.configure(None)
        provider.shutdown()


@dataclass
class Live:
    mock: OpenAIMock
    client: openai.AsyncOpenAI
    records: list[RequestRecord]
    script: MockScript


def _remote(mock: OpenAIMock, name: str, key: str, fallbacks: tuple[str, ...] = ()) -> Deployment:
    runtime_config = OpenAIConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(key, warn=False),
        retry=RetryPolicy(
            max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE
        ),
        timeouts=Timeouts(request_timeout_ms=2000, read_timeout_ms=2000),
    )
    return Deployment(
        name=name,
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=runtime_config,
        fallbacks=fallbacks,
    )


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    script = MockScript()
    local = Deployment(
        name="local",
        model="tiny",
        runtime=RuntimeKind.TRANSFORMERS,
        runtime_config=TransformersConfig(),
    )
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={MAIN_KEY, BACKUP_KEY}),
        reply=ReplyScript(text="Traced answer", chunks=3),
    ) as mock:
        config = Config(
            cluster=ClusterConfig(client_api_keys=(SecretRef.inline(CLIENT_KEY, warn=False),)),
            deployments=(
                _remote(mock, "main", MAIN_KEY, fallbacks=("backup",)),
                _remote(mock, "backup", BACKUP_KEY),
                local,
            ),
        )
        records: list[RequestRecord] = []
        topology = Topology(
            config,
            on_record=records.append,
            runners={RuntimeKind.TRANSFORMERS: lambda _d: MockRunner(script)},
        )
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=CLIENT_KEY, max_retries=0)
            try:
                yield Live(mock, client, records, script)
            finally:
                await client.close()


async def ask(live: Live, model: str = "main", **kw: Any) -> str:
    answer = await live.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], **kw
    )
    return answer.choices[0].message.content or ""


# ---------------------------------------------------------------- reading spans


class Tree:
    """The finished spans of one trace, by name, with their parent links checked."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.spans: tuple[ReadableSpan, ...] = tuple(exporter.get_finished_spans())
        traces = {span.context.trace_id for span in self.spans if span.context is not None}
        assert len(traces) == 1, f"expected one trace, got {len(traces)}"
        (self.root,) = self.named(tracing.REQUEST)
        assert self.root.parent is None

    def named(self, name: str) -> list[ReadableSpan]:
        return sorted(
            (span for span in self.spans if span.name == name), key=lambda s: s.start_time or 0
        )

    def children(self, parent: ReadableSpan, name: str | None = None) -> list[ReadableSpan]:
        assert parent.context is not None
        found = [
            span
            for span in self.spans
            if span.parent is not None
            and span.parent.span_id == parent.context.span_id
            and (name is None or span.name == name)
        ]
        return sorted(found, key=lambda s: s.start_time or 0)

    def shape(self, span: ReadableSpan | None = None) -> list[Any]:
        """``[name, [children...]]`` in start order: the tree at a glance."""
        span = span or self.root
        return [span.name, [self.shape(child) for child in self.children(span)]]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def times(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None
    assert span.end_time is not None
    return span.start_time, span.end_time


def remote_attempt(upstreams: int) -> list[Any]:
    """An attempt's shape: queue, permit, then one upstream span per HTTP attempt."""
    stages = [[tracing.QUEUE, []], [tracing.RATE_LIMIT, []]]
    return [tracing.ATTEMPT, stages + [[tracing.UPSTREAM, []]] * upstreams]


# ---------------------------------------------------------------- the span trees


async def test_a_request_is_one_trace_with_a_span_per_stage(
    live: Live, spans: InMemorySpanExporter
) -> None:
    assert await ask(live) == "Traced answer"
    tree = Tree(spans)
    assert tree.shape() == [tracing.REQUEST, [[tracing.ROUTE, []], remote_attempt(1)]]

    record = live.records[-1]
    root = attrs(tree.root)
    assert root == {
        "rakka.request.id": record.request_id,
        "gen_ai.request.model": "main",
        "rakka.deployment": "main",
        "rakka.replica": record.replica,
        "rakka.outcome": "ok",
        "rakka.attempts": 1,
        "rakka.fallbacks": 0,
        "gen_ai.usage.input_tokens": record.usage.input_tokens,
        "gen_ai.usage.output_tokens": record.usage.output_tokens,
        "rakka.cost_usd": record.cost_usd,
        "rakka.ttft_ms": round((record.ttft_s or 0) * 1000, 3),
    }
    assert record.cost_usd is not None
    assert record.usage.output_tokens > 0
    assert tree.root.status.status_code is StatusCode.UNSET

    (route,) = tree.named(tracing.ROUTE)
    assert attrs(route) == {"rakka.deployment": "main", "rakka.replica": record.replica}
    (attempt,) = tree.named(tracing.ATTEMPT)
    assert attrs(attempt) == {
        "rakka.deployment": "main",
        "rakka.replica": record.replica,
        "rakka.fallback.index": 0,
    }
    (upstream,) = tree.named(tracing.UPSTREAM)
    assert attrs(upstream) == {
        "rakka.provider": "openai",
        "rakka.retry": 0,
        "http.response.status_code": 200,
    }
    assert [event.name for event in upstream.events] == [tracing.FIRST_TOKEN]
    # The stages run in order, inside the request.
    (queue,), (permit,) = tree.named(tracing.QUEUE), tree.named(tracing.RATE_LIMIT)
    start, end = times(tree.root)
    (queued, dequeued), (permit_asked, _), (_, answered) = map(times, (queue, permit, upstream))
    assert start <= queued <= dequeued <= permit_asked < answered <= end


async def test_each_request_is_a_trace_of_its_own(live: Live, spans: InMemorySpanExporter) -> None:
    await ask(live)
    await ask(live)
    roots = [span for span in spans.get_finished_spans() if span.name == tracing.REQUEST]
    assert len({root.context.trace_id for root in roots if root.context is not None}) == 2


CLIENT_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN = 0x00F067AA0BA902B7


@pytest.mark.parametrize("route", ["chat", "messages", "embeddings"])
async def test_a_clients_trace_context_is_joined(
    live: Live, spans: InMemorySpanExporter, route: str
) -> None:
    """A ``traceparent`` header makes the request span a child of the client's span, in
    the client's trace, with its ``tracestate`` kept; on every model route."""
    headers = {
        "traceparent": f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-01",
        "tracestate": "vendor=opaque-value",
    }
    if route == "chat":
        assert await ask(live, extra_headers=headers) == "Traced answer"
    elif route == "embeddings":
        await live.client.embeddings.create(model="main", input="hi", extra_headers=headers)
    else:
        async with httpx.AsyncClient(
            base_url=str(live.client.base_url).removesuffix("v1/")
        ) as http:
            answer = await http.post(
                "/v1/messages",
                headers={**headers, "x-api-key": CLIENT_KEY},
                json={
                    "model": "main",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
        assert answer.status_code == 200
    (root,) = [span for span in spans.get_finished_spans() if span.name == tracing.REQUEST]
    assert root.context is not None
    assert root.parent is not None
    assert root.context.trace_id == CLIENT_TRACE
    assert root.parent.span_id == CLIENT_SPAN
    assert root.parent.is_remote
    assert root.context.trace_state.get("vendor") == "opaque-value"
    # Every stage is in the client's trace too.
    assert {span.context.trace_id for span in spans.get_finished_spans() if span.context} == {
        CLIENT_TRACE
    }


async def test_a_client_trace_that_is_not_sampled_records_nothing(
    live: Live, spans: InMemorySpanExporter
) -> None:
    """Sampling follows the client's decision (its ``sampled`` flag is off here)."""
    traceparent = f"00-{CLIENT_TRACE:032x}-{CLIENT_SPAN:016x}-00"
    assert await ask(live, extra_headers={"traceparent": traceparent}) == "Traced answer"
    assert spans.get_finished_spans() == ()


@pytest.mark.parametrize(
    "traceparent",
    [
        "not-a-traceparent",
        f"00-{0:032x}-{CLIENT_SPAN:016x}-01",  # an all-zero trace id is invalid
        f"00-{CLIENT_TRACE:032x}-{0:016x}-01",  # so is an all-zero span id
    ],
)
async def test_a_malformed_trace_context_starts_a_trace_of_its_own(
    live: Live, spans: InMemorySpanExporter, traceparent: str
) -> None:
    assert await ask(live, extra_headers={"traceparent": traceparent}) == "Traced answer"
    (root,) = [span for span in spans.get_finished_spans() if span.name == tracing.REQUEST]
    assert root.parent is None
    assert root.context is not None
    assert root.context.trace_id != CLIENT_TRACE


async def test_a_429_retried_then_answered_has_two_upstream_spans(
    live: Live, spans: InMemorySpanExporter
) -> None:
    live.mock.faults.next(Fault.rate_limit(retry_after_s=0.02))
    assert await ask(live) == "Traced answer"
    tree = Tree(spans)
    assert tree.shape() == [tracing.REQUEST, [[tracing.ROUTE, []], remote_attempt(2)]]
    limited, answered = tree.named(tracing.UPSTREAM)
    assert attrs(limited) == {
        "rakka.provider": "openai",
        "rakka.retry": 0,
        "http.response.status_code": 429,
        "rakka.outcome": "rate_limited",
        "rakka.retry_after_s": 0.02,
        "error.type": "RateLimited",
    }
    assert limited.status.status_code is StatusCode.ERROR
    assert limited.status.description == "RateLimited"
    assert attrs(answered)["rakka.retry"] == 1
    assert attrs(answered)["http.response.status_code"] == 200
    assert answered.status.status_code is StatusCode.UNSET
    # The retry does not fail the attempt or the request.
    (attempt,) = tree.named(tracing.ATTEMPT)
    assert attempt.status.status_code is StatusCode.UNSET
    assert attrs(tree.root)["rakka.attempts"] == 2
    assert attrs(tree.root)["rakka.outcome"] == "ok"


async def test_a_fallback_is_a_second_route_and_attempt(
    live: Live, spans: InMemorySpanExporter
) -> None:
    live.mock.faults.for_key(MAIN_KEY, Fault.server_error(503))
    assert await ask(live) == "Traced answer"
    tree = Tree(spans)
    assert tree.shape() == [
        tracing.REQUEST,
        [[tracing.ROUTE, []], remote_attempt(2), [tracing.ROUTE, []], remote_attempt(1)],
    ]
    failed, answered = tree.named(tracing.ATTEMPT)
    assert attrs(failed)["rakka.deployment"] == "main"
    assert attrs(failed)["rakka.fallback.index"] == 0
    assert attrs(failed)["error.type"] == ServerError.__name__
    assert attrs(failed)["rakka.outcome"] == "server_error"
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(answered)["rakka.deployment"] == "backup"
    assert attrs(answered)["rakka.fallback.index"] == 1
    assert attrs(answered)["rakka.fallback.cause"] == "ServerError"
    assert answered.status.status_code is StatusCode.UNSET
    assert [attrs(u)["http.response.status_code"] for u in tree.named(tracing.UPSTREAM)] == [
        503,
        503,
        200,
    ]
    assert [attrs(r)["rakka.deployment"] for r in tree.named(tracing.ROUTE)] == ["main", "backup"]
    root = attrs(tree.root)
    assert (root["rakka.deployment"], root["rakka.fallbacks"], root["rakka.outcome"]) == (
        "backup",
        1,
        "ok",
    )


async def test_a_stream_marks_its_first_token(live: Live, spans: InMemorySpanExporter) -> None:
    stream = await live.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    text = "".join(
        [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    )
    assert text == "Traced answer"
    tree = Tree(spans)
    (upstream,) = tree.named(tracing.UPSTREAM)
    (first_token,) = upstream.events
    assert first_token.name == tracing.FIRST_TOKEN
    start, end = times(upstream)
    assert start < first_token.timestamp <= end
    assert attrs(tree.root)["rakka.ttft_ms"] > 0


async def test_a_client_that_leaves_ends_the_trace_cancelled_not_failed(
    live: Live, spans: InMemorySpanExporter
) -> None:
    live.mock.reply = ReplyScript(text="one two three four five six", chunks=6, chunk_delay_s=0.2)
    stream = await live.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": PROMPT}], stream=True
    )
    async for _chunk in stream:
        break
    await stream.close()
    ending = (tracing.REQUEST, tracing.ATTEMPT, tracing.UPSTREAM)
    for _ in range(200):  # the engine's spans end as the cancellation reaches them
        if set(ending) <= {span.name for span in spans.get_finished_spans()}:
            break
        await asyncio.sleep(0.01)
    tree = Tree(spans)
    for name in ending:
        (span,) = tree.named(name)
        assert attrs(span)["rakka.outcome"] == "cancelled", name
        assert span.status.status_code is StatusCode.UNSET, name
        assert "error.type" not in attrs(span), name


async def test_an_error_marks_every_span_on_its_way_up(
    live: Live, spans: InMemorySpanExporter
) -> None:
    live.mock.faults.next(Fault.content_filter())
    with pytest.raises(openai.BadRequestError):
        await ask(live)
    tree = Tree(spans)
    assert tree.shape() == [tracing.REQUEST, [[tracing.ROUTE, []], remote_attempt(1)]]
    for name in (tracing.REQUEST, tracing.ATTEMPT, tracing.UPSTREAM):
        (span,) = tree.named(name)
        assert span.status.status_code is StatusCode.ERROR, name
        assert span.status.description == "ContentFiltered", name
        assert attrs(span)["error.type"] == "ContentFiltered", name
        assert attrs(span)["rakka.outcome"] == "content_filtered", name
    assert attrs(tree.named(tracing.UPSTREAM)[0])["http.response.status_code"] == 400
    for name in (tracing.ROUTE, tracing.QUEUE, tracing.RATE_LIMIT):
        assert tree.named(name)[0].status.status_code is StatusCode.UNSET, name


async def test_an_unknown_model_is_a_request_span_alone(
    live: Live, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(openai.NotFoundError):
        await ask(live, model="nope")
    tree = Tree(spans)
    assert tree.shape() == [tracing.REQUEST, []]
    assert attrs(tree.root)["error.type"] == "ModelNotFound"


async def test_a_local_engine_has_queue_and_engine_spans(
    live: Live, spans: InMemorySpanExporter
) -> None:
    live.script.add(MockReply.text("lo", "cal"))
    assert await ask(live, model="local") == "local"
    tree = Tree(spans)
    assert tree.shape() == [
        tracing.REQUEST,
        [[tracing.ROUTE, []], [tracing.ATTEMPT, [[tracing.QUEUE, []], [tracing.ENGINE, []]]]],
    ]
    assert tree.named(tracing.ENGINE)[0].status.status_code is StatusCode.UNSET


async def test_a_failing_local_runner_marks_its_engine_span(
    live: Live, spans: InMemorySpanExporter
) -> None:
    from rakka_inference.core.errors import Unrecoverable

    live.script.add(MockReply.failing(Unrecoverable("weights gone")))
    with pytest.raises(openai.InternalServerError):
        await ask(live, model="local")
    tree = Tree(spans)
    (engine,) = tree.named(tracing.ENGINE)
    assert engine.status.status_code is StatusCode.ERROR
    assert attrs(engine)["error.type"] == "Unrecoverable"


# ---------------------------------------------------------------- what spans never carry


async def test_no_span_carries_a_key_or_the_prompt(live: Live, spans: InMemorySpanExporter) -> None:
    await ask(live)
    live.mock.faults.next(Fault.rate_limit(retry_after_s=0.01))
    await ask(live, stream=False)
    live.mock.faults.next(Fault.content_filter())
    with pytest.raises(openai.BadRequestError):
        await ask(live)
    live.mock.faults.for_key(MAIN_KEY, Fault.server_error(500))
    await ask(live)
    written: list[str] = []
    for span in spans.get_finished_spans():
        written += [span.name, span.status.description or ""]
        written += [f"{key}={value}" for key, value in (span.attributes or {}).items()]
        for event in span.events:
            written.append(event.name)
            written += [f"{key}={value}" for key, value in (event.attributes or {}).items()]
    assert len(written) > 50
    text = "\n".join(written)
    for secret in (MAIN_KEY, BACKUP_KEY, CLIENT_KEY, "zanzibar", "Traced answer"):
        assert secret not in text
    assert "Bearer" not in text
    assert "authorization" not in text.lower()


# ---------------------------------------------------------------- off, and set up


async def test_with_tracing_off_no_span_is_started(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    for tracer in (SdkTracer, trace.ProxyTracer, trace.NoOpTracer):
        original = tracer.start_span

        def spy(self: Any, name: str, *args: Any, _original: Any = original, **kw: Any) -> Any:
            started.append(name)
            return _original(self, name, *args, **kw)

        monkeypatch.setattr(tracer, "start_span", spy)
    assert not tracing.enabled()
    await ask(live)
    await ask(live, model="local")
    assert len(live.records) == 2
    assert started == []
    assert tracing.start_span(tracing.REQUEST) is tracing.NO_SPAN
    assert tracing.current() is tracing.NO_SPAN


def test_the_disabled_span_does_nothing() -> None:
    span = tracing.NO_SPAN
    assert span.child(tracing.ROUTE) is span
    assert not span.recording
    span.set("k", 1)
    span.update({"k": 1})
    span.event(tracing.FIRST_TOKEN)
    span.fail(ServerError("x"))
    with span.activate(), span:
        pass
    with pytest.raises(ServerError), span:
        raise ServerError("x")


def test_outcomes() -> None:
    from rakka_inference.core.errors import RequestCancelled

    assert tracing.outcome_of(ServerError("x")) == "server_error"
    assert tracing.outcome_of(asyncio.CancelledError()) == "cancelled"
    assert tracing.outcome_of(RequestCancelled("gone")) == "cancelled"
    assert tracing.outcome_of(ValueError("bug")) == "internal_error"


def _installed(config: TracingConfig) -> tuple[ConfiguredTracing, InMemorySpanExporter]:
    installed = otel_tracing.setup(config)
    assert isinstance(installed, ConfiguredTracing)
    exporter = InMemorySpanExporter()
    installed.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return installed, exporter


def test_setup_installs_a_provider_and_shutdown_removes_it() -> None:
    installed, exporter = _installed(
        TracingConfig(enabled=True, exporter="none", service_name="edge-gw")
    )
    try:
        assert tracing.enabled()
        assert tracing.traces_with(installed.provider)
        span = tracing.start_span(tracing.REQUEST)
        span.set("rakka.replica", None)  # left out
        span.set("rakka.attempts", 1)
        span.end()
    finally:
        installed.shutdown()
    assert not tracing.enabled()
    (finished,) = exporter.get_finished_spans()
    assert finished.resource.attributes["service.name"] == "edge-gw"
    assert attrs(finished) == {"rakka.attempts": 1}
    installed.shutdown()  # twice is harmless


def test_a_sample_ratio_of_zero_records_nothing() -> None:
    installed, exporter = _installed(TracingConfig(enabled=True, exporter="none", sample_ratio=0))
    try:
        span = tracing.start_span(tracing.REQUEST)
        assert not span.recording
        span.child(tracing.ROUTE).end()
        span.end()
    finally:
        installed.shutdown()
    assert exporter.get_finished_spans() == ()


def test_shutdown_leaves_a_provider_configured_since(spans: InMemorySpanExporter) -> None:
    installed, _ = _installed(TracingConfig(enabled=True, exporter="none"))
    provider = TracerProvider()
    otel_tracing.configure(provider)
    installed.shutdown()
    assert tracing.traces_with(provider)


def _exporter_of(installed: tracing.Tracing) -> object:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    assert isinstance(installed, ConfiguredTracing)
    processors = installed.provider._active_span_processor._span_processors
    (batch,) = processors
    assert isinstance(batch, BatchSpanProcessor)
    return batch._batch_processor._exporter


def test_the_console_exporter() -> None:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    installed = otel_tracing.setup(TracingConfig(enabled=True, exporter="console"))
    try:
        assert isinstance(_exporter_of(installed), ConsoleSpanExporter)
    finally:
        installed.shutdown()


def test_the_otlp_exporter_is_built_from_the_endpoint() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
        OTLPSpanExporter,
    )

    endpoint = "http://127.0.0.1:9/v1/traces"  # the discard port: nothing is exported here
    installed = otel_tracing.setup(TracingConfig(enabled=True, endpoint=endpoint))
    try:
        exporter = _exporter_of(installed)
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == endpoint
    finally:
        installed.shutdown()


def test_setup_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    with pytest.raises(ConfigError, match=r"pip install 'rakka-inference\[otel\]'"):
        otel_tracing.setup(TracingConfig(enabled=True, exporter="console"))
    assert not tracing.enabled()


async def test_the_topology_starts_and_stops_tracing_from_its_config() -> None:
    config = Config(tracing=TracingConfig(enabled=True, exporter="none"))
    topology = Topology(config)
    await topology.start()
    try:
        assert tracing.enabled()
    finally:
        await topology.stop()
    assert not tracing.enabled()


async def test_a_reload_that_changes_tracing_waits_for_a_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology = Topology(Config())
    await topology.start()
    try:
        with caplog.at_level("WARNING", logger="rakka_inference.topology"):
            await topology.apply(Config(tracing=TracingConfig(sample_ratio=0.5)))
    finally:
        await topology.stop()
    assert "takes effect at the next start" in caplog.text
    assert not tracing.enabled()


def test_the_package_imports_and_serves_without_opentelemetry(tmp_path: Any) -> None:
    """A child process where no ``opentelemetry`` module can be imported."""
    conf = tmp_path / "rakka.toml"
    conf.write_text("[tracing]\nenabled = true\n")
    program = textwrap.dedent(
        f"""
        import sys
        sys.modules["opentelemetry"] = None  # every import of it now fails
        from rakka_inference.core.config import load_config
        from rakka_inference.core.errors import ConfigError
        from rakka_inference.core import tracing
        import rakka_inference.runtime.topology, rakka_inference.apps.serve
        import rakka_inference.apps.cli
        span = tracing.start_span(tracing.REQUEST)
        assert span is tracing.NO_SPAN and not tracing.enabled()
        try:
            load_config({str(conf)!r})
        except ConfigError as error:
            print(error)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    assert "rakka.toml:2: tracing.enabled: tracing needs OpenTelemetry" in done.stdout
    assert "pip install 'rakka-inference[otel]'" in done.stdout
