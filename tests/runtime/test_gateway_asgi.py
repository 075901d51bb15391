"""The ApiGateway ASGI app in process, with the official openai SDK as its client and the
OpenAI-format mock behind a real remote engine."""

from __future__ import annotations

import asyncio
import gzip
import math
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import openai
import orjson
import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.api.anthropic_response import anthropic_error_json
from rakka_inference.api.openai_response import error_json
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import InferenceError, QuotaExhausted
from rakka_inference.core.messages import Priority
from rakka_inference.core.policies import Jitter, RetryPolicy, Timeouts
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.runtime import asgi
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


def with_request_id(scope: dict[str, object], value: bytes) -> dict[str, object]:
    headers = scope["headers"]
    assert isinstance(headers, list)
    with_id: dict[str, object] = {**scope, "headers": [*headers, (b"x-request-id", value)]}
    return with_id


def answer_id(sent: list[dict[str, object]]) -> str:
    body = sent[1]["body"]
    assert isinstance(body, bytes)
    return str(orjson.loads(body)["id"])


@pytest.mark.parametrize(
    ("path", "stream", "answer_pattern"),
    [
        ("/v1/chat/completions", False, r"chatcmpl-[0-9a-f]{32}"),
        ("/v1/chat/completions", True, r"chatcmpl-[0-9a-f]{32}"),
        ("/v1/messages", False, r"msg_[0-9a-f]{32}"),
    ],
)
async def test_a_plain_client_request_id_is_echoed_but_never_becomes_the_answers_id(
    stack: Stack, path: str, stream: bool, answer_pattern: str
) -> None:
    client_id = "trace-7f3a.b:c_d"
    body = {
        "model": "gpt",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": client_id}
    response = await stack.http.post(path, content=orjson.dumps(body), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == client_id
    if stream:
        first = next(line for line in response.text.splitlines() if line.startswith("data: {"))
        answer = orjson.loads(first.removeprefix("data: "))["id"]
    else:
        answer = response.json()["id"]
    assert re.fullmatch(answer_pattern, answer), answer


@pytest.mark.parametrize(
    "client_id",
    [b"x" * 129, b"has space", b"a\r\nset-cookie: s=1", b"<script>", b"caf\xc3\xa9", b"a/b", b""],
)
async def test_an_unsafe_client_request_id_is_replaced_by_our_own(
    stack: Stack, client_id: bytes
) -> None:
    body = orjson.dumps({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    scope = with_request_id(http_scope("POST", "/v1/chat/completions"), client_id)
    sent = await call(stack.gateway, scope, [{"type": "http.request", "body": body}])
    assert sent[0]["status"] == 200
    header = dict(sent[0]["headers"])[b"x-request-id"]  # type: ignore[call-overload]
    assert re.fullmatch(rb"req_[0-9a-f]{32}", header), header
    assert answer_id(sent) == "chatcmpl-" + header.decode().removeprefix("req_")


def test_a_client_request_id_is_echoed_up_to_128_plain_characters() -> None:
    def ids(value: bytes) -> tuple[str, str]:
        found = asgi.request_ids({"headers": [(b"x-request-id", value)]})
        return found.own, found.header

    own, header = ids(b"A-z_0.9:" + b"x" * 120)
    assert header == "A-z_0.9:" + "x" * 120
    assert re.fullmatch(r"req_[0-9a-f]{32}", own)
    own, header = ids(b"x" * 129)
    assert header == own
    assert asgi.request_ids({"headers": []}).header.startswith("req_")
    assert ids(b"same")[0] != ids(b"same")[0]  # ours is fresh for every request


def _subclasses(cls: type[InferenceError]) -> Iterator[type[InferenceError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


TOO_MANY = sorted(
    {cls for cls in _subclasses(InferenceError) if cls.http_status == 429}, key=lambda c: c.__name__
)


def test_the_429_errors_are_the_expected_ones() -> None:
    names = {cls.__name__ for cls in TOO_MANY}
    assert {"RateLimited", "QuotaExhausted", "RateLimitExceeded", "Backpressure"} <= names
    assert "BudgetExceeded" in names


async def sent_429(render: asgi.ErrorRenderer, error: InferenceError) -> dict[bytes, bytes]:
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await asgi.send_error(send, error, "req_1", render)  # type: ignore[arg-type]
    assert sent[0]["status"] == 429
    return dict(sent[0]["headers"])  # type: ignore[call-overload]


@pytest.mark.parametrize("render", [error_json, anthropic_error_json])
@pytest.mark.parametrize("kind", TOO_MANY, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize(("retry_after", "expected"), [(None, b"1"), (7.2, b"8")])
async def test_every_429_says_when_to_retry(
    kind: type[InferenceError],
    render: asgi.ErrorRenderer,
    retry_after: float | None,
    expected: bytes,
) -> None:
    headers = await sent_429(render, kind("refused", retry_after=retry_after))
    if kind is QuotaExhausted and retry_after is None:  # the upstream's billing: no time
        assert b"retry-after" not in headers
        assert headers[b"x-should-retry"] == b"false"
    else:
        assert headers[b"retry-after"] == expected
        assert b"x-should-retry" not in headers


@pytest.mark.parametrize("render", [error_json, anthropic_error_json])
@pytest.mark.parametrize("kind", TOO_MANY, ids=lambda cls: cls.__name__)
async def test_a_429_no_retry_can_cure_says_not_to_retry(
    kind: type[InferenceError], render: asgi.ErrorRenderer
) -> None:
    # retry_after = inf: the request alone passes a limit (its cost, its tokens).
    headers = await sent_429(render, kind("refused", retry_after=math.inf))
    assert b"retry-after" not in headers
    assert headers[b"x-should-retry"] == b"false"


async def test_the_gateways_own_backpressure_says_when_to_retry(stack: Stack) -> None:
    stack.gateway.max_concurrent = 0
    for path in ("/v1/chat/completions", "/v1/messages"):
        body = orjson.dumps(
            {"model": "gpt", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
        )
        sent = await call(
            stack.gateway, http_scope("POST", path), [{"type": "http.request", "body": body}]
        )
        assert sent[0]["status"] == 429
        assert dict(sent[0]["headers"])[b"retry-after"] == b"1"  # type: ignore[call-overload]


# ---------------------------------------------------------------- the wire


def _chat_body(text: str = "hi") -> bytes:
    return orjson.dumps({"model": "primary", "messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP"])
async def test_a_compressed_body_is_read(stack: Stack, encoding: str) -> None:
    raw = _chat_body()
    body = gzip.compress(raw) if encoding.lower() == "gzip" else zlib.compress(raw)
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-encoding": encoding}
    answer = await stack.http.post("/v1/chat/completions", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "Hello there"


async def test_a_zip_bomb_is_a_413_at_the_limit(stack: Stack) -> None:
    # 64 KiB limit: a few hundred compressed bytes that would inflate to 50 MB.
    bomb = gzip.compress(b"{" + b" " * 50_000_000 + b"}")
    assert len(bomb) < 64 * 1024
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-encoding": "gzip"}
    answer = await stack.http.post("/v1/chat/completions", content=bomb, headers=headers)
    assert answer.status_code == 413
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("encoding", "body", "fragment"),
    [
        ("br", b"x", "content-encoding 'br' is not supported"),
        ("gzip", b"not gzip at all", "corrupt"),
        ("gzip", gzip.compress(_chat_body())[:-12], "ends before its end"),
        ("gzip", gzip.compress(_chat_body()) + b"trailing", "data after its end"),
    ],
)
async def test_a_bad_compressed_body_is_a_400(
    stack: Stack, encoding: str, body: bytes, fragment: str
) -> None:
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "content-encoding": encoding}
    answer = await stack.http.post("/v1/chat/completions", content=body, headers=headers)
    assert answer.status_code == 400
    assert fragment in answer.json()["error"]["message"]


async def test_head_on_the_health_routes(stack: Stack) -> None:
    for path in ("/healthz", "/readyz"):
        answer = await stack.http.head(path)
        assert answer.status_code == 200
    assert (await stack.http.head("/v1/models")).status_code == 404


async def test_a_priority_header_reaches_the_request(stack: Stack) -> None:
    seen: list[object] = []
    actor = stack.gateway.actor

    def watching(request: object, scope: object) -> object:
        made = actor(request, scope)  # type: ignore[arg-type]
        seen.append(made.request.priority)  # type: ignore[attr-defined]
        return made

    stack.gateway.actor = watching  # type: ignore[method-assign, assignment]
    headers = {"authorization": f"Bearer {CLIENT_KEY}", "x-rakka-priority": "High"}
    ok = await stack.http.post("/v1/chat/completions", content=_chat_body(), headers=headers)
    assert ok.status_code == 200
    assert seen == [Priority.HIGH]
    headers["x-rakka-priority"] = "urgent"
    refused = await stack.http.post("/v1/chat/completions", content=_chat_body(), headers=headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "x-rakka-priority"


async def test_one_model_by_id(stack: Stack) -> None:
    for model in ("primary", "gpt"):
        found = await stack.client.models.retrieve(model)
        assert (found.id, found.owned_by) == (model, "rakka")
    with pytest.raises(openai.NotFoundError) as missing:
        await stack.client.models.retrieve("nope")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    unauthorized = await stack.http.get("/v1/models/primary")
    assert unauthorized.status_code == 401


async def test_cors_answers_allowed_origins_only(stack: Stack) -> None:
    page = "https://app.example.com"
    assert (
        "access-control-allow-origin"
        not in (await stack.http.get("/healthz", headers={"origin": page})).headers
    )  # off by default
    stack.gateway.use_cors([page])
    preflight = await stack.http.options(
        "/v1/chat/completions",
        headers={"origin": page, "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == page
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    answer = await stack.http.post(
        "/v1/chat/completions",
        content=_chat_body(),
        headers={"origin": page, "authorization": f"Bearer {CLIENT_KEY}"},
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == page
    assert "x-request-id" in answer.headers["access-control-expose-headers"]
    refused = await stack.http.post(
        "/v1/chat/completions", content=_chat_body(), headers={"origin": page}
    )
    assert refused.status_code == 401  # the key is still needed
    assert refused.headers["access-control-allow-origin"] == page
    other = await stack.http.options(
        "/v1/chat/completions", headers={"origin": "https://evil.example"}
    )
    assert other.status_code == 404
    assert "access-control-allow-origin" not in other.headers
    stack.gateway.use_cors(["*"])
    anyone = await stack.http.get("/healthz", headers={"origin": "https://evil.example"})
    assert anyone.headers["access-control-allow-origin"] == "*"
