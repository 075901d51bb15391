"""``POST /v1/messages`` end to end: the official anthropic SDK → uvicorn → the gateway →
engines → the OpenAI-format mock or the Anthropic-format mock. Anthropic's wire format on
both sides of the gateway, whichever provider serves the deployment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.core.runtimes import AnthropicConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM_KEY = "sk-messages-upstream-0001"
CLIENT_KEY = "rk-messages-client-0001"
RETRY = RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
BACKENDS = ("gpt", "claude")
"""The OpenAI-backed and the Anthropic-backed deployment."""


@dataclass
class Live:
    gpt: OpenAIMock
    claude: AnthropicMock
    client: anthropic.AsyncAnthropic
    http: httpx.AsyncClient
    records: list[RequestRecord]

    def mock(self, deployment: str) -> OpenAIMock | AnthropicMock:
        return self.gpt if deployment == "gpt" else self.claude

    def sent(self, deployment: str) -> dict[str, Any]:
        """The body the deployment's provider last received."""
        document = self.mock(deployment).requests[-1].json()
        assert isinstance(document, dict)
        return document


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={UPSTREAM_KEY})
    reply = ReplyScript(text="Hello from the model", chunks=4)
    async with (
        OpenAIMock(faults=plan, reply=reply) as gpt,
        AnthropicMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as claude,
    ):
        key = SecretRef.inline(UPSTREAM_KEY, warn=False)
        deployments = (
            Deployment(
                name="gpt",
                model="gpt-4o",
                runtime=RuntimeKind.OPENAI,
                runtime_config=OpenAIConfig(endpoint=gpt.openai_base_url, api_key=key, retry=RETRY),
            ),
            Deployment(
                name="claude",
                model="claude-haiku-4-5",
                runtime=RuntimeKind.ANTHROPIC,
                runtime_config=AnthropicConfig(endpoint=claude.url, api_key=key, retry=RETRY),
            ),
        )
        config = Config(
            cluster=ClusterConfig(client_api_keys=(SecretRef.inline(CLIENT_KEY, warn=False),)),
            deployments=deployments,
        )
        records: list[RequestRecord] = []
        topology = Topology(config, on_record=records.append)
        async with serving(topology.gateway) as base:
            client = anthropic.AsyncAnthropic(base_url=base, api_key=CLIENT_KEY, max_retries=0)
            http = httpx.AsyncClient(base_url=base, headers={"x-api-key": CLIENT_KEY})
            try:
                yield Live(gpt, claude, client, http, records)
            finally:
                await http.aclose()
                await client.close()


def _events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """``(event name, data)`` of each SSE event; every event must name itself."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        events.append((name_line[7:], data))
    return events


# ---------------------------------------------------------------------- answers


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_unary_text_from_either_provider(live: Live, deployment: str) -> None:
    message = await live.client.messages.create(
        model=deployment, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == deployment
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello from the model"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0
    assert message.usage.output_tokens > 0
    record = live.records[-1]
    assert (record.deployment, record.outcome) == (deployment, "ok")
    assert live.mock(deployment).requests  # the request reached that provider


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_streaming_through_the_sdk_helper(live: Live, deployment: str) -> None:
    async with live.client.messages.stream(
        model=deployment, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(texts) > 1
    assert "".join(texts) == "Hello from the model"
    assert final.content[0].text == "Hello from the model"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens == live.records[-1].usage.input_tokens


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_raw_stream_event_order(live: Live, deployment: str) -> None:
    body = {
        "model": deployment,
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = await live.http.post("/v1/messages", content=orjson.dumps(body))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = _events(response.text)
    names = [name for name, _ in events]
    deltas = names.count("content_block_delta")
    assert deltas >= 2
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert {data["index"] for name, data in events if name.startswith("content_block")} == {0}
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] > 0


async def test_the_prompt_usage_is_in_message_start_when_the_provider_sends_it_first(
    live: Live,
) -> None:
    body = {
        "model": "claude",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "a b c"}],
    }
    response = await live.http.post("/v1/messages", content=orjson.dumps(body))
    start = _events(response.text)[0][1]
    assert start["message"]["usage"]["input_tokens"] == 3  # the mock counts words


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_the_system_prompt_reaches_the_provider(live: Live, deployment: str) -> None:
    await live.client.messages.create(
        model=deployment,
        max_tokens=64,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "hi"}],
    )
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["system"] == "Be brief.\nBe kind."
    else:
        assert sent["messages"][0]["role"] == "system"
        texts = [part["text"] for part in sent["messages"][0]["content"]]
        assert texts == ["Be brief.", "Be kind."]


# ---------------------------------------------------------------------- tools and images


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_tool_use_round_trip(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),)
    )
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await live.client.messages.create(
        model=deployment,
        max_tokens=64,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=messages,
    )
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert [(use.name, use.input) for use in uses] == [("get_weather", {"city": "Paris"})]
    messages += [
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}],
        },
    ]
    live.mock(deployment).reply = ReplyScript(text="It is sunny in Paris.")
    final = await live.client.messages.create(
        model=deployment,
        max_tokens=64,
        tools=[WEATHER],  # type: ignore[list-item]
        messages=messages,
    )
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == "It is sunny in Paris."  # type: ignore[union-attr]
    sent = live.sent(deployment)
    if deployment == "claude":
        result = sent["messages"][-1]["content"][0]
        assert result == {"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}
    else:
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": uses[0].id,
            "content": "sunny",
        }


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_streamed_tool_use_arrives_as_input_json_deltas(
    live: Live, deployment: str
) -> None:
    live.mock(deployment).reply = ReplyScript(
        chunks=3,
        tool_calls=(
            ScriptedToolCall("get_weather", {"city": "Paris"}),
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
        ),
    )
    async with live.client.messages.stream(
        model=deployment,
        max_tokens=64,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "any"},
        messages=[{"role": "user", "content": "weather in Paris and Oslo?"}],
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {"city": "Oslo"}),
    ]
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1]
    assert any(
        e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events
    )


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_image_blocks_by_base64_and_url_are_accepted(live: Live, deployment: str) -> None:
    message = await live.client.messages.create(
        model=deployment,
        max_tokens=64,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what are these?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.png"},
                    },
                ],
            }
        ],
    )
    assert message.content[0].text == "Hello from the model"  # type: ignore[union-attr]
    parts = live.sent(deployment)["messages"][0]["content"]
    if deployment == "claude":
        assert [p["type"] for p in parts] == ["text", "image", "image"]
        assert parts[1]["source"] == {"type": "base64", "media_type": "image/png", "data": PNG}
        assert parts[2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}
    else:
        assert [p["type"] for p in parts] == ["text", "image_url", "image_url"]
        assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{PNG}"


# ---------------------------------------------------------------------- errors


async def test_max_tokens_missing_is_a_400_naming_it(live: Live) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await live.client.post(
            "/v1/messages",
            body={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
            cast_to=anthropic.types.Message,
        )
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }
    assert not live.gpt.requests  # refused before any provider was called


async def test_a_bad_field_is_named_in_the_error(live: Live) -> None:
    source = {"type": "base64", "media_type": "image/bmp", "data": "AA=="}
    content: Any = [{"type": "image", "source": source}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        await live.client.messages.create(
            model="gpt", max_tokens=64, messages=[{"role": "user", "content": content}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["message"].startswith("messages.0.content.0.source.media_type:")


async def test_an_unknown_model_is_not_found(live: Live) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        await live.client.messages.create(
            model="nope", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("via", ["x-api-key", "bearer"])
async def test_the_key_is_taken_from_x_api_key_or_bearer(live: Live, via: str) -> None:
    # Explicit headers: SDK versions differ in which one carries api_key (2.x: bearer).
    def client(key: str) -> anthropic.AsyncAnthropic:
        if via == "bearer":
            return anthropic.AsyncAnthropic(
                base_url=str(live.http.base_url), api_key=None, auth_token=key, max_retries=0
            )
        return anthropic.AsyncAnthropic(
            base_url=str(live.http.base_url),
            api_key=None,
            default_headers={"x-api-key": key},
            max_retries=0,
        )

    messages: Any = [{"role": "user", "content": "hi"}]
    right, wrong = client(CLIENT_KEY), client("rk-wrong")
    try:
        message = await right.messages.create(model="gpt", max_tokens=8, messages=messages)
        assert message.content
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await wrong.messages.create(model="gpt", max_tokens=8, messages=messages)
    finally:
        await right.close()
        await wrong.close()
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "authentication_error"
    assert "x-api-key" in body["error"]["message"]
    assert len(live.gpt.requests) == 1


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_429_with_retry_after_is_a_rate_limit_error(live: Live, deployment: str) -> None:
    # The provider asks to wait longer than the deployment allows: 429 at once.
    live.mock(deployment).faults.next(Fault.rate_limit(600))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await live.client.messages.create(
            model=deployment, max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        )
    assert int(caught.value.response.headers["retry-after"]) > 500
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "rate_limit_error"


async def test_a_mid_stream_failure_sends_the_partial_text_once_then_an_error_event(
    live: Live,
) -> None:
    live.gpt.reply = ReplyScript(text="one two three four five six", chunks=6)
    live.gpt.faults.next(Fault.reset(after_chunks=3))
    body = {
        "model": "gpt",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = await live.http.post("/v1/messages", content=orjson.dumps(body))
    assert response.status_code == 200
    events = _events(response.text)
    name, error = events[-1]
    assert name == "error"
    assert error["error"]["type"] in ("api_error", "timeout_error")
    assert "message_stop" not in [n for n, _ in events]
    text = "".join(data["delta"]["text"] for n, data in events if n == "content_block_delta")
    assert text
    assert "one two three four five six".startswith(text)
    assert len(live.gpt.requests) == 1  # nothing was retried after the first byte
    # The SDK raises the error event, after the partial text.
    live.gpt.faults.next(Fault.reset(after_chunks=3))
    seen: list[str] = []

    async def read() -> None:
        async with live.client.messages.stream(
            model="gpt", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            async for piece in stream.text_stream:
                seen.append(piece)  # noqa: PERF401 - keep what came before the error

    with pytest.raises(anthropic.APIStatusError) as caught:
        await read()
    assert caught.value.status_code == 200  # the error came inside the stream
    assert "".join(seen) == text


async def test_a_client_gone_mid_stream_cancels_the_upstream_call(live: Live) -> None:
    live.gpt.reply = ReplyScript(text="slow " * 40, chunks=40, chunk_delay_s=0.05)
    async with live.client.messages.stream(
        model="gpt", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        async for _ in stream.text_stream:
            break  # the client goes away after the first text
    aborts = await asyncio.wait_for(live.gpt.server.wait_client_aborts(1), 1.0)
    assert aborts


async def test_other_routes_keep_openai_errors_and_bearer_keys(live: Live) -> None:
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
    response = await live.http.post("/v1/chat/completions", content=orjson.dumps(body))
    assert response.status_code == 401  # x-api-key is for /v1/messages only
    assert response.json()["error"]["type"] == "authentication_error"
    assert "type" not in response.json()  # OpenAI's shape, not Anthropic's


# ---------------------------------------------------------------------- count_tokens


async def test_count_tokens_is_the_providers_or_an_estimate(live: Live) -> None:
    messages = [{"role": "user", "content": "one two three four"}]
    counted = await live.client.messages.count_tokens(
        model="claude",
        messages=messages,
        system="be brief",  # type: ignore[arg-type]
    )
    # The Anthropic mock counts words: 4 + "be brief" 2.
    assert counted.input_tokens == 6
    sent = live.claude.requests[-1]
    assert sent.path == "/v1/messages/count_tokens"
    assert set(sent.json()) == {"model", "messages", "system"}
    raw = await live.http.post(
        "/v1/messages/count_tokens", json={"model": "claude", "messages": messages}
    )
    assert raw.headers["x-rakka-token-count"] == "provider"
    estimated = await live.http.post(
        "/v1/messages/count_tokens", json={"model": "gpt", "messages": messages}
    )
    assert estimated.status_code == 200
    assert estimated.headers["x-rakka-token-count"] == "estimate"
    assert estimated.json()["input_tokens"] > 0
    assert not any(r.path.endswith("count_tokens") for r in live.gpt.requests)


async def test_count_tokens_errors_are_anthropic_shaped(live: Live) -> None:
    with pytest.raises(anthropic.BadRequestError) as extra:
        await live.client.messages.count_tokens(
            model="claude",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"max_tokens": 10},
        )
    assert extra.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        await live.client.messages.count_tokens(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    async with httpx.AsyncClient(base_url=str(live.http.base_url)) as keyless:
        unauthorized = await keyless.post(
            "/v1/messages/count_tokens", json={"model": "claude", "messages": []}
        )
    assert unauthorized.status_code == 401
    assert unauthorized.json()["type"] == "error"


async def test_disable_parallel_tool_use_reaches_an_openai_upstream(live: Live) -> None:
    await live.client.messages.create(
        model="gpt",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert live.sent("gpt")["parallel_tool_calls"] is False
    await live.client.messages.create(
        model="claude",
        max_tokens=50,
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"name": "f", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    )
    assert live.sent("claude")["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_top_k_reaches_anthropic_and_is_refused_by_openai(live: Live) -> None:
    ask = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    top_k = {"top_k": 5}
    await live.client.messages.create(model="claude", **ask, extra_body=top_k)  # type: ignore[arg-type]
    assert live.sent("claude")["top_k"] == 5
    with pytest.raises(anthropic.BadRequestError) as refused:
        await live.client.messages.create(model="gpt", **ask, extra_body=top_k)  # type: ignore[arg-type]
    assert "top_k" in str(refused.value.body)
