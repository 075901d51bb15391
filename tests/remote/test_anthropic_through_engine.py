"""Our Anthropic adapter through the remote engine, against the Anthropic mock: every
fault the mock can inject, and the typed outcome the engine gives it — with the API key
kept out of URLs, errors and logs throughout."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ContentFiltered,
    InferenceError,
    NetworkError,
    Overloaded,
    ProtocolError,
    RateLimitExceeded,
    ServerError,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
    Unauthorized,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest, SamplingParams
from rakka_inference.core.policies import (
    CircuitBreakerConfig,
    Jitter,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runtimes import AnthropicConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk, aggregate
from rakka_inference.core.tools import ToolCall, ToolDefinition
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.testkit.faults import (
    Fault,
    FaultKind,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
)
from rakka_inference.testkit.http_script import ScriptedResponse
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.reports import ReportLog

OLD_KEY = "sk-ant-api03-OLD-a1b2c3d4e5f6"
NEW_KEY = "sk-ant-api03-NEW-f6e5d4c3b2a1"
MAX_RETRIES = 3
WEATHER = ToolDefinition(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def chat(text: str = "one two three", *, stream: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(model="claude", messages=(ChatMessage.user(text),), stream=stream, **kw)


async def collect(stream: BoundedStream[TokenChunk]) -> ChatCompletion:
    return aggregate([chunk async for chunk in stream])


async def until_failure(stream: BoundedStream[TokenChunk]) -> tuple[str, InferenceError]:
    """The text that arrived before the stream failed, and the failure."""
    received = ""
    try:
        async for chunk in stream:
            received += chunk.text
    except InferenceError as failure:
        return received, failure
    raise AssertionError("the stream did not fail")


class Harness:
    """One mock, one key file, engines built by the factory, and what they reported."""

    def __init__(self, mock: AnthropicMock, key_file: Path) -> None:
        self.mock = mock
        self.key_file = key_file
        self.report_log = ReportLog()
        self.services = RemoteServices()
        self.engines: list[RemoteEngineCore] = []
        self.system = ActorSystem()
        self.failures: list[BaseException] = []

    def deployment(self, *, timeouts: Timeouts | None = None) -> Deployment:
        config = AnthropicConfig(
            endpoint=self.mock.url,
            api_key=SecretRef.from_file(self.key_file),
            retry=RetryPolicy(
                max_retries=MAX_RETRIES, initial_backoff_ms=1, max_backoff_ms=5, jitter=Jitter.NONE
            ),
            timeouts=timeouts
            or Timeouts(connect_timeout_ms=1000, request_timeout_ms=500, read_timeout_ms=50),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=100, open_duration_ms=60_000),
        )
        return Deployment(
            name="claude",
            model="anthropic/claude-sonnet-4-5",
            runtime=RuntimeKind.ANTHROPIC,
            runtime_config=config,
            serving=Serving(max_concurrent=4, queue_timeout_ms=5000),
        )

    async def engine(self, deployment: Deployment | None = None) -> RemoteEngineCore:
        engine = await build_remote_engine(deployment or self.deployment(), self.services)
        self.report_log.watch(engine)
        await engine.start(self.system, f"engine-{len(self.engines)}")
        self.engines.append(engine)
        return engine

    async def fails(self, stream: BoundedStream[TokenChunk]) -> InferenceError:
        """The error ``stream`` ends with, kept for the leak check."""
        try:
            await collect(stream)
        except InferenceError as failure:
            self.failures.append(failure)
            return failure
        raise AssertionError("the request did not fail")

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
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(OLD_KEY)
    async with AnthropicMock(faults=FaultPlan(valid_keys={OLD_KEY})) as mock:
        built = Harness(mock, key_file)
        try:
            yield built
        finally:
            await built.close()
        built.assert_released()


def sent(harness: Harness) -> list[dict[str, Any]]:
    return [request.json() for request in harness.mock.requests]


# ---------------------------------------------------------------- answers


async def test_unary_and_streamed_answers_with_usage(harness: Harness) -> None:
    harness.mock.reply = ReplyScript(chunks=3, chunk_delay_s=0.002)
    engine = await harness.engine()
    unary = await collect(engine.submit(chat(sampling=SamplingParams(max_tokens=64))))
    assert unary.text == "You said: one two three"
    assert unary.finish_reason is FinishReason.STOP
    assert unary.usage is not None
    assert (unary.usage.input_tokens, unary.usage.output_tokens) == (3, 5)
    streamed = await collect(engine.submit(chat(stream=True)))
    assert streamed.text == "You said: one two three"
    assert streamed.finish_reason is FinishReason.STOP
    assert streamed.usage is not None
    # message_start's 1 output token and message_delta's running total add up exactly.
    assert (streamed.usage.input_tokens, streamed.usage.output_tokens) == (3, 5)
    request = harness.mock.requests[1]
    assert request.headers["x-api-key"] == OLD_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert [body["model"] for body in sent(harness)] == ["claude-sonnet-4-5"] * 2
    assert [r.outcome for r in harness.report_log.reports] == ["ok", "ok"]
    assert harness.report_log.reports[1].cost_usd is not None


@pytest.mark.parametrize("stream", [False, True])
async def test_parallel_tool_calls_and_the_exchange_after(harness: Harness, stream: bool) -> None:
    harness.mock.reply = ReplyScript(
        tool_calls=[
            ScriptedToolCall("get_weather", {"city": "Paris"}),
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
        ]
    )
    engine = await harness.engine()
    asked = ChatMessage.user("weather in Paris and Oslo?")
    first = await collect(
        engine.submit(
            ChatRequest(model="claude", messages=(asked,), tools=(WEATHER,), stream=stream)
        )
    )
    assert first.finish_reason is FinishReason.TOOL_CALLS
    assert [orjson.loads(call.arguments) for call in first.tool_calls] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    calls = tuple(ToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in first.tool_calls)
    conversation = (
        asked,
        ChatMessage.assistant(tool_calls=calls),
        ChatMessage.tool(calls[0].id, "18 degrees"),
        ChatMessage.tool(calls[1].id, "9 degrees"),
    )
    final = await collect(
        engine.submit(
            ChatRequest(model="claude", messages=conversation, tools=(WEATHER,), stream=stream)
        )
    )
    assert final.text == "You said: 18 degrees 9 degrees"
    assert final.finish_reason is FinishReason.STOP
    assert harness.mock.server.errors == []


# ---------------------------------------------------------------- faults: retried


@pytest.mark.parametrize(
    ("fault", "stream"),
    [
        (Fault.rate_limit(0.02), False),
        (Fault.rate_limit(0.02), True),
        (Fault.server_error(503), False),
        (Fault.server_error(529), True),
        (Fault.overloaded(), False),
        (Fault(FaultKind.OVERLOADED, after_chunks=0), True),  # the error event comes first
        (Fault.stall(after_chunks=0), True),  # silence before any event
        (Fault.stall(after_chunks=1), False),  # half a unary body, then silence
        (Fault.reset(after_chunks=0), True),
        (Fault.reset(after_chunks=1), False),
    ],
)
async def test_faults_before_any_content_are_retried(
    harness: Harness, fault: Fault, stream: bool
) -> None:
    harness.mock.faults.next(fault)
    engine = await harness.engine()
    completion = await collect(engine.submit(chat(stream=stream)))
    assert completion.text == "You said: one two three"
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("ok", 2)


async def test_slow_first_byte_is_retried(harness: Harness) -> None:
    quick = Timeouts(connect_timeout_ms=1000, request_timeout_ms=25, read_timeout_ms=50)
    engine = await harness.engine(harness.deployment(timeouts=quick))
    harness.mock.faults.next(Fault.slow_first_byte(0.05))
    assert (await collect(engine.submit(chat()))).text == "You said: one two three"
    assert harness.report_log.reports[0].attempts == 2
    [abort] = await harness.mock.server.wait_client_aborts(1)
    assert abort.chunks_sent == 0  # we gave up on it; the mock saw the connection go


async def test_slow_first_byte_every_time_is_a_first_byte_timeout(harness: Harness) -> None:
    quick = Timeouts(connect_timeout_ms=1000, request_timeout_ms=25, read_timeout_ms=50)
    engine = await harness.engine(harness.deployment(timeouts=quick))
    harness.mock.faults.for_key(OLD_KEY, Fault.slow_first_byte(0.05))
    failure = await harness.fails(engine.submit(chat(stream=True)))
    assert isinstance(failure, Timeout)
    assert failure.phase is TimeoutPhase.FIRST_BYTE
    assert len(harness.mock.requests) == MAX_RETRIES + 1


# ---------------------------------------------------------------- faults: given up


async def test_long_retry_after_fails_at_once(harness: Harness) -> None:
    harness.mock.faults.next(Fault.rate_limit(120))
    engine = await harness.engine()
    failure = await harness.fails(engine.submit(chat()))
    assert isinstance(failure, RateLimitExceeded)
    assert failure.retry_after == pytest.approx(120)
    assert failure.upstream_status == 429
    assert len(harness.mock.requests) == 1


@pytest.mark.parametrize("stream", [False, True])
async def test_overloaded_every_time_is_overloaded_after_the_retries(
    harness: Harness, stream: bool
) -> None:
    # Unary: 529s. Stream: error events before any content, so each is still retried.
    fault = Fault.overloaded() if not stream else Fault(FaultKind.OVERLOADED, after_chunks=0)
    harness.mock.faults.for_key(OLD_KEY, fault)
    engine = await harness.engine()
    failure = await harness.fails(engine.submit(chat(stream=stream)))
    assert isinstance(failure, Overloaded)
    assert isinstance(failure, ServerError)
    assert failure.retryable
    assert harness.report_log.reports[0].attempts == MAX_RETRIES + 1
    assert harness.report_log.reports[0].outcome == "overloaded"
    assert engine.breaker.snapshot().consecutive_failures == MAX_RETRIES + 1


@pytest.mark.parametrize("stream", [False, True])
async def test_a_refusal_is_a_content_filter_finish(harness: Harness, stream: bool) -> None:
    # The adapter maps stop_reason "refusal" to finish CONTENT_FILTER in a normal answer;
    # it does not raise ContentFiltered (that is for a 400 the provider refuses outright).
    harness.mock.faults.next(Fault.content_filter())
    engine = await harness.engine()
    completion = await collect(engine.submit(chat(stream=stream)))
    assert (completion.text, completion.finish_reason) == ("", FinishReason.CONTENT_FILTER)
    assert harness.report_log.reports[0].outcome == "ok"
    assert harness.report_log.reports[0].attempts == 1
    assert not any(isinstance(r.error, ContentFiltered) for r in harness.report_log.reports)


async def test_a_prompt_too_long_is_a_bad_request(harness: Harness) -> None:
    # Anthropic tells "prompt is too long" only by its message text, which the adapter does
    # not classify by: it stays a plain BadRequest (not ContextLengthExceeded).
    harness.mock.faults.next(Fault.context_length())
    engine = await harness.engine()
    failure = await harness.fails(engine.submit(chat()))
    assert type(failure) is BadRequest
    assert "prompt is too long" in failure.message
    assert failure.upstream_status == 400
    assert harness.report_log.reports[0].attempts == 1
    assert engine.breaker.snapshot().consecutive_failures == 0


async def test_a_rotated_key_rebuilds_the_session_once(harness: Harness) -> None:
    engine = await harness.engine()
    harness.mock.faults.rotate_key(OLD_KEY, NEW_KEY)  # the provider revoked the old key
    harness.key_file.write_text(NEW_KEY)  # and the new one is on disk
    assert (await collect(engine.submit(chat(stream=True)))).text == "You said: one two three"
    keys = [request.headers["x-api-key"] for request in harness.mock.requests]
    assert keys == [OLD_KEY, NEW_KEY]
    assert engine.runner.session.generation == 2
    assert harness.report_log.reports[0].attempts == 2


async def test_a_key_refused_after_the_rebuild_is_unauthorized(harness: Harness) -> None:
    engine = await harness.engine()
    harness.mock.faults.rotate_key(OLD_KEY, NEW_KEY)  # revoked, but nothing new on disk
    failure = await harness.fails(engine.submit(chat()))
    assert isinstance(failure, Unauthorized)
    assert len(harness.mock.requests) == 2  # the try, and one after the rebuild
    assert engine.runner.session.generation == 2


async def test_an_injected_401_rebuilds_and_retries(harness: Harness) -> None:
    harness.mock.faults.next(Fault.unauthorized())
    engine = await harness.engine()
    assert (await collect(engine.submit(chat()))).text == "You said: one two three"
    assert engine.runner.session.generation == 2


# ---------------------------------------------------------------- faults mid-stream


@pytest.mark.parametrize(
    ("fault", "cause"),
    [
        (Fault.stall(after_chunks=4), Timeout),
        (Fault.reset(after_chunks=4), NetworkError),
        (Fault.malformed_chunk(after_chunks=4), ProtocolError),
        (Fault(FaultKind.OVERLOADED, after_chunks=4), Overloaded),
    ],
)
async def test_mid_stream_faults_end_with_partial_content_once(
    harness: Harness, fault: Fault, cause: type[InferenceError]
) -> None:
    # Events: message_start, ping, content_block_start, then the first text_delta.
    harness.mock.faults.next(fault)
    engine = await harness.engine()
    received, failure = await until_failure(engine.submit(chat(stream=True)))
    harness.failures.append(failure)
    assert received == "You sa"  # the first piece, once, never replayed
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, cause)
    if isinstance(failure.__cause__, Timeout):
        assert failure.__cause__.phase is TimeoutPhase.BETWEEN_BYTES
    assert len(harness.mock.requests) == 1  # no retry after the first byte
    assert harness.report_log.reports[0].outcome == "stream_interrupted"


async def test_malformed_before_content(harness: Harness) -> None:
    # A broken message_start (event 0) or unary body: nothing reached the client, but a
    # protocol error is not retried either.
    harness.mock.faults.next(Fault.malformed_chunk(after_chunks=0), Fault.malformed_chunk())
    engine = await harness.engine()
    streamed = await harness.fails(engine.submit(chat(stream=True)))
    unary = await harness.fails(engine.submit(chat()))
    assert isinstance(streamed, ProtocolError)
    assert isinstance(unary, ProtocolError)
    assert len(harness.mock.requests) == 2


async def test_a_fault_after_message_start_alone_is_still_retried(harness: Harness) -> None:
    # message_start carries only the prompt's usage: nothing the client would see, so the
    # stream is not committed and the engine retries. Both attempts' usage is reported
    # (the provider bills the first attempt's prompt too).
    harness.mock.faults.next(Fault.reset(after_chunks=1))
    engine = await harness.engine()
    stream = engine.submit(chat(stream=True))
    chunks = [chunk async for chunk in stream]
    assert "".join(chunk.text for chunk in chunks)
    assert len(harness.mock.requests) == 2


# ---------------------------------------------------------------- the key stays secret


async def test_the_key_never_appears_in_urls_errors_or_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = await harness.engine()
    mock = harness.mock
    for fault in (
        Fault.context_length(),
        Fault(FaultKind.OVERLOADED, after_chunks=4),
        Fault.malformed_chunk(after_chunks=0),
    ):
        mock.faults.next(fault)
        await harness.fails(engine.submit(chat(stream=True)))
    mock.faults.for_key(OLD_KEY, Fault.server_error(500))
    await harness.fails(engine.submit(chat()))
    mock.faults.clear()
    mock.faults.rotate_key(OLD_KEY, NEW_KEY)
    await harness.fails(engine.submit(chat()))  # unauthorized, after one rebuild
    harness.key_file.write_text(NEW_KEY)
    await collect(engine.submit(chat(stream=True)))
    assert engine.runner.session.generation == 3
    mock.faults.next(Fault.rate_limit(120))  # last: the limiter then holds the key back
    await harness.fails(engine.submit(chat()))

    texts = [caplog.text]
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(repr(record.exc_info[1]))
    for failure in [*harness.failures, *(r.error for r in harness.report_log.reports if r.error)]:
        error: BaseException | None = failure
        while error is not None:  # the whole chain: causes carry upstream detail
            texts += [str(error), repr(error), repr(vars(error))]
            error = error.__cause__ or error.__context__
    for request in mock.requests:
        texts += [request.path, request.query]
    texts += [repr(engine.runner.adapter.endpoint), repr(harness.report_log.reports)]
    assert len(harness.failures) == 6
    assert any("rebuilding remote session" in r.getMessage() for r in caplog.records)
    for text in texts:
        assert OLD_KEY not in text
        assert NEW_KEY not in text
    # The key did go where it belongs: the header.
    assert {r.headers["x-api-key"] for r in mock.requests} == {OLD_KEY, NEW_KEY}


# ---------------------------------------------------------------- upstream text, cleaned


async def test_upstream_error_text_reaches_the_client_without_keys_urls_or_hosts(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rakka_inference")
    engine = await harness.engine()
    await collect(engine.submit(chat()))
    upstream = (
        f"invalid x-api-key {OLD_KEY} (sk-ant-api03-abc…wxyz) for "
        "https://gateway.internal.example/v1/messages at 10.20.30.40:8443"
    )
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": upstream}}
    harness.mock.server.script(
        "POST",
        harness.mock.requests[-1].path,
        ScriptedResponse(400, {"content-type": "application/json"}, orjson.dumps(body)),
    )
    failure = await harness.fails(engine.submit(chat()))

    assert type(failure) is BadRequest
    assert failure.message == (
        "anthropic returned HTTP 400 Bad Request (invalid_request_error): "
        "invalid x-api-key [redacted] ([redacted]) for [redacted] at [redacted]"
    )
    assert len(harness.mock.requests) == 2  # not retried
    assert "https://gateway.internal.example/v1/messages at 10.20.30.40:8443" in caplog.text
    for secret in (OLD_KEY, "sk-ant-api03-abc…wxyz"):
        assert secret not in caplog.text
