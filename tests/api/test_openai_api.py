"""The OpenAI API edge: request JSON to core values, results to OpenAI JSON and SSE.

Request fixtures follow the examples of OpenAI's API reference (chat with an image, with
tools, a tool-result turn, structured outputs, streaming with usage). Rendered output is
checked by the official ``openai`` SDK's own response models, which proves its shape.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion as SdkCompletion
from openai.types.chat import ChatCompletionChunk

from rakka_inference.api.openai_embeddings import parse_embedding_request
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.api.openai_response import (
    ChunkRenderer,
    chat_completion_id,
    completion_json,
    embeddings_json,
    error_json,
)
from rakka_inference.core.errors import (
    BadRequest,
    CircuitOpen,
    InferenceError,
    PayloadTooLarge,
    RateLimitExceeded,
    ServerError,
    StreamInterrupted,
)
from rakka_inference.core.messages import EmbeddingResult, ImagePart, Role, TextPart
from rakka_inference.core.stream import (
    ChatCompletion,
    FinishReason,
    TokenChunk,
    ToolCallDelta,
    aggregate,
)
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolChoiceMode
from rakka_inference.core.usage import Usage

RID = "req_0123456789abcdef0123456789abcdef"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location"],
        },
    },
}


def parse(document: dict[str, Any]) -> Any:
    return parse_chat_request(orjson.dumps(document), request_id=RID)


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello!"}], **fields}


# --------------------------------------------------------------------------- requests


def test_default_chat_example() -> None:
    request = parse(
        {
            "model": "gpt-4o",
            "messages": [
                {"role": "developer", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Hello!", "name": "ada"},
            ],
        }
    )
    assert request.model == "gpt-4o"
    assert request.request_id == RID
    assert [m.role for m in request.messages] == [Role.DEVELOPER, Role.USER]
    assert request.messages[1].name == "ada"
    assert request.sampling.max_tokens is None
    assert not request.stream
    assert not request.include_usage


def test_image_input_example() -> None:
    request = parse(
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What's in this image?"},
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "https://upload.wikimedia.org/wikipedia/commons/thumb/dd/gfp.jpg",
                                "detail": "high",
                            },
                        },
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ],
            max_tokens=300,
        )
    )
    parts = request.messages[0].parts
    assert parts[0] == TextPart(text="What's in this image?")
    assert isinstance(parts[1], ImagePart)
    assert parts[1].detail == "high"
    assert isinstance(parts[2], ImagePart)
    assert parts[2].parse_data_url() == ("image/png", PNG)
    assert request.sampling.max_tokens == 300


def test_tools_example_and_tool_result_turn() -> None:
    request = parse(
        chat(
            messages=[
                {"role": "user", "content": "What's the weather like in Boston today?"},
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "annotations": [],
                    "tool_calls": [
                        {
                            "id": "call_abc123",
                            "type": "function",
                            "function": {
                                "name": "get_current_weather",
                                "arguments": '{"location": "Boston, MA"}',
                            },
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": "call_abc123",
                    "content": [{"type": "text", "text": '{"temperature": 22}'}],
                },
            ],
            tools=[
                WEATHER_TOOL,
                {"type": "function", "function": {"name": "noop", "strict": True}},
            ],
            tool_choice="auto",
            parallel_tool_calls=False,
        )
    )
    assistant = request.messages[1]
    assert assistant.content is None
    assert assistant.tool_calls == (
        ToolCall(
            id="call_abc123", name="get_current_weather", arguments='{"location": "Boston, MA"}'
        ),
    )
    assert request.messages[2].tool_call_id == "call_abc123"
    assert request.messages[2].text == '{"temperature": 22}'
    weather, noop = request.tools
    assert weather.name == "get_current_weather"
    assert weather.description == "Get the current weather in a given location"
    assert weather.parameters["required"] == ["location"]
    assert noop.parameters == {"type": "object", "properties": {}}
    assert noop.strict is True
    assert request.tool_choice == ToolChoice.auto()


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("none", ToolChoice.none()),
        ("required", ToolChoice.required()),
        (
            {"type": "function", "function": {"name": "get_current_weather"}},
            ToolChoice.named("get_current_weather"),
        ),
    ],
)
def test_tool_choice_forms(choice: object, expected: ToolChoice) -> None:
    assert parse(chat(tools=[WEATHER_TOOL], tool_choice=choice)).tool_choice == expected


def test_structured_outputs_example() -> None:
    schema = {
        "type": "object",
        "properties": {"steps": {"type": "array", "items": {"type": "string"}}},
        "required": ["steps"],
        "additionalProperties": False,
    }
    request = parse(
        chat(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "math_reasoning", "schema": schema, "strict": True},
            }
        )
    )
    fmt = request.response_format
    assert fmt is not None
    assert (fmt.type, fmt.schema_name, fmt.strict) == ("json_schema", "math_reasoning", True)
    assert fmt.json_schema == schema
    assert parse(chat(response_format={"type": "json_object"})).response_format is not None
    text = parse(chat(response_format={"type": "text"})).response_format
    assert text is not None
    assert text.type == "text"


def test_streaming_with_usage_and_sampling() -> None:
    request = parse(
        chat(
            stream=True,
            stream_options={"include_usage": True},
            temperature=0.2,
            top_p=1,
            max_tokens=512,
            max_completion_tokens=256,
            stop=["\n\n", "END"],
            seed=42,
            presence_penalty=-0.5,
            frequency_penalty=1.5,
            n=1,
            user="user-1234",
            metadata={"session": "s1"},
            logprobs=False,
            store=False,
            service_tier="auto",
            logit_bias={},
            modalities=["text"],
            top_logprobs=None,
        )
    )
    assert request.stream
    assert request.include_usage
    sampling = request.sampling
    assert (sampling.temperature, sampling.top_p, sampling.seed) == (0.2, 1.0, 42)
    assert sampling.max_tokens == 256  # the smaller of the two caps wins
    assert sampling.stop == ("\n\n", "END")
    assert (sampling.presence_penalty, sampling.frequency_penalty) == (-0.5, 1.5)
    assert request.user == "user-1234"
    assert request.metadata == {"session": "s1"}
    assert (sampling.n, sampling.logprobs, sampling.top_logprobs) == (1, False, None)


def test_choices_and_logprobs_reach_the_core_request() -> None:
    sampling = parse(chat(n=3, logprobs=True, top_logprobs=20)).sampling
    assert (sampling.n, sampling.logprobs, sampling.top_logprobs) == (3, True, 20)
    assert parse(chat(logprobs=True, top_logprobs=0)).sampling.top_logprobs == 0


def test_nulls_mean_absent_and_single_stop_string() -> None:
    request = parse(
        chat(
            temperature=None,
            stop="STOP",
            stream=None,
            stream_options=None,
            tools=None,
            tool_choice=None,
            response_format=None,
            metadata=None,
            n=None,
        )
    )
    assert request.sampling.temperature is None
    assert request.sampling.stop == ("STOP",)
    assert request.tools == ()
    assert request.tool_choice is None
    assert request.response_format is None
    assert request.metadata == {}
    assert parse(chat(stop=None)).sampling.stop == ()
    stream = parse(chat(stream=True, stream_options={"include_usage": False}))
    assert stream.stream
    assert not stream.include_usage


def test_assistant_refusal_and_refusal_parts_become_text() -> None:
    request = parse(
        chat(
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None, "refusal": "I can't help with that."},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {"role": "user", "content": [{"type": "text", "text": "ok"}]},
            ]
        )
    )
    assert request.messages[1].text == "I can't help with that."
    assert request.messages[2].text == "No."


def test_max_body_bytes() -> None:
    body = orjson.dumps(chat())
    assert parse_chat_request(body, request_id=RID, max_body_bytes=len(body)).model == "gpt-4o"
    with pytest.raises(PayloadTooLarge, match="limit is 10 bytes") as caught:
        parse_chat_request(body, request_id=RID, max_body_bytes=10)
    assert caught.value.http_status == 413


USER = {"role": "user", "content": "hi"}
CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def msgs(*messages: Any) -> dict[str, Any]:
    return chat(messages=list(messages))


def image(url: object, **extra: Any) -> dict[str, Any]:
    return msgs(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "x"},
                {"type": "image_url", "image_url": {"url": url, **extra}},
            ],
        }
    )


MALFORMED: list[tuple[Any, str | None, str]] = [
    (b"{not json", None, "could not parse the JSON body"),
    (b"\xff\xfe", None, "could not parse the JSON body"),
    (b"[1, 2]", None, "must be a JSON object, not an array"),
    ({"messages": [USER]}, "model", "Missing required parameter: 'model'"),
    (chat(model=""), "model", "empty string"),
    (chat(model=7), "model", "expected a string, but got an integer"),
    ({"model": "m"}, "messages", "Missing required parameter: 'messages'"),
    (chat(messages=[]), "messages", "empty array"),
    (chat(messages="hi"), "messages", "expected an array, but got a string"),
    (msgs("hi"), "messages[0]", "expected an object"),
    (msgs(None), "messages[0]", "expected an object, but got null instead"),
    (msgs({"content": "x"}), "messages[0].role", "Missing required parameter"),
    (msgs(USER, {"role": "bot", "content": "x"}), "messages[1].role", "Invalid value: 'bot'"),
    (msgs({"role": "function", "name": "f", "content": "x"}), "messages[0].role", "deprecated"),
    (msgs({"role": "user"}), "messages[0].content", "Missing required parameter"),
    (msgs({"role": "user", "content": 5}), "messages[0].content", "a string or an array"),
    (msgs({"role": "user", "content": []}), "messages[0].content", "empty array"),
    (msgs({"role": "user", "content": ["x"]}), "messages[0].content[0]", "expected an object"),
    (msgs({"role": "user", "content": [{"text": "x"}]}), "messages[0].content[0].type", "Missing"),
    (
        msgs({"role": "user", "content": [{"type": "text", "text": 3}]}),
        "messages[0].content[0].text",
        "expected a string",
    ),
    (
        msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}),
        "messages[0].content[0].type",
        "'input_audio' are not supported",
    ),
    (
        msgs({"role": "user", "content": [{"type": "video"}]}),
        "messages[0].content[0].type",
        "Supported values are: 'text', 'image_url' and 'file'",
    ),
    (
        msgs(
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://x"}}],
            }
        ),
        "messages[0].content[0].type",
        "user messages only, not system",
    ),
    (
        msgs({"role": "system", "content": [{"type": "refusal", "refusal": "x"}]}),
        "messages[0].content[0].type",
        "Supported values are: 'text'.",
    ),
    (image("ftp://example.com/a.png"), "messages[0].content[1].image_url.url", "http(s) URL"),
    (image("data:image/png;base64,@@@@"), "messages[0].content[1].image_url.url", "valid base64"),
    (image(""), "messages[0].content[1].image_url.url", "empty string"),
    (image("https://x", detail="ultra"), "messages[0].content[1].image_url.detail", "'ultra'"),
    (
        msgs({"role": "user", "content": [{"type": "image_url"}]}),
        "messages[0].content[0].image_url",
        "Missing required parameter",
    ),
    (
        msgs({"role": "user", "content": [{"type": "image_url", "image_url": "https://x"}]}),
        "messages[0].content[0].image_url",
        "expected an object",
    ),
    (msgs({"role": "assistant", "content": None}), "messages[0].content", "Missing required"),
    (
        msgs({"role": "user", "content": "x", "tool_calls": [CALL]}),
        "messages[0].tool_calls",
        "only assistant messages",
    ),
    (msgs(USER, {"role": "assistant", "tool_calls": []}), "messages[1].tool_calls", "empty array"),
    (
        msgs(USER, {"role": "assistant", "tool_calls": [{**CALL, "id": ""}]}),
        "messages[1].tool_calls[0].id",
        "empty string",
    ),
    (
        msgs(USER, {"role": "assistant", "tool_calls": [{**CALL, "type": "custom"}]}),
        "messages[1].tool_calls[0].type",
        "'custom'",
    ),
    (
        msgs(USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}),
        "messages[1].tool_calls[0].function",
        "Missing required parameter",
    ),
    (
        msgs(USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f"}}]}),
        "messages[1].tool_calls[0].function.arguments",
        "Missing required parameter",
    ),
    (
        msgs(
            USER,
            {
                "role": "assistant",
                "tool_calls": [{**CALL, "function": {"name": "f", "arguments": {}}}],
            },
        ),
        "messages[1].tool_calls[0].function.arguments",
        "expected a string, but got an object",
    ),
    (msgs(USER, {"role": "tool", "content": "x"}), "messages[1].tool_call_id", "Missing"),
    (
        msgs({"role": "user", "content": "x", "tool_call_id": "c1"}),
        "messages[0].tool_call_id",
        "belongs on tool messages",
    ),
    (
        msgs(USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}),
        "messages[1].tool_call_id",
        "unknown tool call 'nope'",
    ),
    (msgs({"role": "user", "content": "x", "name": 1}), "messages[0].name", "expected a string"),
    (chat(temperature="hot"), "temperature", "expected a number, but got a string"),
    (chat(temperature=True), "temperature", "expected a number, but got a boolean"),
    (chat(temperature=3), "temperature", "between 0 and 2"),
    (chat(top_p=1.5), "top_p", "between 0 and 1"),
    (chat(presence_penalty=-3), "presence_penalty", "between -2 and 2"),
    (chat(frequency_penalty=[1]), "frequency_penalty", "expected a number, but got an array"),
    (chat(max_tokens=0), "max_tokens", "Expected a value >= 1, but got 0"),
    (chat(max_tokens=1.5), "max_tokens", "expected an integer, but got a number"),
    (chat(max_completion_tokens=-1), "max_completion_tokens", "Expected a value >= 1"),
    (chat(stop=5), "stop", "a string or an array of strings"),
    (chat(stop=["a", 1]), "stop[1]", "expected a string"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
    (chat(stop=[""]), "stop", "must not be empty"),
    (chat(seed="1"), "seed", "expected an integer"),
    (chat(n=0), "n", "at least 1"),
    (chat(n=129), "n", "at most 128"),
    (chat(n=1.5), "n", "expected an integer"),
    (chat(user=1), "user", "expected a string"),
    (chat(metadata=[]), "metadata", "expected an object"),
    (chat(metadata={"k": 1}), "metadata.k", "expected a string, but got an integer"),
    (chat(metadata={"k" * 65: "v"}), "metadata." + "k" * 65, "at most 64"),
    (chat(metadata={"k": "v" * 513}), "metadata.k", "at most 512"),
    (chat(metadata={f"k{i}": "v" for i in range(17)}), "metadata", "at most 16"),
    (chat(tools={}), "tools", "expected an array"),
    (chat(tools=[{"function": {"name": "f"}}]), "tools[0].type", "Missing required parameter"),
    (chat(tools=[{"type": "custom", "custom": {}}]), "tools[0].type", "'custom'"),
    (chat(tools=[{"type": "function"}]), "tools[0].function", "Missing required parameter"),
    (chat(tools=[{"type": "function", "function": {}}]), "tools[0].function.name", "Missing"),
    (
        chat(tools=[WEATHER_TOOL, {"type": "function", "function": {"name": "bad name!"}}]),
        "tools[1].function.name",
        "1-64 letters",
    ),
    (
        chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
        "tools[0].function.parameters",
        "expected an object",
    ),
    (
        chat(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
        "tools[0].function.strict",
        "expected a boolean",
    ),
    (
        chat(tools=[{"type": "function", "function": {"name": "f", "description": 1}}]),
        "tools[0].function.description",
        "expected a string",
    ),
    (chat(tools=[WEATHER_TOOL, WEATHER_TOOL]), "tools", "unique"),
    (chat(tool_choice="any"), "tool_choice", "Invalid value: 'any'"),
    (chat(tool_choice="required"), "tool_choice", "needs tools"),
    (chat(tool_choice={"type": "allowed_tools"}), "tool_choice.type", "'allowed_tools'"),
    (
        chat(tools=[WEATHER_TOOL], tool_choice={"type": "function"}),
        "tool_choice.function",
        "Missing",
    ),
    (
        chat(tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "x"}}),
        "tool_choice",
        "not among the tools",
    ),
    (chat(tool_choice=3), "tool_choice", "expected an object"),
    (chat(parallel_tool_calls="no"), "parallel_tool_calls", "expected a boolean"),
    (chat(response_format="json"), "response_format", "expected an object"),
    (chat(response_format={}), "response_format.type", "Missing required parameter"),
    (chat(response_format={"type": "yaml"}), "response_format.type", "'yaml'"),
    (
        chat(response_format={"type": "json_schema"}),
        "response_format.json_schema",
        "Missing required parameter",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
        "response_format.json_schema.name",
        "Missing required parameter",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}),
        "response_format.json_schema.name",
        "1-64 letters",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s"}}),
        "response_format.json_schema.schema",
        "Missing required parameter",
    ),
    (
        chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": []}}),
        "response_format.json_schema.schema",
        "expected an object",
    ),
    (chat(stream="yes"), "stream", "expected a boolean"),
    (chat(stream_options={"include_usage": True}), "stream_options", "only allowed when 'stream'"),
    (chat(stream=False, stream_options={}), "stream_options", "only allowed when 'stream'"),
    (chat(stream=True, stream_options=[]), "stream_options", "expected an object"),
    (
        chat(stream=True, stream_options={"include_usage": 1}),
        "stream_options.include_usage",
        "expected a boolean",
    ),
    (
        chat(stream=True, stream_options={"chunk_size": 1}),
        "stream_options.chunk_size",
        "Unrecognized request argument supplied: stream_options.chunk_size",
    ),
    (chat(frobnicate=1), "frobnicate", "Unrecognized request argument supplied: frobnicate"),
    (chat(logprobs=1), "logprobs", "expected a boolean"),
    (chat(top_logprobs=3), "top_logprobs", "needs logprobs set to true"),
    (chat(logprobs=False, top_logprobs=0), "top_logprobs", "needs logprobs set to true"),
    (chat(logprobs=True, top_logprobs=21), "top_logprobs", "between 0 and 20"),
    (chat(logprobs=True, top_logprobs=-1), "top_logprobs", "between 0 and 20"),
    (chat(audio={"voice": "alloy"}), "audio", "not supported by this gateway"),
    (chat(functions=[]), "functions", "not supported by this gateway"),
]


@pytest.mark.parametrize(("body", "param", "fragment"), MALFORMED)
def test_malformed_chat_body(body: Any, param: str | None, fragment: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(raw, request_id=RID)
    assert caught.value.param == param
    assert fragment in caught.value.message
    assert caught.value.http_status == 400


# --------------------------------------------------------------------------- embeddings


def test_embedding_request_example() -> None:
    call = parse_embedding_request(
        orjson.dumps(
            {
                "model": "text-embedding-3-small",
                "input": "The food was delicious and the waiter...",
                "encoding_format": "float",
            }
        ),
        request_id=RID,
    )
    assert call.request.inputs == ("The food was delicious and the waiter...",)
    assert call.request.request_id == RID
    assert call.encoding_format == "float"
    request, encoding = parse_embedding_request(
        orjson.dumps(
            {
                "model": "m",
                "input": ["a", "b"],
                "dimensions": 256,
                "user": "u",
                "encoding_format": "base64",
            }
        ),
        request_id=RID,
    )
    assert (request.inputs, request.dimensions, request.user) == (("a", "b"), 256, "u")
    assert encoding == "base64"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"nope", None, "could not parse"),
        ({"input": "x"}, "model", "Missing required parameter"),
        ({"model": "m"}, "input", "Missing required parameter: 'input'"),
        ({"model": "m", "input": ""}, "input", "empty string"),
        ({"model": "m", "input": []}, "input", "empty array"),
        ({"model": "m", "input": {"a": 1}}, "input", "expected an array"),
        ({"model": "m", "input": ["a", ""]}, "input[1]", "empty string"),
        ({"model": "m", "input": [1, -2]}, "input[1]", "token ids are integers"),
        ({"model": "m", "input": [1, "a"]}, "input[1]", "token ids are integers"),
        ({"model": "m", "input": [[1, 2], []]}, "input[1]", "empty array"),
        ({"model": "m", "input": [[1, 2], "a"]}, "input[1]", "expected an array"),
        ({"model": "m", "input": [[True]]}, "input[0][0]", "token ids are integers"),
        ({"model": "m", "input": [[1] * 8193]}, "input[0]", "at most 8192 tokens"),
        ({"model": "m", "input": ["a", None]}, "input[1]", "Missing required parameter"),
        ({"model": "m", "input": ["a"] * 2049}, "input", "at most 2048"),
        ({"model": "m", "input": "a", "dimensions": 0}, "dimensions", "at least 1"),
        ({"model": "m", "input": "a", "dimensions": "8"}, "dimensions", "expected an integer"),
        ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format", "'int8'"),
        ({"model": "m", "input": "a", "extra": 1}, "extra", "Unrecognized request argument"),
    ],
)
def test_malformed_embedding_body(body: Any, param: str | None, fragment: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(BadRequest) as caught:
        parse_embedding_request(raw, request_id=RID)
    assert caught.value.param == param
    assert fragment in caught.value.message


def test_token_id_inputs_are_kept_as_ids() -> None:
    one, _ = parse_embedding_request(orjson.dumps({"model": "m", "input": [5, 6]}), request_id=RID)
    assert (one.inputs, one.token_ids, one.count) == ((), ((5, 6),), 1)
    two, _ = parse_embedding_request(
        orjson.dumps({"model": "m", "input": [[1], [2, 3]]}), request_id=RID
    )
    assert (two.token_ids, two.count, two.estimated_prompt_tokens()) == (((1,), (2, 3)), 2, 3)
    with pytest.raises(BadRequest, match="takes text input only") as refused:
        two.texts("this model")
    assert refused.value.param == "input"


def test_embedding_body_limit() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_embedding_request(b'{"model":"m","input":"abc"}', request_id=RID, max_body_bytes=5)


def test_embeddings_json_parses_with_the_sdk() -> None:
    result = EmbeddingResult(
        vectors=((0.0023064255, -0.009327292, 0.5), (1.0, 2.0, -0.25)),
        usage=Usage(input_tokens=8),
    )
    floats = CreateEmbeddingResponse.model_validate_json(
        embeddings_json(result, model="text-embedding-3-small")
    )
    assert floats.object == "list"
    assert floats.model == "text-embedding-3-small"
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[1].embedding == [1.0, 2.0, -0.25]
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (8, 8)
    packed = orjson.loads(embeddings_json(result, model="m", encoding_format="base64"))
    vector = struct.unpack("<3f", base64.b64decode(packed["data"][1]["embedding"]))
    assert vector == (1.0, 2.0, -0.25)


# --------------------------------------------------------------------------- completions

USAGE = Usage(input_tokens=19, output_tokens=10, cached_input_tokens=4, reasoning_tokens=2)


def test_completion_json_text_parses_with_the_sdk() -> None:
    result = ChatCompletion(
        text="Hello there, how may I assist you today?",
        reasoning="greet",
        finish_reason=FinishReason.STOP,
        usage=USAGE,
    )
    raw = completion_json(result, request_id=RID, model="gpt-4o", created=1_700_000_000)
    sdk = SdkCompletion.model_validate_json(raw)
    assert sdk.id == "chatcmpl-0123456789abcdef0123456789abcdef"
    assert sdk.object == "chat.completion"
    assert (sdk.created, sdk.model) == (1_700_000_000, "gpt-4o")
    choice = sdk.choices[0]
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello there, how may I assist you today?"
    assert choice.message.tool_calls is None
    assert "reasoning_content" not in orjson.loads(raw)["choices"][0]["message"]
    usage = sdk.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (19, 10, 29)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2
    with_reasoning = completion_json(
        result, request_id=RID, model="gpt-4o", created=1, include_reasoning=True
    )
    assert orjson.loads(with_reasoning)["choices"][0]["message"]["reasoning_content"] == "greet"


def test_completion_json_tool_calls_only() -> None:
    result = ChatCompletion(
        tool_calls=(
            ToolCall(
                id="call_abc123", name="get_current_weather", arguments='{"location":"Boston"}'
            ),
            ToolCall(id="call_def456", name="noop"),
        ),
        finish_reason=FinishReason.TOOL_CALLS,
    )
    raw = completion_json(result, request_id="other-id", model="m", created=0)
    sdk = SdkCompletion.model_validate_json(raw)
    assert sdk.id == "chatcmpl-other-id"
    message = sdk.choices[0].message
    assert message.content is None
    assert message.tool_calls is not None
    first = message.tool_calls[0]
    assert (first.id, first.type) == ("call_abc123", "function")
    assert first.function.name == "get_current_weather"  # type: ignore[union-attr]
    assert first.function.arguments == '{"location":"Boston"}'  # type: ignore[union-attr]
    assert sdk.choices[0].finish_reason == "tool_calls"
    assert sdk.usage is None  # unknown usage is left out, not zeroed
    assert "usage" not in orjson.loads(raw)


@pytest.mark.parametrize("finish", [None, FinishReason.ERROR])
def test_completion_json_without_an_openai_finish_reason(finish: FinishReason | None) -> None:
    raw = completion_json(
        ChatCompletion(finish_reason=finish), request_id=RID, model="m", created=0
    )
    sdk = SdkCompletion.model_validate_json(raw)
    assert sdk.choices[0].finish_reason == "stop"
    assert sdk.choices[0].message.content == ""


# --------------------------------------------------------------------------- streaming


def events(raw: bytes) -> list[bytes]:
    """The data payloads of a run of SSE events."""
    assert raw.endswith(b"\n\n")
    payloads = []
    for event in raw.split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ")
        payloads.append(event[len(b"data: ") :])
    return payloads


def chunks(raw: bytes) -> list[ChatCompletionChunk]:
    return [ChatCompletionChunk.model_validate_json(p) for p in events(raw) if p != b"[DONE]"]


STREAM = [
    TokenChunk(text="Hel", usage=Usage(input_tokens=19)),
    TokenChunk(reasoning="thinking"),
    TokenChunk(text="lo"),
    TokenChunk(tool_calls=(ToolCallDelta(index=0, id="call_1", name="get_current_weather"),)),
    TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"location":'),)),
    TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='"Boston"}'),)),
    TokenChunk(),
    TokenChunk(usage=Usage(output_tokens=7, reasoning_tokens=1)),
    TokenChunk(finish_reason=FinishReason.TOOL_CALLS, usage=Usage(output_tokens=3)),
]


def test_stream_with_usage_parses_with_the_sdk() -> None:
    renderer = ChunkRenderer(RID, "gpt-4o", 1_700_000_000, True)
    first = chunks(renderer.first())[0]
    assert first.object == "chat.completion.chunk"
    assert first.id == chat_completion_id(RID)
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert first.usage is None
    rendered = [renderer.render(chunk) for chunk in STREAM]
    # Nothing to say: the hidden reasoning, the keep-alive and the usage-only chunk.
    assert [bool(r) for r in rendered] == [True, False, True, True, True, True, False, False, True]
    body = b"".join(rendered)
    parsed = chunks(body)
    for chunk in parsed:
        assert chunk.usage is None
        assert b'"usage":null' in body
        assert (chunk.created, chunk.model) == (1_700_000_000, "gpt-4o")
    assert [c.choices[0].delta.content for c in parsed[:2]] == ["Hel", "lo"]
    start = parsed[2].choices[0].delta.tool_calls
    assert start is not None
    assert (start[0].index, start[0].id, start[0].type) == (0, "call_1", "function")
    assert start[0].function is not None
    assert (start[0].function.name, start[0].function.arguments) == ("get_current_weather", "")
    more = parsed[3].choices[0].delta.tool_calls
    assert more is not None
    assert more[0].id is None
    assert more[0].function is not None
    assert more[0].function.arguments == '{"location":'
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert parsed[-1].choices[0].delta.content is None
    assert renderer.usage == Usage(input_tokens=19, output_tokens=10, reasoning_tokens=1)
    tail = renderer.final()
    assert tail.endswith(b"data: [DONE]\n\n")
    (last,) = chunks(tail)
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        19,
        10,
        29,
    )
    # The stream folds to the same answer as a non-streaming request would give.
    assert aggregate(STREAM).tool_calls[0].arguments == '{"location":"Boston"}'


def test_stream_without_usage_and_with_reasoning() -> None:
    renderer = ChunkRenderer(RID, "m", 5, False, include_reasoning=True)
    assert b"usage" not in renderer.first()
    thought = renderer.render(TokenChunk(reasoning="hmm"))
    assert orjson.loads(events(thought)[0])["choices"][0]["delta"] == {"reasoning_content": "hmm"}
    chunks(thought)
    done = renderer.render(TokenChunk(text="ok", finish_reason=FinishReason.LENGTH))
    (parsed,) = chunks(done)
    assert (parsed.choices[0].delta.content, parsed.choices[0].finish_reason) == ("ok", "length")
    assert parsed.usage is None
    assert renderer.final() == b"data: [DONE]\n\n"


def test_stream_final_with_unknown_usage_is_null() -> None:
    renderer = ChunkRenderer(RID, "m", 5, True)
    assert renderer.render(TokenChunk(finish_reason=FinishReason.ERROR)) == b""
    (last,) = chunks(renderer.final())
    assert last.choices == []
    assert last.usage is None
    assert b'"choices":[],"usage":null' in renderer.final()


def test_stream_error_event() -> None:
    renderer = ChunkRenderer(RID, "m", 5, True)
    raw = renderer.error(StreamInterrupted("upstream reset the stream", provider="openai"))
    payload, done = events(raw)
    assert done == b"[DONE]"
    assert orjson.loads(payload) == {
        "error": {
            "message": "upstream reset the stream",
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
        }
    }


def test_render_speed_note() -> None:
    """The ChunkRenderer figure in bench/README.md comes from timing this stream:

    ``timeit.timeit(render_stream, number=20_000) / 20_000``. A test asserts behaviour
    only: every chunk renders.
    """
    assert len(events(render_stream())) == 23  # first, 19 text, finish, usage, [DONE]


TEXT_CHUNKS = [TokenChunk(text=" token") for _ in range(19)]
FINISH_CHUNK = TokenChunk(finish_reason=FinishReason.STOP, usage=USAGE)


def render_stream() -> bytes:
    renderer = ChunkRenderer(RID, "gpt-4o", 1, True)
    out = [renderer.first()]
    out.extend(renderer.render(chunk) for chunk in TEXT_CHUNKS)
    out.append(renderer.render(FINISH_CHUNK))
    out.append(renderer.final())
    return b"".join(out)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (RateLimitExceeded("slow down", retry_after=1.2), 429, {"retry-after": "2"}),
        (CircuitOpen("open", provider="openai", retry_after=30.0), 503, {"retry-after": "30"}),
        (RateLimitExceeded("slow down", retry_after=-1.0), 429, {"retry-after": "0"}),
        (
            RateLimitExceeded("slow down", retry_after=float("inf")),
            429,
            {"x-should-retry": "false"},
        ),
        (RateLimitExceeded("slow down"), 429, {}),
        (ServerError("boom", retry_after=5.0), 502, {}),
        (BadRequest("bad", param="temperature"), 400, {}),
    ],
)
def test_error_json(error: InferenceError, status: int, headers: dict[str, str]) -> None:
    got_status, got_headers, body = error_json(error)
    assert (got_status, got_headers) == (status, headers)
    assert orjson.loads(body) == error.to_openai_error()


def test_bad_request_body_names_the_param() -> None:
    with pytest.raises(BadRequest) as caught:
        parse(chat(temperature=9))
    _, _, body = error_json(caught.value)
    assert orjson.loads(body)["error"]["param"] == "temperature"
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"


def test_tool_choice_mode_enum_is_what_core_expects() -> None:
    choice = parse(chat(tools=[WEATHER_TOOL], tool_choice="none")).tool_choice
    assert choice is not None
    assert choice.mode is ToolChoiceMode.NONE


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"prediction": {"type": "text"}}, "prediction.type", "must be 'content'"),
        ({"prediction": {"type": "content", "content": 3}}, "prediction.content", "expected"),
        ({"store": "yes"}, "store", "expected a boolean"),
    ],
)
def test_openai_only_options_are_checked(extra: dict[str, Any], param: str, fragment: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(orjson.dumps(body), request_id=RID)
    assert caught.value.param == param
    assert fragment in caught.value.message
