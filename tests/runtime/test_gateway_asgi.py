"""The ApiGateway ASGI app in process, with the official openai SDK as its client and the
OpenAI-format mock behind a real remote engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.policies import Jitter, RetryPolicy, Timeouts
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.gateway import ApiGateway
from rakka_inference.runtime.request import FallbackPolicy
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

UPSTREAM_KEY = "sk-upstream-4242"
CLIENT_KEY = "rk-client-0001"


@dataclass
class Stack:
    mock: OpenAIMock
    gateway: ApiGateway
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    records: list[RequestRecord]


def deployment(mock: OpenAIMock, name: str) -> Deployment:
    config = OpenAIConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(UPSTREAM_KEY, warn=False),
        retry=RetryPolicy(
            max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE
        ),
        timeouts=Timeouts(request_timeout_ms=2000, read_timeout_ms=500),
    )
    return Deployment(name=name, model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=config)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    system = ActorSystem()
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=ReplyScript(text="Hello there", chunks=3)
    ) as mock:
        coordinator = DpCoordinator()
        engines = []
        for name in ("primary", "backup"):
            engine = await build_remote_engine(deployment(mock, name), RemoteServices())
            await engine.start(system, f"engine-{name}")
            coordinator.register(name, engine)
            engines.append(engine)
        coordinator.set_aliases("primary", ["gpt"])
        records: list[RequestRecord] = []
        gateway = ApiGateway(
            coordinator,
            {"primary": FallbackPolicy(fallbacks=("backup",))},
            client_keys=[Secret(CLIENT_KEY)],
            max_body_bytes=64 * 1024,
            on_record=records.append,
        )
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gateway"
        )
        client = openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=CLIENT_KEY, http_client=http, max_retries=0
        )
        try:
            yield Stack(mock, gateway, client, http, records)
        finally:
            await client.close()
            await http.aclose()
            for engine in engines:
                await engine.stop()
            await system.shutdown()


async def test_unary_chat_through_the_sdk(stack: Stack) -> None:
    answer = await stack.client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello there"
    assert answer.usage is not None
    assert answer.usage.completion_tokens > 0
    assert stack.records[0].deployment == "primary"
    assert stack.records[0].outcome == "ok"


async def test_streaming_chat_with_usage(stack: Stack) -> None:
    stream = await stack.client.chat.completions.create(
        model="primary",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text = ""
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == "Hello there"
    assert usage is not None
    assert usage.prompt_tokens > 0


async def test_fallback_when_the_primary_fails_before_the_first_byte(stack: Stack) -> None:
    stack.mock.faults.next(Fault.server_error(503), Fault.server_error(503))  # primary's 2 tries
    answer = await stack.client.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "Hello there"
    assert stack.records[0].tried == ["primary", "backup"]


async def test_mid_stream_failure_sends_partial_content_an_error_event_then_done(
    stack: Stack,
) -> None:
    stack.mock.faults.next(Fault.reset(after_chunks=2))
    body = {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = await stack.http.post(
        "/v1/chat/completions",
        content=orjson.dumps(body),
        headers={"authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert response.status_code == 200
    events = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "error" in orjson.loads(events[-2])
    content = "".join(
        (orjson.loads(e)["choices"][0]["delta"].get("content") or "")
        for e in events[:-2]
        if orjson.loads(e).get("choices")
    )
    assert content
    assert "Hello there".startswith(content)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [
        (
            "POST",
            "/v1/chat/completions",
            {"model": "nope", "messages": [{"role": "user", "content": "x"}]},
            True,
            404,
            "does not exist",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "gpt", "messages": [], "temperature": 9},
            True,
            400,
            "messages",
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "gpt", "messages": [{"role": "user", "content": "x"}]},
            False,
            401,
            "API key",
        ),
        ("POST", "/v1/nope", {}, True, 404, "Invalid URL"),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "gpt", "messages": [{"role": "user", "content": "x" * 70_000}]},
            True,
            413,
            "larger than",
        ),
    ],
)
async def test_errors_are_openai_json_with_their_status(
    stack: Stack,
    method: str,
    path: str,
    body: dict[str, object],
    headers: bool,
    status: int,
    fragment: str,
) -> None:
    auth = {"authorization": f"Bearer {CLIENT_KEY}"} if headers else {}
    response = await stack.http.request(method, path, content=orjson.dumps(body), headers=auth)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert response.headers["x-request-id"]


async def test_models_health_and_readiness(stack: Stack) -> None:
    auth = {"authorization": f"Bearer {CLIENT_KEY}"}
    models = (await stack.http.get("/v1/models", headers=auth)).json()
    assert {m["id"] for m in models["data"]} == {"primary", "gpt", "backup"}
    assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
    assert (await stack.http.get("/readyz")).status_code == 200
    listed = await stack.client.models.list()
    assert {m.id for m in listed.data} == {"primary", "gpt", "backup"}


# ---------------------------------------------------------------- raw ASGI


async def call(
    app: ApiGateway, scope: dict[str, object], messages: list[dict[str, object]]
) -> list[dict[str, object]]:
    sent: list[dict[str, object]] = []
    inbox = list(messages)

    async def receive() -> dict[str, object]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(3600)  # the client says nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent


def http_scope(method: str, path: str, *, key: bool = True) -> dict[str, object]:
    headers = [(b"authorization", f"Bearer {CLIENT_KEY}".encode())] if key else []
    return {"type": "http", "method": method, "path": path, "headers": headers}


async def test_lifespan_and_other_scopes(stack: Stack) -> None:
    sent = await call(
        stack.gateway,
        {"type": "lifespan"},
        [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
    )
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert await call(stack.gateway, {"type": "websocket"}, []) == []


async def test_a_client_gone_while_sending_its_body_gets_no_answer(stack: Stack) -> None:
    sent = await call(
        stack.gateway, http_scope("POST", "/v1/chat/completions"), [{"type": "http.disconnect"}]
    )
    assert sent == []


async def test_a_disconnect_mid_stream_cancels_the_request(stack: Stack) -> None:
    stack.mock.reply = ReplyScript(
        text="a long answer in many pieces", chunks=8, chunk_delay_s=0.05
    )
    body = orjson.dumps(
        {"model": "primary", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    messages = [{"type": "http.request", "body": body}]
    sent: list[dict[str, object]] = []
    inbox = list(messages)
    disconnect = asyncio.Event()

    async def receive() -> dict[str, object]:
        if inbox:
            return inbox.pop(0)
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message.get("more_body"):
            disconnect.set()  # the client leaves after the first body part

    await stack.gateway(http_scope("POST", "/v1/chat/completions"), receive, send)  # type: ignore[arg-type]
    aborts = await asyncio.wait_for(stack.mock.server.wait_client_aborts(1), 2)
    assert aborts
    assert stack.records[-1].outcome == "cancelled"
    assert stack.gateway.in_flight == 0


async def test_backpressure_at_the_gateway_limit_and_readiness(stack: Stack) -> None:
    stack.gateway.max_concurrent = 0
    body = orjson.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    sent = await call(
        stack.gateway,
        http_scope("POST", "/v1/chat/completions"),
        [{"type": "http.request", "body": body}],
    )
    assert sent[0]["status"] == 429
    stack.gateway.coordinator.deregister("backup", "backup-0")
    sent = await call(stack.gateway, http_scope("GET", "/readyz", key=False), [])
    assert sent[0]["status"] == 503
    assert b"backup" in sent[1]["body"]  # type: ignore[operator]


async def test_a_disconnect_while_a_unary_answer_is_pending_cancels_it(stack: Stack) -> None:
    stack.mock.faults.next(Fault.slow_first_byte(1.0))
    body = orjson.dumps({"model": "primary", "messages": [{"role": "user", "content": "hi"}]})
    inbox: list[dict[str, object]] = [{"type": "http.request", "body": body}]

    async def receive() -> dict[str, object]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(0.05)  # the client gives up while the provider is thinking
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await stack.gateway(http_scope("POST", "/v1/chat/completions"), receive, send)  # type: ignore[arg-type]
    assert sent == []  # nobody to answer
    aborts = await asyncio.wait_for(stack.mock.server.wait_client_aborts(1), 2)
    assert aborts
    assert stack.gateway.in_flight == 0
    assert stack.records[-1].outcome == "cancelled"
