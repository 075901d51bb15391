"""The OpenAI adapter: request translation, unary and stream parsing, error refinement."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from rakka_inference.core.errors import (
    BadRequest,
    ContentFiltered,
    ContextLengthExceeded,
    ProtocolError,
    QuotaExhausted,
    RateLimited,
    ServerError,
)
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    ImagePart,
    ResponseFormat,
    SamplingParams,
    TextPart,
)
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.runtimes import OpenAIConfig
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.core.stream import (
    FinishReason,
    TokenChunk,
    TokenLogprob,
    ToolCallDelta,
    aggregate,
)
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolDefinition
from rakka_inference.core.usage import Usage
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.wire.sse import SseDecoder

KEY = Secret("sk-test-0123456789")


def adapter(**config: object) -> OpenAIAdapter:
    return OpenAIAdapter(OpenAIConfig(**config), "gpt-4o")  # type: ignore[arg-type]


def weather_request(*, stream: bool = False) -> ChatRequest:
    return ChatRequest(
        model="gpt-4o",
        messages=(
            ChatMessage.system("You are terse."),
            ChatMessage.user(
                (
                    TextPart(text="What is in this image, and the weather there?"),
                    ImagePart(url="https://example.com/a.png", detail="low"),
                    ImagePart.from_base64("image/png", "iVBORw0KGgo="),
                )
            ),
            ChatMessage.assistant(
                None,
                tool_calls=(
                    ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
                    ToolCall(id="call_2", name="get_weather", arguments='{"city":"Oslo"}'),
                ),
            ),
            ChatMessage.tool("call_1", "18C"),
            ChatMessage.tool("call_2", "4C"),
        ),
        sampling=SamplingParams(temperature=0.2, top_p=0.9, max_tokens=64, stop=("END",), seed=7),
        tools=(
            ToolDefinition(
                name="get_weather",
                description="Weather for a city",
                parameters={"type": "object", "properties": {"city": {"type": "string"}}},
            ),
        ),
        tool_choice=ToolChoice.named("get_weather"),
        response_format=ResponseFormat.json_object(),
        stream=stream,
        user="user-42",
    )


def test_request_translation_follows_the_api_reference() -> None:
    http = adapter().build_request(weather_request(), KEY)
    assert http.method == "POST"
    assert http.url == "https://api.openai.com/v1/chat/completions"
    assert http.headers["authorization"] == "Bearer sk-test-0123456789"
    assert "sk-test" not in repr(http)
    body = orjson.loads(http.body)
    assert body["model"] == "gpt-4o"
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "What is in this image, and the weather there?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
        ],
    }
    assert body["messages"][3] == {"role": "tool", "content": "18C", "tool_call_id": "call_1"}
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {"type": "json_object"}
    assert body["max_completion_tokens"] == 64
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (
        0.2,
        0.9,
        ["END"],
        7,
    )
    assert body["user"] == "user-42"
    assert "stream" not in body


def test_stream_requests_ask_for_usage() -> None:
    body = orjson.loads(adapter().build_request(weather_request(stream=True), KEY).body)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_organization_project_and_custom_endpoint() -> None:
    http = adapter(
        endpoint="http://127.0.0.1:9/v1/", organization="org-1", project="proj-1"
    ).build_request(weather_request(), KEY)
    assert http.url == "http://127.0.0.1:9/v1/chat/completions"
    assert http.headers["openai-organization"] == "org-1"
    assert http.headers["openai-project"] == "proj-1"
    # A compatible server gets the widely understood name.
    assert orjson.loads(http.body)["max_tokens"] == 64


def test_azure_url_and_api_key_header() -> None:
    azure = adapter(
        variant="azure", resource="contoso", deployment="gpt4o-prod", api_version="2024-10-21"
    )
    http = azure.build_request(weather_request(), KEY)
    assert http.url == (
        "https://contoso.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert http.headers["api-key"] == "sk-test-0123456789"
    assert "authorization" not in http.headers
    assert azure.provider == "azure"
    assert azure.endpoint.endswith("/chat/completions")


def test_azure_entra_id_token_is_a_bearer() -> None:
    azure = adapter(
        variant="azure",
        resource="contoso",
        deployment="d",
        api_version="2024-10-21",
        azure_ad_token=SecretRef.from_env("AZURE_AD_TOKEN"),
    )
    http = azure.build_request(weather_request(), Secret("eyJ0eXAi"))
    assert http.headers["authorization"] == "Bearer eyJ0eXAi"
    assert "api-key" not in http.headers


def test_json_schema_response_format_and_choice_modes() -> None:
    request = ChatRequest(
        model="gpt-4o",
        messages=(ChatMessage.user("hi"),),
        tools=(ToolDefinition(name="f", strict=True),),
        tool_choice=ToolChoice.required(),
        response_format=ResponseFormat.from_schema("answer", {"type": "object"}, strict=True),
    )
    body = adapter().request_body(request)
    assert body["tool_choice"] == "required"
    assert body["tools"][0]["function"]["strict"] is True
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }


def test_choices_and_logprobs_are_forwarded_only_when_asked_for() -> None:
    sampling = SamplingParams(n=3, logprobs=True, top_logprobs=0)
    request = ChatRequest(model="gpt-4o", messages=(ChatMessage.user("hi"),), sampling=sampling)
    body = adapter().request_body(request)
    assert (body["n"], body["logprobs"], body["top_logprobs"]) == (3, True, 0)
    plain = adapter().request_body(replace(request, sampling=SamplingParams()))
    assert not {"n", "logprobs", "top_logprobs"} & set(plain)


UNARY = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1677652288,
    "model": "gpt-4o-2024-08-06",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_abc",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
    "usage": {
        "prompt_tokens": 82,
        "completion_tokens": 17,
        "total_tokens": 99,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


def test_unary_response_with_tool_calls_and_usage() -> None:
    completion = aggregate(adapter().parse_response(orjson.dumps(UNARY)))
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("call_abc", "get_weather", '{"city":"Paris"}')
    ]
    assert completion.usage == Usage(input_tokens=82, output_tokens=17, cached_input_tokens=64)


def test_unary_response_must_have_choices() -> None:
    with pytest.raises(ProtocolError):
        adapter().parse_response(b'{"choices": []}')
    with pytest.raises(ProtocolError):
        adapter().parse_response(b"not json")
    with pytest.raises(ProtocolError):
        adapter().parse_response(b"[1]")


STREAM = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
    b'"type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2",'
    b'"type":"function","function":{"name":"g","arguments":"{}"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    b'"function":{"arguments":"{\\"a\\":1}"}}]},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,'
    b'"total_tokens":21,"completion_tokens_details":{"reasoning_tokens":4}}}\n\n'
    b"data: [DONE]\n\n"
)


def parse_stream(stream: bytes) -> tuple[list[TokenChunk], bool]:
    parser = adapter().stream_parser()
    chunks: list[TokenChunk] = []
    for event in SseDecoder().feed(stream):
        chunks.extend(parser.feed(event))
    return chunks, parser.done


def test_stream_with_text_parallel_tool_calls_and_usage() -> None:
    chunks, done = parse_stream(STREAM)
    assert done
    assert chunks[0] == TokenChunk(text="Hel")
    assert chunks[2].tool_calls == (ToolCallDelta(index=0, id="call_1", name="f"),)
    completion = aggregate(chunks)
    assert completion.text == "Hello"
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("call_1", "f", '{"a":1}'),
        ("call_2", "g", "{}"),
    ]
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert completion.usage == Usage(input_tokens=9, output_tokens=12, reasoning_tokens=4)


def test_stream_reasoning_content_and_other_choices() -> None:
    chunks, done = parse_stream(
        b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"think"}},'
        b'{"index":1,"delta":{"content":"other"}}]}\n\n'
    )
    assert chunks == [TokenChunk(reasoning="think"), TokenChunk(text="other", choice=1)]
    assert not done


LOGPROB = {
    "token": " hi",
    "logprob": -0.25,
    "bytes": [32, 104, 105],
    "top_logprobs": [
        {"token": " hi", "logprob": -0.25, "bytes": [32, 104, 105]},
        {"token": " yo", "logprob": -1.5, "bytes": None},
    ],
}
HI = TokenLogprob(
    token=" hi",
    logprob=-0.25,
    bytes=(32, 104, 105),
    top=(
        TokenLogprob(token=" hi", logprob=-0.25, bytes=(32, 104, 105)),
        TokenLogprob(token=" yo", logprob=-1.5),
    ),
)


def test_unary_choices_with_logprobs() -> None:
    second = {
        "index": 1,
        "message": {"role": "assistant", "content": " hi"},
        "logprobs": {"content": [LOGPROB], "refusal": None},
        "finish_reason": "length",
    }
    document = {**UNARY, "choices": [*UNARY["choices"], second]}  # type: ignore[list-item]
    completion = aggregate(adapter().parse_response(orjson.dumps(document)))
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert completion.logprobs == ()
    [other] = completion.more_choices
    assert (other.index, other.text, other.finish_reason) == (1, " hi", FinishReason.LENGTH)
    assert other.logprobs == (HI,)
    assert completion.usage == Usage(input_tokens=82, output_tokens=17, cached_input_tokens=64)


def test_stream_logprobs_per_choice() -> None:
    chunks, _ = parse_stream(
        b'data: {"choices":[{"index":1,"delta":{"content":" hi"},"logprobs":'
        + orjson.dumps({"content": [LOGPROB], "refusal": None})
        + b'},{"index":0,"delta":{},"logprobs":{"content":null},"finish_reason":"stop"}]}\n\n'
    )
    assert chunks == [
        TokenChunk(text=" hi", choice=1, logprobs=(HI,)),
        TokenChunk(finish_reason=FinishReason.STOP),
    ]


@pytest.mark.parametrize(
    ("choice", "match"),
    [
        ({"index": -1}, "index"),
        ({"index": "1"}, "index"),
        ({"logprobs": []}, "logprobs is not an object"),
        ({"logprobs": {"content": {}}}, "content is not an array"),
        ({"logprobs": {"content": ["x"]}}, "record is not an object"),
        ({"logprobs": {"content": [{"logprob": 0}]}}, "no token"),
        ({"logprobs": {"content": [{"token": "a", "logprob": True}]}}, "no logprob"),
        ({"logprobs": {"content": [{"token": "a", "logprob": 0, "bytes": [256]}]}}, "bytes"),
        (
            {"logprobs": {"content": [{"token": "a", "logprob": 0, "top_logprobs": {}}]}},
            "top_logprobs",
        ),
    ],
)
def test_malformed_choices_are_protocol_errors(choice: dict[str, object], match: str) -> None:
    body = {"choices": [{"message": {"content": "x"}, **choice}]}
    with pytest.raises(ProtocolError, match=match):
        adapter().parse_response(orjson.dumps(body))
    with pytest.raises(ProtocolError, match="a choice is not an object"):
        adapter().parse_response(b'{"choices": ["x"]}')


def test_stream_error_event_and_malformed_chunk() -> None:
    parser = adapter().stream_parser()
    [event] = SseDecoder().feed(b'data: {"error":{"message":"The server had an error"}}\n\n')
    with pytest.raises(ServerError, match="The server had an error"):
        parser.feed(event)
    [bad] = SseDecoder().feed(b'data: {"choices": [\n\n')
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parser.feed(bad)


def test_a_stream_error_event_quotes_no_key_url_or_host() -> None:
    message = (
        "Incorrect API key provided: sk-proj-ab***wxyz for "
        "https://myresource.openai.azure.com/openai/deployments/x at 10.0.0.7:8443 " + "x" * 600
    )
    [event] = SseDecoder().feed(b"data: " + orjson.dumps({"error": {"message": message}}) + b"\n\n")
    with pytest.raises(ServerError) as caught:
        adapter().stream_parser().feed(event)
    text = caught.value.message
    assert text.startswith(
        "stream error: Incorrect API key provided: [redacted] for [redacted] at [redacted] x"
    )
    for leak in ("sk-proj", "wxyz", "azure.com", "10.0.0.7"):
        assert leak not in text
    assert len(text) <= len("stream error: ") + 300  # bounded like every upstream message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"error": {"code": "context_length_exceeded", "message": "too long"}},
            ContextLengthExceeded,
        ),
        ({"error": {"code": "content_filter", "message": "filtered"}}, ContentFiltered),
        (
            {
                "error": {
                    "code": "content_filter",
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
            ContentFiltered,
        ),
        ({"error": {"type": "insufficient_quota", "code": "insufficient_quota"}}, QuotaExhausted),
    ],
)
def test_error_refinement(body: dict[str, object], expected: type[Exception]) -> None:
    generic = RateLimited("429 from openai", provider="openai", upstream_status=429)
    refined = adapter().refine_error(generic, orjson.dumps(body))
    assert type(refined) is expected
    assert refined.provider == "openai"
    assert refined.upstream_status == 429


def test_error_refinement_leaves_other_errors_alone() -> None:
    generic = ServerError("500", provider="openai")
    assert adapter().refine_error(generic, b"<html>") is generic
    assert adapter().refine_error(generic, b'{"error": {"code": "other"}}') is generic
    assert adapter().refine_error(generic, b'{"detail": "x"}') is generic


def test_price_resolution() -> None:
    assert adapter().price() is not None
    override = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    priced = OpenAIAdapter(OpenAIConfig(), "my-finetune", price_override=override)
    assert priced.price() == override
    assert OpenAIAdapter(OpenAIConfig(), "unknown-model").price() is None
    assert priced.runtime_config == OpenAIConfig()


def test_top_k_only_where_the_upstream_takes_it() -> None:
    request = ChatRequest(
        model="m", messages=(ChatMessage.user("hi"),), sampling=SamplingParams(top_k=3)
    )
    with pytest.raises(BadRequest, match="top_k is not a parameter") as refused:
        adapter().request_body(request)
    assert refused.value.param == "top_k"
    engine = OpenAIAdapter(OpenAIConfig(endpoint="http://127.0.0.1:1/v1"), "m", accepts_top_k=True)
    assert engine.request_body(request)["top_k"] == 3
