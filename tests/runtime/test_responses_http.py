"""``POST /v1/responses`` end to end: the official openai SDK → uvicorn → the gateway →
engines → the OpenAI-format mock or the Anthropic-format mock. OpenAI's Responses format
on the client's side, whichever provider serves the deployment; every answer and event is
checked by the SDK's own models. Agent frameworks that speak the Responses API
(``openai-agents``, ``pydantic-ai``) run a tool loop against it where they are installed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

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

UPSTREAM_KEY = "sk-responses-upstream-0001"
CLIENT_KEY = "rk-responses-client-0001"
RETRY = RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
BACKENDS = ("gpt", "claude")
"""The OpenAI-backed and the Anthropic-backed deployment."""
EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)


@dataclass
class Live:
    gpt: OpenAIMock
    claude: AnthropicMock
    client: openai.AsyncOpenAI
    http: httpx.AsyncClient
    base: str
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
    reply = ReplyScript(text="Hello from the model", chunks=4)
    async with (
        OpenAIMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as gpt,
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
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key=CLIENT_KEY, max_retries=0)
            http = httpx.AsyncClient(
                base_url=base, headers={"authorization": f"Bearer {CLIENT_KEY}"}
            )
            try:
                yield Live(gpt, claude, client, http, base, records)
            finally:
                await http.aclose()
                await client.close()


def _events(body: str) -> list[Any]:
    """Each SSE event as the SDK's model; every event names itself on its ``event:`` line."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ")
        assert data_line.startswith("data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == name_line[7:]
        events.append(EVENT.validate_python(data))
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


async def _post(live: Live, **body: Any) -> httpx.Response:
    return await live.http.post("/v1/responses", content=orjson.dumps(body))


# ---------------------------------------------------------------------- answers


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_unary_text_from_either_provider(live: Live, deployment: str) -> None:
    response = await live.client.responses.create(model=deployment, input="hi")
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.model == deployment
    assert response.output_text == "Hello from the model"
    [item] = response.output
    assert item.type == "message"
    assert item.status == "completed"
    assert response.model_extra == {"store": False}  # absent store: accepted, nothing kept
    assert response.usage is not None
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens > 0
    assert response.usage.total_tokens == (
        response.usage.input_tokens + response.usage.output_tokens
    )
    assert (live.records[-1].deployment, live.records[-1].outcome) == (deployment, "ok")
    raw = await _post(live, model=deployment, input="hi", store=False)
    Response.model_validate(raw.json())  # the whole body, strictly, by the SDK's model


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_streaming_through_the_sdk_helper(live: Live, deployment: str) -> None:
    async with live.client.responses.stream(model=deployment, input="hi") as stream:
        deltas = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        final = await stream.get_final_response()
    assert len(deltas) > 1
    assert "".join(deltas) == "Hello from the model"
    assert final.output_text == "Hello from the model"
    assert final.status == "completed"
    assert final.usage is not None
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens == live.records[-1].usage.input_tokens


async def test_raw_stream_event_order(live: Live) -> None:
    response = await _post(live, model="gpt", input="hi", stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = _events(response.text)
    names = [event.type for event in events]
    deltas = names.count("response.output_text.delta")
    assert deltas >= 2
    assert names == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress"
    assert {event.response.id for event in (events[0], events[1], events[-1])} == {
        events[-1].response.id
    }
    assert events[-2].item.content[0].text == "Hello from the model"
    assert events[-1].response.usage.output_tokens > 0


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_instructions_and_input_messages_reach_the_provider(
    live: Live, deployment: str
) -> None:
    await live.client.responses.create(
        model=deployment,
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "hi"},
            {"type": "message", "role": "assistant", "content": "hello"},
            {"role": "user", "content": [{"type": "input_text", "text": "and now?"}]},
        ],
    )
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["system"] == "Be brief."
        assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
        assert [m["role"] for m in sent["messages"][1:]] == ["user", "assistant", "user"]


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_max_output_tokens_makes_the_answer_incomplete(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(text="one two three four five six", chunks=3)
    response = await live.client.responses.create(
        model=deployment, input="count", max_output_tokens=2
    )
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 2
    assert response.output_text == "one two"
    raw = await _post(live, model=deployment, input="count", max_output_tokens=2, stream=True)
    events = _events(raw.text)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output[0].status == "incomplete"


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_json_schema_text_format_reaches_the_provider(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(text='{"city": "Paris"}')
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    text: Any = {"format": {"type": "json_schema", "name": "place", "schema": schema}}
    response = await live.client.responses.create(model=deployment, input="where?", text=text)
    assert orjson.loads(response.output_text) == {"city": "Paris"}
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    sent = live.sent(deployment)
    if deployment == "claude":
        assert sent["output_config"]["format"]["schema"] == schema
    else:
        assert sent["response_format"]["json_schema"]["name"] == "place"
        assert sent["response_format"]["json_schema"]["schema"] == schema


# ---------------------------------------------------------------------- tools


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_a_function_call_round_trip(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),)
    )
    conversation: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    first = await live.client.responses.create(
        model=deployment, input=conversation, tools=[WEATHER]
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.name, orjson.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert first.tools[0].type == "function"
    assert first.tool_choice == "auto"
    # Echoed back whole, as the SDK's users do, then the tool's answer.
    conversation += [item.model_dump(exclude_none=True) for item in first.output]
    conversation.append(
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}
    )
    live.mock(deployment).reply = ReplyScript(text="It is sunny in Paris.")
    final = await live.client.responses.create(
        model=deployment, input=conversation, tools=[WEATHER]
    )
    assert final.output_text == "It is sunny in Paris."
    sent = live.sent(deployment)
    if deployment == "claude":
        result = sent["messages"][-1]["content"][0]
        assert result == {
            "type": "tool_result",
            "tool_use_id": calls[0].call_id,
            "content": "sunny",
        }
    else:
        assert sent["messages"][-2]["tool_calls"][0]["id"] == calls[0].call_id
        assert sent["messages"][-1] == {
            "role": "tool",
            "tool_call_id": calls[0].call_id,
            "content": "sunny",
        }


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_streamed_parallel_function_calls(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        chunks=3,
        tool_calls=(
            ScriptedToolCall("get_weather", {"city": "Paris"}),
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
        ),
    )
    async with live.client.responses.stream(
        model=deployment,
        input="weather in Paris and Oslo?",
        tools=[WEATHER],
        tool_choice="required",
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [orjson.loads(call.arguments) for call in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert added == done == [0, 1]
    assert any(e.type == "response.function_call_arguments.delta" for e in events)
    arguments = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert [orjson.loads(a) for a in arguments] == [{"city": "Paris"}, {"city": "Oslo"}]


# ---------------------------------------------------------------------- errors


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
    ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
    ({"store": True}, "store", "keeps no responses"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "not supported"),
    ({"background": True}, "background", "default value"),
    ({"conversation": "conv_1"}, "conversation", "not supported"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "keeps no"),
]
"""What cannot be honoured: the body's extra fields, the ``param`` and words of the 400."""


async def test_what_cannot_be_honoured_is_a_400_naming_it(live: Live) -> None:
    for fields, param, words in REFUSED:  # one server for all: each case is one round trip
        body = {"model": "gpt", "input": "hi", **fields}
        with pytest.raises(openai.BadRequestError) as caught:
            await live.client.post("/responses", body=body, cast_to=Response)
        error = caught.value.body
        assert isinstance(error, dict)
        assert (error["param"], error["type"]) == (param, "invalid_request_error")
        assert words in error["message"]
    assert not live.gpt.requests  # refused before any provider was called


async def test_a_provider_refusal_names_the_responses_field(live: Live) -> None:
    # Claude thinks within max_tokens: a cap too small for any thinking is refused, and the
    # error names the Responses field (max_output_tokens), not the chat one.
    with pytest.raises(openai.BadRequestError) as caught:
        await live.client.responses.create(
            model="claude", input="hi", reasoning={"effort": "low"}, max_output_tokens=1000
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "max_output_tokens"
    await live.client.responses.create(model="claude", input="hi", reasoning={"effort": "low"})
    assert live.sent("claude")["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    await live.client.responses.create(model="gpt", input="hi", reasoning={"effort": "low"})
    assert live.sent("gpt")["reasoning_effort"] == "low"


async def test_an_unknown_model_is_not_found_in_openai_shape(live: Live) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await live.client.responses.create(model="nope", input="hi")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "model_not_found"


async def test_a_mid_stream_failure_sends_an_error_event_then_response_failed(
    live: Live,
) -> None:
    live.gpt.reply = ReplyScript(text="one two three four five six", chunks=6)
    live.gpt.faults.next(Fault.reset(after_chunks=3))
    response = await _post(live, model="gpt", input="hi", stream=True)
    assert response.status_code == 200
    events = _events(response.text)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error.code == "server_error"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text
    assert "one two three four five six".startswith(text)
    assert failed.output[0].content[0].text == text
    assert len(live.gpt.requests) == 1  # nothing was retried after the first byte
    # The SDK yields both events; it has no completed response to give.
    live.gpt.faults.next(Fault.reset(after_chunks=3))
    async with live.client.responses.stream(model="gpt", input="hi") as stream:
        kinds = [event.type async for event in stream]
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            await stream.get_final_response()
    assert kinds[-2:] == ["error", "response.failed"]


async def test_a_client_gone_mid_stream_cancels_the_upstream_call(live: Live) -> None:
    live.gpt.reply = ReplyScript(text="slow " * 40, chunks=40, chunk_delay_s=0.05)
    async with live.client.responses.stream(model="gpt", input="hi") as stream:
        async for event in stream:
            if event.type == "response.output_text.delta":
                break  # the client goes away after the first text
    aborts = await asyncio.wait_for(live.gpt.server.wait_client_aborts(1), 1.0)
    assert aborts


# ---------------------------------------------------------------------- agents


async def test_an_openai_agents_agent_calls_a_function_tool(live: Live) -> None:
    agents = pytest.importorskip("agents")
    live.gpt.reply = ReplyScript(tool_calls=(ScriptedToolCall("get_weather", {"city": "Oslo"}),))
    asked: list[str] = []

    @agents.function_tool  # type: ignore[untyped-decorator]
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        live.gpt.reply = ReplyScript(text=f"It is sunny in {city}.")
        return "sunny"

    model = agents.OpenAIResponsesModel(model="gpt", openai_client=live.client)
    agent = agents.Agent(
        name="weather", instructions="Answer briefly.", model=model, tools=[get_weather]
    )
    result = await agents.Runner.run(
        agent, "weather in Oslo?", run_config=agents.RunConfig(tracing_disabled=True)
    )
    assert asked == ["Oslo"]
    assert result.final_output == "It is sunny in Oslo."
    sent = live.sent("gpt")
    assert sent["messages"][0] == {"role": "system", "content": "Answer briefly."}
    assert sent["messages"][-1]["role"] == "tool"


async def test_a_pydantic_ai_agent_calls_a_function_tool(live: Live) -> None:
    pydantic_ai = pytest.importorskip("pydantic_ai")
    openai_models = pytest.importorskip("pydantic_ai.models.openai")
    openai_providers = pytest.importorskip("pydantic_ai.providers.openai")
    live.claude.reply = ReplyScript(tool_calls=(ScriptedToolCall("get_weather", {"city": "Lima"}),))
    provider = openai_providers.OpenAIProvider(openai_client=live.client)
    model = openai_models.OpenAIResponsesModel("claude", provider=provider)
    agent = pydantic_ai.Agent(model, instructions="Answer briefly.")
    asked: list[str] = []

    @agent.tool_plain  # type: ignore[untyped-decorator]
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        live.claude.reply = ReplyScript(text=f"It is sunny in {city}.")
        return "sunny"

    result = await agent.run("weather in Lima?")
    assert asked == ["Lima"]
    assert result.output == "It is sunny in Lima."
    assert live.sent("claude")["system"] == "Answer briefly."
