"""The remote engine end to end: the OpenAI adapter, a real transport, a scripted loopback
server, and every failure path of DESIGN §2 with its typed outcome — and no duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    Backpressure,
    CircuitOpen,
    ContentFiltered,
    ContextLengthExceeded,
    InferenceError,
    NetworkError,
    RateLimitExceeded,
    ServerError,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, Priority
from rakka_inference.core.policies import (
    CapacityPolicy,
    CircuitBreakerConfig,
    Jitter,
    RateLimits,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import ChatCompletion, TokenChunk, aggregate
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.http_server import ScriptedHttpServer
from rakka_inference.testkit.reports import ReportLog

PATH = "/v1/chat/completions"
OLD_KEY = "sk-old-0000"
NEW_KEY = "sk-new-1111"


# ---------------------------------------------------------------- OpenAI wire helpers


def sse_chunks(pieces: Sequence[str], *, prompt_tokens: int = 5) -> list[bytes]:
    chunks = [
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
        + b"\n\n"
        for p in pieces
    ]
    chunks.append(
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        + b"\n\n"
    )
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}
    chunks.append(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def unary(text: str) -> ScriptedResponse:
    return ScriptedResponse.json(
        {
            "choices": [
                {"index": 0, "message": {"content": text}, "finish_reason": "stop"},
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2},
        }
    )


def error(status: int, code: str, *, headers: dict[str, str] | None = None) -> ScriptedResponse:
    body = {"error": {"message": f"scripted {code}", "type": "invalid_request_error", "code": code}}
    return ScriptedResponse.json(body, status=status, headers=headers or {})


def request(text: str = "hi", *, stream: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=(ChatMessage.user(text),), stream=stream, **kw)


async def collect(stream: BoundedStream[TokenChunk]) -> ChatCompletion:
    return aggregate([chunk async for chunk in stream])


# ---------------------------------------------------------------- fixtures


@pytest.fixture
async def server() -> AsyncIterator[ScriptedHttpServer]:
    async with ScriptedHttpServer() as scripted:
        yield scripted


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "openai.key"
    path.write_text(OLD_KEY)
    return path


class Harness:
    def __init__(self, server: ScriptedHttpServer, key_file: Path) -> None:
        self.server = server
        self.key_file = key_file
        self.report_log = ReportLog()
        self.services = RemoteServices()
        self.engines: list[RemoteEngineCore] = []
        self.system = ActorSystem()

    def deployment(self, *, timeouts: Timeouts | None = None, **serving: Any) -> Deployment:
        config = OpenAIConfig(
            endpoint=f"{self.server.url}/v1",
            api_key=SecretRef.from_file(self.key_file),
            retry=RetryPolicy(
                max_retries=3, initial_backoff_ms=1, max_backoff_ms=5, jitter=Jitter.NONE
            ),
            timeouts=timeouts
            or Timeouts(connect_timeout_ms=1000, request_timeout_ms=150, read_timeout_ms=100),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=5, open_duration_ms=60_000),
        )
        return Deployment(
            name="gpt",
            model="gpt-4o",
            runtime=RuntimeKind.OPENAI,
            runtime_config=config,
            serving=Serving(**{"max_concurrent": 4, "queue_timeout_ms": 5000, **serving}),
        )

    async def engine(self, deployment: Deployment | None = None) -> RemoteEngineCore:
        engine = await build_remote_engine(deployment or self.deployment(), self.services)
        self.report_log.watch(engine)
        await engine.start(self.system, f"engine-{len(self.engines)}")
        self.engines.append(engine)
        return engine

    async def close(self) -> None:
        for engine in self.engines:
            await engine.stop(timeout=5)
        await self.system.shutdown(timeout=5)

    def assert_released(self) -> None:
        for engine in self.engines:
            assert engine.in_flight == 0
            assert engine.queued == 0
            assert engine.limiter.utilization().concurrent_in_use == 0


@pytest.fixture
async def harness(server: ScriptedHttpServer, key_file: Path) -> AsyncIterator[Harness]:
    built = Harness(server, key_file)
    try:
        yield built
    finally:
        await built.close()
    built.assert_released()


# ---------------------------------------------------------------- happy paths


async def test_unary_and_streaming_answers(harness: Harness) -> None:
    harness.server.script("POST", PATH, unary("hello"))
    harness.server.script("POST", PATH, ScriptedResponse.stream(sse_chunks(["Hel", "lo"])))
    engine = await harness.engine()
    completion = await collect(engine.submit(request()))
    assert completion.text == "hello"
    streamed = await collect(engine.submit(request(stream=True)))
    assert streamed.text == "Hello"
    assert streamed.usage is not None
    assert streamed.usage.output_tokens == 2
    assert [r.outcome for r in harness.report_log.reports] == ["ok", "ok"]
    sent = harness.server.requests[1]
    assert sent.headers["authorization"] == f"Bearer {OLD_KEY}"
    assert sent.json()["stream_options"] == {"include_usage": True}
    assert harness.report_log.reports[1].ttft_s is not None
    assert harness.report_log.reports[1].cost_usd is not None


# ---------------------------------------------------------------- failure paths


async def test_429_with_retry_after_is_retried(harness: Harness) -> None:
    harness.server.script(
        "POST",
        PATH,
        error(429, "rate_limit_exceeded", headers={"retry-after-ms": "20"}),
        unary("after the wait"),
    )
    engine = await harness.engine()
    assert (await collect(engine.submit(request()))).text == "after the wait"
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("ok", 2)


async def test_429_asking_longer_than_allowed_fails_at_once(harness: Harness) -> None:
    harness.server.script(
        "POST", PATH, error(429, "rate_limit_exceeded", headers={"retry-after": "120"})
    )
    engine = await harness.engine()
    with pytest.raises(RateLimitExceeded) as caught:
        await collect(engine.submit(request()))
    assert caught.value.retry_after == pytest.approx(120, abs=1)
    assert len(harness.server.requests) == 1


def with_retry(deployment: Deployment, **retry: Any) -> Deployment:
    config = deployment.runtime_config
    assert isinstance(config, OpenAIConfig)
    policy = RetryPolicy(**{"initial_backoff_ms": 1, "jitter": Jitter.NONE, **retry})
    return replace(deployment, runtime_config=replace(config, retry=policy))


async def test_a_retry_after_past_the_wait_budget_is_answered_at_once(harness: Harness) -> None:
    # 30 s is within max_retry_after_ms (60 s), but past the 10 s wait budget: the 429
    # is the answer at once, with the upstream's Retry-After, instead of 30 s of silence.
    harness.server.script(
        "POST", PATH, error(429, "rate_limit_exceeded", headers={"retry-after": "30"})
    )
    engine = await harness.engine()
    assert engine.retry.max_wait_ms == 10_000
    with pytest.raises(RateLimitExceeded) as caught:
        await collect(engine.submit(request()))
    assert caught.value.retry_after == 30.0
    assert "wait budget" in caught.value.message
    assert len(harness.server.requests) == 1
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("rate_limit_exceeded", 1)


async def test_a_client_may_shorten_its_wait_budget_never_lengthen_it(harness: Harness) -> None:
    limited = error(429, "rate_limit_exceeded", headers={"retry-after-ms": "20"})
    harness.server.script("POST", PATH, limited, limited, unary("after the wait"))
    engine = await harness.engine()
    # The deployment would wait the 20 ms; this client asked to wait at most 10 ms.
    with pytest.raises(RateLimitExceeded) as caught:
        await collect(engine.submit(request(), max_wait_s=0.01))
    assert caught.value.retry_after == 1.0  # 20 ms left, in whole seconds
    # A deployment that allows 10 ms gives no more to a client asking for an hour. (The
    # 429 blocked the key for 20 ms, which a 10 ms budget would not wait out either: let it
    # pass, so that the upstream's next 429 is what this request meets.)
    await asyncio.sleep(engine.limiter.utilization().blocked_for)
    short = await harness.engine(with_retry(harness.deployment(), max_wait_ms=10))
    with pytest.raises(RateLimitExceeded):
        await collect(short.submit(request(), max_wait_s=3600.0))
    assert (await collect(engine.submit(request(), max_wait_s=3600.0))).text == "after the wait"
    assert [r.attempts for r in harness.report_log.reports] == [1, 1, 1]


async def test_waiting_out_a_blocked_key_spends_the_wait_budget(harness: Harness) -> None:
    # An earlier 429 blocked the key for 50 ms: the request waits that out (it fits the
    # 10 s budget), then the upstream asks for 9.99 s more, which no longer fits: the 429
    # is the answer at once instead of a wait that would make the request's ~10.04 s.
    harness.server.script(
        "POST", PATH, error(429, "rate_limit_exceeded", headers={"retry-after-ms": "9990"})
    )
    engine = await harness.engine()
    engine.limiter.on_rate_limited(0.05)
    with pytest.raises(RateLimitExceeded) as caught:
        await asyncio.wait_for(collect(engine.submit(request())), 5.0)
    assert "wait budget" in caught.value.message
    assert caught.value.retry_after == 10.0
    assert len(harness.server.requests) == 1
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("rate_limit_exceeded", 1)


async def test_backoffs_spend_the_wait_budget_too(harness: Harness) -> None:
    harness.server.default = lambda _: error(503, "server_error")
    deployment = with_retry(harness.deployment(), initial_backoff_ms=2, max_wait_ms=5)
    engine = await harness.engine(deployment)
    with pytest.raises(ServerError):  # a 5xx keeps its type (502, and a fallback)
        await collect(engine.submit(request()))
    # Backoffs of 2 ms then 4 ms: 6 ms > 5 ms, so the second retry is not waited for.
    [report] = harness.report_log.reports
    assert report.attempts == 2


async def test_repeated_503s_exhaust_retries_then_open_the_circuit(harness: Harness) -> None:
    harness.server.default = lambda _: error(503, "server_error")
    engine = await harness.engine()
    assert engine.healthy
    with pytest.raises(ServerError):
        await collect(engine.submit(request()))
    assert harness.report_log.reports[0].attempts == 4  # the first try and max_retries = 3
    # A fifth counted failure opens the circuit (threshold 5); then it fails fast.
    with pytest.raises((ServerError, CircuitOpen)):
        await collect(engine.submit(request()))
    calls = len(harness.server.requests)
    with pytest.raises(CircuitOpen) as caught:
        await collect(engine.submit(request()))
    assert len(harness.server.requests) == calls  # no call went out
    assert caught.value.retry_at is not None
    assert engine.breaker.snapshot().state.value == "open"
    assert not engine.healthy  # routing skips this replica while its circuit is open


async def test_slow_first_byte_is_a_retried_timeout(harness: Harness) -> None:
    harness.server.script(
        "POST", PATH, ScriptedResponse.json({}, first_byte_delay=0.4), unary("second try")
    )
    engine = await harness.engine()
    assert (await collect(engine.submit(request()))).text == "second try"
    assert harness.report_log.reports[0].attempts == 2


async def test_slow_first_byte_every_time_ends_in_a_typed_timeout(harness: Harness) -> None:
    slow = ScriptedResponse.json({}, first_byte_delay=0.4)
    harness.server.default = lambda _: slow
    deployment = harness.deployment()
    config = replace(deployment.runtime_config, retry=RetryPolicy(max_retries=0))  # type: ignore[type-var]
    engine = await harness.engine(replace(deployment, runtime_config=config))
    with pytest.raises(Timeout) as caught:
        await collect(engine.submit(request()))
    assert caught.value.phase is TimeoutPhase.FIRST_BYTE


async def stream_until_failure(stream: BoundedStream[TokenChunk]) -> tuple[str, BaseException]:
    received = ""
    try:
        async for chunk in stream:
            received += chunk.text
    except InferenceError as failure:
        return received, failure
    raise AssertionError("the stream did not fail")


async def test_stall_mid_stream_ends_with_partial_content_once(harness: Harness) -> None:
    harness.server.script(
        "POST", PATH, ScriptedResponse.stream(sse_chunks(["a", "b", "c"]), stall_after_chunks=2)
    )
    engine = await harness.engine()
    received, failure = await stream_until_failure(engine.submit(request(stream=True)))
    assert received == "ab"  # once, never replayed
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, Timeout)
    assert failure.__cause__.phase is TimeoutPhase.BETWEEN_BYTES
    assert len(harness.server.requests) == 1  # no retry after the first byte


async def test_reset_mid_stream_ends_with_partial_content_once(harness: Harness) -> None:
    harness.server.script(
        "POST", PATH, ScriptedResponse.stream(sse_chunks(["x", "y"]), reset_after_chunks=1)
    )
    engine = await harness.engine()
    received, failure = await stream_until_failure(engine.submit(request(stream=True)))
    assert received == "x"
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, NetworkError)
    assert len(harness.server.requests) == 1


async def test_reset_before_any_content_is_retried(harness: Harness) -> None:
    harness.server.script(
        "POST",
        PATH,
        ScriptedResponse.stream(sse_chunks(["x"]), reset_after_chunks=0),
        ScriptedResponse.stream(sse_chunks(["fine"])),
    )
    engine = await harness.engine()
    assert (await collect(engine.submit(request(stream=True)))).text == "fine"


def by_key(good: str) -> Any:
    def answer(recorded: RecordedRequest) -> ScriptedResponse:
        if recorded.headers.get("authorization") == f"Bearer {good}":
            return unary("authorized")
        return ScriptedResponse.json(
            {
                "error": {
                    "message": "Incorrect API key provided",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
            status=401,
        )

    return answer


async def test_401_rebuilds_the_session_after_the_key_file_changed(harness: Harness) -> None:
    harness.server.default = by_key(NEW_KEY)
    engine = await harness.engine()
    harness.key_file.write_text(NEW_KEY)  # rotated on disk; the session still has the old
    assert (await collect(engine.submit(request()))).text == "authorized"
    keys = [r.headers["authorization"] for r in harness.server.requests]
    assert keys == [f"Bearer {OLD_KEY}", f"Bearer {NEW_KEY}"]
    assert engine.runner.session.generation == 2


@pytest.mark.parametrize(
    ("code", "expected"),
    [("content_filter", ContentFiltered), ("context_length_exceeded", ContextLengthExceeded)],
)
async def test_400s_are_surfaced_without_retry(
    harness: Harness, code: str, expected: type[InferenceError]
) -> None:
    harness.server.script("POST", PATH, error(400, code))
    engine = await harness.engine()
    with pytest.raises(expected):
        await collect(engine.submit(request()))
    assert len(harness.server.requests) == 1
    assert harness.report_log.reports[0].attempts == 1
    assert engine.breaker.snapshot().consecutive_failures == 0


# ---------------------------------------------------------------- cancellation, capacity


async def test_client_cancel_closes_the_upstream_and_releases_permits(harness: Harness) -> None:
    harness.server.script(
        "POST", PATH, ScriptedResponse.stream(sse_chunks(["a", "b", "c", "d"]), chunk_delay=0.05)
    )
    engine = await harness.engine()
    stream = engine.submit(request(stream=True))
    first = await stream.__anext__()
    assert first.text == "a"
    stream.close()  # the client went away
    aborts = await asyncio.wait_for(harness.server.wait_client_aborts(1), 2)
    assert aborts[0].chunks_sent < 6
    while engine.in_flight:
        await asyncio.sleep(0.005)
    assert harness.report_log.reports[-1].outcome == "request_cancelled"


async def test_reject_policy_refuses_when_busy(harness: Harness) -> None:
    harness.server.default = lambda _: ScriptedResponse.stream(
        sse_chunks(["slow"]), chunk_delay=0.05
    )
    engine = await harness.engine(
        harness.deployment(max_concurrent=1, on_capacity_exhausted=CapacityPolicy.REJECT)
    )
    first = engine.submit(request(stream=True))
    with pytest.raises(Backpressure, match="busy"):
        engine.submit(request(stream=True))
    assert (await collect(first)).text == "slow"


async def test_a_request_waits_at_most_the_queue_timeout(harness: Harness) -> None:
    harness.server.default = lambda _: ScriptedResponse.stream(
        sse_chunks(["slow"]), chunk_delay=0.04
    )
    engine = await harness.engine(harness.deployment(max_concurrent=1, queue_timeout_ms=50))
    first = engine.submit(request(stream=True))
    second = engine.submit(request(stream=True))
    with pytest.raises(Backpressure, match="in the queue"):
        await collect(second)
    assert (await collect(first)).text == "slow"


async def test_priority_order_in_the_queue(harness: Harness) -> None:
    order: list[str] = []

    def answer(recorded: RecordedRequest) -> ScriptedResponse:
        order.append(recorded.json()["messages"][0]["content"])
        return ScriptedResponse.stream(sse_chunks(["ok"]), chunk_delay=0.01)

    harness.server.default = answer
    engine = await harness.engine(harness.deployment(max_concurrent=1))
    streams = [engine.submit(request("first", stream=True))]
    while not harness.server.requests:  # the only worker is busy with "first"
        await asyncio.sleep(0.002)
    streams.append(engine.submit(request("background", stream=True, priority=Priority.BACKGROUND)))
    streams.append(engine.submit(request("critical", stream=True, priority=Priority.CRITICAL)))
    for stream in streams:
        await collect(stream)
    assert order == ["first", "critical", "background"]


# ---------------------------------------------------------------- load and rotation


async def test_a_thousand_requests_through_32_workers(harness: Harness) -> None:
    def echo(recorded: RecordedRequest) -> ScriptedResponse:
        text = recorded.json()["messages"][0]["content"]
        return ScriptedResponse.stream(sse_chunks([text, "!"]))

    harness.server.default = echo
    relaxed = Timeouts(request_timeout_ms=10_000, read_timeout_ms=5_000)
    engine = await harness.engine(
        harness.deployment(timeouts=relaxed, max_concurrent=32, queue_capacity=1024)
    )
    streams = [engine.submit(request(f"r{i}", stream=True)) for i in range(1000)]
    results = await asyncio.gather(*(collect(s) for s in streams))
    assert [r.text for r in results] == [f"r{i}!" for i in range(1000)]  # none lost or doubled
    assert len(harness.server.requests) == 1000
    assert sorted(r.outcome for r in harness.report_log.reports) == ["ok"] * 1000


async def test_rotation_under_load_drops_nothing(harness: Harness) -> None:
    rotated = asyncio.Event()

    def answer(recorded: RecordedRequest) -> ScriptedResponse:
        key = recorded.headers.get("authorization")
        if rotated.is_set() and key == f"Bearer {OLD_KEY}":
            return by_key(NEW_KEY)(recorded)  # the old key is refused from now on
        return ScriptedResponse.stream(sse_chunks(["part1", "part2", "part3"]), chunk_delay=0.03)

    harness.server.default = answer
    limits = RateLimits(concurrent_requests=600)
    # Hundreds of connections set up at once in one process on a small machine: the
    # first-byte limit is generous so the load itself cannot trip it.
    relaxed = Timeouts(request_timeout_ms=10_000, read_timeout_ms=5_000)
    deployment = harness.deployment(timeouts=relaxed, max_concurrent=500, queue_capacity=1024)
    deployment = replace(
        deployment,
        runtime_config=replace(deployment.runtime_config, rate_limits=limits),  # type: ignore[type-var]
    )
    engine = await harness.engine(deployment)
    streams = [engine.submit(request(f"r{i}", stream=True)) for i in range(500)]
    collectors = [asyncio.ensure_future(collect(s)) for s in streams]
    while len(harness.server.requests) < 500:  # all 500 are streaming on the old key
        await asyncio.sleep(0.005)
    harness.key_file.write_text(NEW_KEY)
    rotated.set()
    # New requests arrive while the 500 are still streaming on the old key.
    late = [
        asyncio.ensure_future(collect(engine.submit(request(f"late{i}", stream=True))))
        for i in range(50)
    ]
    results = await asyncio.gather(*collectors, *late)
    assert [r.text for r in results] == ["part1part2part3"] * 550
    assert [r.outcome for r in harness.report_log.reports].count("ok") == 550
    assert engine.runner.session.generation == 2  # 401s from many requests: one rebuild


async def test_operator_rebuild(harness: Harness) -> None:
    harness.server.default = by_key(NEW_KEY)
    engine = await harness.engine()
    harness.key_file.write_text(NEW_KEY)
    assert await engine.rebuild_session(SessionRebuildCause.OPERATOR) == 2
    assert (await collect(engine.submit(request()))).text == "authorized"
    assert len(harness.server.requests) == 1


async def test_an_engine_restart_keeps_queued_requests(harness: Harness) -> None:
    harness.server.default = lambda _: ScriptedResponse.stream(
        sse_chunks(["done"]), chunk_delay=0.01
    )
    engine = await harness.engine(harness.deployment(max_concurrent=2))
    streams = [engine.submit(request(f"r{i}", stream=True)) for i in range(8)]
    while not harness.server.requests:
        await asyncio.sleep(0.002)
    actor = engine.actor
    assert actor is not None
    with pytest.raises(TypeError):
        await actor.ask("not a message the engine takes")  # a failure: it is restarted
    results = [await collect(stream) for stream in streams]
    assert [r.text for r in results] == ["done"] * 8
    assert len(harness.server.requests) == 8
    workers = [ref.path for ref in harness.system.actors if "/worker-" in ref.path]
    assert len(workers) == 2  # the new pair; the old pair left after their requests


async def test_the_deadline_bounds_waiting_not_a_running_stream(harness: Harness) -> None:
    # As on a local engine: a request whose deadline passes while it is queued times out;
    # one that is already streaming is bounded by its phase timeouts, not cut.
    harness.server.default = lambda _: ScriptedResponse.stream(
        sse_chunks(["a", "b", "c", "d"]), chunk_delay=0.1
    )
    relaxed = Timeouts(request_timeout_ms=10_000, read_timeout_ms=5_000)
    engine = await harness.engine(harness.deployment(timeouts=relaxed, max_concurrent=1))
    deadline = asyncio.get_running_loop().time() + 0.2
    running = engine.submit(request("first", stream=True), deadline=deadline)
    queued = engine.submit(request("second", stream=True), deadline=deadline)
    with pytest.raises(Timeout) as caught:
        await collect(queued)
    assert caught.value.phase is TimeoutPhase.DEADLINE
    assert (await collect(running)).text == "abcd"  # finished after its deadline
    assert asyncio.get_running_loop().time() > deadline
    assert len(harness.server.requests) == 1  # the queued one never went upstream
    assert [r.outcome for r in harness.report_log.reports] == ["ok", "timed_out"]
