"""The Gemini adapter: request translation (AI Studio and Vertex), unary and stream parsing,
error refinement.

Fixtures follow the shapes of the Gemini API reference (``generateContent`` request and
``GenerateContentResponse``, the ``alt=sse`` stream, the error body); the values are ours.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    ContentFiltered,
    Forbidden,
    InferenceError,
    Overloaded,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    TimeoutPhase,
    Unauthorized,
    UpstreamNotFound,
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
from rakka_inference.core.runtimes import GeminiConfig
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
from rakka_inference.providers import gemini
from rakka_inference.providers.gemini import GeminiAdapter, gemini_schema
from rakka_inference.wire.sse import SseDecoder

KEY = Secret("AIzaSy-test-0123456789")
TOKEN = Secret("ya29.test-access-token")
MODEL = "gemini-2.5-flash"
WEATHER = ToolDefinition(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
MINTED_ID = re.compile(r"call_[0-9a-f]{24}")
VERTEX = {
    "variant": "vertex",
    "project": "my-project",
    "region": "us-central1",
    "credentials": SecretRef.from_file("sa.json"),
}


def adapter(model: str = MODEL, **config: object) -> GeminiAdapter:
    return GeminiAdapter(GeminiConfig(**config), model)  # type: ignore[arg-type]


def vertex(**config: object) -> GeminiAdapter:
    return GeminiAdapter(GeminiConfig(**{**VERTEX, **config}), MODEL)  # type: ignore[arg-type]


def chat(*messages: ChatMessage, **options: object) -> ChatRequest:
    return ChatRequest(model=MODEL, messages=messages, **options)  # type: ignore[arg-type]


def body_of(request: ChatRequest, target: GeminiAdapter | None = None) -> dict[str, Any]:
    return (target or adapter()).request_body(request)


def weather_request(*, stream: bool = False) -> ChatRequest:
    return chat(
        ChatMessage.system("You are terse."),
        ChatMessage.user(
            (
                TextPart(text="What is in this image, and the weather there?"),
                ImagePart(url="https://example.com/photos/a.PNG?size=large", detail="low"),
                ImagePart.from_base64("image/jpeg", "/9j/4AAQ"),
            )
        ),
        ChatMessage.developer("Answer in metric units."),
        ChatMessage.assistant(
            "Checking both cities.",
            tool_calls=(
                ToolCall(id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
                ToolCall(id="call_2", name="get_weather", arguments='{"city": "Oslo"}'),
            ),
        ),
        ChatMessage.tool("call_1", "18C"),
        ChatMessage.tool("call_2", "4C"),
        ChatMessage.user("And tomorrow?"),
        sampling=SamplingParams(
            temperature=0.2,
            top_p=0.9,
            max_tokens=64,
            stop=("END",),
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=0.25,
        ),
        tools=(WEATHER,),
        tool_choice=ToolChoice.named("get_weather"),
        stream=stream,
        user="user-42",
    )


# ---------------------------------------------------------------------- requests


def test_ai_studio_url_and_key_header() -> None:
    studio = adapter()
    http = studio.build_request(weather_request(), KEY)
    assert http.method == "POST"
    assert http.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
    )
    assert http.headers["x-goog-api-key"] == KEY.expose()
    assert http.headers["content-type"] == "application/json"
    assert "authorization" not in http.headers
    assert KEY.expose() not in http.url
    assert "key=" not in http.url
    assert KEY.expose() not in repr(http)
    assert studio.provider == "gemini"
    assert (
        studio.endpoint
        == "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
    )


def test_ai_studio_stream_url_asks_for_sse() -> None:
    http = adapter().build_request(weather_request(stream=True), KEY)
    assert http.url == (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash"
        ":streamGenerateContent?alt=sse"
    )
    assert KEY.expose() not in http.url
    # Streaming is chosen by the URL, not the body.
    assert "stream" not in orjson.loads(http.body)


def test_vertex_url_and_bearer_token() -> None:
    target = vertex()
    base = (
        "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations/"
        "us-central1/publishers/google/models/gemini-2.5-flash"
    )
    unary = target.build_request(weather_request(), TOKEN)
    stream = target.build_request(weather_request(stream=True), TOKEN)
    assert unary.url == f"{base}:generateContent"
    assert stream.url == f"{base}:streamGenerateContent?alt=sse"
    assert target.endpoint == base
    for http in (unary, stream):
        assert http.headers["authorization"] == f"Bearer {TOKEN.expose()}"
        assert "x-goog-api-key" not in http.headers
        assert TOKEN.expose() not in http.url
    # The same body as AI Studio's.
    assert orjson.loads(unary.body) == orjson.loads(
        adapter().build_request(weather_request(), KEY).body
    )


def test_vertex_global_region_and_endpoint_overrides() -> None:
    assert vertex(region="global").endpoint == (
        "https://aiplatform.googleapis.com/v1/projects/my-project/locations/global"
        "/publishers/google/models/gemini-2.5-flash"
    )
    assert vertex(endpoint="http://127.0.0.1:9/").endpoint == (
        "http://127.0.0.1:9/v1/projects/my-project/locations/us-central1"
        "/publishers/google/models/gemini-2.5-flash"
    )
    assert adapter(endpoint="http://127.0.0.1:9").build_request(weather_request(), KEY).url == (
        "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent"
    )
    # An endpoint that names the version already does not get a second one.
    assert adapter(endpoint="http://127.0.0.1:9/v1beta/").endpoint == (
        "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash"
    )


@pytest.mark.parametrize("model", ["models/gemini-2.5-pro", "google/gemini-2.5-pro"])
def test_routing_prefix_is_dropped_from_the_url(model: str) -> None:
    assert adapter(model).endpoint.endswith("/models/gemini-2.5-pro")
    assert GeminiAdapter(GeminiConfig(**VERTEX), model).endpoint.endswith(  # type: ignore[arg-type]
        "/publishers/google/models/gemini-2.5-pro"
    )


def test_vertex_needs_project_and_region() -> None:
    with pytest.raises(ConfigError) as caught:
        GeminiAdapter(GeminiConfig(variant="vertex"), MODEL)
    assert [issue.path for issue in caught.value.issues] == ["project", "region"]


def test_request_translation_follows_the_api_reference() -> None:
    body = body_of(weather_request())
    assert body["systemInstruction"] == {
        "parts": [{"text": "You are terse.\n\nAnswer in metric units."}]
    }
    assert body["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "What is in this image, and the weather there?"},
                {
                    "fileData": {
                        "mimeType": "image/png",
                        "fileUri": "https://example.com/photos/a.PNG?size=large",
                    }
                },
                {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"text": "Checking both cities."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "skip_thought_signature_validator",
                },
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
            ],
        },
        {
            # Both results, then the follow-up question: one user turn.
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"output": "4C"}}},
                {"text": "And tomorrow?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                    },
                }
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    assert body["generationConfig"] == {
        "candidateCount": 1,
        "temperature": 0.2,
        "topP": 0.9,
        "maxOutputTokens": 64,
        "seed": 7,
        "presencePenalty": 0.5,
        "frequencyPenalty": 0.25,
        "stopSequences": ["END"],
    }
    # Nothing else: ``user`` has no Gemini equivalent, and no safety settings were given.
    assert set(body) == {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}


def test_minimal_request_sends_only_what_is_set() -> None:
    assert body_of(chat(ChatMessage.user("hi"))) == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"candidateCount": 1},
    }


def test_same_role_messages_merge_and_empty_text_is_dropped() -> None:
    body = body_of(
        chat(
            ChatMessage.user("one"),
            ChatMessage.user((TextPart(text=""), TextPart(text="two"))),
            ChatMessage.system(""),
            ChatMessage.assistant(""),
            ChatMessage.assistant("three"),
            ChatMessage.assistant("four"),
        )
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "three"}, {"text": "four"}]},
    ]
    assert "systemInstruction" not in body


def test_parallel_calls_in_separate_assistant_turns_each_get_a_signature() -> None:
    body = body_of(
        chat(
            ChatMessage.user("go"),
            ChatMessage.assistant(None, tool_calls=(ToolCall(id="a", name="f", arguments=""),)),
            ChatMessage.tool("a", "done"),
            ChatMessage.assistant(None, tool_calls=(ToolCall(id="b", name="g"),)),
            ChatMessage.tool("b", "ok"),
            tools=(ToolDefinition(name="f"), ToolDefinition(name="g")),
        )
    )
    model_turns = [c["parts"] for c in body["contents"] if c["role"] == "model"]
    assert model_turns == [
        [
            {
                "functionCall": {"name": "f", "args": {}},
                "thoughtSignature": gemini.SKIP_THOUGHT_SIGNATURE,
            }
        ],
        [
            {
                "functionCall": {"name": "g", "args": {}},
                "thoughtSignature": gemini.SKIP_THOUGHT_SIGNATURE,
            }
        ],
    ]
    responses = [c["parts"][0]["functionResponse"]["name"] for c in body["contents"][2::2]]
    assert responses == ["f", "g"]


def test_invalid_tool_call_arguments_are_refused() -> None:
    request = chat(
        ChatMessage.user("go"),
        ChatMessage.assistant(None, tool_calls=(ToolCall(id="a", name="f", arguments="[1]"),)),
    )
    with pytest.raises(BadRequest) as caught:
        body_of(request)
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_tool_result_needs_an_earlier_call() -> None:
    # ChatRequest refuses an orphan result already; the translation does not rely on it.
    with pytest.raises(BadRequest) as caught:
        gemini._conversation((ChatMessage.tool("call_x", "r"),), vertex=False)
    assert caught.value.param == "messages[0].tool_call_id"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice.auto(), {"mode": "AUTO"}),
        (ToolChoice.none(), {"mode": "NONE"}),
        (ToolChoice.required(), {"mode": "ANY"}),
        (ToolChoice.named("get_weather"), {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
def test_tool_choice_modes(choice: ToolChoice, expected: dict[str, object]) -> None:
    body = body_of(chat(ChatMessage.user("hi"), tools=(WEATHER,), tool_choice=choice))
    assert body["toolConfig"] == {"functionCallingConfig": expected}


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = body_of(chat(ChatMessage.user("hi"), tool_choice=ToolChoice.none()))
    assert "toolConfig" not in body
    assert "tools" not in body


def test_tool_without_description_and_default_parameters() -> None:
    body = body_of(chat(ChatMessage.user("hi"), tools=(ToolDefinition(name="ping"),)))
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {"name": "ping", "parameters": {"type": "object", "properties": {}}}
            ]
        }
    ]


STRICT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": ["string", "null"], "enum": ["C", "F", None]},
        "days": {"type": "array", "items": {"type": "object", "additionalProperties": False}},
        # A property that happens to be named like a schema keyword is a property.
        "additionalProperties": {"type": ["integer"]},
        "either": {"anyOf": [{"type": "string"}, {"type": "object", "additionalProperties": {}}]},
        "mixed": {"type": ["string", "integer"]},
    },
    "required": ["city", "unit"],
}
GEMINI_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "nullable": True, "enum": ["C", "F", None]},
        "days": {"type": "array", "items": {"type": "object"}},
        "additionalProperties": {"type": "integer"},
        "either": {"anyOf": [{"type": "string"}, {"type": "object"}]},
        "mixed": {"type": ["string", "integer"]},
    },
    "required": ["city", "unit"],
}


def test_schemas_are_adjusted_to_the_openapi_subset() -> None:
    assert gemini_schema(STRICT_SCHEMA) == GEMINI_SCHEMA
    tool = ToolDefinition(name="f", parameters=STRICT_SCHEMA, strict=True)
    body = body_of(chat(ChatMessage.user("hi"), tools=(tool,)))
    assert body["tools"][0]["functionDeclarations"][0]["parameters"] == GEMINI_SCHEMA
    # Not a schema where one is expected: left for the upstream to judge.
    assert gemini_schema({"properties": {"a": True}, "anyOf": [1]}) == {
        "properties": {"a": True},
        "anyOf": [1],
    }


def test_json_response_formats() -> None:
    json_object = body_of(
        chat(ChatMessage.user("hi"), response_format=ResponseFormat.json_object())
    )
    assert json_object["generationConfig"] == {
        "candidateCount": 1,
        "responseMimeType": "application/json",
    }
    json_schema = body_of(
        chat(
            ChatMessage.user("hi"),
            response_format=ResponseFormat.from_schema("answer", STRICT_SCHEMA, strict=True),
        )
    )
    assert json_schema["generationConfig"] == {
        "candidateCount": 1,
        "responseMimeType": "application/json",
        "responseSchema": GEMINI_SCHEMA,
    }
    text = body_of(chat(ChatMessage.user("hi"), response_format=ResponseFormat.text()))
    assert text["generationConfig"] == {"candidateCount": 1}


@pytest.mark.parametrize(
    ("url", "mime_type"),
    [
        ("https://example.com/a.png", "image/png"),
        ("https://example.com/a.jpg", "image/jpeg"),
        ("http://example.com/dir.v2/a.JPEG#frag", "image/jpeg"),
        ("https://example.com/a.webp?sig=abc.png", "image/webp"),
        ("https://example.com/a.gif", "image/gif"),
        ("https://example.com/a.heic", "image/heic"),
        ("https://example.com/a.heif", "image/heif"),
    ],
)
def test_image_url_type_comes_from_its_extension(url: str, mime_type: str) -> None:
    body = body_of(chat(ChatMessage.user((ImagePart(url=url),))))
    assert body["contents"][0]["parts"] == [{"fileData": {"mimeType": mime_type, "fileUri": url}}]


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/a",
        "https://example.com/a.bmp",
        "https://example.com/images.d/photo",
        "https://generativelanguage.googleapis.com/v1beta/files/abc123",
        "ftp://example.com/a.png",
        "gs://bucket/a.png",
    ],
)
def test_image_url_of_unknown_type_is_refused(url: str) -> None:
    request = chat(ChatMessage.user((TextPart(text="look"), ImagePart(url=url))))
    with pytest.raises(BadRequest) as caught:
        body_of(request)
    assert caught.value.param == "messages[0].content[1].image_url"


def test_vertex_takes_cloud_storage_uris() -> None:
    body = body_of(chat(ChatMessage.user((ImagePart(url="gs://bucket/a.png"),))), vertex())
    assert body["contents"][0]["parts"] == [
        {"fileData": {"mimeType": "image/png", "fileUri": "gs://bucket/a.png"}}
    ]
    with pytest.raises(BadRequest, match="gs://"):
        body_of(chat(ChatMessage.user((ImagePart(url="s3://bucket/a.png"),))), vertex())


def test_malformed_data_url_is_refused() -> None:
    request = chat(ChatMessage.user((ImagePart(url="data:image/png,abc"),)))
    with pytest.raises(BadRequest) as caught:
        body_of(request)
    assert caught.value.param == "messages[0].content[0].image_url"


def test_safety_settings_pass_through_unchanged() -> None:
    settings = [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_NONE"},
    ]
    target = GeminiAdapter(GeminiConfig(), MODEL, safety_settings=settings)
    assert body_of(chat(ChatMessage.user("hi")), target)["safetySettings"] == settings


def test_choices_and_logprobs_translate_to_the_generation_config() -> None:
    def generation(**sampling: Any) -> dict[str, Any]:
        body = body_of(chat(ChatMessage.user("hi"), sampling=SamplingParams(**sampling)))
        config: dict[str, Any] = body["generationConfig"]
        return config

    assert generation(n=3, logprobs=True, top_logprobs=4) == {
        "candidateCount": 3,
        "responseLogprobs": True,
        "logprobs": 4,
    }
    assert generation(logprobs=True, top_logprobs=0) == {
        "candidateCount": 1,
        "responseLogprobs": True,
    }


def test_refused_requests() -> None:
    with pytest.raises(BadRequest) as caught:
        body_of(chat(ChatMessage.system("only instructions")))
    assert caught.value.param == "messages"


# ---------------------------------------------------------------------- unary


UNARY = {
    "candidates": [
        {
            "content": {
                "parts": [
                    {"text": "Weighing the question.", "thought": True},
                    {"text": "Paris is "},
                    {"text": "18C.", "thoughtSignature": "c2lnbmF0dXJl"},
                ],
                "role": "model",
            },
            "finishReason": "STOP",
            "index": 0,
            "safetyRatings": [
                {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
            ],
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 120,
        "candidatesTokenCount": 9,
        "totalTokenCount": 169,
        "cachedContentTokenCount": 64,
        "thoughtsTokenCount": 40,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "mfPRaL2aBo-bz7IPjYLZyQs",
}


def test_unary_text_thoughts_and_usage() -> None:
    [chunk] = adapter().parse_response(orjson.dumps(UNARY))
    assert chunk == TokenChunk(
        text="Paris is 18C.",
        reasoning="Weighing the question.",
        usage=Usage(
            input_tokens=120, output_tokens=49, cached_input_tokens=64, reasoning_tokens=40
        ),
        finish_reason=FinishReason.STOP,
    )
    assert chunk.usage is not None
    assert chunk.usage.total_tokens == UNARY["usageMetadata"]["totalTokenCount"]  # type: ignore[index]


PARALLEL_CALLS = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                        "thoughtSignature": "c2ln",
                    },
                    {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}},
                    {"functionCall": {"name": "get_time"}},
                ],
            },
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 15, "totalTokenCount": 45},
}


def test_unary_parallel_function_calls_get_minted_ids() -> None:
    completion = aggregate(adapter().parse_response(orjson.dumps(PARALLEL_CALLS)))
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"Oslo"}'),
        ("get_time", "{}"),
    ]
    ids = [call.id for call in completion.tool_calls]
    assert all(MINTED_ID.fullmatch(call_id) for call_id in ids)
    assert len(set(ids)) == 3
    assert completion.usage == Usage(input_tokens=30, output_tokens=15)


def test_parallel_calls_round_trip_into_the_next_request() -> None:
    completion = aggregate(adapter().parse_response(orjson.dumps(PARALLEL_CALLS)))
    calls = completion.tool_calls
    request = chat(
        ChatMessage.user("Weather in Paris and Oslo, and the time?"),
        ChatMessage.assistant(None, tool_calls=calls),
        *(ChatMessage.tool(call.id, f"result {n}") for n, call in enumerate(calls)),
        tools=(WEATHER, ToolDefinition(name="get_time")),
    )
    contents = body_of(request)["contents"]
    assert [part["functionCall"] for part in contents[1]["parts"]] == [
        {"name": "get_weather", "args": {"city": "Paris"}},
        {"name": "get_weather", "args": {"city": "Oslo"}},
        {"name": "get_time", "args": {}},
    ]
    assert contents[2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"output": "result 0"}}},
            {"functionResponse": {"name": "get_weather", "response": {"output": "result 1"}}},
            {"functionResponse": {"name": "get_time", "response": {"output": "result 2"}}},
        ],
    }


def test_upstream_call_ids_are_kept() -> None:
    document = {
        "candidates": [
            {"content": {"parts": [{"functionCall": {"id": "fc-7", "name": "f", "args": {}}}]}}
        ]
    }
    [chunk] = adapter().parse_response(orjson.dumps(document))
    assert chunk.tool_calls == (ToolCallDelta(index=0, id="fc-7", name="f", arguments="{}"),)
    # No finishReason yet: a unary answer can still be read, its finish is unknown.
    assert chunk.finish_reason is None


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("OTHER", FinishReason.STOP),
        ("MALFORMED_FUNCTION_CALL", FinishReason.STOP),
        ("SOMETHING_NEW", FinishReason.STOP),
    ],
)
def test_finish_reasons(reason: str, expected: FinishReason) -> None:
    document = {"candidates": [{"content": {"parts": []}, "finishReason": reason}]}
    [chunk] = adapter().parse_response(orjson.dumps(document))
    assert chunk.finish_reason is expected
    assert chunk.usage is None


@pytest.mark.parametrize(
    "reason",
    ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"],
)
def test_filtered_finish_raises_content_filtered(reason: str) -> None:
    document = {
        "candidates": [
            {
                "finishReason": reason,
                "safetyRatings": [
                    {
                        "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                        "probability": "HIGH",
                        "blocked": True,
                    },
                    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "LOW"},
                ],
            }
        ]
    }
    with pytest.raises(ContentFiltered, match=reason) as caught:
        adapter().parse_response(orjson.dumps(document))
    assert "HARM_CATEGORY_DANGEROUS_CONTENT" in caught.value.message
    assert "HARM_CATEGORY_HARASSMENT" not in caught.value.message
    assert caught.value.provider == "gemini"


BLOCKED_PROMPT = {
    "promptFeedback": {
        "blockReason": "SAFETY",
        "safetyRatings": [
            {"category": "HARM_CATEGORY_HARASSMENT", "probability": "HIGH", "blocked": True}
        ],
    },
    "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8},
}


def test_blocked_prompt_raises_content_filtered() -> None:
    with pytest.raises(ContentFiltered, match=r"blocked the prompt: SAFETY \(HARM_CATEGORY"):
        adapter().parse_response(orjson.dumps(BLOCKED_PROMPT))


def test_unary_response_must_have_a_candidate() -> None:
    for body in (
        b"{}",
        b'{"candidates": []}',
        b'{"candidates": ["x"]}',
    ):
        with pytest.raises(ProtocolError, match="no candidates"):
            adapter().parse_response(body)
    with pytest.raises(ProtocolError, match="malformed JSON"):
        adapter().parse_response(b"not json")
    with pytest.raises(ProtocolError, match="not an object"):
        adapter().parse_response(b"[1]")
    with pytest.raises(ProtocolError, match="index"):
        adapter().parse_response(b'{"candidates": [{"index": -1}]}')


def test_malformed_parts_and_usage() -> None:
    nameless: dict[str, Any] = {
        "candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]
    }
    with pytest.raises(ProtocolError, match="functionCall without a name"):
        adapter().parse_response(orjson.dumps(nameless))
    for bad in ("12", -1, True, 1.5):
        document = {**UNARY, "usageMetadata": {"promptTokenCount": bad}}
        with pytest.raises(ProtocolError, match="promptTokenCount"):
            adapter().parse_response(orjson.dumps(document))


def test_unknown_fields_and_parts_are_ignored() -> None:
    document = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        "not a part",
                        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                        {"executableCode": {"language": "PYTHON", "code": "print(1)"}},
                        {"text": "done", "futureField": {"x": 1}},
                    ],
                },
                "finishReason": "STOP",
                "citationMetadata": {"citationSources": []},
                "avgLogprobs": -0.1,
            },
            {"index": 1, "content": {"parts": [{"text": "another candidate"}]}},
        ],
        "futureTopLevel": [1, 2, 3],
    }
    assert adapter().parse_response(orjson.dumps(document)) == [
        TokenChunk(text="done", finish_reason=FinishReason.STOP),
        TokenChunk(text="another candidate", choice=1),
    ]


LOGPROBS_RESULT = {
    "topCandidates": [
        {
            "candidates": [
                {"token": "Hi", "tokenId": 7, "logProbability": -0.25},
                {"token": "Yo", "tokenId": 9, "logProbability": -2},
            ]
        },
        {"candidates": [{"token": "!", "tokenId": 3}]},
    ],
    "chosenCandidates": [
        {"token": "Hi", "tokenId": 7, "logProbability": -0.25},
        {"token": "!", "tokenId": 3},  # a zero log probability, left out as proto JSON does
    ],
    "logProbabilitySum": -0.25,
}


def test_candidates_with_logprobs_and_their_own_calls() -> None:
    call = {"functionCall": {"name": "f", "args": {}}}
    document = {
        "candidates": [
            {"index": 1, "content": {"parts": [call]}, "finishReason": "STOP"},
            {
                "content": {"parts": [{"text": "Hi!"}]},
                "finishReason": "MAX_TOKENS",
                "logprobsResult": LOGPROBS_RESULT,
            },
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 6},
    }
    completion = aggregate(adapter().parse_response(orjson.dumps(document)))
    assert (completion.text, completion.finish_reason) == ("Hi!", FinishReason.LENGTH)
    assert completion.logprobs == (
        TokenLogprob(
            token="Hi",
            logprob=-0.25,
            bytes=(72, 105),
            top=(
                TokenLogprob(token="Hi", logprob=-0.25, bytes=(72, 105)),
                TokenLogprob(token="Yo", logprob=-2.0, bytes=(89, 111)),
            ),
        ),
        TokenLogprob(
            token="!",
            logprob=0.0,
            bytes=(33,),
            top=(TokenLogprob(token="!", logprob=0.0, bytes=(33,)),),
        ),
    )
    [other] = completion.more_choices
    assert (other.index, other.finish_reason) == (1, FinishReason.TOOL_CALLS)
    assert [(c.name, c.arguments) for c in other.tool_calls] == [("f", "{}")]
    assert completion.usage == Usage(input_tokens=3, output_tokens=6)


@pytest.mark.parametrize(
    ("result", "match"),
    [
        ([], "logprobsResult is not an object"),
        ({"chosenCandidates": {"token": "a"}}, "no arrays"),
        ({"chosenCandidates": ["x"]}, "not an object"),
        ({"chosenCandidates": [{"token": 1}]}, "no token"),
        ({"chosenCandidates": [{"token": "a", "logProbability": "low"}]}, "log probability"),
    ],
)
def test_malformed_logprobs_are_protocol_errors(result: object, match: str) -> None:
    document = {"candidates": [{"content": {"parts": [{"text": "a"}]}, "logprobsResult": result}]}
    with pytest.raises(ProtocolError, match=match):
        adapter().parse_response(orjson.dumps(document))


# ---------------------------------------------------------------------- streams


def sse(*documents: dict[str, Any]) -> bytes:
    """An ``alt=sse`` body: one event per document, CRLF line ends as Google sends them."""
    return b"".join(b"data: " + orjson.dumps(d) + b"\r\n\r\n" for d in documents)


def parse_stream(
    stream: bytes, target: GeminiAdapter | None = None
) -> tuple[list[TokenChunk], bool]:
    parser = (target or adapter()).stream_parser()
    chunks: list[TokenChunk] = []
    for event in SseDecoder().feed(stream):
        chunks.extend(parser.feed(event))
    return chunks, parser.done


def text_event(text: str, usage: dict[str, int] | None = None, **candidate: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, **candidate}],
        "modelVersion": MODEL,
        "responseId": "r-1",
    }
    if usage is not None:
        document["usageMetadata"] = usage
    return document


FINAL_USAGE = {
    "promptTokenCount": 52,
    "cachedContentTokenCount": 32,
    "candidatesTokenCount": 14,
    "thoughtsTokenCount": 20,
    "totalTokenCount": 86,
}
STREAM = sse(
    {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "Plan: answer.", "thought": True}]}}
        ],
        "usageMetadata": {
            "promptTokenCount": 52,
            "cachedContentTokenCount": 32,
            "thoughtsTokenCount": 20,
            "totalTokenCount": 72,
        },
    },
    # A report that leaves some counts out does not lower them.
    text_event(
        "The sky", {"promptTokenCount": 52, "candidatesTokenCount": 2, "totalTokenCount": 54}
    ),
    text_event(" is", {**FINAL_USAGE, "candidatesTokenCount": 5}),
    # A retransmitted report must not count twice.
    text_event("", {**FINAL_USAGE, "candidatesTokenCount": 5}),
    text_event(" blue.", FINAL_USAGE, finishReason="STOP"),
)


def test_stream_text_thoughts_and_running_total_usage() -> None:
    chunks, done = parse_stream(STREAM)
    assert done
    assert chunks[0] == TokenChunk(
        reasoning="Plan: answer.",
        usage=Usage(input_tokens=52, cached_input_tokens=32, output_tokens=20, reasoning_tokens=20),
    )
    assert chunks[1] == TokenChunk(text="The sky", usage=Usage(output_tokens=2))
    increments = [chunk.usage for chunk in chunks if chunk.usage is not None]
    total = Usage()
    for increment in increments:
        total = total + increment
    final = Usage(input_tokens=52, cached_input_tokens=32, output_tokens=34, reasoning_tokens=20)
    assert total == final
    assert total.total_tokens == FINAL_USAGE["totalTokenCount"]
    completion = aggregate(chunks)
    assert completion.text == "The sky is blue."
    assert completion.reasoning == "Plan: answer."
    assert completion.finish_reason is FinishReason.STOP
    assert completion.usage == final
    # The duplicate report added nothing, so it produced no chunk at all.
    assert len(chunks) == 4


def test_stream_chunking_does_not_change_the_result() -> None:
    expected = aggregate(parse_stream(STREAM)[0])
    for cut in range(1, len(STREAM), 7):
        parser = adapter().stream_parser()
        decoder = SseDecoder()
        chunks: list[TokenChunk] = []
        for piece in (STREAM[:cut], STREAM[cut:]):
            for event in decoder.feed(piece):
                chunks.extend(parser.feed(event))
        assert aggregate(chunks) == expected
        assert parser.done


def test_stream_parallel_function_calls_across_events() -> None:
    chunks, done = parse_stream(
        sse(
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"text": "Checking.", "thought": True}],
                        }
                    }
                ]
            },
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {
                                    "functionCall": {
                                        "name": "get_weather",
                                        "args": {"city": "Paris"},
                                    },
                                    "thoughtSignature": "c2ln",
                                }
                            ],
                        }
                    }
                ]
            },
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [
                                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}
                            ],
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {
                    "promptTokenCount": 40,
                    "candidatesTokenCount": 24,
                    "thoughtsTokenCount": 6,
                    "totalTokenCount": 70,
                },
            },
        )
    )
    assert done
    assert [delta.index for chunk in chunks for delta in chunk.tool_calls] == [0, 1]
    completion = aggregate(chunks)
    assert completion.finish_reason is FinishReason.TOOL_CALLS
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("get_weather", '{"city":"Paris"}'),
        ("get_weather", '{"city":"Oslo"}'),
    ]
    assert all(MINTED_ID.fullmatch(call.id) for call in completion.tool_calls)
    assert completion.tool_calls[0].id != completion.tool_calls[1].id
    assert completion.usage == Usage(input_tokens=40, output_tokens=30, reasoning_tokens=6)


def test_stream_is_not_done_before_a_finish_reason() -> None:
    chunks, done = parse_stream(sse(text_event("Hel"), text_event("lo")))
    assert not done
    assert chunks == [TokenChunk(text="Hel"), TokenChunk(text="lo")]


def test_stream_zero_usage_is_reported_once() -> None:
    zero = {"promptTokenCount": 0, "totalTokenCount": 0}
    chunks, _ = parse_stream(sse({"usageMetadata": zero}, {"usageMetadata": zero}))
    assert chunks == [TokenChunk(usage=Usage())]
    assert aggregate(chunks).usage == Usage()


def test_stream_finish_with_no_parts_and_max_tokens() -> None:
    chunks, done = parse_stream(
        sse(text_event("cut"), {"candidates": [{"finishReason": "MAX_TOKENS", "index": 0}]})
    )
    assert done
    assert aggregate(chunks).finish_reason is FinishReason.LENGTH


def test_stream_ignores_unknown_fields() -> None:
    chunks, _ = parse_stream(
        sse(
            {"futureField": True},
            {"candidates": [{"index": 1, "content": {"parts": [{"text": "other"}]}}]},
            {"candidates": [{"content": {"parts": [{"inlineData": {"data": "AA=="}}]}}]},
            {"candidates": [{"content": {"parts": [{"text": "yes"}]}, "groundingMetadata": {}}]},
        )
    )
    assert chunks == [TokenChunk(text="other", choice=1), TokenChunk(text="yes")]


def test_a_stream_of_candidates_is_done_when_every_one_has_finished() -> None:
    def event(*candidates: dict[str, Any], output: int) -> dict[str, Any]:
        usage = {"promptTokenCount": 4, "candidatesTokenCount": output}
        return {"candidates": list(candidates), "usageMetadata": usage}

    call = {"functionCall": {"name": "f", "args": {}}}
    parser = adapter().stream_parser(2)
    events = SseDecoder().feed(
        sse(
            event(
                {"content": {"parts": [{"text": "A"}]}},
                {"index": 1, "content": {"parts": [call]}},
                output=2,
            ),
            event({"content": {"parts": [{"text": "B"}]}, "finishReason": "STOP"}, output=3),
            event({"index": 1, "content": {"parts": [call]}, "finishReason": "STOP"}, output=5),
        )
    )
    first, second = parser.feed(events[0]), parser.feed(events[1])
    assert [(c.choice, c.text, c.usage) for c in first] == [
        (0, "A", Usage(input_tokens=4, output_tokens=2)),
        (1, "", None),
    ]
    assert second == [
        TokenChunk(text="B", finish_reason=FinishReason.STOP, usage=Usage(output_tokens=1))
    ]
    assert not parser.done  # candidate 1 is still speaking
    last = parser.feed(events[2])
    assert [call.index for call in last[0].tool_calls] == [1]  # its second call
    assert (last[0].choice, last[0].finish_reason) == (1, FinishReason.TOOL_CALLS)
    assert parser.done


def test_stream_safety_finish_and_blocked_prompt() -> None:
    parser = adapter().stream_parser()
    [first, filtered] = SseDecoder().feed(
        sse(text_event("Here is how"), text_event("", finishReason="SAFETY"))
    )
    assert parser.feed(first) == [TokenChunk(text="Here is how")]
    with pytest.raises(ContentFiltered, match="SAFETY"):
        parser.feed(filtered)
    [blocked] = SseDecoder().feed(sse(BLOCKED_PROMPT))
    with pytest.raises(ContentFiltered, match="blocked the prompt"):
        adapter().stream_parser().feed(blocked)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"},
            ServerError,
        ),
        (
            {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"},
            ServerError,
        ),
        (
            {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"},
            RateLimited,
        ),
        ({"code": 504, "status": "DEADLINE_EXCEEDED"}, Timeout),
        ({"code": 499, "status": "CANCELLED"}, ServerError),
        ({"message": "no status"}, ServerError),
    ],
)
def test_stream_error_event_raises_its_typed_error(
    error: dict[str, object], expected: type[InferenceError]
) -> None:
    [event] = SseDecoder().feed(sse({"error": error}))
    with pytest.raises(expected) as caught:
        adapter().stream_parser().feed(event)
    assert type(caught.value) is expected
    assert caught.value.provider == "gemini"
    if isinstance(caught.value, Timeout):
        assert caught.value.phase is TimeoutPhase.FIRST_BYTE
    if "message" in error:
        assert str(error["message"]) in caught.value.message


def test_stream_error_keeps_the_retry_delay_and_cleans_the_message() -> None:
    error = {
        "code": 429,
        "message": "Quota exceeded\nfor metric.\x00",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
    }
    [event] = SseDecoder().feed(sse({"error": error}))
    with pytest.raises(RateLimited) as caught:
        adapter().stream_parser().feed(event)
    assert caught.value.retry_after == 37.0
    assert caught.value.message.endswith("Quota exceeded for metric.")


def test_error_document_in_a_unary_answer() -> None:
    body = orjson.dumps({"error": {"code": 503, "status": "UNAVAILABLE", "message": ""}})
    with pytest.raises(ServerError, match=r"UNAVAILABLE in a 200 answer$"):
        adapter().parse_response(body)


def test_an_error_status_that_is_not_an_identifier_is_not_quoted() -> None:
    status = "see https://internal.example.com/status?key=AIzaSyD-0123456789abcdef"
    body = orjson.dumps({"error": {"code": 503, "status": status, "message": ""}})
    with pytest.raises(ServerError) as caught:
        adapter().parse_response(body)
    assert caught.value.message.endswith("error UNKNOWN in a 200 answer")


@pytest.mark.parametrize("stream", [False, True])
def test_error_documents_quote_no_keys_urls_or_hosts(stream: bool) -> None:
    error = {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "API key not valid: AIzaSyD-0123456789abcdef. See "
        "https://generativelanguage.googleapis.com/v1beta via 172.16.0.9:443",
    }

    def parse() -> object:
        if stream:
            [event] = SseDecoder().feed(sse({"error": error}))
            return adapter().stream_parser().feed(event)
        return adapter().parse_response(orjson.dumps({"error": error}))

    with pytest.raises(BadRequest) as caught:
        parse()
    assert caught.value.message.endswith(
        "INVALID_ARGUMENT in a 200 answer: API key not valid: [redacted]. See [redacted] "
        "via [redacted]"
    )


def test_stream_malformed_event() -> None:
    parser = adapter().stream_parser()
    [bad] = SseDecoder().feed(b'data: {"candidates": [\r\n\r\n')
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parser.feed(bad)
    [not_object] = SseDecoder().feed(b"data: [1]\r\n\r\n")
    with pytest.raises(ProtocolError, match="not an object"):
        parser.feed(not_object)


def test_vertex_stream_parses_the_same() -> None:
    chunks, done = parse_stream(STREAM, vertex())
    assert done
    assert aggregate(chunks) == aggregate(parse_stream(STREAM)[0])


# ---------------------------------------------------------------------- errors


def error_body(status: str, *details: object, code: int = 400) -> bytes:
    error: dict[str, object] = {"code": code, "message": "upstream says no", "status": status}
    if details:
        error["details"] = list(details)
    return orjson.dumps({"error": error})


@pytest.mark.parametrize(
    ("generic", "status", "expected"),
    [
        (BadRequest("400", upstream_status=400), "INVALID_ARGUMENT", BadRequest),
        (BadRequest("400", upstream_status=400), "FAILED_PRECONDITION", BadRequest),
        (ServerError("429?", upstream_status=429), "RESOURCE_EXHAUSTED", RateLimited),
        (BadRequest("503?", upstream_status=503), "UNAVAILABLE", ServerError),
        (ServerError("500", upstream_status=500), "INTERNAL", ServerError),
        (ServerError("502", upstream_status=502), "INVALID_ARGUMENT", BadRequest),
        (BadRequest("403?", upstream_status=400), "PERMISSION_DENIED", Forbidden),
        (BadRequest("401?", upstream_status=400), "UNAUTHENTICATED", Unauthorized),
        (BadRequest("404?", upstream_status=400), "NOT_FOUND", UpstreamNotFound),
        (ServerError("504", upstream_status=504), "DEADLINE_EXCEEDED", Timeout),
        (Overloaded("503", upstream_status=503), "UNAVAILABLE", Overloaded),
    ],
)
def test_error_refinement_by_status(
    generic: InferenceError, status: str, expected: type[InferenceError]
) -> None:
    generic.provider = "gemini"
    generic.param = "contents" if isinstance(generic, BadRequest) else None
    refined = adapter().refine_error(generic, error_body(status))
    assert type(refined) is expected
    assert refined.provider == "gemini"
    assert refined.upstream_status == generic.upstream_status
    assert refined.message == generic.message
    if expected is BadRequest and isinstance(generic, BadRequest):
        assert refined.param == "contents"
    if isinstance(refined, Timeout):
        assert refined.phase is TimeoutPhase.FIRST_BYTE


def test_rate_limit_keeps_retry_after_or_reads_retry_info() -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}
    quota = {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generate_content_requests", "quotaId": "PerMinute"}],
    }
    body = error_body("RESOURCE_EXHAUSTED", quota, retry_info, code=429)
    from_header = RateLimited("429", provider="gemini", upstream_status=429, retry_after=7.0)
    assert adapter().refine_error(from_header, body).retry_after == 7.0
    from_body = RateLimited("429", provider="gemini", upstream_status=429)
    refined = adapter().refine_error(from_body, body)
    assert isinstance(refined, RateLimited)
    assert refined.retry_after == 1.5
    # A generic error of another class takes the delay along.
    other = adapter().refine_error(ServerError("429?", upstream_status=429), body)
    assert type(other) is RateLimited
    assert other.retry_after == 1.5
    bad_delay = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}
    unparsed = adapter().refine_error(
        RateLimited("429"), error_body("RESOURCE_EXHAUSTED", bad_delay, {"@type": 1}, "x")
    )
    assert unparsed.retry_after is None


def test_invalid_api_key_is_unauthorized() -> None:
    body = error_body(
        "INVALID_ARGUMENT",
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "API_KEY_INVALID",
            "domain": "googleapis.com",
        },
    )
    refined = adapter().refine_error(BadRequest("400", provider="gemini", param="x"), body)
    assert type(refined) is Unauthorized
    assert refined.param is None
    other_reason = error_body(
        "INVALID_ARGUMENT", {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "X"}
    )
    generic = BadRequest("400", provider="gemini")
    assert adapter().refine_error(generic, other_reason) is generic


def test_error_refinement_leaves_other_errors_alone() -> None:
    generic = ServerError("500", provider="gemini")
    assert adapter().refine_error(generic, b"<html>") is generic
    assert adapter().refine_error(generic, b'{"error": "text"}') is generic
    assert adapter().refine_error(generic, b'{"detail": "x"}') is generic
    assert adapter().refine_error(generic, error_body("SOMETHING_NEW")) is generic
    assert adapter().refine_error(generic, b"[]") is generic


def test_error_body_wrapped_in_a_list() -> None:
    body = b"[" + error_body("PERMISSION_DENIED", code=403) + b"]"
    assert type(adapter().refine_error(BadRequest("403?"), body)) is Forbidden


# ---------------------------------------------------------------------- config


def test_price_resolution_and_runtime_config() -> None:
    assert adapter().price() is not None
    assert adapter("models/gemini-2.5-pro").price() == adapter("gemini-2.5-pro").price()
    override = ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)
    priced = GeminiAdapter(GeminiConfig(), "my-tuned-model", price_override=override)
    assert priced.price() == override
    assert GeminiAdapter(GeminiConfig(), "unknown-model").price() is None
    assert priced.runtime_config == GeminiConfig()
    assert GeminiAdapter(GeminiConfig(), MODEL, provider="vertex-eu").provider == "vertex-eu"


def test_a_reasoning_effort_is_a_thinking_budget() -> None:
    def config(effort: str) -> object:
        request = chat(ChatMessage.user("think"), sampling=SamplingParams(reasoning_effort=effort))
        return adapter().request_body(request)["generationConfig"]["thinkingConfig"]

    assert config("medium") == {"thinkingBudget": 8192, "includeThoughts": True}
    assert config("none") == {"thinkingBudget": 0, "includeThoughts": False}


def test_count_tokens_request_on_ai_studio_and_vertex() -> None:
    request = chat(ChatMessage.system("be brief"), ChatMessage.user("hi"))
    studio = adapter().build_count_request(request, KEY)
    assert studio.url.endswith(f"/models/{MODEL}:countTokens")
    inner = orjson.loads(studio.body)["generateContentRequest"]
    assert inner["model"] == f"models/{MODEL}"
    assert "systemInstruction" in inner
    on_vertex = vertex().build_count_request(request, KEY)
    assert on_vertex.url.endswith(":countTokens")
    assert set(orjson.loads(on_vertex.body)) <= {"contents", "systemInstruction", "tools"}
    assert adapter().parse_count_response(b'{"totalTokens": 7}') == 7


def test_one_tool_at_a_time_is_refused() -> None:
    tool = ToolDefinition(name="f", description="", parameters={"type": "object"})
    request = chat(ChatMessage.user("hi"), tools=(tool,), parallel_tool_calls=False)
    with pytest.raises(BadRequest, match="one tool at a time") as refused:
        adapter().request_body(request)
    assert refused.value.param == "parallel_tool_calls"
    adapter().request_body(chat(ChatMessage.user("hi"), tools=(tool,), parallel_tool_calls=True))


def test_top_k_is_gemini_top_k() -> None:
    body = body_of(chat(ChatMessage.user("hi"), sampling=SamplingParams(top_k=7)))
    assert body["generationConfig"]["topK"] == 7
