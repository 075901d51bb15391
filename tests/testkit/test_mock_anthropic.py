"""The Anthropic mock: the official ``anthropic`` SDK as its client, then every fault and
refusal checked on the wire with a bare httpx client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from rakka_inference.testkit.anthropic_render import MAX_CONTEXT_TOKENS, ORGANIZATION_ID
from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultKind,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
)
from rakka_inference.testkit.http_script import ScriptedResponse
from rakka_inference.testkit.mock_anthropic import MESSAGES_PATH, AnthropicMock

KEY = "sk-ant-api03-mock-key"
MODEL = "claude-mock"  # not a real model: the SDK warns about deprecated names
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture
async def mock() -> AsyncIterator[AnthropicMock]:
    async with AnthropicMock(faults=FaultPlan(valid_keys={KEY})) as running:
        yield running


@pytest.fixture
async def client(mock: AnthropicMock) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=mock.url, api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def raw(mock: AnthropicMock) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock.url, timeout=2.0) as bare:
        yield bare


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": user(text), **extra}


def events(raw_body: bytes) -> list[tuple[str, bytes]]:
    """``(event name, data)`` for each SSE event of a whole stream body."""
    found = []
    for block in raw_body.split(b"\n\n"):
        if block:
            name, data = block.split(b"\n", 1)
            assert name.startswith(b"event: ")
            assert data.startswith(b"data: ")
            found.append((name[7:].decode(), data[6:]))
    return found


# ---------------------------------------------------------------- the official SDK


async def test_sdk_creates_a_message(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=user("hello there")
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert message.id.startswith("msg_01")
    [block] = message.content
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == "You said: hello there"
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (4, 4)  # "Be brief." + "hello there"
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    sent = mock.requests[0]
    assert sent.path == MESSAGES_PATH
    assert sent.headers["authorization"] == f"Bearer {KEY}"  # how SDK 2.x sends api_key


async def test_sdk_streams_a_message(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    mock.reply = ReplyScript(text="one two three four five", chunks=3, chunk_delay_s=0.005)
    async with client.messages.stream(
        model=MODEL, max_tokens=100, messages=user("count please")
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["one two ", "three fo", "ur five"]
    assert final.content[0].type == "text"
    assert final.content[0].text == "one two three four five"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 5)


async def test_sdk_tool_use_exchange(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    mock.reply = ReplyScript(tool_calls=[ScriptedToolCall("get_weather", {"city": "Paris"})])
    asked = user("weather in Paris?")
    first = await client.messages.create(
        model=MODEL, max_tokens=100, tools=[WEATHER, CLOCK], messages=asked
    )
    assert first.stop_reason == "tool_use"
    [call] = first.content
    assert isinstance(call, anthropic.types.ToolUseBlock)
    assert call.id.startswith("toolu_01")
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees"}
    final = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER, CLOCK],
        messages=[
            *asked,
            {"role": "assistant", "content": [call.model_dump(exclude_none=True)]},
            {"role": "user", "content": [result]},
        ],
    )
    assert final.stop_reason == "end_turn"
    assert final.content[0].type == "text"
    assert final.content[0].text == "You said: 18 degrees"


async def test_sdk_parallel_tool_use_streamed(
    mock: AnthropicMock, client: anthropic.AsyncAnthropic
) -> None:
    mock.reply = ReplyScript(
        text="Checking both.",
        chunks=3,
        tool_calls=[
            ScriptedToolCall("get_weather", {"city": "Paris", "unit": "celsius"}),
            ScriptedToolCall("get_time"),
        ],
    )
    async with client.messages.stream(
        model=MODEL, max_tokens=100, tools=[WEATHER, CLOCK], messages=user("both?")
    ) as stream:
        final = await stream.get_final_message()
    text, weather, clock = final.content
    assert text.type == "text"
    assert text.text == "Checking both."
    assert isinstance(weather, anthropic.types.ToolUseBlock)
    assert isinstance(clock, anthropic.types.ToolUseBlock)
    assert weather.input == {"city": "Paris", "unit": "celsius"}
    assert (clock.name, clock.input) == ("get_time", {})
    assert weather.id != clock.id
    assert final.stop_reason == "tool_use"
    # Each call answered, in one user turn: the model answers in text.
    results = [
        {"type": "tool_result", "tool_use_id": weather.id, "content": "18"},
        {
            "type": "tool_result",
            "tool_use_id": clock.id,
            "content": [{"type": "text", "text": "noon"}],
        },
    ]
    answer = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER, CLOCK],
        messages=[
            *user("both?"),
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in final.content],
            },
            {"role": "user", "content": results},
        ],
    )
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "Checking both."  # the script's text, now alone


async def test_sdk_tool_choice(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    tools: Any = [WEATHER, CLOCK]
    forced = await client.messages.create(
        model=MODEL, max_tokens=100, tools=tools, tool_choice={"type": "any"}, messages=user("x")
    )
    assert [(b.type, getattr(b, "name", None)) for b in forced.content] == [
        ("tool_use", "get_weather")
    ]
    named = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_time"},
        messages=user("x"),
    )
    assert isinstance(named.content[0], anthropic.types.ToolUseBlock)
    assert (named.content[0].name, named.content[0].input) == ("get_time", {})
    mock.reply = ReplyScript(
        tool_calls=[ScriptedToolCall("get_weather"), ScriptedToolCall("get_time")]
    )
    single = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        tools=tools,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
        messages=user("x"),
    )
    assert len(single.content) == 1
    declined = await client.messages.create(
        model=MODEL, max_tokens=100, tools=tools, tool_choice={"type": "none"}, messages=user("x")
    )
    assert (declined.stop_reason, declined.content[0].type) == ("end_turn", "text")
    no_tools = await client.messages.create(model=MODEL, max_tokens=100, messages=user("x"))
    assert no_tools.stop_reason == "end_turn"


async def test_sdk_stop_sequence_and_max_tokens(client: anthropic.AsyncAnthropic) -> None:
    stopped = await client.messages.create(
        model=MODEL, max_tokens=100, stop_sequences=["END", "said"], messages=user("a b")
    )
    assert stopped.content[0].type == "text"
    assert stopped.content[0].text == "You "
    assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "said")
    cut = await client.messages.create(model=MODEL, max_tokens=3, messages=user("a b c d e"))
    assert cut.content[0].type == "text"
    assert cut.content[0].text == "You said: a"
    assert (cut.stop_reason, cut.usage.output_tokens) == ("max_tokens", 3)


async def test_edge_answers(raw: httpx.AsyncClient) -> None:
    # A stop sequence at the very start leaves no text: no content block at all.
    stopped = await raw.post(MESSAGES_PATH, json=body(stop_sequences=["You"]), headers=HEADERS)
    assert stopped.json()["content"] == []
    assert stopped.json()["stop_sequence"] == "You"
    # Only an assistant turn (a prefill): there is no user text to echo.
    prefill = {**body(), "messages": [{"role": "assistant", "content": "Sure"}]}
    answer = await raw.post(MESSAGES_PATH, json=prefill, headers=HEADERS)
    assert answer.json()["content"] == [{"type": "text", "text": "You said: "}]


async def test_sdk_refusal(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    mock.faults.next(Fault.content_filter(), Fault.content_filter())
    refused = await client.messages.create(model=MODEL, max_tokens=100, messages=user("x"))
    assert (refused.stop_reason, refused.content) == ("refusal", [])
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=user("x")) as stream:
        final = await stream.get_final_message()
    assert (final.stop_reason, final.content) == ("refusal", [])


async def test_sdk_typed_errors(mock: AnthropicMock, client: anthropic.AsyncAnthropic) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock.url, api_key="wrong", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as denied:
            await bad.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert denied.value.status_code == 401
    assert denied.value.type == "authentication_error"
    assert denied.value.api_message == "invalid x-api-key"
    assert denied.value.request_id is not None
    assert denied.value.request_id.startswith("req_01")

    mock.faults.next(Fault.rate_limit(0.02))
    with pytest.raises(anthropic.RateLimitError) as limited:
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.type == "rate_limit_error"

    mock.faults.next(Fault.overloaded())
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert overloaded.value.status_code == 529
    assert overloaded.value.type == "overloaded_error"

    mock.faults.next(Fault.server_error(500))
    with pytest.raises(anthropic.InternalServerError) as broken:
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert (broken.value.status_code, broken.value.type) == (500, "api_error")

    mock.faults.next(Fault.context_length())
    with pytest.raises(anthropic.BadRequestError) as too_long:
        await client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert too_long.value.api_message == (
        f"prompt is too long: {MAX_CONTEXT_TOKENS + 1} tokens > {MAX_CONTEXT_TOKENS} maximum"
    )


async def test_sdk_sees_the_error_event_mid_stream(client: anthropic.AsyncAnthropic) -> None:
    received: list[str] = []

    async def read() -> None:
        async with client.messages.stream(
            model=MODEL,
            max_tokens=100,
            messages=user("one two three"),
            extra_headers={FAULT_HEADER: "overloaded;after_chunks=4"},
        ) as stream:
            async for text in stream.text_stream:
                received.append(text)  # noqa: PERF401 - kept when the stream fails

    with pytest.raises(anthropic.APIStatusError) as failed:
        await read()
    assert received == ["You sa"]
    assert failed.value.type == "overloaded_error"


async def test_sdk_through_the_fault_header(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APITimeoutError):
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=user("x"),
            extra_headers={FAULT_HEADER: "stall;after_chunks=1"},
            timeout=anthropic.Timeout(2.0, read=0.05),  # connecting may be slow; reading not
        )
    with pytest.raises(anthropic.APIConnectionError):
        await client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=user("x"),
            extra_headers={FAULT_HEADER: "reset;after_chunks=0"},
        )
    ok = await client.messages.create(model=MODEL, max_tokens=10, messages=user("x"))
    assert ok.stop_reason == "end_turn"


# ---------------------------------------------------------------- the wire


async def test_answer_headers_and_message_shape(raw: httpx.AsyncClient) -> None:
    response = await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert re.fullmatch(r"req_01\d{22}", response.headers["request-id"])
    assert response.headers["anthropic-organization-id"] == ORGANIZATION_ID
    assert response.headers["anthropic-ratelimit-requests-limit"] == "50"
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", response.headers["anthropic-ratelimit-tokens-reset"]
    )
    document = response.json()
    assert set(document) == {
        "id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"
    }  # fmt: skip
    assert document["usage"] == {
        "input_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 4,
    }


async def test_stream_events_in_order(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.reply = ReplyScript(text="alpha beta", chunks=2)
    response = await raw.post(MESSAGES_PATH, json=body(stream=True), headers=HEADERS)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["transfer-encoding"] == "chunked"
    found = events(response.content)
    assert [name for name, _ in found] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    documents = [orjson.loads(data) for _, data in found]
    assert [d["type"] for d in documents] == [name for name, _ in found]
    start = documents[0]["message"]
    assert (start["content"], start["stop_reason"]) == ([], None)
    assert start["usage"] == {
        "input_tokens": 2,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    assert documents[2] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [d["delta"] for d in documents[3:5]] == [
        {"type": "text_delta", "text": "alpha"},
        {"type": "text_delta", "text": " beta"},
    ]
    assert documents[6] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 2},
    }


async def test_tool_use_stream_sends_json_fragments(
    mock: AnthropicMock, raw: httpx.AsyncClient
) -> None:
    mock.reply = ReplyScript(
        chunks=3, tool_calls=[ScriptedToolCall("get_weather", {"city": "Oslo"})]
    )
    request = body(stream=True, tools=[WEATHER])
    found = [
        orjson.loads(d)
        for _, d in events((await raw.post(MESSAGES_PATH, json=request, headers=HEADERS)).content)
    ]
    start = found[2]["content_block"]
    assert (start["type"], start["name"], start["input"]) == ("tool_use", "get_weather", {})
    fragments = [d["delta"]["partial_json"] for d in found if d["type"] == "content_block_delta"]
    assert len(fragments) == 3
    assert orjson.loads("".join(fragments)) == {"city": "Oslo"}
    assert found[-2]["delta"]["stop_reason"] == "tool_use"


AUTH = "authentication_error"
INVALID = "invalid_request_error"
NO_KEY = "x-api-key header is required"


@pytest.mark.parametrize(
    ("headers", "status", "kind", "message"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, AUTH, NO_KEY),
        ({**HEADERS, "x-api-key": "nope"}, 401, AUTH, "invalid x-api-key"),
        ({"authorization": "Basic abc", "anthropic-version": "1"}, 401, AUTH, NO_KEY),
        ({"x-api-key": KEY}, 400, INVALID, "anthropic-version: header is required"),
        ({**HEADERS, FAULT_HEADER: "meteor"}, 400, INVALID, None),
        ({**HEADERS, FAULT_HEADER: "unauthorized"}, 401, AUTH, "invalid x-api-key"),
    ],
)
async def test_header_checks(
    raw: httpx.AsyncClient,
    headers: dict[str, str],
    status: int,
    kind: str,
    message: str | None,
) -> None:
    response = await raw.post(MESSAGES_PATH, json=body(), headers=headers)
    assert response.status_code == status
    document = response.json()
    assert document["type"] == "error"
    assert document["error"]["type"] == kind
    if message is not None:
        assert document["error"]["message"] == message
    assert document["request_id"] == response.headers["request-id"]


async def test_bearer_key_and_route(raw: httpx.AsyncClient) -> None:
    bearer = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    assert (await raw.post(MESSAGES_PATH, json=body(), headers=bearer)).status_code == 200
    missing = await raw.get(MESSAGES_PATH, headers=HEADERS)
    assert missing.status_code == 404
    assert missing.json()["error"] == {"type": "not_found_error", "message": "Not Found"}
    assert (await raw.post("/v1/complete", json=body(), headers=HEADERS)).status_code == 404


def call(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "get_weather", "input": {}}


def result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "ok"}


def conversation(*messages: dict[str, Any]) -> dict[str, Any]:
    return {**body(), "messages": list(messages)}


def said(role: str, content: Any) -> dict[str, Any]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "There was an error parsing the body as JSON"),
        (b"[1]", "body: Input should be a valid dictionary"),
        ({"model": MODEL, "messages": user("x")}, "max_tokens: Field required"),
        ({**body(), "model": 7}, "model: Input should be a valid string"),
        ({**body(), "max_tokens": 0}, "max_tokens: Input should be greater than or equal to 1"),
        ({**body(), "temperature": 1.5}, "temperature: Input should be less than or equal to 1"),
        ({**body(), "stream": "yes"}, "stream: Input should be a valid boolean"),
        (conversation(), "messages: at least one message is required"),
        (conversation(said("system", "x")), "messages.0.role: Input should be 'user'"),
        (conversation(said("user", "")), "messages.0: all messages must have non-empty content"),
        (conversation(said("user", ["x"])), "messages.0.content: Input should be a valid list"),
        (
            conversation(said("user", [{"type": "text", "text": ""}])),
            "messages: text content blocks must be non-empty",
        ),
        (
            conversation(said("user", [result("toolu_x")])),
            "messages.0.content: unexpected `tool_use_id` found in `tool_result` blocks: toolu_x",
        ),
        (
            conversation(
                said("user", "x"), said("assistant", [call("toolu_a")]), said("user", "y")
            ),
            "messages.1: `tool_use` ids were found without `tool_result` blocks immediately "
            "after: toolu_a",
        ),
        ({**body(), "tools": [{"input_schema": {}}]}, "tools: each tool needs a name"),
        ({**body(), "tools": [WEATHER], "tool_choice": {"type": "maybe"}}, "tool_choice: Input"),
        (
            {**body(), "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "other"}},
            "tool_choice: tool 'other' is not among the tools",
        ),
    ],
)
async def test_request_validation(raw: httpx.AsyncClient, payload: Any, message: str) -> None:
    content = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    response = await raw.post(MESSAGES_PATH, content=content, headers=HEADERS)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


async def test_a_full_tool_conversation_is_valid(raw: httpx.AsyncClient) -> None:
    conversation = [
        *user("x"),
        {"role": "assistant", "content": [{"type": "text", "text": "let me see"}, call("toolu_a")]},
        {"role": "user", "content": [result("toolu_a"), {"type": "text", "text": "and?"}]},
        {"role": "assistant", "content": [call("toolu_b")]},
    ]
    payload = {
        **body(),
        "system": [{"type": "text", "text": "sys prompt"}],
        "messages": conversation,
    }
    response = await raw.post(MESSAGES_PATH, json=payload, headers=HEADERS)
    assert response.status_code == 200
    # system (2) + "x" + "let me see" (3) + "ok" + "and?"
    assert response.json()["usage"]["input_tokens"] == 8


async def test_rate_limit_on_the_wire(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.rate_limit(0.02), Fault.rate_limit(3))
    fast = await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)
    assert fast.status_code == 429
    assert fast.json()["error"]["type"] == "rate_limit_error"
    assert (fast.headers["retry-after"], fast.headers["retry-after-ms"]) == ("1", "20")
    for name in ("requests", "tokens", "input-tokens", "output-tokens"):
        assert fast.headers[f"anthropic-ratelimit-{name}-remaining"] == "0"
    whole = await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)
    assert whole.headers["retry-after"] == "3"
    assert "retry-after-ms" not in whole.headers


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [
        (Fault.server_error(), 503, "api_error"),
        (Fault.server_error(502), 502, "api_error"),
        (Fault.server_error(529), 529, "overloaded_error"),
        (Fault.overloaded(), 529, "overloaded_error"),
        (Fault.context_length(), 400, "invalid_request_error"),
        (Fault.unauthorized(), 401, "authentication_error"),
    ],
)
async def test_error_faults_on_the_wire(
    mock: AnthropicMock, raw: httpx.AsyncClient, fault: Fault, status: int, kind: str
) -> None:
    # A stream request gets the same answer, before any event; except for overload, which
    # a stream reports in-band (the next test).
    streams = (False,) if fault.kind is FaultKind.OVERLOADED else (False, True)
    for stream in streams:
        mock.faults.next(fault)
        response = await raw.post(MESSAGES_PATH, json=body(stream=stream), headers=HEADERS)
        assert response.status_code == status
        assert response.headers["content-type"] == "application/json"
        assert response.json()["error"]["type"] == kind


async def test_overload_mid_stream_is_an_error_event(
    mock: AnthropicMock, raw: httpx.AsyncClient
) -> None:
    mock.faults.next(Fault(FaultKind.OVERLOADED, after_chunks=1))
    response = await raw.post(MESSAGES_PATH, json=body(stream=True), headers=HEADERS)
    assert response.status_code == 200
    found = events(response.content)
    assert [name for name, _ in found] == ["message_start", "error"]
    error = orjson.loads(found[1][1])
    assert error["type"] == "error"
    assert error["error"] == {"type": "overloaded_error", "message": "Overloaded"}


async def test_refusal_on_the_wire(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.content_filter())
    found = events((await raw.post(MESSAGES_PATH, json=body(stream=True), headers=HEADERS)).content)
    assert [name for name, _ in found] == ["message_start", "ping", "message_delta", "message_stop"]
    assert orjson.loads(found[2][1])["delta"]["stop_reason"] == "refusal"


async def test_malformed_event_and_body(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.malformed_chunk(3), Fault.malformed_chunk(99), Fault.malformed_chunk())
    found = events((await raw.post(MESSAGES_PATH, json=body(stream=True), headers=HEADERS)).content)
    assert found[3][0] == "content_block_delta"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(found[3][1])
    for _, data in found[:3] + found[4:]:
        orjson.loads(data)  # only that one is broken
    last = events((await raw.post(MESSAGES_PATH, json=body(stream=True), headers=HEADERS)).content)
    assert last[-1][0] == "message_stop"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(last[-1][1])
    unary = await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)
    assert unary.status_code == 200
    assert unary.content.startswith(b'{"id":"msg_01')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(unary.content)


def read_within(seconds: float) -> httpx.Timeout:
    """A short wait for the answer only: a loaded machine may be slow to connect."""
    return httpx.Timeout(2.0, read=seconds)


async def test_slow_first_byte(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.slow_first_byte(0.05))
    with pytest.raises(httpx.ReadTimeout):
        await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS, timeout=read_within(0.01))
    [abort] = await mock.server.wait_client_aborts(1)
    assert abort.chunks_sent == 0
    assert (await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)).status_code == 200


async def read_stream(
    raw: httpx.AsyncClient, timeout: httpx.Timeout | float = 2.0
) -> tuple[bytes, httpx.HTTPError]:
    """What a stream sent before it failed, and how it failed."""
    received = b""
    try:
        async with raw.stream(
            "POST", MESSAGES_PATH, json=body(stream=True), headers=HEADERS, timeout=timeout
        ) as response:
            assert response.status_code == 200
            async for data in response.aiter_bytes():
                received += data
    except httpx.HTTPError as failure:
        return received, failure
    raise AssertionError("the stream did not fail")


async def test_stall_mid_stream(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.stall(after_chunks=2))
    received, failure = await read_stream(raw, timeout=read_within(0.05))
    assert isinstance(failure, httpx.ReadTimeout)
    assert [name for name, _ in events(received)] == ["message_start", "ping"]
    [abort] = await mock.server.wait_client_aborts(1)
    assert abort.chunks_sent == 2


async def test_reset_mid_stream(mock: AnthropicMock, raw: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.reset(after_chunks=3))
    received, failure = await read_stream(raw)
    assert isinstance(failure, httpx.TransportError)
    assert [name for name, _ in events(received)] == [
        "message_start",
        "ping",
        "content_block_start",
    ]


@pytest.mark.parametrize("after", [0, 1, 5])
async def test_unary_body_cut_short(
    mock: AnthropicMock, raw: httpx.AsyncClient, after: int
) -> None:
    mock.faults.next(Fault.stall(after_chunks=after))
    with pytest.raises(httpx.ReadTimeout):
        await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS, timeout=read_within(0.05))
    mock.faults.next(Fault.reset(after_chunks=after))
    with pytest.raises(httpx.TransportError):
        await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)


async def test_faults_by_key_and_scripted_routes_first(
    mock: AnthropicMock, raw: httpx.AsyncClient
) -> None:
    mock.faults.for_key(KEY, Fault.overloaded(), times=2)
    statuses = [
        (await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)).status_code for _ in range(3)
    ]
    assert statuses == [529, 529, 200]
    mock.server.script("POST", MESSAGES_PATH, ScriptedResponse.json({"custom": True}))
    assert (await raw.post(MESSAGES_PATH, json=body(), headers=HEADERS)).json() == {"custom": True}
    assert len(mock.requests) == 4


async def test_start_and_stop_outside_a_context() -> None:
    mock = AnthropicMock(reply=ReplyScript(text="fixed"))
    await mock.start()
    try:
        async with anthropic.AsyncAnthropic(base_url=mock.url, api_key="any", max_retries=0) as sdk:
            message = await sdk.messages.create(model=MODEL, max_tokens=5, messages=user("x"))
        assert message.content[0].type == "text"
        assert message.content[0].text == "fixed"
        assert mock.faults.valid_keys is None
    finally:
        await mock.stop()
