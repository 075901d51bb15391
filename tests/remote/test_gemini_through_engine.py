"""Our Gemini adapter through the remote engine against the Gemini mock, for AI Studio (a
key file) and Vertex AI (a service account whose OAuth2 token comes from the mock): every
fault the mock injects ends in its typed outcome, and no credential ever leaks."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rakka_inference.actors import ActorSystem
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    BadRequest,
    ContentFiltered,
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
from rakka_inference.core.runtimes import GeminiConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk, aggregate
from rakka_inference.core.tools import ToolDefinition
from rakka_inference.core.usage import Usage
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
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.reports import ReportLog

MODEL = "gemini-2.5-flash"
OLD_KEY = "AIzaSy-old-secret-0000"
NEW_KEY = "AIzaSy-new-secret-1111"
QUESTION = "one two three"
ANSWER = f"You said: {QUESTION}"
PIECES = ReplyScript(chunks=4).pieces(ANSWER)
WEATHER = ToolDefinition(
    name="get_weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class Harness:
    """One mock, the key file or service account pointing at it, and the engines built."""

    def __init__(self, mock: GeminiMock, variant: str, tmp_path: Path, pem: str) -> None:
        self.mock = mock
        self.variant = variant
        self.pem = pem
        self.key_file = tmp_path / "gemini.key"
        self.key_file.write_text(OLD_KEY)
        self.account = tmp_path / "sa.json"
        self.account.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "client_email": "rakka@proj.iam.gserviceaccount.com",
                    "private_key": pem,
                    "private_key_id": "kid-1",
                    "token_uri": mock.token_url,
                }
            )
        )
        self.report_log = ReportLog()
        self.services = RemoteServices()
        self.engines: list[RemoteEngineCore] = []
        self.system = ActorSystem()

    @property
    def vertex(self) -> bool:
        return self.variant == "vertex"

    def deployment(self, **timeouts: int) -> Deployment:
        credentials: dict[str, Any] = (
            {
                "variant": "vertex",
                "project": "proj",
                "region": "us-central1",
                "credentials": SecretRef.from_file(self.account),
            }
            if self.vertex
            else {"api_key": SecretRef.from_file(self.key_file)}
        )
        config = GeminiConfig(
            endpoint=self.mock.url,
            retry=RetryPolicy(
                max_retries=3, initial_backoff_ms=1, max_backoff_ms=5, jitter=Jitter.NONE
            ),
            timeouts=Timeouts(
                **{
                    "connect_timeout_ms": 1000,
                    "request_timeout_ms": 1000,
                    "read_timeout_ms": 1000,
                    **timeouts,
                }
            ),
            circuit_breaker=CircuitBreakerConfig(failure_threshold=100),
            **credentials,
        )
        return Deployment(
            name="gemini",
            model=MODEL,
            runtime=RuntimeKind.GEMINI,
            runtime_config=config,
            serving=Serving(max_concurrent=4, queue_timeout_ms=5000),
        )

    async def engine(self, **timeouts: int) -> RemoteEngineCore:
        engine = await build_remote_engine(self.deployment(**timeouts), self.services)
        self.report_log.watch(engine)
        await engine.start(self.system, f"engine-{len(self.engines)}")
        self.engines.append(engine)
        return engine

    def model_requests(self) -> list[Any]:
        return [r for r in self.mock.requests if r.path != "/token"]

    def credential_of(self, recorded: Any) -> str:
        if self.vertex:
            return str(recorded.headers["authorization"])
        return str(recorded.headers["x-goog-api-key"])

    def revoke_and_rotate(self) -> None:
        """The credential in use stops working; a fresh read of its source fixes it."""
        if self.vertex:
            assert self.mock.faults.valid_keys is not None
            self.mock.faults.valid_keys.clear()  # every token issued so far is revoked
        else:
            self.mock.faults.rotate_key(OLD_KEY, NEW_KEY)
            self.key_file.write_text(NEW_KEY)

    def secrets(self) -> list[str]:
        pem_body = self.pem.splitlines()[1]
        return [OLD_KEY, NEW_KEY, pem_body, *self.mock.issued_tokens]

    async def close(self) -> None:
        for engine in self.engines:
            await engine.stop(timeout=5)
        await self.system.shutdown(timeout=5)

    def assert_released(self) -> None:
        for engine in self.engines:
            assert engine.in_flight == 0
            assert engine.queued == 0
            assert engine.limiter.utilization().concurrent_in_use == 0


@pytest.fixture(params=["ai_studio", "vertex"])
async def harness(
    request: pytest.FixtureRequest, tmp_path: Path, private_key_pem: str
) -> AsyncIterator[Harness]:
    variant = request.param
    # AI Studio accepts the old key only; Vertex accepts the tokens the mock issues.
    valid = {OLD_KEY} if variant == "ai_studio" else set()
    async with GeminiMock(faults=FaultPlan(valid_keys=valid), reply=ReplyScript(chunks=4)) as mock:
        built = Harness(mock, variant, tmp_path, private_key_pem)
        try:
            yield built
        finally:
            await built.close()
        built.assert_released()
    assert not mock.server.errors


def chat(text: str = QUESTION, *, stream: bool = False, **kw: Any) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=(ChatMessage.user(text),), stream=stream, **kw)


async def collect(stream: BoundedStream[TokenChunk]) -> ChatCompletion:
    return aggregate([chunk async for chunk in stream])


async def fails(stream: BoundedStream[TokenChunk]) -> tuple[str, InferenceError]:
    received = ""
    try:
        async for chunk in stream:
            received += chunk.text
    except InferenceError as failure:
        return received, failure
    raise AssertionError("the stream did not fail")


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("stream", [False, True])
async def test_answers_and_usage(harness: Harness, stream: bool) -> None:
    engine = await harness.engine()
    completion = await collect(engine.submit(chat(stream=stream)))
    assert completion.text == ANSWER
    assert completion.finish_reason is FinishReason.STOP
    expected = Usage(input_tokens=count_tokens([QUESTION]), output_tokens=count_tokens([ANSWER]))
    assert completion.usage == expected  # running totals in a stream: not double counted
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts, report.usage) == ("ok", 1, expected)
    [sent] = harness.model_requests()
    method = "streamGenerateContent" if stream else "generateContent"
    assert sent.path.endswith(f"/models/{MODEL}:{method}")
    assert sent.query == ("alt=sse" if stream else "")
    if harness.vertex:
        assert sent.path.startswith("/v1/projects/proj/locations/us-central1/publishers/google/")
        assert sent.headers["authorization"] == "Bearer ya29.mock-1"
        assert "x-goog-api-key" not in sent.headers
    else:
        assert sent.path.startswith("/v1beta/models/")
        assert sent.headers["x-goog-api-key"] == OLD_KEY
        assert "authorization" not in sent.headers


async def test_thinking_tokens_are_reasoning(harness: Harness) -> None:
    harness.mock.thoughts = "let me think"
    engine = await harness.engine()
    for stream in (False, True):
        completion = await collect(engine.submit(chat(stream=stream)))
        assert completion.usage == Usage(
            input_tokens=3, output_tokens=count_tokens([ANSWER]) + 3, reasoning_tokens=3
        )


async def test_parallel_tool_calls_then_the_answer(harness: Harness) -> None:
    harness.mock.reply = ReplyScript(
        tool_calls=[
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
            ScriptedToolCall("get_weather", {"city": "Rome"}),
        ]
    )
    engine = await harness.engine()
    asked = chat("Weather in Oslo and Rome?", stream=True, tools=(WEATHER,))
    called = await collect(engine.submit(asked))
    assert called.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, json.loads(c.arguments)) for c in called.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Rome"}),
    ]
    first, second = called.tool_calls
    follow_up = replace(
        asked,
        messages=(
            *asked.messages,
            ChatMessage.assistant(tool_calls=called.tool_calls),
            ChatMessage.tool(first.id, "4C"),
            ChatMessage.tool(second.id, "19C"),
        ),
    )
    answered = await collect(engine.submit(follow_up))
    assert answered.text == (
        'You said: get_weather returned {"output":"4C"}; get_weather returned {"output":"19C"}'
    )
    assert answered.finish_reason is FinishReason.STOP


# ---------------------------------------------------------------- faults before the first byte


async def test_rate_limit_is_retried_after_its_delay(harness: Harness) -> None:
    harness.mock.faults.next(Fault.rate_limit(0.01))
    engine = await harness.engine()
    assert (await collect(engine.submit(chat()))).text == ANSWER
    [report] = harness.report_log.reports
    assert (report.outcome, report.attempts) == ("ok", 2)


async def test_a_long_rate_limit_fails_at_once(harness: Harness) -> None:
    harness.mock.faults.next(Fault.rate_limit(120))
    engine = await harness.engine()
    with pytest.raises(RateLimitExceeded) as caught:
        await collect(engine.submit(chat(stream=True)))
    assert caught.value.retry_after == pytest.approx(120)
    assert len(harness.model_requests()) == 1


@pytest.mark.parametrize(
    ("status", "expected"), [(500, ServerError), (503, ServerError), (504, Timeout)]
)
async def test_server_errors_exhaust_the_retries(
    harness: Harness, status: int, expected: type[InferenceError]
) -> None:
    harness.mock.faults.next(*[Fault.server_error(status)] * 4)
    engine = await harness.engine()
    with pytest.raises(expected) as caught:
        await collect(engine.submit(chat()))
    assert caught.value.upstream_status == status
    assert harness.report_log.reports[0].attempts == 4  # the first try and max_retries = 3
    assert len(harness.model_requests()) == 4


async def test_overloaded_once_is_retried(harness: Harness) -> None:
    harness.mock.faults.next(Fault.overloaded())
    engine = await harness.engine()
    assert (await collect(engine.submit(chat(stream=True)))).text == ANSWER
    assert harness.report_log.reports[0].attempts == 2


@pytest.mark.parametrize("stream", [False, True])
async def test_safety_stop_is_content_filtered(harness: Harness, stream: bool) -> None:
    harness.mock.faults.next(Fault.content_filter())
    engine = await harness.engine()
    with pytest.raises(ContentFiltered, match="SAFETY"):
        await collect(engine.submit(chat(stream=stream)))
    assert len(harness.model_requests()) == 1
    assert engine.breaker.snapshot().consecutive_failures == 0


async def test_context_length_is_a_bad_request(harness: Harness) -> None:
    harness.mock.faults.next(Fault.context_length())
    engine = await harness.engine()
    with pytest.raises(BadRequest, match="exceeds the maximum number of tokens") as caught:
        await collect(engine.submit(chat()))
    # Gemini says "too long" only in the message text, which we do not classify by.
    assert caught.value.upstream_status == 400
    assert len(harness.model_requests()) == 1


async def test_a_refused_credential_is_rotated_and_retried(harness: Harness) -> None:
    engine = await harness.engine()
    harness.revoke_and_rotate()
    completion = await collect(engine.submit(chat(stream=True)))
    assert completion.text == ANSWER
    first, second = harness.model_requests()
    if harness.vertex:
        assert [harness.credential_of(first), harness.credential_of(second)] == [
            "Bearer ya29.mock-1",
            "Bearer ya29.mock-2",
        ]
    else:
        assert [harness.credential_of(first), harness.credential_of(second)] == [OLD_KEY, NEW_KEY]
    assert engine.runner.session.generation == 2
    assert harness.report_log.reports[0].outcome == "ok"


async def test_a_credential_refused_twice_is_unauthorized(harness: Harness) -> None:
    engine = await harness.engine()
    harness.mock.faults.next(Fault.unauthorized(), Fault.unauthorized())
    with pytest.raises(Unauthorized):
        await collect(engine.submit(chat()))
    assert len(harness.model_requests()) == 2  # one rebuild, one retry, then give up


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_first_byte_is_retried(harness: Harness, stream: bool) -> None:
    harness.mock.faults.next(Fault.slow_first_byte(0.05))
    engine = await harness.engine(request_timeout_ms=25)
    assert (await collect(engine.submit(chat(stream=stream)))).text == ANSWER
    assert harness.report_log.reports[0].attempts == 2
    assert harness.mock.server.client_aborts  # the slow one was abandoned


async def test_a_reset_unary_answer_is_retried(harness: Harness) -> None:
    harness.mock.faults.next(Fault.reset())
    engine = await harness.engine()
    assert (await collect(engine.submit(chat()))).text == ANSWER
    assert harness.report_log.reports[0].attempts == 2


async def test_a_malformed_unary_answer_is_a_protocol_error(harness: Harness) -> None:
    harness.mock.faults.next(Fault.malformed_chunk())
    engine = await harness.engine()
    with pytest.raises(ProtocolError, match="malformed JSON"):
        await collect(engine.submit(chat()))
    assert len(harness.model_requests()) == 1


async def test_a_malformed_first_event_is_a_protocol_error(harness: Harness) -> None:
    harness.mock.faults.next(Fault.malformed_chunk(after_chunks=0))
    engine = await harness.engine()
    received, failure = await fails(engine.submit(chat(stream=True)))
    assert (received, type(failure)) == ("", ProtocolError)
    assert len(harness.model_requests()) == 1


# ---------------------------------------------------------------- faults mid-stream


async def test_stall_mid_stream_ends_with_partial_content_once(harness: Harness) -> None:
    harness.mock.faults.next(Fault.stall(after_chunks=2))
    engine = await harness.engine(read_timeout_ms=30)
    received, failure = await fails(engine.submit(chat(stream=True)))
    assert received == "".join(PIECES[:2])  # once, never replayed
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, Timeout)
    assert failure.__cause__.phase is TimeoutPhase.BETWEEN_BYTES
    assert len(harness.model_requests()) == 1


async def test_reset_mid_stream_ends_with_partial_content_once(harness: Harness) -> None:
    harness.mock.faults.next(Fault.reset(after_chunks=1))
    engine = await harness.engine()
    received, failure = await fails(engine.submit(chat(stream=True)))
    assert received == PIECES[0]
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, NetworkError)
    assert len(harness.model_requests()) == 1


async def test_a_malformed_event_mid_stream_interrupts_it(harness: Harness) -> None:
    harness.mock.faults.next(Fault.malformed_chunk(after_chunks=2))
    engine = await harness.engine()
    received, failure = await fails(engine.submit(chat(stream=True)))
    assert received == "".join(PIECES[:2])
    assert isinstance(failure, StreamInterrupted)
    assert isinstance(failure.__cause__, ProtocolError)
    assert len(harness.model_requests()) == 1


# ---------------------------------------------------------------- secrets


async def test_credentials_never_leak(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    engine = await harness.engine(read_timeout_ms=30)
    failures: list[BaseException] = []
    faults = [
        Fault.unauthorized(),
        Fault.rate_limit(120),
        Fault.server_error(500),
        Fault.content_filter(),
        Fault.context_length(),
        Fault.malformed_chunk(after_chunks=1),
        Fault.stall(after_chunks=1),
    ]
    assert (await collect(engine.submit(chat(stream=True)))).text == ANSWER
    harness.revoke_and_rotate()
    assert (await collect(engine.submit(chat()))).text == ANSWER  # rebuilt
    for fault in faults:
        harness.mock.faults.clear()
        harness.mock.faults.next(fault, fault, fault, fault)
        try:
            await collect(engine.submit(chat(stream=True)))
        except InferenceError as failure:
            failures.append(failure)
    harness.mock.faults.clear()
    assert len(failures) == len(faults)
    texts = [caplog.text]
    for failed in failures:
        cause: BaseException | None = failed
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
    for sent in harness.mock.requests:
        texts += [sent.path, sent.query]
    secrets = harness.secrets()
    assert len(secrets) >= 3
    for secret in secrets:
        for text in texts:
            assert secret not in text
    for sent in harness.model_requests():
        credential = harness.credential_of(sent)
        assert credential.removeprefix("Bearer ") in secrets  # in the header, only there
        assert "key=" not in sent.query


# ---------------------------------------------------------------- upstream text, cleaned


async def test_upstream_error_text_reaches_the_client_without_keys_urls_or_hosts(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="rakka_inference")
    engine = await harness.engine()
    await collect(engine.submit(chat()))
    credential = harness.credential_of(harness.model_requests()[-1]).removeprefix("Bearer ")
    upstream = (
        f"API key not valid: AIzaSyD-abcdefghijklmnop; credential {credential}. See "
        "https://us-central1-aiplatform.googleapis.com/v1/projects/proj for "
        "us-central1-aiplatform.googleapis.com"
    )
    body = {"error": {"code": 400, "message": upstream, "status": "INVALID_ARGUMENT"}}
    harness.mock.server.script(
        "POST",
        harness.model_requests()[-1].path,
        ScriptedResponse(400, {"content-type": "application/json"}, orjson.dumps(body)),
    )
    with pytest.raises(BadRequest) as caught:
        await collect(engine.submit(chat()))

    assert caught.value.message == (
        "gemini returned HTTP 400 Bad Request (INVALID_ARGUMENT): API key not valid: "
        "[redacted]; credential [redacted]. See [redacted] for [redacted]"
    )
    assert len(harness.model_requests()) == 2  # not retried
    assert "https://us-central1-aiplatform.googleapis.com/v1/projects/proj" in caplog.text
    for secret in ("AIzaSyD-abcdefghijklmnop", credential):
        assert secret not in caplog.text
