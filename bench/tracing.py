"""Tracing's cost per request: off, on into memory, and on but sampled out.

    pip install -e '.[test]'     # opentelemetry-sdk, for the "on" cases
    python bench/tracing.py [--requests N] [--rounds R]

The request path is the gateway's, in process and with no socket: the ASGI app of a
:class:`Topology` with one OpenAI deployment whose HTTP transport answers from prebuilt
bytes (a unary completion, or a stream of 20 chunks, each its own read). Each request pays
for parsing, the RequestActor, routing, the engine's queue, permit, breaker and runner, the
adapter and the rendering — everything but uvicorn and the kernel — one at a time, on one
pinned core, under uvloop when it is installed.

Baselines, in the same run:

- **off vs no tracing code.** The code without the tracing calls cannot run in the same
  process, so the calls are measured instead: one request's calls with tracing off are
  counted (every ``start_span``/``current``, every method of the disabled span, every
  ``recording`` read), each kind is timed alone in a tight loop (minus the loop's own
  cost), and the sum is what removing them would save, shown over the request's time with
  tracing off and over the gateway's 0.35 ms of CPU per unary request (README).
- **on**: an SDK ``TracerProvider`` exporting every span into memory
  (``SimpleSpanProcessor`` + ``InMemorySpanExporter``, cleared every 100 requests), over
  off; and **batched**, as ``[tracing]`` sets it up (``BatchSpanProcessor``, its thread on
  the same core) with an exporter that drops the spans: OTLP without the network.
- **sampled out**: tracing on with ``sample_ratio = 0``: the cost of enabling tracing for
  the requests that are not sampled, over off.
- **our layer over the SDK**: the span calls one request makes, alone in a loop (no
  gateway), through :mod:`rakka_inference.core.tracing` and written straight against
  the SDK, into memory both.

Rounds alternate between the cases, so a change in load hits each alike; the median of the
rounds is shown. Absolute times on shared machines are noisy; the ratios are the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import statistics
import sys
import time
import timeit
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from _pinning import pin_to_one_core
from rakka_inference.core import tracing
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ServerError
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.tracing import NO_SPAN, Span
from rakka_inference.observe import tracing as otel_tracing
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.runtime.topology import Topology
from rakka_inference.wire.http import HttpRequest

STREAM_CHUNKS = 20
GATEWAY_CPU_US = 350.0  # README: gateway CPU per unary request at 16 clients


# ------------------------------------------------------------------ the upstream, in memory


def _event(document: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"


def _stream_events() -> list[bytes]:
    def delta(content: str | None, finish: str | None) -> dict[str, Any]:
        piece = {} if content is None else {"content": content}
        return {"choices": [{"index": 0, "delta": piece, "finish_reason": finish}]}

    events = [_event(delta(f"tok{i} ", None)) for i in range(STREAM_CHUNKS)]
    events.append(_event(delta(None, "stop")))
    usage = {"prompt_tokens": 12, "completion_tokens": STREAM_CHUNKS, "total_tokens": 32}
    events.append(_event({"choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


UNARY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
    }
).encode()
EVENTS = _stream_events()


class _Response:
    status = 200

    def __init__(self, stream: bool) -> None:
        kind = "text/event-stream" if stream else "application/json"
        self.headers = {"content-type": kind}

    async def read(self) -> bytes:
        return UNARY

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        for event in EVENTS:
            yield event

    async def aclose(self) -> None:
        return None


class _Transport:
    async def send(self, request: HttpRequest, timeouts: Timeouts, *, stream: bool) -> _Response:
        return _Response(stream)

    async def aclose(self) -> None:
        return None


def _transport(_config: RuntimeConfig) -> Any:
    return _Transport()


# ------------------------------------------------------------------ the gateway, in process


def _topology() -> Topology:
    deployment = Deployment(
        name="bench",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint="http://upstream.invalid/v1",
            api_key=SecretRef.inline("sk-bench", warn=False),
        ),
    )
    config = Config(cluster=ClusterConfig(), deployments=(deployment,))
    return Topology(config, services=RemoteServices(transport_factory=_transport))


def _body(stream: bool) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return json.dumps({"model": "bench", "messages": messages, "stream": stream}).encode()


SCOPE = {
    "type": "http",
    "method": "POST",
    "path": "/v1/chat/completions",
    "headers": [(b"content-type", b"application/json")],
}


async def _one(app: Any, body: bytes) -> None:
    loop = asyncio.get_running_loop()
    delivered = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await loop.create_future()  # the client stays: cancelled once the answer is sent
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(SCOPE, receive, send)
    assert statuses == [200], statuses


async def _per_request_us(app: Any, body: bytes, n: int, every_100: Callable[[], None]) -> float:
    start = time.perf_counter()
    for i in range(1, n + 1):
        await _one(app, body)
        if i % 100 == 0:
            every_100()
    return (time.perf_counter() - start) / n * 1e6


# ------------------------------------------------------------------ the disabled calls

_METHODS = ("child", "set", "update", "event", "fail", "end", "activate", "__enter__")


@contextmanager
def _counting(counts: collections.Counter[str]) -> Iterator[None]:
    """Count every tracing call and ``recording`` read while tracing is off."""
    saved: dict[str, Any] = {name: Span.__dict__[name] for name in _METHODS}
    functions = {"start_span": tracing.start_span, "current": tracing.current}

    def counted(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            counts[name] += 1
            return original(*args, **kw)

        return call

    for name, original in saved.items():
        setattr(Span, name, counted(name, original))
    for name, function in functions.items():
        setattr(tracing, name, counted(name, function))
    Span.recording = property(lambda _self: bool(counts.update(["recording"])))  # type: ignore[assignment]
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(Span, name, original)
        for name, function in functions.items():
            setattr(tracing, name, function)
        Span.recording = False


# One statement per kind, as the call sites write it. `with span:` pays __enter__ and
# __exit__ (counted as one, under __enter__); `activate` is a `with` of its own.
_STATEMENTS = {
    "start_span": "tracing.start_span(tracing.REQUEST)",
    "current": "tracing.current()",
    "child": "span.child(tracing.ROUTE)",
    "recording": "span.recording",
    "set": "span.set('http.response.status_code', 200)",
    "update": "span.update(attributes)",
    "event": "span.event(tracing.FIRST_TOKEN)",
    "fail": "span.fail(error)",
    "end": "span.end()",
    "activate": "with span.activate(): pass",
    "__enter__": "with span: pass",
}


def _unit_costs_ns(n: int = 1_000_000) -> dict[str, float]:
    names = {
        "tracing": tracing,
        "span": NO_SPAN,
        "attributes": {"k": 1},
        "error": ServerError("x"),
    }
    empty = min(timeit.repeat("pass", number=n, repeat=5)) / n
    costs = {}
    for kind, statement in _STATEMENTS.items():
        best = min(timeit.repeat(statement, globals=names, number=n, repeat=5)) / n
        costs[kind] = max(0.0, best - empty) * 1e9
    return costs


# ------------------------------------------------------------------ the cases


class _Drop(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _Case:
    def __init__(self, name: str, provider: TracerProvider | None, batched: bool = False) -> None:
        self.name = name
        self.provider = provider
        self.exporter: InMemorySpanExporter | None = None
        if provider is not None and batched:
            provider.add_span_processor(BatchSpanProcessor(_Drop()))
        elif provider is not None:
            self.exporter = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(self.exporter))


def _nothing() -> None:
    return None


def _cases() -> list[_Case]:
    return [
        _Case("off", None),
        _Case("on, into memory", TracerProvider()),
        _Case("on, batched", TracerProvider(), batched=True),
        _Case("on, sampled out", TracerProvider(sampler=ALWAYS_OFF)),
    ]


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    topology = _topology()
    await topology.start()
    app = topology.gateway
    results: dict[str, Any] = {}
    try:
        for kind, stream in (("unary", False), ("stream", True)):
            body = _body(stream)
            for _ in range(200):  # warm up: pools, caches, the adapter's first parse
                await _one(app, body)
            counts: collections.Counter[str] = collections.Counter()
            with _counting(counts):
                for _ in range(100):
                    await _one(app, body)
            calls = {name: count / 100 for name, count in counts.items()}
            cases = _cases()
            samples: dict[str, list[float]] = {case.name: [] for case in cases}
            for _ in range(args.rounds):
                for case in cases:
                    otel_tracing.configure(case.provider)
                    gc.collect()
                    # Exported spans are dropped every 100 requests, as an exporter would:
                    # kept, they would grow the heap that every GC pass walks.
                    clear = case.exporter.clear if case.exporter is not None else _nothing
                    samples[case.name].append(
                        await _per_request_us(app, body, args.requests, clear)
                    )
            otel_tracing.configure(None)
            for case in cases:
                if case.provider is not None:
                    case.provider.shutdown()
            results[kind] = (calls, {name: statistics.median(s) for name, s in samples.items()})
    finally:
        await topology.stop()
    return results


def _print(
    results: dict[str, Any], costs: dict[str, float], layer: tuple[float, float], header: str
) -> None:
    print(header)
    print("\nper request       " + "".join(f"{kind:>26}" for kind in results))
    off = {kind: times["off"] for kind, (_, times) in results.items()}
    print("off (baseline)    " + "".join(f"{off[kind]:>23.1f} us" for kind in results))
    line = "disabled tracing  "
    for kind, (calls, _) in results.items():
        saved = sum(count * costs[name] for name, count in calls.items()) / 1000
        ratio = saved / off[kind] * 100
        line += f"{saved:>8.2f} us = {ratio:5.2f}% of off"
    print(line)
    for name in ("on, into memory", "on, batched", "on, sampled out"):
        line = f"{name:18}"
        for kind, (_, times) in results.items():
            line += f"{times[name]:>9.1f} us = {times[name] / off[kind]:4.2f}x off"
        print(line)
    unary_calls = results["unary"][0]
    unary_saved = sum(count * costs[name] for name, count in unary_calls.items()) / 1000
    print(
        f"\ndisabled tracing on a unary request: {unary_saved:.2f} us = "
        f"{unary_saved / GATEWAY_CPU_US * 100:.2f}% of the gateway's {GATEWAY_CPU_US:.0f} us "
        "of CPU per request"
    )
    ours, sdk = layer
    print(
        f"\none request's 6 spans alone, into memory: ours {ours:.1f} us, the same calls on "
        f"the SDK {sdk:.1f} us ({ours / sdk:.2f}x)"
    )
    print("\ncalls per request with tracing off, and each one's cost:")
    kinds = sorted({name for calls, _ in results.values() for name in calls})
    for name in kinds:
        counts = "  ".join(
            f"{kind} {calls.get(name, 0):4.1f}" for kind, (calls, _) in results.items()
        )
        print(f"  {name:11} {costs[name]:6.1f} ns   {counts}")


# ------------------------------------------------------------------ our layer over the SDK


def _ours() -> None:
    """The span calls of one unary request, as the gateway and engine make them."""
    root = tracing.start_span(tracing.REQUEST)
    with root.child(tracing.ROUTE) as route:
        route.update({"rakka.deployment": "bench", "rakka.replica": "bench-0"})
    with root.child(tracing.ATTEMPT) as attempt:
        attempt.update({"rakka.deployment": "bench", "rakka.replica": "bench-0"})
        with attempt.activate():
            parent = tracing.current()
        parent.child(tracing.QUEUE).end()
        with parent.child(tracing.RATE_LIMIT):
            pass
        with parent.child(tracing.UPSTREAM) as upstream, upstream.activate():
            upstream.update({"rakka.provider": "openai", "rakka.retry": 0})
            tracing.current().set("http.response.status_code", 200)
            upstream.event(tracing.FIRST_TOKEN)
    root.update(ROOT_ATTRIBUTES)
    root.end()


def _raw_sdk(tracer: trace.Tracer) -> Callable[[], None]:
    def one() -> None:
        root = tracer.start_span(tracing.REQUEST)
        in_root = trace.set_span_in_context(root)
        route = tracer.start_span(tracing.ROUTE, context=in_root)
        route.set_attributes({"rakka.deployment": "bench", "rakka.replica": "bench-0"})
        route.end()
        attempt = tracer.start_span(tracing.ATTEMPT, context=in_root)
        attempt.set_attributes({"rakka.deployment": "bench", "rakka.replica": "bench-0"})
        in_attempt = trace.set_span_in_context(attempt)
        tracer.start_span(tracing.QUEUE, context=in_attempt).end()
        tracer.start_span(tracing.RATE_LIMIT, context=in_attempt).end()
        upstream = tracer.start_span(tracing.UPSTREAM, context=in_attempt)
        with trace.use_span(upstream, end_on_exit=False):
            upstream.set_attributes({"rakka.provider": "openai", "rakka.retry": 0})
            upstream.set_attribute("http.response.status_code", 200)
            upstream.add_event(tracing.FIRST_TOKEN)
        upstream.end()
        attempt.end()
        root.set_attributes(ROOT_ATTRIBUTES)
        root.end()

    return one


ROOT_ATTRIBUTES = {
    "rakka.request.id": "0123456789abcdef",
    "gen_ai.request.model": "bench",
    "rakka.deployment": "bench",
    "rakka.replica": "bench-0",
    "rakka.outcome": "ok",
    "rakka.attempts": 1,
    "rakka.fallbacks": 0,
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 7,
    "rakka.cost_usd": 0.0001,
    "rakka.ttft_ms": 0.2,
}


def _layer_us(n: int = 5000) -> tuple[float, float]:
    """(ours, the raw SDK): microseconds per request's spans, into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    raw = _raw_sdk(provider.get_tracer("bench"))
    otel_tracing.configure(provider)
    ours: list[float] = []
    sdk: list[float] = []
    try:
        for _ in range(7):
            for fn, into in ((_ours, ours), (raw, sdk)):
                gc.collect()
                into.append(timeit.timeit(fn, number=n) / n * 1e6)
                exporter.clear()
    finally:
        otel_tracing.configure(None)
        provider.shutdown()
    return statistics.median(ours), statistics.median(sdk)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    try:
        import uvloop

        loop_name = "uvloop"
        runner = uvloop.run
    except ImportError:
        loop_name = "asyncio"
        runner = asyncio.run
    costs = _unit_costs_ns()
    layer = _layer_us()
    results = runner(_bench(args))
    _print(
        results,
        costs,
        layer,
        f"python {sys.version.split()[0]}, {loop_name}, {pinned}; "
        f"{args.requests} requests x {args.rounds} rounds per case, one at a time, in process",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
