"""The Anthropic adapter: request translation, unary and stream parsing, error refinement.

Fixtures follow the shapes of the Messages API reference (request body, response object,
the streaming event sequence, the error body); the values are ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import orjson
import pytest

from rakka_inference.core.errors import (
    BadRequest,
    Forbidden,
    InferenceError,
    Overloaded,
    PayloadTooLarge,
    ProtocolError,
    QuotaExhausted,
    RateLimited,
    ServerError,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    ImagePart,
    ReasoningBlock,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
)
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.runtimes import AnthropicConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import FinishReason, TokenChunk, ToolCallDelta, aggregate
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolDefinition
from rakka_inference.core.usage import Usage
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.wire.sse import SseDecoder, SseEvent

KEY = Secret("sk-ant-test-0123456789")
MODEL = "claude-sonnet-4-5"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


def adapter(**config: object) -> AnthropicAdapter:
    return AnthropicAdapter(AnthropicConfig(**config), MODEL)  # type: ignore[arg-type]


def chat(*messages: ChatMessage, **options: object) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=messages, **options)  # type: ignore[arg-type]


def weather_request(*, stream: bool = False) -> ChatRequest:
    return chat(
        ChatMessage.system("You are terse."),
        ChatMessage.developer("Answer in metric units."),
        ChatMessage.user(
            (
                TextPart(text="What is in this image, and the weather there?"),
                ImagePart(url="https://example.com/a.png", detail="low"),
                ImagePart.from_base64("image/png", "iVBORw0KGgo="),
            )
        ),
        ChatMessage.assistant(
            "Let me check both cities.",
            tool_calls=(
                ToolCall(id="toolu_01", name="get_weather", arguments='{"city":"Paris"}'),
                ToolCall(id="toolu_02", name="get_weather", arguments='{"city": "Oslo"}'),
            ),
        ),
        ChatMessage.tool("toolu_01", "18C"),
        ChatMessage.tool("toolu_02", "4C"),
        ChatMessage.user("And tomorrow?"),
        sampling=SamplingParams(temperature=0.2, top_p=0.9, max_tokens=64, stop=("END",), seed=7),
        tools=(WEATHER,),
        tool_choice=ToolChoice.named("get_weather"),
        stream=stream,
        user="user-42",
    )


# --------------------------------------------------------------------------- request


def test_request_translation_follows_the_api_reference() -> None:
    http = adapter().build_request(weather_request(), KEY)
    assert http.method == "POST"
    assert http.url == "https://api.anthropic.com/v1/messages"
    assert http.headers == {
        "x-api-key": "sk-ant-test-0123456789",
        "anthropic-version": "2023-06-01",
        "content-type": "application/json",
    }
    assert "sk-ant" not in http.url
    assert "sk-ant" not in repr(http)
    body = orjson.loads(http.body)
    assert body["model"] == MODEL
    assert body["system"] == "You are terse.\n\nAnswer in metric units."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and the weather there?"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check both cities."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        # Both tool results and the follow-up question: one user turn, results first.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "4C"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert body["max_tokens"] == 64
    assert (body["temperature"], body["top_p"], body["stop_sequences"]) == (0.2, 0.9, ["END"])
    assert body["metadata"] == {"user_id": "user-42"}
    # No Anthropic equivalent: dropped.
    assert "seed" not in body
    assert "stream" not in body
    assert "output_config" not in body


def test_stream_requests_say_so() -> None:
    body = orjson.loads(adapter().build_request(weather_request(stream=True), KEY).body)
    assert body["stream"] is True


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        (None, "https://api.anthropic.com/v1/messages"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9/v1/messages"),
        ("http://127.0.0.1:9/", "http://127.0.0.1:9/v1/messages"),
        ("https://proxy.internal/anthropic/v1/", "https://proxy.internal/anthropic/v1/messages"),
    ],
)
def test_endpoint_and_version_from_config(endpoint: str | None, url: str) -> None:
    custom = adapter(endpoint=endpoint, anthropic_version="2099-01-01")
    http = custom.build_request(weather_request(), KEY)
    assert http.url == url
    assert custom.endpoint == url
    assert http.headers["anthropic-version"] == "2099-01-01"
    assert custom.provider == "anthropic"


def test_max_tokens_falls_back_to_the_config_default() -> None:
    request = chat(ChatMessage.user("hi"))
    assert adapter().request_body(request)["max_tokens"] == 4096
    assert adapter(max_tokens_default=512).request_body(request)["max_tokens"] == 512


def test_minimal_request_sends_only_what_is_required() -> None:
    assert adapter().request_body(chat(ChatMessage.user("hi"))) == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_consecutive_same_role_messages_merge_to_alternate() -> None:
    request = chat(
        ChatMessage.user("one"),
        ChatMessage.system("late instructions are hoisted"),
        ChatMessage.developer(""),  # nothing to say: no empty paragraph
        ChatMessage.user((TextPart(text="two"), TextPart(text=""))),
        ChatMessage.assistant("three"),
        ChatMessage.assistant(""),  # nothing to send: dropped
        ChatMessage.assistant("four"),
        ChatMessage.user(""),
        ChatMessage.user("five"),
    )
    body = adapter().request_body(request)
    assert body["system"] == "late instructions are hoisted"
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": [{"type": "text", "text": "five"}]},
    ]


def test_tool_results_with_parts_and_empty_content() -> None:
    request = chat(
        ChatMessage.user("go"),
        ChatMessage.assistant(
            tool_calls=(
                ToolCall(id="toolu_a", name="get_weather", arguments=""),
                ToolCall(id="toolu_b", name="get_weather", arguments="{}"),
            )
        ),
        ChatMessage(
            role=Role.TOOL,
            tool_call_id="toolu_a",
            content=(TextPart(text="line 1"), TextPart(text="line 2")),
        ),
        ChatMessage.tool("toolu_b", ""),
    )
    messages = adapter().request_body(request)["messages"]
    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {}},
    ]
    assert messages[2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_a",
                "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}],
            },
            {"type": "tool_result", "tool_use_id": "toolu_b"},
        ],
    }
    # A result whose parts are all empty is sent without content.
    empty_parts = chat(
        ChatMessage.user("go"),
        ChatMessage.assistant(tool_calls=(ToolCall(id="toolu_c", name="f"),)),
        ChatMessage(role=Role.TOOL, tool_call_id="toolu_c", content=(TextPart(text=""),)),
    )
    assert adapter().request_body(empty_parts)["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_c"}],
    }


def test_tool_result_goes_before_user_text_in_one_turn() -> None:
    request = chat(
        ChatMessage.user("go"),
        ChatMessage.assistant(tool_calls=(ToolCall(id="toolu_c", name="f"),)),
        ChatMessage.user("also this"),
        ChatMessage.tool("toolu_c", "done"),
    )
    assert adapter().request_body(request)["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_c", "content": "done"},
        {"type": "text", "text": "also this"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice.auto(), {"type": "auto"}),
        (ToolChoice.required(), {"type": "any"}),
        (ToolChoice.named("get_weather"), {"type": "tool", "name": "get_weather"}),
        (ToolChoice.none(), {"type": "none"}),
    ],
)
def test_every_tool_choice(choice: ToolChoice, expected: dict[str, str]) -> None:
    body = adapter().request_body(
        chat(ChatMessage.user("hi"), tools=(WEATHER,), tool_choice=choice)
    )
    assert body["tool_choice"] == expected


def test_tool_choice_without_tools_and_strict_tools() -> None:
    body = adapter().request_body(chat(ChatMessage.user("hi"), tool_choice=ToolChoice.none()))
    assert "tools" not in body
    assert "tool_choice" not in body
    strict = ToolDefinition(name="f", strict=True)
    body = adapter().request_body(chat(ChatMessage.user("hi"), tools=(strict,)))
    assert body["tools"] == [
        {"name": "f", "input_schema": {"type": "object", "properties": {}}, "strict": True}
    ]
    assert "tool_choice" not in body


def test_json_schema_becomes_output_config() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    request = chat(
        ChatMessage.user("hi"), response_format=ResponseFormat.from_schema("answer", schema)
    )
    assert adapter().request_body(request)["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}
    }
    plain = chat(ChatMessage.user("hi"), response_format=ResponseFormat.text())
    assert "output_config" not in adapter().request_body(plain)


@pytest.mark.parametrize(
    ("request_", "param"),
    [
        (
            chat(ChatMessage.user("hi"), response_format=ResponseFormat.json_object()),
            "response_format",
        ),
        (chat(ChatMessage.user("hi"), sampling=SamplingParams(n=2)), "n"),
        (chat(ChatMessage.user("hi"), sampling=SamplingParams(temperature=1.5)), "temperature"),
        (
            chat(ChatMessage.user((ImagePart.from_base64("image/tiff", "AAAA"),))),
            "messages[0].content[0].image_url",
        ),
        (
            chat(ChatMessage.user("x"), ChatMessage.user((ImagePart(url="data:image/png,xyz"),))),
            "messages[1].content[0].image_url",
        ),
        (
            chat(ChatMessage.user((TextPart(text="x"), ImagePart(url="ftp://example.com/a.png")))),
            "messages[0].content[1].image_url",
        ),
        (
            chat(
                ChatMessage.user("x"),
                ChatMessage.assistant(
                    tool_calls=(
                        ToolCall(id="toolu_1", name="f", arguments="{}"),
                        ToolCall(id="toolu_2", name="f", arguments="{not json"),
                    )
                ),
            ),
            "messages[1].tool_calls[1].function.arguments",
        ),
    ],
)
def test_requests_anthropic_cannot_serve_are_refused(request_: ChatRequest, param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        adapter().request_body(request_)
    assert caught.value.param == param


def test_temperature_at_the_upper_bound_is_sent() -> None:
    request = chat(ChatMessage.user("hi"), sampling=SamplingParams(temperature=1.0))
    assert adapter().request_body(request)["temperature"] == 1.0


def test_http_image_url_is_kept_as_given() -> None:
    request = chat(ChatMessage.user((ImagePart(url="HTTP://example.com/a.jpg"),)))
    assert adapter().request_body(request)["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "HTTP://example.com/a.jpg"}}
    ]


# --------------------------------------------------------------------------- unary

UNARY = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "thinking", "thinking": "Two cities, ", "signature": "EqQBCgIYAhIM1gbcDa9"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
        {"type": "thinking", "thinking": "two calls."},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "both."},
        {
            "type": "tool_use",
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"city": "Paris"},
        },
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 50,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 1000,
        "output_tokens": 120,
    },
}


def test_unary_response_with_thinking_text_tool_use_and_cache_usage() -> None:
    chunks = adapter().parse_response(orjson.dumps(UNARY))
    # One chunk per thinking block, then the rest.
    assert chunks[:3] == [
        TokenChunk(reasoning="Two cities, ", reasoning_signature="EqQBCgIYAhIM1gbcDa9"),
        TokenChunk(reasoning_redacted="EmwKAhgBEgy3va3pzix"),
        TokenChunk(reasoning="two calls."),
    ]
    assert len(chunks) == 4
    completion = aggregate(chunks)
    assert completion.text == "Checking both."
    assert completion.reasoning == "Two cities, two calls."
    assert completion.reasoning_blocks == (
        ReasoningBlock(text="Two cities, ", signature="EqQBCgIYAhIM1gbcDa9"),
        ReasoningBlock(redacted="EmwKAhgBEgy3va3pzix"),
        ReasoningBlock(text="two calls."),
    )
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("toolu_01A09q90qw90lq917835lq9", "get_weather", '{"city":"Paris"}'),
        ("toolu_01B", "get_time", "{}"),
    ]
    assert [call.index for call in chunks[3].tool_calls] == [0, 1]
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert completion.usage == Usage(input_tokens=1070, output_tokens=120, cached_input_tokens=1000)


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("pause_turn", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("some_future_reason", FinishReason.STOP),
        (None, None),
    ],
)
def test_stop_reasons(stop_reason: str | None, finish: FinishReason | None) -> None:
    body = {
        "type": "message",
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": stop_reason,
    }
    [chunk] = adapter().parse_response(orjson.dumps(body))
    assert chunk == TokenChunk(text="Hi", finish_reason=finish)


def test_malformed_unary_responses() -> None:
    for body in (b"not json", b"[1]", b'{"type": "message"}', b'{"content": {}}'):
        with pytest.raises(ProtocolError):
            adapter().parse_response(body)
    missing_id = {"content": [{"type": "tool_use", "name": "f", "input": {}}]}
    with pytest.raises(ProtocolError, match="without id"):
        adapter().parse_response(orjson.dumps(missing_id))
    bad_usage = {"content": [], "usage": {"cache_read_input_tokens": 1.5}}
    with pytest.raises(ProtocolError, match="cache_read_input_tokens") as caught:
        adapter().parse_response(orjson.dumps(bad_usage))
    assert caught.value.provider == "anthropic"
    with pytest.raises(Overloaded):
        adapter().parse_response(
            b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
        )


# --------------------------------------------------------------------------- stream


def sse(event: str, data: Mapping[str, object]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def event(data: Mapping[str, object]) -> bytes:
    return sse(str(data["type"]), data)


STREAM = b"".join(
    [
        event(
            {
                "type": "message_start",
                "message": {
                    "id": "msg_014p7gG3wDgGV9EUtLvnow3U",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 472,
                        "cache_creation_input_tokens": 30,
                        "cache_read_input_tokens": 2000,
                        "output_tokens": 2,
                    },
                },
            }
        ),
        event({"type": "ping"}),
        event(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Two cities, "},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "two calls."},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9"},
            }
        ),
        event({"type": "content_block_stop", "index": 0}),
        event(
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
            }
        ),
        event({"type": "content_block_stop", "index": 1}),
        event(
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "text", "text": ""},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "text_delta", "text": "Checking "},
            }
        ),
        event({"type": "ping"}),
        event(
            {
                "type": "content_block_delta",
                "index": 2,
                "delta": {"type": "text_delta", "text": "both."},
            }
        ),
        event({"type": "content_block_stop", "index": 2}),
        event(
            {
                "type": "content_block_start",
                "index": 3,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            }
        ),
        event(
            {
                "type": "content_block_start",
                "index": 4,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T2",
                    "name": "get_weather",
                    "input": {},
                },
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 4,
                "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
            }
        ),
        event({"type": "some_future_event", "index": 9}),
        event(
            {
                "type": "content_block_delta",
                "index": 3,
                "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
            }
        ),
        event(
            {
                "type": "content_block_delta",
                "index": 4,
                "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
            }
        ),
        event({"type": "content_block_stop", "index": 3}),
        event({"type": "content_block_stop", "index": 4}),
        event(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            }
        ),
        event({"type": "message_stop"}),
    ]
)

STREAM_USAGE = Usage(input_tokens=2502, output_tokens=89, cached_input_tokens=2000)


def parse_stream(stream: bytes, *, chunk_size: int | None = None) -> tuple[list[TokenChunk], bool]:
    parser = adapter().stream_parser()
    decoder = SseDecoder()
    step = chunk_size or len(stream)
    chunks: list[TokenChunk] = []
    for start in range(0, len(stream), step):
        for sse_event in decoder.feed(stream[start : start + step]):
            chunks.extend(parser.feed(sse_event))
    return chunks, parser.done


def test_full_stream_transcript() -> None:
    chunks, done = parse_stream(STREAM)
    assert done
    assert chunks[:5] == [
        TokenChunk(usage=Usage(input_tokens=2502, output_tokens=2, cached_input_tokens=2000)),
        TokenChunk(reasoning="Two cities, "),
        TokenChunk(reasoning="two calls."),
        TokenChunk(reasoning_signature="EqQBCgIYAhIM1gbcDa9"),
        TokenChunk(reasoning_redacted="EmwKAhgBEgy3va3pzix"),
    ]
    # Parallel calls are numbered by position among the tool blocks, not by block index.
    assert chunks[7].tool_calls == (
        ToolCallDelta(index=0, id="toolu_01T1x1fJ34qAmk2tNTrN7Up6", name="get_weather"),
    )
    assert chunks[8].tool_calls == (ToolCallDelta(index=1, id="toolu_01T2", name="get_weather"),)
    assert chunks[-1] == TokenChunk(
        usage=Usage(output_tokens=87), finish_reason=FinishReason.TOOL_CALLS
    )
    completion = aggregate(chunks)
    assert completion.text == "Checking both."
    assert completion.reasoning == "Two cities, two calls."
    assert completion.reasoning_blocks == (
        ReasoningBlock(text="Two cities, two calls.", signature="EqQBCgIYAhIM1gbcDa9"),
        ReasoningBlock(redacted="EmwKAhgBEgy3va3pzix"),
    )
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", '{"city": "Paris"}'),
        ("toolu_01T2", "get_weather", '{"city": "Oslo"}'),
    ]
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    # The increments sum to the final totals exactly: nothing is counted twice.
    increments = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert sum(increments, Usage()) == STREAM_USAGE
    assert completion.usage == STREAM_USAGE


def test_stream_split_anywhere_gives_the_same_chunks() -> None:
    whole, _ = parse_stream(STREAM)
    for size in (1, 7, 64):
        assert parse_stream(STREAM, chunk_size=size) == (whole, True)


def test_message_delta_running_totals_are_never_double_counted() -> None:
    # Newer API versions repeat input and cache counts in message_delta; a delta may also
    # arrive twice, or leave counts out. Running totals combine by maximum.
    start = {
        "type": "message_start",
        "message": {
            "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 1}
        },
    }
    repeat = {
        "type": "message_delta",
        "delta": {"stop_reason": None},
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 7},
    }
    output_only = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 7}}
    grown = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn"},
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 5, "output_tokens": 9},
    }
    chunks, done = parse_stream(
        b"".join(event(e) for e in (start, repeat, repeat, output_only, grown))
    )
    assert not done
    assert [chunk.usage for chunk in chunks] == [
        Usage(input_tokens=15, output_tokens=1, cached_input_tokens=5),
        Usage(output_tokens=6),
        Usage(input_tokens=2, output_tokens=2),
    ]
    assert chunks[-1].finish_reason is FinishReason.STOP
    assert aggregate(chunks).usage == Usage(input_tokens=17, output_tokens=9, cached_input_tokens=5)


def test_zero_usage_is_still_reported() -> None:
    start = {"type": "message_start", "message": {"usage": {"input_tokens": 0, "output_tokens": 0}}}
    chunks, _ = parse_stream(event(start) + event({"type": "message_start", "message": {}}))
    assert chunks == [TokenChunk(usage=Usage())]
    assert aggregate(chunks).usage == Usage()


def test_tool_without_input_and_tool_with_whole_input() -> None:
    # A parameterless tool streams no input_json_delta: its arguments are "{}" at the stop.
    # A compatible server may send the whole input in the start block: later fragments
    # would duplicate it and are ignored.
    stream = b"".join(
        [
            event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_a",
                        "name": "now",
                        "input": {},
                    },
                }
            ),
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_b",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"city": "Rome"}'},
                }
            ),
            event({"type": "content_block_stop", "index": 1}),
            event({"type": "content_block_stop", "index": 7}),
        ]
    )
    chunks, _ = parse_stream(stream)
    assert [(c.id, c.name, c.arguments) for c in aggregate(chunks).tool_calls] == [
        ("toolu_a", "now", "{}"),
        ("toolu_b", "get_weather", '{"city":"Rome"}'),
    ]


def test_unknown_blocks_deltas_and_events_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    stream = b"".join(
        [
            event(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "server_tool_use", "id": "srvtoolu_1", "name": "x"},
                }
            ),
            event(
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "citations_delta", "citation": {"cited_text": "x"}},
                }
            ),
            event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}),
            event({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta"}}),
            event({"type": "content_block_stop", "index": 0}),
            event({"type": "content_block_delta", "index": 0}),
            event({"type": "message_delta", "delta": {}}),
            event({"type": "message_delta"}),
            event({"type": "brand_new_event"}),
        ]
    )
    with caplog.at_level(logging.DEBUG, logger="rakka_inference.providers.anthropic"):
        chunks, done = parse_stream(stream)
    assert chunks == []
    assert not done
    assert "server_tool_use" in caplog.text
    assert "citations_delta" in caplog.text
    assert "brand_new_event" in caplog.text


def test_event_name_is_used_when_the_json_has_no_type() -> None:
    parser = adapter().stream_parser()
    assert parser.feed(SseEvent(b"{}", "message_stop")) == []
    assert parser.done
    # A start block with text of its own (a compatible server) is not lost.
    start = SseEvent(
        b'{"index": 0, "content_block": {"type": "text", "text": "Hi"}}', "content_block_start"
    )
    assert parser.feed(start) == [TokenChunk(text="Hi")]
    thinking = SseEvent(
        b'{"index": 1, "content_block": {"type": "thinking", "thinking": "Hm"}}',
        "content_block_start",
    )
    assert parser.feed(thinking) == [TokenChunk(reasoning="Hm")]


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", Overloaded),
        ("rate_limit_error", RateLimited),
        ("api_error", ServerError),
        ("timeout_error", ServerError),
        ("invalid_request_error", BadRequest),
        ("billing_error", QuotaExhausted),
        ("something_new", ServerError),
    ],
)
def test_error_event_mid_stream(error_type: str, expected: type[InferenceError]) -> None:
    parser = adapter().stream_parser()
    head = STREAM.split(b"event: content_block_stop", 1)[0]
    for sse_event in SseDecoder().feed(head):
        parser.feed(sse_event)
    error = {"type": "error", "error": {"type": error_type, "message": "Over\nloaded"}}
    [bad] = SseDecoder().feed(event(error))
    with pytest.raises(InferenceError) as caught:
        parser.feed(bad)
    assert type(caught.value) is expected
    assert caught.value.provider == "anthropic"
    assert caught.value.message == f"anthropic stream error {error_type}: Over loaded"
    assert not parser.done


def test_error_event_quotes_no_keys_urls_or_hosts() -> None:
    message = (
        "invalid x-api-key sk-ant-api03-AbC123-xyz, Bearer tok-0123456789 at "
        "https://proxy.internal.example/v1 (10.0.0.7:8443)"
    )
    error = {"type": "error", "error": {"type": "authentication_error", "message": message}}
    [bad] = SseDecoder().feed(event(error))
    with pytest.raises(Unauthorized) as caught:
        adapter().stream_parser().feed(bad)
    assert caught.value.message == (
        "anthropic stream error authentication_error: invalid x-api-key [redacted], "
        "Bearer [redacted] at [redacted] ([redacted])"
    )


def test_error_event_type_that_is_not_an_identifier_is_not_quoted() -> None:
    error = {"type": "error", "error": {"type": "see https://x.example/"}}
    [bad] = SseDecoder().feed(event(error))
    with pytest.raises(ServerError, match=r"^anthropic stream error unknown_error$"):
        adapter().stream_parser().feed(bad)


def test_error_event_without_detail() -> None:
    with pytest.raises(ServerError, match=r"^anthropic stream error unknown_error$"):
        adapter().stream_parser().feed(SseEvent(b'{"type": "error"}', "error"))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b'{"type": "content_block_delta", "index": ', "malformed JSON"),
        (b"[]", "not an object"),
        (b'{"type": "message_start"}', "without a message"),
        (
            b'{"type": "content_block_delta", "index": 5, '
            b'"delta": {"type": "input_json_delta", "partial_json": "{"}}',
            "not a tool_use block",
        ),
        (b'{"type": "content_block_stop"}', "valid block index"),
        (b'{"type": "message_delta", "delta": []}', "message_delta.delta is not an object"),
        (
            b'{"type": "content_block_start", "index": 0, "content_block": "text"}',
            "content_block is not an object",
        ),
        (b'{"type": "content_block_delta", "index": 0, "delta": 1}', "delta is not an object"),
        (
            b'{"type": "message_delta", "delta": {}, "usage": {"output_tokens": "12"}}',
            "usage.output_tokens is not a token count",
        ),
        (
            b'{"type": "message_start", "message": {"usage": {"input_tokens": -1}}}',
            "usage.input_tokens is not a token count",
        ),
        (
            b'{"type": "message_start", "message": {"usage": {"input_tokens": true}}}',
            "usage.input_tokens is not a token count",
        ),
        (b'{"type": "content_block_stop", "index": true}', "valid block index"),
        (b'{"type": "content_block_stop", "index": -1}', "valid block index"),
        (
            b'{"type": "content_block_start", "index": 0, '
            b'"content_block": {"type": "tool_use", "id": "toolu_1", "input": {}}}',
            "without name",
        ),
    ],
)
def test_malformed_stream_events(raw: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        adapter().stream_parser().feed(SseEvent(raw))


# --------------------------------------------------------------------------- errors


def error_body(error_type: str) -> bytes:
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": "details"},
            "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
        }
    )


@pytest.mark.parametrize(
    ("error_type", "expected"),
    [
        ("overloaded_error", Overloaded),
        ("rate_limit_error", RateLimited),
        ("api_error", ServerError),
        ("timeout_error", ServerError),
        ("authentication_error", Unauthorized),
        ("permission_error", Forbidden),
        ("not_found_error", UpstreamNotFound),
        ("request_too_large", PayloadTooLarge),
        ("billing_error", QuotaExhausted),
    ],
)
def test_error_refinement(error_type: str, expected: type[InferenceError]) -> None:
    generic = BadRequest(
        "anthropic returned HTTP 400: details",
        provider="anthropic",
        retry_after=2.5,
        param="messages",
        upstream_status=400,
    )
    refined = adapter().refine_error(generic, error_body(error_type))
    assert type(refined) is expected
    assert refined.message == generic.message
    assert refined.provider == "anthropic"
    assert refined.upstream_status == 400
    assert refined.retry_after == 2.5
    assert refined.param == ("messages" if expected is PayloadTooLarge else None)


def test_error_refinement_keeps_a_sharper_or_equal_generic_error() -> None:
    refine = adapter().refine_error
    limited = RateLimited("429", provider="anthropic", retry_after=7.0, upstream_status=429)
    assert refine(limited, error_body("rate_limit_error")) is limited
    overloaded = Overloaded("529", provider="anthropic", upstream_status=529)
    assert refine(overloaded, error_body("api_error")) is overloaded
    # invalid_request_error also covers other 4xx statuses: the status decides.
    too_large = PayloadTooLarge("413", provider="anthropic", upstream_status=413)
    assert refine(too_large, error_body("invalid_request_error")) is too_large
    # A too-long prompt has no structured signal: it stays a BadRequest.
    bad = BadRequest("prompt is too long: 210000 tokens > 200000 maximum", provider="anthropic")
    assert refine(bad, error_body("invalid_request_error")) is bad


def test_error_refinement_leaves_other_bodies_alone() -> None:
    generic = ServerError("500", provider="anthropic")
    refine = adapter().refine_error
    for body in (
        b"<html>",
        b"[]",
        b'{"detail": "x"}',
        b'{"error": "text"}',
        b'{"error": {"type": 5}}',
        error_body("brand_new_error"),
    ):
        assert refine(generic, body) is generic


# --------------------------------------------------------------------------- price


def test_price_resolution() -> None:
    dated = AnthropicAdapter(AnthropicConfig(), "claude-sonnet-4-5-20250929")
    assert dated.price() == ModelPrice(
        input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3
    )
    assert AnthropicAdapter(AnthropicConfig(), "anthropic/claude-opus-4-5").price() is not None
    override = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    priced = AnthropicAdapter(AnthropicConfig(), "my-claude", price_override=override)
    assert priced.price() == override
    assert AnthropicAdapter(AnthropicConfig(), "claude-unknown-9").price() is None
    assert priced.runtime_config == AnthropicConfig()
    custom = AnthropicAdapter(AnthropicConfig(), MODEL, provider="anthropic-eu")
    assert custom.provider == "anthropic-eu"


def test_a_reasoning_effort_is_a_thinking_budget_under_max_tokens() -> None:
    def body(**sampling: object) -> dict[str, object]:
        request = ChatRequest(
            model="claude",
            messages=(ChatMessage.user("think"),),
            sampling=SamplingParams(**sampling),  # type: ignore[arg-type]
        )
        return adapter().request_body(request)

    assert body(reasoning_effort="high", max_tokens=32000)["thinking"] == {
        "type": "enabled",
        "budget_tokens": 24576,
    }
    # The budget stays under max_tokens, which counts the thinking.
    assert body(reasoning_effort="high", max_tokens=3000)["thinking"]["budget_tokens"] == 2999  # type: ignore[index]
    assert "thinking" not in body(reasoning_effort="none", max_tokens=3000)
    for sampling, param in (
        ({"max_tokens": 1024}, "max_tokens"),
        ({"max_tokens": 4096, "temperature": 0.2}, "temperature"),
        ({"max_tokens": 4096, "top_k": 5}, "top_k"),
    ):
        with pytest.raises(BadRequest) as refused:
            body(reasoning_effort="low", **sampling)
        assert refused.value.param == param


def test_count_tokens_request_and_answer() -> None:
    request = chat(
        ChatMessage.system("be brief"),
        ChatMessage.user("hi"),
        sampling=SamplingParams(temperature=0.5, max_tokens=9),
        tools=(WEATHER,),
    )
    http = adapter().build_count_request(request, KEY)
    assert http.url.endswith("/v1/messages/count_tokens")
    assert http.headers["x-api-key"] == KEY.expose()
    assert set(orjson.loads(http.body)) == {"model", "messages", "system", "tools"}
    assert adapter().parse_count_response(b'{"input_tokens": 12}') == 12
    for bad in (b'{"input_tokens": -1}', b'{"input_tokens": true}', b"{}"):
        with pytest.raises(ProtocolError, match="no input_tokens"):
            adapter().parse_count_response(bad)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            ToolChoice.named("get_weather"),
            {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        ),
        (ToolChoice.none(), {"type": "none"}),
    ],
)
def test_one_tool_at_a_time(choice: ToolChoice | None, expected: dict[str, object]) -> None:
    request = chat(
        ChatMessage.user("hi"), tools=(WEATHER,), tool_choice=choice, parallel_tool_calls=False
    )
    assert adapter().request_body(request)["tool_choice"] == expected
    allowed = chat(ChatMessage.user("hi"), tools=(WEATHER,), parallel_tool_calls=True)
    assert "tool_choice" not in adapter().request_body(allowed)


def test_openai_only_options_are_refused_naming_them() -> None:
    request = chat(ChatMessage.user("hi"), openai_options={"store": True})
    with pytest.raises(BadRequest, match="only by OpenAI-format") as refused:
        adapter().request_body(request)
    assert refused.value.param == "store"
