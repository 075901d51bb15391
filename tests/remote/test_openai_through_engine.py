"""The OpenAI adapter through the remote engine against the OpenAI / Azure mock: every
fault of the shared fault plan ends in its typed outcome, and no key leaks anywhere."""

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
    ContextLengthExceeded,
    InferenceError,
    NetworkError,
    ProtocolError,
    RateLimitExceeded,
    ServerError,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
    Unauthorized,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import (
    CircuitBreakerConfig,
    Jitter,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk, aggregate
from rakka_inference.core.tools import ToolDefinition
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.testkit.faults import (
    Fault,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
    count_tokens,
)
from rakka_inference.testkit.http_script import ScriptedResponse
from rakka_inference.testkit.mock_openai import OpenAIMock, mask_key
from rakka_inference.testkit.reports import ReportLog

OLD_KEY = "sk-engine-old-key-0000"
NEW_KEY = "sk-engine-new-key-1111"
ANSWER = "alpha beta gamma delta"  # streamed in 4 pieces: "alpha ", "beta ", "gamma", " delta"


@pytest.fixture(params=["openai", "azure"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    plan = FaultPlan(valid_keys={OLD_KEY})
    async with OpenAIMock(faults=plan, reply=ReplyScript(text=ANSWER, chunks=4)) as server:
        yield server


class Harness:
    def __init__(self, mock: OpenAIMock, key_file: Path, dialect: str) -> None:
        self.mock = mock
        self.key_file = key_file
        self.dialect = dialect
        self.report_log = ReportLog()
        self.services = RemoteServices()
        self.system = ActorSystem()
        self.engines: list[RemoteEngineCore] = []

    @property
    def azure(self) -> bool:
        return self.dialect == "azure"

    @property
    def lead(self) -> int:
        """Stream events before the role delta: Azure's prompt_filter_results chunk."""
        return 1 if self.azure else 0

    @property
    def provider(self) -> str:
        """The provider our errors name."""
        return "azure" if self.azure else "openai"

    def deployment(self, **retry: Any) -> Deployment:
        common: dict[str, Any] = {
            "api_key": SecretRef.from_file(self.key_file),
            "retry": RetryPolicy(
                **{
                    "max_retries": 3,
                    "initial_backoff_ms": 1,
                    "max_backoff_ms": 5,
                    "jitter": Jitter.NONE,
                    **retry,
                }
            ),
            "timeouts": Timeouts(
                connect_timeout_ms=1000, request_timeout_ms=150, read_timeout_ms=100
            ),
            "circuit_breaker": CircuitBreakerConfig(failure_threshold=50),
        }
        if self.azure:
            config = OpenAIConfig(
                variant="azure",
                endpoint=self.mock.url,
                resource="contoso",
                deployment="gpt4o",
                api_version="2024-10-21",
                **common,
            )
        else:
            config = OpenAIConfig(endpoint=self.mock.openai_base_url, **common)
        return Deployment(
            name=self.dialect,
            model="gpt-4o",
            runtime=RuntimeKind.OPENAI,
            runtime_config=config,
            serving=Serving(max_concurrent=2, queue_timeout_ms=5000),
        )

    async def engine(self, **retry: Any) -> RemoteEngineCore:
        engine = await build_remote_engine(self.deployment(**retry), self.services)
        self.report_log.watch(engine)
        await engine.start(self.system, f"engine-{len(self.engines)}")
        self.engines.append(engine)
        return engine

    async def close(self) -> None:
        for engine in self.engines:
            await engine.stop(timeout=5)
        await self.system.shutdown(timeout=5)

    def sent_keys(self) -> list[str]:
        name = "api-key" if self.azure else "authorization"
        prefix = "" if self.azure else "Bearer "
        return [r.headers[name].removeprefix(prefix) for r in self.mock.requests]


@pytest.fixture
async def harness(mock: OpenAIMock, tmp_path: Path, dialect: str) -> AsyncIterator[Harness]:
    key_file = tmp_path / "openai.key"
    key_file.write_text(OLD_KEY)
    built = Harness(mock, key_file, dialect)
    try:
        yield built
    finally:
        await built.close()
    for engine in built.engines:
        assert engine.in_flight == 0
        assert engine.limiter.utilization().concurrent_in_use == 0


def request(text: str = "hello there", *, stream: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=(ChatMessage.user(text),), stream=stream, **kw)


async def collect(stream: BoundedStream[TokenChunk]) -> ChatCompletion:
    return aggregate([chunk async for chunk in stream])


async def until_failure(stream: BoundedStream[TokenChunk]) -> tuple[str, InferenceError]:
    """The text that arrived before the stream failed, and its error."""
    received = ""
    try:
        async for chunk in stream:
            received += chunk.text
    except InferenceError as failure:
        return received, failure
    raise AssertionError("the stream did not fail")


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_and_exact_usage(harness: Harness, stream: bool) -> None:
    engine = await harness.engine()
    completion = await collect(engine.submit(request(stream=stream)))
    assert completion.text == ANSWER
    assert completion.finish_reason is FinishReason.STOP
    assert completion.usage is not None
    assert completion.usage.input_tokens == count_tokens(["hello there"])
    assert completion.usage.output_tokens == count_tokens([ANSWER])
    assert completion.usage.cached_input_tokens == completion.usage.reasoning_tokens == 0
    [sent] = harness.mock.requests
    if harness.azure:
        assert sent.path == "/openai/deployments/gpt4o/chat/completions"
        assert sent.query == "api-version=2024-10-21"
    else:
        assert sent.path == "/v1/chat/completions"
    assert harness.sent_keys() == [OLD_KEY]
    assert [r.outcome for r in harness.report_log.reports] == ["ok"]


async def test_parallel_tool_calls_streamed(harness: Harness) -> None:
    harness.mock.reply = ReplyScript(
        tool_calls=(
            ScriptedToolCall("get_weather", {"city": "Paris"}),
            ScriptedToolCall("get_time", {"zone": "CET"}),
        )
    )
    engine = await harness.engine()
    tools = (ToolDefinition(name="get_weather"), ToolDefinition(name="get_time"))
    completion = await collect(engine.submit(request(stream=True, tools=tools)))
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_time", '{"zone":"CET"}'),
    ]
    assert all(c.id.startswith("call_") for c in completion.tool_calls)


# ---------------------------------------------------------------- refusals


async def test_rate_limit_is_retried_after_its_retry_after(harness: Harness) -> None:
    harness.mock.faults.next(Fault.rate_limit(0.02))
    engine = await harness.engine()
    assert (await collect(engine.submit(request()))).text == ANSWER
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("ok", 2)


async def test_rate_limit_longer_than_allowed_fails_at_once(harness: Harness) -> None:
    harness.mock.faults.next(Fault.rate_limit(5.0))
    engine = await harness.engine(max_retry_after_ms=1000)
    with pytest.raises(RateLimitExceeded) as caught:
        await collect(engine.submit(request()))
    assert caught.value.retry_after == pytest.approx(5.0)
    assert len(harness.mock.requests) == 1


@pytest.mark.parametrize(
    "fault", [Fault.server_error(), Fault.server_error(500), Fault.overloaded()]
)
async def test_server_errors_are_retried_then_surface(harness: Harness, fault: Fault) -> None:
    harness.mock.faults.next(*[fault] * 4)
    engine = await harness.engine()
    with pytest.raises(ServerError) as caught:
        await collect(engine.submit(request()))
    assert caught.value.upstream_status == (fault.status or 503)
    assert len(harness.mock.requests) == 4  # the first try and three retries
    harness.mock.faults.next(*[fault] * 2)
    assert (await collect(engine.submit(request()))).text == ANSWER  # the third try works
    assert harness.report_log.reports[-1].attempts == 3


@pytest.mark.parametrize(
    ("fault", "expected"),
    [(Fault.content_filter(), ContentFiltered), (Fault.context_length(), ContextLengthExceeded)],
)
async def test_request_errors_are_surfaced_without_retry(
    harness: Harness, fault: Fault, expected: type[InferenceError]
) -> None:
    harness.mock.faults.next(fault)
    engine = await harness.engine()
    with pytest.raises(expected) as caught:
        await collect(engine.submit(request()))
    assert caught.value.upstream_status == 400
    assert len(harness.mock.requests) == 1
    assert engine.breaker.snapshot().consecutive_failures == 0


async def test_rotated_key_file_rebuilds_the_session(harness: Harness) -> None:
    engine = await harness.engine()
    harness.mock.faults.rotate_key(OLD_KEY, NEW_KEY)  # the provider revokes the old key
    harness.key_file.write_text(NEW_KEY)  # and the operator rotates the file
    assert (await collect(engine.submit(request()))).text == ANSWER
    assert harness.sent_keys() == [OLD_KEY, NEW_KEY]
    assert engine.runner.session.generation == 2
    assert harness.report_log.reports[0].attempts == 2


async def test_a_401_that_persists_after_the_rebuild(harness: Harness) -> None:
    harness.mock.faults.next(Fault.unauthorized(), Fault.unauthorized())
    engine = await harness.engine()
    with pytest.raises(Unauthorized):
        await collect(engine.submit(request()))
    assert len(harness.mock.requests) == 2


# ---------------------------------------------------------------- transport faults


async def test_slow_first_byte_is_a_retried_timeout(harness: Harness) -> None:
    harness.mock.faults.next(Fault.slow_first_byte(0.3))
    engine = await harness.engine()
    assert (await collect(engine.submit(request(stream=True)))).text == ANSWER
    assert harness.report_log.reports[0].attempts == 2


async def test_slow_first_byte_every_time_is_a_typed_timeout(harness: Harness) -> None:
    harness.mock.faults.next(Fault.slow_first_byte(0.3))
    engine = await harness.engine(max_retries=0)
    with pytest.raises(Timeout) as caught:
        await collect(engine.submit(request()))
    assert caught.value.phase is TimeoutPhase.FIRST_BYTE


@pytest.mark.parametrize(
    ("fault", "cause", "phase"),
    [
        (Fault.stall, Timeout, TimeoutPhase.BETWEEN_BYTES),
        (Fault.reset, NetworkError, None),
        (Fault.malformed_chunk, ProtocolError, None),
    ],
)
async def test_a_fault_after_content_interrupts_the_stream_once(
    harness: Harness, fault: Any, cause: type[InferenceError], phase: TimeoutPhase | None
) -> None:
    # The role delta, then "alpha ", then the fault.
    harness.mock.faults.next(fault(after_chunks=harness.lead + 2))
    engine = await harness.engine()
    received, failure = await until_failure(engine.submit(request(stream=True)))
    assert received == "alpha "  # the first piece, exactly once: never replayed
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, cause)
    if phase is not None:
        assert failure.__cause__.phase is phase  # type: ignore[attr-defined]
    assert len(harness.mock.requests) == 1
    assert harness.report_log.reports[0].outcome == "stream_interrupted"


@pytest.mark.parametrize("fault", [Fault.stall, Fault.reset])
async def test_a_break_before_any_content_is_retried(harness: Harness, fault: Any) -> None:
    harness.mock.faults.next(fault(after_chunks=harness.lead + 1))  # only the role delta
    engine = await harness.engine()
    assert (await collect(engine.submit(request(stream=True)))).text == ANSWER
    assert harness.report_log.reports[0].attempts == 2


async def test_a_malformed_chunk_before_content_is_a_protocol_error(harness: Harness) -> None:
    harness.mock.faults.next(Fault.malformed_chunk(after_chunks=harness.lead + 1))
    engine = await harness.engine()
    with pytest.raises(ProtocolError):
        await collect(engine.submit(request(stream=True)))
    assert len(harness.mock.requests) == 1  # a broken wire format is not retried
    assert engine.breaker.snapshot().consecutive_failures == 1


@pytest.mark.parametrize("fault", [Fault.stall(), Fault.reset()])
async def test_a_unary_answer_cut_before_its_body_is_retried(
    harness: Harness, fault: Fault
) -> None:
    harness.mock.faults.next(fault)  # the head arrives, the body never does
    engine = await harness.engine()
    assert (await collect(engine.submit(request()))).text == ANSWER
    assert (harness.report_log.reports[0].outcome, harness.report_log.reports[0].attempts) == (
        "ok",
        2,
    )


async def test_a_malformed_unary_body_is_a_protocol_error(harness: Harness) -> None:
    harness.mock.faults.next(Fault.malformed_chunk())
    engine = await harness.engine()
    with pytest.raises(ProtocolError, match="malformed JSON"):
        await collect(engine.submit(request()))
    assert len(harness.mock.requests) == 1


# ---------------------------------------------------------------- no key leaks


async def test_keys_never_leak_into_urls_errors_or_logs(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="rakka_inference")
    faults = harness.mock.faults
    engine = await harness.engine(max_retry_after_ms=1000)
    errors: list[BaseException] = []

    async def run(chat: ChatRequest) -> None:
        try:
            await collect(engine.submit(chat))
        except InferenceError as failure:
            errors.append(failure)

    faults.next(Fault.rate_limit(0.01), Fault.server_error(502), Fault.slow_first_byte(0.3))
    await run(request())  # three failed attempts, then an answer
    faults.next(Fault.unauthorized(), Fault.unauthorized())
    await run(request())  # a 401 (the masked key quoted), a rebuild, a 401 again
    for fault in (Fault.content_filter(), Fault.context_length()):
        faults.next(fault)
        await run(request())
    faults.next(Fault.reset(after_chunks=harness.lead + 2))
    await run(request(stream=True))
    faults.next(Fault.malformed_chunk(after_chunks=harness.lead + 1))
    await run(request(stream=True))
    faults.rotate_key(OLD_KEY, NEW_KEY)
    harness.key_file.write_text(NEW_KEY)
    await run(request(stream=True))  # a 401, a rebuild with the new key, an answer
    faults.next(Fault.rate_limit(30))  # last: it blocks the key in the limiter for 30 s
    await run(request())
    await engine.stop()

    assert [type(e).__name__ for e in errors] == [
        "Unauthorized",
        "ContentFiltered",
        "ContextLengthExceeded",
        "StreamInterrupted",
        "ProtocolError",
        "RateLimitExceeded",
    ]
    assert set(harness.sent_keys()) == {OLD_KEY, NEW_KEY}  # the keys really were sent
    texts = [caplog.text, *(repr(report) for report in harness.report_log.reports)]
    for error in errors:
        link: BaseException | None = error
        while link is not None:
            texts += [str(link), repr(link)]
            link = link.__cause__ or link.__context__
    for sent in harness.mock.requests:
        texts += [sent.path, sent.query, sent.body.decode()]
    assert "remote session rebuilt" in caplog.text  # the log was captured
    for key in (OLD_KEY, NEW_KEY):
        for text in texts:
            assert key not in text
    if not harness.azure:
        # OpenAI quotes the key, masked, and a URL: the client reads the type and code and
        # the message without either; the log has the message with only the key masked.
        assert mask_key(OLD_KEY) not in str(errors[0])
        assert "(invalid_request_error, invalid_api_key)" in str(errors[0])
        assert "Incorrect API key provided: [redacted]" in str(errors[0])
        assert "openai.com" not in str(errors[0])
        assert mask_key(OLD_KEY) not in caplog.text
        assert "Incorrect API key provided: [redacted]" in caplog.text
        assert "https://platform.openai.com/account/api-keys" in caplog.text


# ---------------------------------------------------------------- upstream text, cleaned


async def test_upstream_error_text_reaches_the_client_without_keys_urls_or_hosts(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rakka_inference")
    engine = await harness.engine()
    await collect(engine.submit(request()))
    upstream = (
        f"Incorrect API key provided: sk-pr***wxyz (sent {OLD_KEY}). Tried "
        "https://myresource.openai.azure.com/openai/deployments/gpt4o?api-version=1 via "
        "myresource.openai.azure.com and 127.0.0.1:8443 with Authorization: Bearer tok-0123456"
    )
    body = {
        "error": {
            "message": upstream,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    harness.mock.server.script(
        "POST",
        harness.mock.requests[-1].path,
        ScriptedResponse(400, {"content-type": "application/json"}, orjson.dumps(body)),
    )
    with pytest.raises(BadRequest) as caught:
        await collect(engine.submit(request()))

    message = caught.value.message
    assert message == (
        f"{harness.provider} returned HTTP 400 Bad Request "
        "(invalid_request_error, invalid_api_key): "
        "Incorrect API key provided: [redacted] (sent [redacted]). Tried [redacted] via "
        "[redacted] and [redacted] with Authorization: Bearer [redacted]"
    )
    assert len(harness.mock.requests) == 2  # a 400 is not retried, as before
    # The operator reads the whole message, the key masked.
    assert "https://myresource.openai.azure.com/openai/deployments/gpt4o" in caplog.text
    assert "myresource.openai.azure.com and 127.0.0.1:8443" in caplog.text
    for secret in (OLD_KEY, "sk-pr***wxyz", "tok-0123456"):
        assert secret not in caplog.text
