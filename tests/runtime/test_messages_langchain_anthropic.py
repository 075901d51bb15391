"""LangChain's ``ChatAnthropic`` as a client of the gateway's ``/v1/messages``: the
langchain-anthropic package → the anthropic SDK it wraps → uvicorn → the gateway → the
Anthropic-format mock or the OpenAI-format mock. The client is built as a user builds it
(``base_url`` = the gateway, the gateway's client key) and keeps its own HTTP clients.

ChatAnthropic caches its httpx clients process-wide, keyed by base URL, and never closes
them. The fixture closes the clients its model made and empties that cache afterwards, so
that a later test served on the same port never gets a client bound to a finished event
loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import pytest
from langchain_anthropic import ChatAnthropic, _client_utils
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from mock_gateway import gateway_config, last_body, on_mock
from pydantic import SecretStr

from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM_KEY = "sk-lc-anthropic-upstream-0001"
CLIENT_KEY = "rk-lc-anthropic-client-0001"
RETRY = RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)
BACKENDS = ("claude", "gpt")
"""The Anthropic-backed and the OpenAI-backed deployment."""


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@dataclass
class Live:
    gpt: OpenAIMock
    claude: AnthropicMock
    base: str
    records: list[RequestRecord]
    models: list[ChatAnthropic]

    def mock(self, deployment: str) -> OpenAIMock | AnthropicMock:
        return self.gpt if deployment == "gpt" else self.claude

    def sent(self, deployment: str) -> dict[str, Any]:
        """The body the deployment's provider last received."""
        return last_body(self.mock(deployment))

    def chat(self, deployment: str, **options: Any) -> ChatAnthropic:
        model = ChatAnthropic(
            model=deployment,
            base_url=self.base,
            api_key=SecretStr(CLIENT_KEY),
            max_tokens=64,
            max_retries=0,
            **options,
        )
        self.models.append(model)
        return model


async def _close(models: list[ChatAnthropic]) -> None:
    for model in models:
        # The clients are cached properties: close only those the model made.
        if "_async_client" in model.__dict__:
            await model._async_client.close()
        if "_client" in model.__dict__:
            model._client.close()
    _client_utils._get_default_async_httpx_client.cache_clear()
    _client_utils._get_default_httpx_client.cache_clear()


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    reply = ReplyScript(text="Hello from the model", chunks=4)
    async with (
        OpenAIMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as gpt,
        AnthropicMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as claude,
    ):
        config = gateway_config(
            on_mock("gpt", gpt, UPSTREAM_KEY, retry=RETRY),
            on_mock("claude", claude, UPSTREAM_KEY, retry=RETRY),
            client_key=CLIENT_KEY,
        )
        records: list[RequestRecord] = []
        models: list[ChatAnthropic] = []
        async with serving(Topology(config, on_record=records.append).gateway) as base:
            try:
                yield Live(gpt, claude, base, records, models)
            finally:
                await _close(models)


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_ainvoke_answers_with_the_text_and_its_usage(live: Live, deployment: str) -> None:
    answer = await live.chat(deployment).ainvoke([("system", "Be brief."), ("human", "say hello")])

    assert isinstance(answer, AIMessage)
    assert answer.content == "Hello from the model"
    assert answer.response_metadata["model"] == deployment
    assert answer.response_metadata["stop_reason"] == "end_turn"
    assert answer.response_metadata["id"].startswith("msg_")
    usage = answer.usage_metadata
    assert usage is not None
    record = live.records[-1]
    assert (record.deployment, record.outcome) == (deployment, "ok")
    assert usage["input_tokens"] == record.usage.input_tokens > 0
    assert usage["output_tokens"] == record.usage.output_tokens > 0
    # The upstream got the conversation in its own format, system prompt included.
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["system"] == "Be brief."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "say hello"}]}
        ]
        assert sent["max_tokens"] == 64
    else:
        assert sent["model"] == "gpt-4o"
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "say hello"},
        ]


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_astream_delivers_the_text_in_pieces(live: Live, deployment: str) -> None:
    chunks = [chunk async for chunk in live.chat(deployment).astream("say hello")]

    texts = [chunk.content for chunk in chunks if isinstance(chunk.content, str) and chunk.content]
    assert len(texts) > 1  # streamed, not one block
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk)
    assert whole.text == "Hello from the model"
    assert whole.response_metadata["stop_reason"] == "end_turn"
    assert whole.usage_metadata is not None
    assert whole.usage_metadata["output_tokens"] == live.records[-1].usage.output_tokens > 0
    assert live.sent(deployment)["stream"] is True


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_bound_tool_round_trip(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),)
    )
    model = live.chat(deployment).bind_tools([get_weather])
    messages: list[Any] = [HumanMessage("weather in Paris?")]

    first = await model.ainvoke(messages)

    assert isinstance(first, AIMessage)
    assert first.response_metadata["stop_reason"] == "tool_use"
    assert [(call["name"], call["args"]) for call in first.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    offered = live.sent(deployment)["tools"]
    if deployment == "claude":
        assert [t["name"] for t in offered] == ["get_weather"]
        assert offered[0]["input_schema"]["properties"] == {"city": {"type": "string"}}
    else:
        assert [t["function"]["name"] for t in offered] == ["get_weather"]
        assert offered[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}

    # Run the tool as an agent loop does, and send its result back.
    call = first.tool_calls[0]
    result = await get_weather.ainvoke(call)
    assert isinstance(result, ToolMessage)
    live.mock(deployment).reply = ReplyScript(text="It is sunny in Paris.")
    final = await model.ainvoke([*messages, first, result])

    assert final.content == "It is sunny in Paris."
    assert final.response_metadata["stop_reason"] == "end_turn"
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
        assert sent["messages"][1]["content"][-1]["id"] == call["id"]
        assert sent["messages"][-1]["content"] == [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny in Paris"}
        ]
    else:
        assert sent["messages"][1]["tool_calls"][0]["id"] == call["id"]
        assert sent["messages"][1]["tool_calls"][0]["function"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        assert sent["messages"][-1] == {
            "role": "tool",
            "content": "sunny in Paris",
            "tool_call_id": call["id"],
        }


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_streamed_tool_call_is_assembled_from_its_chunks(
    live: Live, deployment: str
) -> None:
    live.mock(deployment).reply = ReplyScript(
        chunks=3, tool_calls=(ScriptedToolCall("get_weather", {"city": "Oslo"}),)
    )
    model = live.chat(deployment).bind_tools([get_weather], tool_choice="any")

    chunks = [chunk async for chunk in model.astream("weather in Oslo?")]

    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk
    assert isinstance(whole, AIMessageChunk)
    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert whole.response_metadata["stop_reason"] == "tool_use"
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["tool_choice"] == {"type": "any"}
    else:
        assert sent["tool_choice"] == "required"


async def test_the_sync_client_invokes_and_streams(live: Live) -> None:
    model = live.chat("claude")

    answer = await asyncio.to_thread(model.invoke, "say hello")
    pieces = await asyncio.to_thread(lambda: [chunk.text for chunk in model.stream("say hello")])

    assert answer.content == "Hello from the model"
    assert "".join(pieces) == "Hello from the model"
    assert len([piece for piece in pieces if piece]) > 1
    assert [r.json().get("stream", False) for r in live.claude.requests] == [False, True]


async def test_a_wrong_client_key_is_anthropics_authentication_error(live: Live) -> None:
    model = ChatAnthropic(
        model="claude", base_url=live.base, api_key=SecretStr("rk-wrong"), max_retries=0
    )
    live.models.append(model)

    with pytest.raises(anthropic.AuthenticationError) as caught:
        await model.ainvoke("hi")

    assert caught.value.status_code == 401
    assert "rk-wrong" not in str(caught.value)
    assert not live.claude.requests  # refused at the gateway
