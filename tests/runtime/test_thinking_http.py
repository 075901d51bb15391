"""Extended thinking on ``POST /v1/messages``, end to end with the official anthropic SDK:
``thinking: {type: enabled, budget_tokens}`` reaches Claude as it is, the answer's thinking
blocks come back with their signatures (unary and streamed, redacted blocks included), and a
tool loop that sends them back passes the upstream's checks. For other providers the budget
becomes their own reasoning setting and prior thinking is left out of their prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from mock_gateway import gateway_config, last_body, on_mock

from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.anthropic_thinking import ThinkingScript, sign
from rakka_inference.testkit.faults import FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

KEY = "sk-thinking-upstream-0001"
THINKING = {"type": "enabled", "budget_tokens": 2048}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = ReplyScript(tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),))


@dataclass
class Live:
    claude: AnthropicMock
    gpt: OpenAIMock
    gemini: GeminiMock
    client: anthropic.AsyncAnthropic
    chat: openai.AsyncOpenAI

    def sent(self, mock: AnthropicMock | OpenAIMock | GeminiMock) -> dict[str, Any]:
        return last_body(mock)


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={KEY})
    async with (
        AnthropicMock(faults=plan, reply=ReplyScript(text="Sunny.")) as claude,
        OpenAIMock(faults=plan, reply=ReplyScript(text="Sunny.")) as gpt,
        GeminiMock(faults=plan, reply=ReplyScript(text="Sunny."), thoughts="Hmm, weather") as gem,
    ):
        topology = Topology(
            gateway_config(
                on_mock("claude", claude, KEY, model="claude-sonnet-4-5"),
                on_mock("gpt", gpt, KEY, model="o4-mini"),
                on_mock("gemini", gem, KEY),
            )
        )
        async with serving(topology.gateway) as base:
            client = anthropic.AsyncAnthropic(base_url=base, api_key="unused", max_retries=0)
            chat = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(claude, gpt, gem, client, chat)
            finally:
                await chat.close()
                await client.close()


async def _first_turn(live: Live, *, stream: bool) -> list[dict[str, Any]]:
    """Ask Claude, thinking, for the weather; the answer's content as the client keeps it."""
    live.claude.reply = CALL
    question = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        async with live.client.messages.stream(
            model="claude",
            max_tokens=4096,
            thinking=THINKING,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            messages=question,  # type: ignore[arg-type]
        ) as events:
            message = await events.get_final_message()
    else:
        message = await live.client.messages.create(
            model="claude",
            max_tokens=4096,
            thinking=THINKING,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            messages=question,  # type: ignore[arg-type]
        )
    assert message.stop_reason == "tool_use"
    return [block.model_dump(exclude_none=True) for block in message.content]


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_tool_loop_with_thinking_sends_the_signed_blocks_back(
    live: Live, stream: bool
) -> None:
    live.claude.thinking = ThinkingScript(text="The user wants Paris weather.", redacted=True)
    content = await _first_turn(live, stream=stream)
    assert live.sent(live.claude)["thinking"] == THINKING
    text = "The user wants Paris weather."
    assert [block["type"] for block in content] == ["thinking", "redacted_thinking", "tool_use"]
    assert content[0]["thinking"] == text
    assert content[0]["signature"] == sign(text)
    assert content[1]["data"].startswith("redacted:")
    use = content[2]
    live.claude.reply = ReplyScript(text="It is sunny in Paris.")
    final = await live.client.messages.create(
        model="claude",
        max_tokens=4096,
        thinking=THINKING,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": content},  # type: ignore[typeddict-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": "sun"}],
            },
        ],
    )
    assert final.stop_reason == "end_turn"
    assert [block.type for block in final.content] == ["thinking", "redacted_thinking", "text"]
    # The blocks went back to Claude unchanged, before the call, so its checks passed.
    replayed = live.sent(live.claude)["messages"][1]["content"]
    assert replayed[:2] == [
        {"type": "thinking", "thinking": text, "signature": sign(text)},
        {"type": "redacted_thinking", "data": content[1]["data"]},
    ]
    assert replayed[2]["type"] == "tool_use"


async def test_a_changed_thinking_block_is_refused_by_the_provider(live: Live) -> None:
    content = await _first_turn(live, stream=False)
    content[0]["thinking"] += " (edited)"
    with pytest.raises(anthropic.BadRequestError, match="Invalid `signature`"):
        await live.client.messages.create(
            model="claude",
            max_tokens=4096,
            thinking=THINKING,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            messages=[
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": content},  # type: ignore[typeddict-item]
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": content[-1]["id"], "content": "x"}
                    ],
                },
            ],
        )


async def test_the_stream_sends_thinking_and_signature_deltas(live: Live) -> None:
    live.claude.thinking = ThinkingScript(text="one two three four")
    async with live.client.messages.stream(
        model="claude",
        max_tokens=4096,
        thinking=THINKING,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "hi"}],
    ) as events:
        kinds = [event.delta.type async for event in events if event.type == "content_block_delta"]
    assert kinds[0] == "thinking_delta"
    assert "signature_delta" in kinds
    assert kinds.index("signature_delta") < kinds.index("text_delta")


async def test_no_thinking_asked_none_sent_or_shown(live: Live) -> None:
    message = await live.client.messages.create(
        model="claude", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert "thinking" not in live.sent(live.claude)
    assert [block.type for block in message.content] == ["text"]


async def test_an_openai_deployment_takes_the_budget_as_an_effort(live: Live) -> None:
    prior = [
        {"type": "thinking", "thinking": "old thoughts", "signature": "sig"},
        {"type": "text", "text": "Earlier answer."},
    ]
    await live.client.messages.create(
        model="gpt",
        max_tokens=4096,
        thinking={"type": "enabled", "budget_tokens": 2048},
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": prior},  # type: ignore[typeddict-item]
            {"role": "user", "content": "again"},
        ],
    )
    sent = live.sent(live.gpt)
    assert sent["reasoning_effort"] == "low"
    # Prior thinking has no place in the chat format: only the text went.
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Earlier answer."}],
    }


async def test_a_gemini_deployment_takes_the_budget_and_shows_its_thoughts(live: Live) -> None:
    message = await live.client.messages.create(
        model="gemini",
        max_tokens=8192,
        thinking={"type": "enabled", "budget_tokens": 3000},
        messages=[{"role": "user", "content": "why?"}],
    )
    thinking = live.sent(live.gemini)["generationConfig"]["thinkingConfig"]
    assert thinking == {"thinkingBudget": 3000, "includeThoughts": True}
    block = message.content[0]
    assert block.type == "thinking"
    assert (block.thinking, block.signature) == ("Hmm, weather", "")


async def test_a_budget_not_below_max_tokens_is_a_400(live: Live) -> None:
    with pytest.raises(anthropic.BadRequestError, match=r"thinking\.budget_tokens") as caught:
        await live.client.messages.create(
            model="claude",
            max_tokens=1024,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "hi"}],
        )
    assert caught.value.status_code == 400
    assert live.claude.requests == []


# ---------------------------------------------------------------------- the chat route

CHAT_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


async def _chat_loop(live: Live, assistant: dict[str, Any], call_id: str) -> None:
    live.claude.reply = ReplyScript(text="Sunny.")
    await live.chat.chat.completions.create(
        model="claude",
        reasoning_effort="low",
        tools=[CHAT_TOOL],  # type: ignore[list-item]
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            assistant,  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call_id, "content": "sun"},
        ],
    )


async def test_a_chat_tool_loop_with_claude_thinking_goes_through_thinking_blocks(
    live: Live,
) -> None:
    live.claude.reply = CALL
    live.claude.thinking = ThinkingScript(text="Paris, then.")
    answer = await live.chat.chat.completions.create(
        model="claude",
        reasoning_effort="low",
        tools=[CHAT_TOOL],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "weather in Paris?"}],
    )
    assert live.sent(live.claude)["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    message = answer.choices[0].message
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == "Paris, then."
    blocks = extra["thinking_blocks"]
    assert blocks == [
        {"type": "thinking", "thinking": "Paris, then.", "signature": sign("Paris, then.")}
    ]
    assert message.tool_calls is not None
    call_id = message.tool_calls[0].id
    # Sent back as the chat convention has it, the thinking reaches Claude before the call.
    await _chat_loop(live, message.model_dump(exclude_none=True), call_id)
    assert live.sent(live.claude)["messages"][1]["content"][0] == blocks[0]
    # Without it, Claude refuses the loop, and the client is told why.
    bare = message.model_dump(exclude_none=True, exclude={"thinking_blocks"})
    with pytest.raises(openai.BadRequestError, match="Expected `thinking`"):
        await _chat_loop(live, bare, call_id)


async def test_a_chat_stream_sends_the_signature_as_a_thinking_blocks_delta(live: Live) -> None:
    live.claude.thinking = ThinkingScript(text="one two", redacted=True)
    stream = await live.chat.chat.completions.create(
        model="claude",
        reasoning_effort="low",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    deltas = [(chunk.choices[0].delta.model_extra or {}) async for chunk in stream if chunk.choices]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    blocks = [block for d in deltas for block in d.get("thinking_blocks") or ()]
    assert reasoning == "one two"
    assert blocks[0] == {"type": "thinking", "thinking": "", "signature": sign("one two")}
    assert blocks[1]["type"] == "redacted_thinking"


async def test_thinking_blocks_of_a_bad_shape_are_a_400(live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await live.chat.chat.completions.create(
            model="claude",
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "x", "thinking_blocks": [{"type": "idea"}]},  # type: ignore[typeddict-unknown-key]
                {"role": "user", "content": "again"},
            ],
        )
    assert caught.value.body["param"] == "messages[1].thinking_blocks[0].type"  # type: ignore[index]


# ---------------------------------------------------------------------- the Responses route

RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
async def test_a_responses_tool_loop_carries_the_thinking_in_encrypted_content(
    live: Live, stream: bool
) -> None:
    live.claude.reply = CALL
    live.claude.thinking = ThinkingScript(text="Paris, then.", redacted=True)
    question = [{"role": "user", "content": "weather in Paris?"}]
    if stream:
        async with live.chat.responses.stream(
            model="claude",
            input=question,  # type: ignore[arg-type]
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            reasoning={"effort": "low"},
        ) as events:
            kinds = [event.type async for event in events]
            first = await events.get_final_response()
        assert "response.reasoning_text.delta" in kinds
        assert kinds.index("response.reasoning_text.done") < kinds.index(
            "response.function_call_arguments.done"
        )
    else:
        first = await live.chat.responses.create(
            model="claude",
            input=question,  # type: ignore[arg-type]
            tools=[RESPONSES_TOOL],  # type: ignore[list-item]
            reasoning={"effort": "low"},
        )
    reasoning, call = first.output
    assert reasoning.type == "reasoning"
    assert reasoning.content is not None
    assert reasoning.content[0].text == "Paris, then."
    assert reasoning.encrypted_content is not None
    assert call.type == "function_call"
    live.claude.reply = ReplyScript(text="Sunny.")
    final = await live.chat.responses.create(
        model="claude",
        input=[
            *question,
            *(item.model_dump(exclude_none=True) for item in first.output),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sun"},
        ],  # type: ignore[arg-type]
        tools=[RESPONSES_TOOL],  # type: ignore[list-item]
        reasoning={"effort": "low"},
    )
    assert final.output_text == "Sunny."
    replayed = live.sent(live.claude)["messages"][1]["content"]
    assert [block["type"] for block in replayed] == ["thinking", "redacted_thinking", "tool_use"]
    assert replayed[0]["signature"] == sign("Paris, then.")


async def test_an_openai_agents_agent_thinks_with_claude_through_a_tool(live: Live) -> None:
    agents = pytest.importorskip("agents")
    from openai.types.shared import Reasoning

    live.claude.reply = CALL
    live.claude.thinking = ThinkingScript(text="I should look it up.")
    asked: list[str] = []

    @agents.function_tool  # type: ignore[untyped-decorator]
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        live.claude.reply = ReplyScript(text=f"It is sunny in {city}.")
        return "sunny"

    model = agents.OpenAIResponsesModel(model="claude", openai_client=live.chat)
    agent = agents.Agent(
        name="weather",
        model=model,
        tools=[get_weather],
        model_settings=agents.ModelSettings(reasoning=Reasoning(effort="low")),
    )
    result = await agents.Runner.run(
        agent, "weather in Paris?", run_config=agents.RunConfig(tracing_disabled=True)
    )
    assert asked == ["Paris"]
    assert result.final_output == "It is sunny in Paris."
    replayed = live.sent(live.claude)["messages"][1]["content"]
    assert replayed[0] == {
        "type": "thinking",
        "thinking": "I should look it up.",
        "signature": sign("I should look it up."),
    }


async def test_reasoning_items_not_ours_are_dropped_and_ours_must_decode(live: Live) -> None:
    live.claude.reply = ReplyScript(text="Fine.")
    foreign = {"type": "reasoning", "id": "rs_x", "summary": [], "encrypted_content": "gAAAA"}
    await live.chat.responses.create(
        model="claude",
        input=[{"role": "user", "content": "hi"}, foreign, {"role": "user", "content": "again"}],  # type: ignore[list-item]
    )
    assert [m["role"] for m in live.sent(live.claude)["messages"]] == ["user"]
    broken = {**foreign, "encrypted_content": "rkr1.!!!"}
    with pytest.raises(openai.BadRequestError) as caught:
        await live.chat.responses.create(
            model="claude",
            input=[{"role": "user", "content": "hi"}, broken],  # type: ignore[list-item]
        )
    assert caught.value.body["param"] == "input[1].encrypted_content"  # type: ignore[index]
