"""The OpenAI / Azure OpenAI mock: the official SDK as its client (fidelity), then every
fault and every checked request on the raw wire."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
    count_tokens,
)
from rakka_inference.testkit.mock_openai import (
    DEFAULT_MODELS,
    OpenAIMock,
    embedding_vector,
    mask_key,
)

KEY = "sk-mock-test-key-0001"
AZURE_KEY = "azure-key-00000000002"
API_VERSION = "2024-10-21"
AZURE_CHAT = f"/openai/deployments/gpt4o/chat/completions?api-version={API_VERSION}"
WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object"}},
}
TOOL_REPLY = ReplyScript(
    chunks=3,
    tool_calls=(
        ScriptedToolCall("get_weather", {"city": "Paris"}),
        ScriptedToolCall("get_time", {"zone": "CET"}),
    ),
)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={KEY, AZURE_KEY}), clock=lambda: 1_700_000_000
    ) as m:
        yield m


@pytest.fixture
async def client(mock: OpenAIMock) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=KEY, max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def azure(mock: OpenAIMock) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    sdk = openai.AsyncAzureOpenAI(
        azure_endpoint=mock.url, api_key=AZURE_KEY, api_version=API_VERSION, max_retries=0
    )
    yield sdk
    await sdk.close()


@pytest.fixture
async def http(mock: OpenAIMock) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=mock.url, headers={"authorization": f"Bearer {KEY}"}, timeout=2
    ) as raw:
        yield raw


def user(text: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": text}]


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    calls = message.tool_calls or []
    assert all(isinstance(call, ChatCompletionMessageFunctionToolCall) for call in calls)
    return [call for call in calls if isinstance(call, ChatCompletionMessageFunctionToolCall)]


def chat_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": user(text), **extra}


def sse(body: bytes) -> list[bytes]:
    """The data of each SSE event in ``body``."""
    return [event.removeprefix(b"data: ") for event in body.split(b"\n\n") if event]


async def read_until_broken(
    http: httpx.AsyncClient, body: dict[str, Any], fault: str, **kw: Any
) -> tuple[int, bytes, BaseException | None]:
    """Stream a request with ``fault``; the status, what arrived, and how it ended."""
    received = b""
    async with http.stream(
        "POST", "/v1/chat/completions", json=body, headers={FAULT_HEADER: fault}, **kw
    ) as response:
        try:
            async for data in response.aiter_raw():
                received += data
        except httpx.HTTPError as failure:
            return response.status_code, received, failure
    return response.status_code, received, None


# ---------------------------------------------------------------- the SDK: happy paths


async def test_sdk_chat(client: openai.AsyncOpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": "Be brief."},
        *user("hello there"),
    ]
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=messages,
    )
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert (completion.model, completion.created) == ("gpt-4o", 1_700_000_000)
    [choice] = completion.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "You said: hello there"
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens == count_tokens(["Be brief.", "hello there"]) == 4
    assert usage.completion_tokens == count_tokens(["You said: hello there"]) == 4
    assert usage.total_tokens == 8
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-ratelimit-remaining-requests"] == "9999"
    assert raw.headers["x-ratelimit-limit-tokens"] == "30000000"


async def test_sdk_stream_with_usage(mock: OpenAIMock, client: openai.AsyncOpenAI) -> None:
    mock.reply = ReplyScript(text="one two three four", chunks=3, chunk_delay_s=0.005)
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("count"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:4]]
    assert pieces == ["one tw", "o thre", "e four"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (1, 4)
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_a_stream_without_include_usage_has_no_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("hi"),
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.choices for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "You said: hi"


async def test_sdk_tool_call_exchange(mock: OpenAIMock, client: openai.AsyncOpenAI) -> None:
    mock.reply = ReplyScript(tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),))
    messages: list[Any] = user("weather in Paris?")
    first = await client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=[WEATHER],
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = function_calls(choice.message)
    assert call.id.startswith("call_")
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "Paris"}
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "22 C and sunny"})
    final = await client.chat.completions.create(
        model="gpt-4o",
        messages=messages,
        tools=[WEATHER],
    )
    assert final.choices[0].message.content == "You said: 22 C and sunny"
    assert final.choices[0].finish_reason == "stop"
    sent = mock.requests[-1].json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert final.usage is not None
    assert final.usage.prompt_tokens == count_tokens(
        ["weather in Paris?", '{"city":"Paris"}', "22 C and sunny"]
    )


async def test_sdk_parallel_tool_calls(mock: OpenAIMock, client: openai.AsyncOpenAI) -> None:
    mock.reply = TOOL_REPLY
    unary = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("both?"),
        tools=[WEATHER, TIME],
    )
    calls = function_calls(unary.choices[0].message)
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2
    # The same exchange streamed: headers per call, then argument fragments, by index.
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("both?"),
        tools=[WEATHER, TIME],
        stream=True,
    )
    built: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or ():
                entry = built.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                assert delta.function is not None
                entry["id"] += delta.id or ""
                entry["name"] += delta.function.name or ""
                entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert [built[i]["name"] for i in (0, 1)] == ["get_weather", "get_time"]
    assert orjson.loads(built[0]["arguments"]) == {"city": "Paris"}
    assert orjson.loads(built[1]["arguments"]) == {"zone": "CET"}
    assert all(entry["id"].startswith("call_") for entry in built.values())
    # Only one call when the request forbids parallel calls.
    single = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("both?"),
        tools=[WEATHER, TIME],
        parallel_tool_calls=False,
    )
    assert len(function_calls(single.choices[0].message)) == 1


@pytest.mark.parametrize(
    ("tool_choice", "reply", "names", "finish"),
    [
        ("none", TOOL_REPLY, [], "stop"),
        ("required", ReplyScript(), ["get_weather"], "tool_calls"),
        (
            {"type": "function", "function": {"name": "get_time"}},
            ReplyScript(),
            ["get_time"],
            "stop",
        ),
        ({"type": "function", "function": {"name": "get_time"}}, TOOL_REPLY, ["get_time"], "stop"),
        ("auto", ReplyScript(), [], "stop"),
    ],
)
async def test_tool_choice(
    mock: OpenAIMock,
    client: openai.AsyncOpenAI,
    tool_choice: Any,
    reply: ReplyScript,
    names: list[str],
    finish: str,
) -> None:
    mock.reply = reply
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("go"),
        tools=[WEATHER, TIME],
        tool_choice=tool_choice,
    )
    choice = completion.choices[0]
    calls = function_calls(choice.message)
    assert [c.function.name for c in calls] == names
    assert choice.finish_reason == finish
    if names and reply is not TOOL_REPLY:
        assert calls[0].function.arguments == "{}"


async def test_max_tokens_cuts_the_answer(mock: OpenAIMock, client: openai.AsyncOpenAI) -> None:
    mock.reply = ReplyScript(text="a b c d e f")
    completion = await client.chat.completions.create(
        model="gpt-4o",
        messages=user("x"),
        max_completion_tokens=3,
    )
    assert completion.choices[0].message.content == "a b c"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


async def test_sdk_embeddings_and_models(client: openai.AsyncOpenAI) -> None:
    packed = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b c"])
    assert [e.embedding for e in packed.data] == [embedding_vector("a"), embedding_vector("b c")]
    assert packed.usage.prompt_tokens == packed.usage.total_tokens == 3
    floats = await client.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="float", dimensions=4
    )
    assert floats.data[0].embedding == embedding_vector("a", 4)
    assert sum(v * v for v in embedding_vector("a", 4)) == pytest.approx(1.0, rel=1e-6)
    tokens = await client.embeddings.create(model="text-embedding-3-small", input=[[1, 2], [3]])
    assert [e.index for e in tokens.data] == [0, 1]
    listed = [model.id async for model in client.models.list()]
    assert listed == ["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"]
    assert (await client.models.retrieve("gpt-4o-mini")).owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


async def test_sdk_azure(mock: OpenAIMock, azure: openai.AsyncAzureOpenAI) -> None:
    completion = await azure.chat.completions.create(model="gpt4o", messages=user("hi"))
    assert completion.choices[0].message.content == "You said: hi"
    assert completion.model == "gpt4o"
    sent = mock.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o/chat/completions"
    assert sent.query == f"api-version={API_VERSION}"
    assert sent.headers["api-key"] == AZURE_KEY
    stream = await azure.chat.completions.create(
        model="gpt4o",
        messages=user("hi"),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices == []  # Azure's prompt_filter_results chunk comes first
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "You said: hi"
    )
    assert chunks[-1].usage is not None
    vectors = await azure.embeddings.create(model="emb", input="a", encoding_format="float")
    assert vectors.data[0].embedding == embedding_vector("a")


# ---------------------------------------------------------------- the SDK: errors


async def test_sdk_wrong_key_gets_the_real_401(mock: OpenAIMock) -> None:
    wrong = "sk-wrong-key-9999"
    sdk = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=wrong, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk.chat.completions.create(model="gpt-4o", messages=user("hi"))
    await sdk.close()
    error = caught.value
    assert error.status_code == 401
    assert error.code == "invalid_api_key"
    assert error.type == "invalid_request_error"
    assert error.message.startswith("Error code: 401")
    assert f"Incorrect API key provided: {mask_key(wrong)}." in str(error)
    assert wrong not in str(error)
    assert wrong not in error.response.text


async def test_sdk_rate_limit_bad_request_and_server_errors(client: openai.AsyncOpenAI) -> None:
    def fault(value: str) -> dict[str, str]:
        return {FAULT_HEADER: value}

    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=user("hi"),
            extra_headers=fault("rate_limit;retry_after=0.02"),
        )
    assert limited.value.code == "rate_limit_exceeded"
    assert limited.value.type == "requests"
    assert limited.value.response.headers["retry-after-ms"] == "20"
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=user("hi"),
            extra_headers=fault("context_length"),
        )
    assert too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as filtered:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=user("hi"),
            extra_headers=fault("content_filter"),
        )
    assert filtered.value.code == "content_filter"
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(
            model="gpt-4o",
            messages=user("hi"),
            extra_headers=fault("server_error;status=500"),
        )
    assert broken.value.status_code == 500
    assert broken.value.type == "server_error"


async def test_sdk_azure_errors(mock: OpenAIMock, azure: openai.AsyncAzureOpenAI) -> None:
    mock.faults.next(Fault.content_filter(), Fault.rate_limit(0.5))
    with pytest.raises(openai.BadRequestError) as filtered:
        await azure.chat.completions.create(model="gpt4o", messages=user("hi"))
    body = filtered.value.body
    assert isinstance(body, dict)
    assert body["code"] == "content_filter"
    assert body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert body["innererror"]["content_filter_result"]["violence"]["filtered"] is True
    with pytest.raises(openai.RateLimitError) as limited:
        await azure.chat.completions.create(model="gpt4o", messages=user("hi"))
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["retry-after-ms"] == "500"
    wrong = openai.AsyncAzureOpenAI(
        azure_endpoint=mock.url, api_key="nope-nope-nope", api_version=API_VERSION, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        await wrong.chat.completions.create(model="gpt4o", messages=user("hi"))
    await wrong.close()
    assert "Access denied" in str(denied.value)
    assert "nope-nope-nope" not in str(denied.value)


async def test_rotated_key(mock: OpenAIMock, client: openai.AsyncOpenAI) -> None:
    mock.faults.rotate_key(KEY, "sk-rotated-key-0002")
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    rotated = client.with_options(api_key="sk-rotated-key-0002")
    completion = await rotated.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert completion.choices[0].message.content == "You said: hi"


# ---------------------------------------------------------------- faults on the wire


async def test_rate_limit_on_the_wire(mock: OpenAIMock, http: httpx.AsyncClient) -> None:
    mock.faults.next(Fault.rate_limit(0.25), Fault.rate_limit(90.5))
    response = await http.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 429
    headers = response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "250")
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "10000"
    assert headers["x-ratelimit-reset-requests"] == "250ms"
    assert headers["x-ratelimit-reset-tokens"] == "6ms"
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "requests",
        "rate_limit_exceeded",
        None,
    )
    assert "Rate limit reached for gpt-4o" in error["message"]
    assert "Please try again in 250ms." in error["message"]
    longer = await http.post("/v1/chat/completions", json=chat_body())
    assert longer.headers["retry-after"] == "91"
    assert longer.headers["x-ratelimit-reset-requests"] == "1m30.5s"
    azure_fault = {"api-key": AZURE_KEY, FAULT_HEADER: "rate_limit;retry_after=2"}
    azure = await http.post(AZURE_CHAT, json=chat_body(), headers=azure_fault)
    assert azure.status_code == 429
    assert azure.json()["error"]["code"] == "429"
    assert (azure.headers["retry-after"], azure.headers["retry-after-ms"]) == ("2", "2000")


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [
        ("server_error", 503, "The server had an error"),
        ("server_error;status=502", 502, "The server had an error"),
        ("overloaded", 503, "currently overloaded"),
    ],
)
async def test_server_errors_on_the_wire(
    http: httpx.AsyncClient, fault: str, status: int, words: str
) -> None:
    response = await http.post(
        "/v1/chat/completions", json=chat_body(), headers={FAULT_HEADER: fault}
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert words in error["message"]


async def test_refusals_on_the_wire(http: httpx.AsyncClient) -> None:
    context = await http.post(
        "/v1/chat/completions", json=chat_body("a b c"), headers={FAULT_HEADER: "context_length"}
    )
    assert context.status_code == 400
    error = context.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded",
        "messages",
        "invalid_request_error",
    )
    assert "resulted in 128003 tokens" in error["message"]
    garbled = await http.post(
        "/v1/chat/completions", content=b"{", headers={FAULT_HEADER: "context_length"}
    )
    assert garbled.json()["error"]["code"] == "context_length_exceeded"  # the fault comes first
    filtered = await http.post(
        "/v1/chat/completions", json=chat_body(), headers={FAULT_HEADER: "content_filter"}
    )
    assert filtered.status_code == 400
    assert filtered.json()["error"]["code"] == "content_filter"
    assert "innererror" not in filtered.json()["error"]
    denied = await http.post(
        "/v1/chat/completions", json=chat_body(), headers={FAULT_HEADER: "unauthorized"}
    )
    assert denied.status_code == 401
    assert denied.json() == {
        "error": {
            "message": f"Incorrect API key provided: {mask_key(KEY)}. You can find your API "
            "key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert KEY not in denied.text


async def test_missing_and_azure_keys(mock: OpenAIMock, http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as anonymous:
        missing = await anonymous.post("/v1/chat/completions", json=chat_body())
        assert missing.status_code == 401
        assert missing.json()["error"]["message"].startswith("You didn't provide an API key.")
        assert missing.json()["error"]["code"] is None
        basic = await anonymous.get("/v1/models", headers={"authorization": "Basic abc"})
        assert basic.status_code == 401
        azure_bearer = await anonymous.post(
            AZURE_CHAT, json=chat_body(), headers={"authorization": f"Bearer {AZURE_KEY}"}
        )
        assert azure_bearer.status_code == 200  # an Entra ID token works like a key
        azure_fault = await anonymous.post(
            AZURE_CHAT,
            json=chat_body(),
            headers={"api-key": AZURE_KEY, FAULT_HEADER: "unauthorized"},
        )
        assert azure_fault.status_code == 401
        assert azure_fault.json()["error"]["code"] == "401"
    assert mask_key("short") == "*****"
    assert mask_key("sk-abcdefghijkl") == "sk-********ijkl"


async def test_faults_by_key_and_in_order(mock: OpenAIMock, http: httpx.AsyncClient) -> None:
    mock.faults.for_key(KEY, Fault.overloaded(), times=1)
    assert (await http.get("/v1/models")).status_code == 503
    assert (await http.get("/v1/models")).status_code == 200
    bad = await http.get("/v1/models", headers={FAULT_HEADER: "meteor"})
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == FAULT_HEADER


async def test_slow_first_byte(http: httpx.AsyncClient) -> None:
    slow = {FAULT_HEADER: "slow_first_byte;delay=0.05"}
    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            "/v1/chat/completions",
            json=chat_body(),
            headers=slow,
            timeout=httpx.Timeout(2, read=0.01),
        )
    patient = await http.post("/v1/chat/completions", json=chat_body(), headers=slow)
    assert patient.json()["choices"][0]["message"]["content"] == "You said: hello there"


async def test_stall_mid_stream(mock: OpenAIMock, http: httpx.AsyncClient) -> None:
    status, received, failure = await read_until_broken(
        http, chat_body(stream=True), "stall;after_chunks=2", timeout=httpx.Timeout(2, read=0.05)
    )
    assert status == 200
    assert isinstance(failure, httpx.ReadTimeout)
    events = [orjson.loads(event) for event in sse(received)]
    assert len(events) == 2
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[1]["choices"][0]["delta"]["content"] == "You sa"
    [abort] = await mock.server.wait_client_aborts(1)
    assert abort.chunks_sent == 2


async def test_reset_mid_stream(http: httpx.AsyncClient) -> None:
    status, received, failure = await read_until_broken(
        http, chat_body(stream=True), "reset;after_chunks=3"
    )
    assert status == 200
    assert isinstance(failure, httpx.ReadError | httpx.RemoteProtocolError)
    assert len(sse(received)) == 3


async def test_stall_and_reset_on_unary_answers(http: httpx.AsyncClient) -> None:
    status, received, failure = await read_until_broken(
        http, chat_body(), "stall", timeout=httpx.Timeout(2, read=0.05)
    )
    assert (status, received, type(failure)) == (200, b"", httpx.ReadTimeout)
    status, received, failure = await read_until_broken(http, chat_body(), "reset;after_chunks=5")
    assert (status, received) == (200, b"")
    assert isinstance(failure, httpx.ReadError | httpx.RemoteProtocolError)


async def test_malformed_chunk(http: httpx.AsyncClient) -> None:
    headers = {FAULT_HEADER: "malformed_chunk;after_chunks=1"}
    streamed = await http.post("/v1/chat/completions", json=chat_body(stream=True), headers=headers)
    events = sse(streamed.content)
    assert events[1] == b'{"choices": ['
    assert orjson.loads(events[2])["choices"][0]["delta"]["content"] == "id: h"
    assert events[-1] == b"[DONE]"
    past_the_end = {FAULT_HEADER: "malformed_chunk;after_chunks=99"}
    last = await http.post(
        "/v1/chat/completions", json=chat_body(stream=True), headers=past_the_end
    )
    assert sse(last.content)[-1] == b'{"choices": ['
    unary = await http.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert unary.status_code == 200
    assert unary.content == b'{"choices": ['


async def test_stream_layout_and_delays(mock: OpenAIMock, http: httpx.AsyncClient) -> None:
    mock.reply = ReplyScript(text="abcd", chunks=2, chunk_delay_s=0.01)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse(response.content)
    assert events[-1] == b"[DONE]"
    documents = [orjson.loads(event) for event in events[:-1]]
    deltas = [d["choices"][0]["delta"] for d in documents if d["choices"]]
    assert deltas == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "ab"},
        {"content": "cd"},
        {},
    ]
    assert all("usage" in d for d in documents)
    assert documents[-1]["usage"]["total_tokens"] == 3
    azure = await http.post(AZURE_CHAT, json=body, headers={"api-key": AZURE_KEY})
    first = orjson.loads(sse(azure.content)[0])
    assert first["choices"] == []
    assert first["prompt_filter_results"][0]["prompt_index"] == 0


async def test_azure_names_the_model_by_its_deployment(http: httpx.AsyncClient) -> None:
    parts = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "x"}}]
    response = await http.post(
        AZURE_CHAT,
        json={"messages": [{"role": "user", "content": parts}]},
        headers={"api-key": AZURE_KEY},
    )
    document = response.json()
    assert document["model"] == "gpt4o"
    assert document["choices"][0]["message"]["content"] == "You said: look"
    assert document["prompt_filter_results"][0]["content_filter_results"]["hate"] == {
        "filtered": False,
        "severity": "safe",
    }
    assert response.headers["apim-request-id"]
    limited = await http.post(
        AZURE_CHAT,
        json=chat_body(),
        headers={"api-key": AZURE_KEY, FAULT_HEADER: "rate_limit;retry_after=0.5"},
    )
    assert f"API version {API_VERSION} have exceeded" in limited.json()["error"]["message"]
    tokens = await http.post("/v1/embeddings", json={"model": "e", "input": [1, 2, 3]})
    assert tokens.json()["data"][0]["embedding"] == embedding_vector("1 2 3")


# ---------------------------------------------------------------- requests the real API refuses


@pytest.mark.parametrize(
    ("body", "param", "code", "words"),
    [
        (b"not json", None, None, "We could not parse the JSON body"),
        (b"[1]", None, None, "We could not parse the JSON body"),
        ({"messages": user("hi")}, None, None, "you must provide a model parameter"),
        ({"model": "gpt-4o"}, "messages", "missing_required_parameter", "Missing required"),
        ({"model": "gpt-4o", "messages": "hi"}, "messages", "invalid_type", "Invalid type"),
        ({"model": "gpt-4o", "messages": []}, "messages", "empty_array", "empty array"),
        (
            {"model": "gpt-4o", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
            "Invalid value: 'robot'",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "tool", "tool_call_id": "c", "content": ""}]},
            "messages.[0].role",
            None,
            "must be a response to a preceeding message",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "call_1"}]},
                    {"role": "tool", "tool_call_id": "call_2", "content": "x"},
                ],
            },
            "messages.[1].tool_call_id",
            None,
            "'tool_call_id' of 'call_2' not found",
        ),
        (
            {
                "model": "gpt-4o",
                "messages": [
                    {"role": "assistant", "tool_calls": [{"id": "call_1"}, {"id": "call_2"}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                    {"role": "user", "content": "and?"},
                ],
            },
            "messages.[0].role",
            None,
            "did not have response messages: call_2",
        ),
        (
            {"model": "gpt-4o", "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
            "messages.[0].role",
            None,
            "did not have response messages: c",
        ),
        (
            {**chat_body(), "stream_options": {"include_usage": True}},
            "stream_options",
            None,
            "only allowed when 'stream' is enabled",
        ),
    ],
)
async def test_chat_requests_the_real_api_refuses(
    http: httpx.AsyncClient, body: Any, param: str | None, code: str | None, words: str
) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    response = await http.post("/v1/chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert words in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "e"}, "input"),
        ({"model": "e", "input": 3}, "input"),
        ({"model": "e", "input": []}, "input"),
        ({"model": "e", "input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x"}, None),
    ],
)
async def test_embedding_requests_the_real_api_refuses(
    http: httpx.AsyncClient, body: dict[str, Any], param: str | None
) -> None:
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_unknown_routes(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/completions", json={})
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    assert (await http.get("/v1/chat/completions")).status_code == 404
    azure = await http.post(
        "/openai/deployments/gpt4o/chat/completions",
        json=chat_body(),
        headers={"api-key": AZURE_KEY},
    )
    assert azure.status_code == 404  # no api-version
    assert azure.json() == {"error": {"code": "404", "message": "Resource not found"}}
    models = await http.get(
        f"/openai/models?api-version={API_VERSION}", headers={"api-key": AZURE_KEY}
    )
    assert [m["id"] for m in models.json()["data"]] == list(DEFAULT_MODELS)


# ---------------------------------------------------------------- outside pytest fixtures


async def test_start_and_stop_by_hand_and_determinism() -> None:
    answers = []
    for _ in range(2):
        mock = OpenAIMock(reply=TOOL_REPLY, clock=lambda: 42.0, models=["only"])
        await mock.start()
        try:
            async with httpx.AsyncClient(
                base_url=mock.openai_base_url, headers={"authorization": "Bearer any-key"}
            ) as raw:
                body = {**chat_body(), "tools": [WEATHER, TIME]}
                answers.append((await raw.post("/chat/completions", json=body)).json())
                assert [m["id"] for m in (await raw.get("/models")).json()["data"]] == ["only"]
        finally:
            await mock.stop()
    assert answers[0] == answers[1]  # the same requests, the same answers, ids included
    assert answers[0]["created"] == 42


def test_embedding_vectors_are_float32_exact() -> None:
    vector = embedding_vector("hello", 16)
    packed = struct.pack("<16f", *vector)
    assert list(struct.unpack("<16f", packed)) == vector
    assert base64.b64decode(base64.b64encode(packed)) == packed
    assert embedding_vector("hello", 16) == vector
    assert embedding_vector("hello!", 16) != vector
