"""End to end over real HTTP: the official openai SDK → uvicorn → the gateway → engines →
the OpenAI-format mock. Tools, images, and every error status with its typed SDK error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import CircuitBreakerConfig, Jitter, RetryPolicy, Timeouts
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM_KEY = "sk-upstream-e2e-0001"
CLIENT_KEY = "rk-e2e-client-0001"


@dataclass
class Live:
    mock: OpenAIMock
    client: openai.AsyncOpenAI
    base: str
    records: list[RequestRecord]


def _deployment(mock: OpenAIMock, name: str, **config: object) -> Deployment:
    runtime_config = OpenAIConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(UPSTREAM_KEY, warn=False),
        retry=RetryPolicy(
            max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE
        ),
        timeouts=Timeouts(request_timeout_ms=300, read_timeout_ms=300),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=4, open_duration_ms=60_000),
        **config,  # type: ignore[arg-type]
    )
    return Deployment(
        name=name, model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=runtime_config
    )


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={UPSTREAM_KEY}),
        reply=ReplyScript(text="Real HTTP answer", chunks=4),
    ) as mock:
        config = Config(
            cluster=ClusterConfig(client_api_keys=(SecretRef.inline(CLIENT_KEY, warn=False),)),
            deployments=(_deployment(mock, "main"), _deployment(mock, "fragile")),
        )
        records: list[RequestRecord] = []
        topology = Topology(config, on_record=records.append)
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=CLIENT_KEY, max_retries=0)
            try:
                yield Live(mock, client, base, records)
            finally:
                await client.close()


async def test_tools_round_trip(live: Live) -> None:
    live.mock.reply = ReplyScript(
        tool_calls=(
            ScriptedToolCall("get_weather", {"city": "Paris"}),
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
        )
    )
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: list[dict[str, object]] = [{"role": "user", "content": "weather in Paris and Oslo?"}]
    first = await live.client.chat.completions.create(
        model="main",
        messages=messages,
        tools=tools,  # type: ignore[arg-type]
    )
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    assert [c.function.name for c in calls] == ["get_weather"] * 2
    assert first.choices[0].finish_reason == "tool_calls"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.extend({"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls)
    final = await live.client.chat.completions.create(
        model="main",
        messages=messages,
        tools=tools,  # type: ignore[arg-type]
    )
    assert final.choices[0].message.content


async def test_images_by_url_and_base64(live: Live) -> None:
    answer = await live.client.chat.completions.create(
        model="main",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                ],
            }
        ],
    )
    assert answer.choices[0].message.content == "Real HTTP answer"
    sent = live.mock.requests[-1].json()["messages"][0]["content"]
    assert [part["type"] for part in sent] == ["text", "image_url", "image_url"]


async def test_parallel_tool_calls_reach_the_upstream(live: Live) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for allowed in (False, True):
        await live.client.chat.completions.create(
            model="main",
            messages=[{"role": "user", "content": "hi"}],
            tools=tools,  # type: ignore[arg-type]
            parallel_tool_calls=allowed,
        )
        assert live.mock.requests[-1].json()["parallel_tool_calls"] is allowed
    await live.client.chat.completions.create(
        model="main",
        messages=[{"role": "user", "content": "hi"}],
        tools=tools,  # type: ignore[arg-type]
    )
    assert "parallel_tool_calls" not in live.mock.requests[-1].json()


async def test_reasoning_effort_reaches_an_openai_upstream(live: Live) -> None:
    answer = await live.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "think"}], reasoning_effort="low"
    )
    assert answer.choices[0].message.content == "Real HTTP answer"
    assert live.mock.requests[-1].json()["reasoning_effort"] == "low"
    with pytest.raises(openai.BadRequestError) as refused:
        await live.client.chat.completions.create(
            model="main",
            messages=[{"role": "user", "content": "think"}],
            reasoning_effort="extreme",  # type: ignore[arg-type]
        )
    assert refused.value.body is not None
    assert refused.value.body["param"] == "reasoning_effort"  # type: ignore[index]


async def test_every_error_status_reaches_the_sdk_typed(live: Live) -> None:
    chat = live.client.chat.completions
    messages = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as bad:
        await chat.create(model="main", messages=messages, temperature=5)  # type: ignore[arg-type]
    assert bad.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        await chat.create(model="missing", messages=messages)  # type: ignore[arg-type]
    wrong_key = live.client.with_options(api_key="rk-wrong")
    with pytest.raises(openai.AuthenticationError):
        await wrong_key.chat.completions.create(model="main", messages=messages)  # type: ignore[arg-type]
    # 504: the first byte never comes in time, twice (one retry).
    live.mock.faults.next(Fault.slow_first_byte(1.0), Fault.slow_first_byte(1.0))
    with pytest.raises(openai.APIStatusError) as slow:
        await chat.create(model="fragile", messages=messages)  # type: ignore[arg-type]
    assert slow.value.status_code == 504
    # 502: 5xx after retries; with the two timeouts, four failures in a row open the
    # circuit (deployments on one model at one endpoint share its breaker)...
    live.mock.faults.next(Fault.server_error(500), Fault.server_error(500))
    with pytest.raises(openai.APIStatusError) as upstream:
        await chat.create(model="fragile", messages=messages)  # type: ignore[arg-type]
    assert upstream.value.status_code == 502
    # ... 503 with Retry-After: the circuit is open and the provider is not called.
    calls = len(live.mock.requests)
    with pytest.raises(openai.APIStatusError) as open_circuit:
        await chat.create(model="fragile", messages=messages)  # type: ignore[arg-type]
    assert open_circuit.value.status_code == 503
    assert len(live.mock.requests) == calls
    async with httpx.AsyncClient(base_url=live.base) as scrape:
        metrics = (await scrape.get("/metrics")).text
    opened = 'inference_circuit_transitions_total{provider="openai",model="gpt-4o",state="open"} 1'
    assert opened in metrics
    # Each of the two requests was tried twice: the first failure of each was retried.
    assert 'inference_retries_total{deployment="fragile",outcome="timed_out"} 1' in metrics
    assert 'inference_retries_total{deployment="fragile",outcome="server_error"} 1' in metrics


async def test_a_client_disconnect_reaches_the_provider_within_a_second(live: Live) -> None:
    live.mock.reply = ReplyScript(text="slow " * 40, chunks=40, chunk_delay_s=0.05)
    stream = await live.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    await stream.close()  # the client goes away mid-stream
    aborts = await asyncio.wait_for(live.mock.server.wait_client_aborts(1), 1.0)
    assert aborts


async def test_429_with_retry_after_and_the_key_blocked(live: Live) -> None:
    # The provider asks to wait longer than the deployment allows: 429 at once, with
    # Retry-After, and the whole key stays blocked until then (other requests on it too).
    live.mock.faults.next(Fault.rate_limit(600))
    messages = [{"role": "user", "content": "x"}]
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as limited:
            await live.client.chat.completions.create(model="main", messages=messages)  # type: ignore[arg-type]
        assert int(limited.value.response.headers["retry-after"]) > 500
    assert len(live.mock.requests) == 1


async def test_openai_only_options_reach_an_openai_upstream(live: Live) -> None:
    await live.client.chat.completions.create(
        model="main",
        messages=[{"role": "user", "content": "hi"}],
        store=True,
        service_tier="flex",
        metadata={"team": "search"},
        prediction={"type": "content", "content": "hello"},
    )
    sent = live.mock.requests[-1].json()
    assert (sent["store"], sent["service_tier"], sent["metadata"]) == (
        True,
        "flex",
        {"team": "search"},
    )
    assert sent["prediction"] == {"type": "content", "content": "hello"}
    await live.client.chat.completions.create(
        model="main", messages=[{"role": "user", "content": "hi"}], store=False
    )
    assert "store" not in live.mock.requests[-1].json()
    with pytest.raises(openai.BadRequestError) as refused:
        await live.client.chat.completions.create(
            model="main",
            messages=[{"role": "user", "content": "hi"}],
            service_tier="cheapest",  # type: ignore[arg-type]
        )
    assert refused.value.body["param"] == "service_tier"  # type: ignore[index]
