"""LiteLLM used as a client library in front of the gateway: ``litellm.acompletion`` with
an ``openai/<deployment>`` model against ``/v1/chat/completions`` and an
``anthropic/<deployment>`` model against ``/v1/messages``, unary, streamed and with tools,
each against the OpenAI-backed and the Anthropic-backed deployment.

LiteLLM fetches its model cost map from the internet when it is imported, unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is true (then it reads the copy in its package), and
``LITELLM_OFFLINE_MODE`` keeps whatever else it would fetch on its own (tokenizers,
catalogues) local. The fixture sets both before LiteLLM is first imported — here, not at
collection — and restores the environment afterwards, including the ``TIKTOKEN_CACHE_DIR``
that LiteLLM's import points at its bundled tokenizers. It closes LiteLLM's cached HTTP
clients after each test: they belong to that test's event loop.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from mock_gateway import gateway_config, last_body, on_mock

from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

# Warnings LiteLLM's own code raises under this pydantic while it reads a stream (the suite
# turns warnings into errors): its streamed delta types, built on first use, hold ReadOnly
# TypedDict items, and it reads every attribute of a chunk, deprecated ones included.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Item '\w+' on TypedDict class '\w+' is using the `ReadOnly` qualifier:UserWarning"
    ),
    pytest.mark.filterwarnings(
        "ignore:Accessing the 'model_:pydantic.warnings.PydanticDeprecatedSince211:litellm"
    ),
]

UPSTREAM_KEY = "sk-litellm-upstream-0001"
CLIENT_KEY = "rk-litellm-client-0001"
RETRY = RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)
BACKENDS = ("gpt", "claude")
"""The OpenAI-backed and the Anthropic-backed deployment."""
ROUTES = ("openai", "anthropic")
"""LiteLLM's provider prefix: OpenAI's chat completions or Anthropic's messages route."""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@dataclass
class Live:
    litellm: ModuleType
    gpt: OpenAIMock
    claude: AnthropicMock
    base: str
    records: list[RequestRecord]

    def mock(self, deployment: str) -> OpenAIMock | AnthropicMock:
        return self.gpt if deployment == "gpt" else self.claude

    def sent(self, deployment: str) -> dict[str, Any]:
        """The body the deployment's provider last received."""
        return last_body(self.mock(deployment))

    async def complete(self, route: str, deployment: str, **options: Any) -> Any:
        """``litellm.acompletion`` against the gateway through ``route``."""
        api_base = f"{self.base}/v1" if route == "openai" else self.base
        return await self.litellm.acompletion(
            model=f"{route}/{deployment}",
            api_base=api_base,
            api_key=CLIENT_KEY,
            max_tokens=64,
            num_retries=0,
            **options,
        )


def _text(content: str | list[dict[str, Any]]) -> str:
    """A message's text, whether sent as a string or as text parts."""
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content)


@pytest.fixture
async def live(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    monkeypatch.setenv("LITELLM_OFFLINE_MODE", "true")
    # LiteLLM's first import points this at its bundled tokenizers; every test runs with
    # that, and monkeypatch puts back what was there before.
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR", raising=False)
    litellm = importlib.import_module("litellm")
    tokenizers = importlib.import_module("litellm.litellm_core_utils.default_encoding")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", tokenizers.cache_dir)
    cost_map = importlib.import_module("litellm.litellm_core_utils.get_model_cost_map")
    # Read from the package, not fetched: had LiteLLM been imported before this fixture
    # without the switch, this says so instead of a test silently relying on the network.
    assert cost_map.get_model_cost_map_source_info()["source"] == "local"
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
        async with serving(Topology(config, on_record=records.append).gateway) as base:
            try:
                yield Live(litellm, gpt, claude, base, records)
            finally:
                # LiteLLM runs its success callbacks on a worker task in the test's loop.
                worker = importlib.import_module("litellm.litellm_core_utils.logging_worker")
                await worker.GLOBAL_LOGGING_WORKER.flush()
                await worker.GLOBAL_LOGGING_WORKER.stop()
                await litellm.close_litellm_async_clients()
                litellm.in_memory_llm_clients_cache.flush_cache()


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_unary_completion(live: Live, route: str, deployment: str) -> None:
    response = await live.complete(
        route,
        deployment,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "say hello"},
        ],
    )

    choice = response.choices[0]
    assert choice.message.content == "Hello from the model"
    assert choice.finish_reason == "stop"
    record = live.records[-1]
    assert (record.deployment, record.outcome) == (deployment, "ok")
    assert response.usage.prompt_tokens == record.usage.input_tokens > 0
    assert response.usage.completion_tokens == record.usage.output_tokens > 0
    # The upstream got the conversation in its own format, whichever route LiteLLM took.
    sent = live.sent(deployment)
    assert sent["max_tokens"] == 64
    if deployment == "claude":
        assert sent["model"] == "claude-haiku-4-5"
        assert sent["system"] == "Be brief."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "say hello"}]}
        ]
    else:
        assert sent["model"] == "gpt-4o"
        texts = [(m["role"], _text(m["content"])) for m in sent["messages"]]
        assert texts == [("system", "Be brief."), ("user", "say hello")]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_streamed_completion(live: Live, route: str, deployment: str) -> None:
    stream = await live.complete(
        route,
        deployment,
        messages=[{"role": "user", "content": "say hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert "".join(pieces) == "Hello from the model"
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    usages = [c.usage for c in chunks if getattr(c, "usage", None)]
    record = live.records[-1]
    assert (record.deployment, record.outcome) == (deployment, "ok")
    assert usages[-1].prompt_tokens == record.usage.input_tokens > 0
    assert usages[-1].completion_tokens == record.usage.output_tokens > 0
    assert live.sent(deployment)["stream"] is True


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_tool_call_round_trip(live: Live, route: str, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),)
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Paris?"}]

    first = await live.complete(route, deployment, messages=messages, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    live.mock(deployment).reply = ReplyScript(text="It is sunny in Paris.")
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"},
    ]
    final = await live.complete(route, deployment, messages=messages, tools=[WEATHER])

    assert final.choices[0].message.content == "It is sunny in Paris."
    assert final.choices[0].finish_reason == "stop"
    sent = live.sent(deployment)
    if deployment == "claude":
        assert [t["name"] for t in sent["tools"]] == ["get_weather"]
        assert sent["messages"][1]["content"] == [
            {
                "type": "tool_use",
                "id": calls[0].id,
                "name": "get_weather",
                "input": {"city": "Paris"},
            }
        ]
        assert sent["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": "sunny"}
        ]
    else:
        assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]
        assert sent["messages"][1]["tool_calls"] == [
            {
                "id": calls[0].id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ]
        assert sent["messages"][2] == {
            "role": "tool",
            "content": "sunny",
            "tool_call_id": calls[0].id,
        }


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_streamed_tool_call(live: Live, route: str, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        chunks=3, tool_calls=(ScriptedToolCall("get_weather", {"city": "Oslo"}),)
    )
    stream = await live.complete(
        route,
        deployment,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    rebuilt = live.litellm.stream_chunk_builder(chunks)

    calls = rebuilt.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert rebuilt.choices[0].finish_reason == "tool_calls"
    sent = live.sent(deployment)
    assert sent["stream"] is True
    if deployment == "claude":
        assert sent["tool_choice"] == {"type": "any"}
    else:
        assert sent["tool_choice"] == "required"


@pytest.mark.parametrize("route", ROUTES)
async def test_a_wrong_client_key_is_an_authentication_error(live: Live, route: str) -> None:
    api_base = f"{live.base}/v1" if route == "openai" else live.base

    with pytest.raises(live.litellm.AuthenticationError) as caught:
        await live.litellm.acompletion(
            model=f"{route}/gpt",
            api_base=api_base,
            api_key="rk-wrong-key-0001",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=64,
            num_retries=0,
        )

    assert caught.value.status_code == 401
    assert "rk-wrong-key-0001" not in str(caught.value)
    assert not live.gpt.requests  # refused at the gateway
