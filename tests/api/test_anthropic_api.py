"""The Anthropic Messages edge: request JSON to core values, results to Messages JSON and SSE.

Rendered output is checked by the official ``anthropic`` SDK's own models, and streams are
folded by the SDK's own accumulator, which proves their shape and their meaning.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from rakka_inference.api.anthropic_request import parse_messages_request
from rakka_inference.api.anthropic_response import (
    MessageStreamRenderer,
    anthropic_error_json,
    anthropic_usage_json,
    message_id,
    message_json,
)
from rakka_inference.core.errors import (
    BadRequest,
    CircuitOpen,
    ClientUnauthorized,
    Forbidden,
    InferenceError,
    InternalError,
    ModelNotFound,
    OperationRefused,
    PayloadTooLarge,
    ProtocolError,
    QuotaExhausted,
    RateLimited,
    RequestCancelled,
    ServerError,
    StreamInterrupted,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.messages import ImagePart, ReasoningBlock, Role, TextPart
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolChoiceMode
from rakka_inference.core.usage import Usage

RID = "req_0123456789abcdef0123456789abcdef"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}
USER = [{"role": "user", "content": "hi"}]
EVENTS: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)


def parse(**document: Any) -> Any:
    return parse_messages_request(orjson.dumps(document), request_id=RID)


def request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "max_tokens": 16, "messages": USER, **fields}


# ---------------------------------------------------------------------- parsing


def test_a_full_request_maps_to_the_core() -> None:
    parsed = parse(
        model="claude",
        max_tokens=100,
        system="Be brief.",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"a": 1}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather"},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and?"},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": True,
                        "content": [{"type": "text", "text": "no such city"}],
                    },
                ],
            },
        ],
        temperature=0.5,
        top_p=0.9,
        top_k=None,
        stop_sequences=["END"],
        stream=True,
        tools=[{**TOOL, "description": "Weather", "type": "custom", "strict": True}],
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        metadata={"user_id": "u-1", "other": 1},
        service_tier="auto",
        thinking={"type": "disabled"},
        cache_control={"type": "ephemeral"},
        output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}},
    )
    assert parsed.model == "claude"
    assert parsed.request_id == RID
    assert parsed.stream
    assert parsed.include_usage
    assert parsed.user == "u-1"
    sampling = parsed.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (100, 0.5, 0.9)
    assert sampling.stop == ("END",)
    assert parsed.tool_choice == ToolChoice.named("get_weather")
    assert parsed.tools[0].description == "Weather"
    assert parsed.tools[0].strict is True
    assert parsed.response_format is not None
    assert parsed.response_format.json_schema == {"type": "object"}
    roles = [m.role for m in parsed.messages]
    assert roles == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL, Role.USER]
    system, user, assistant, result, failed, follow_up = parsed.messages
    assert system.content == "Be brief."
    assert user.content == (
        TextPart(text="look"),
        ImagePart.from_base64("image/png", PNG),
        ImagePart(url="https://x.test/a.png"),
    )
    assert assistant.content == (TextPart(text="Checking."),)
    assert assistant.reasoning == (ReasoningBlock(text="hmm", signature="s"),)
    assert assistant.tool_calls == (
        ToolCall(id="toolu_1", name="get_weather", arguments='{"a":1}'),
        ToolCall(id="toolu_2", name="get_weather", arguments="{}"),
    )
    assert (result.tool_call_id, result.content) == ("toolu_1", "sunny")
    assert failed.content == (TextPart(text="no such city"),)
    assert follow_up.content == (TextPart(text="and?"),)


@pytest.mark.parametrize(
    ("choice", "mode"),
    [
        ({"type": "auto"}, ToolChoiceMode.AUTO),
        ({"type": "any"}, ToolChoiceMode.REQUIRED),
        ({"type": "none"}, ToolChoiceMode.NONE),
        ({"type": "tool", "name": "get_weather"}, ToolChoiceMode.NAMED),
    ],
)
def test_tool_choices(choice: dict[str, str], mode: ToolChoiceMode) -> None:
    parsed = parse(**request(tools=[TOOL], tool_choice=choice))
    assert parsed.tool_choice.mode is mode


def test_defaults_and_optional_shapes() -> None:
    parsed = parse(
        **request(
            system=[{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
            messages=[
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "x", "signature": "sig"},
                        {"type": "redacted_thinking", "data": "opaque"},
                    ],
                },
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "Sure"},
            ],
            metadata={},
            output_config={"format": None},
        )
    )
    assert not parsed.stream
    assert not parsed.include_usage
    assert parsed.user is None
    assert parsed.response_format is None
    assert parsed.tools == ()
    assert parsed.tool_choice is None
    assert parsed.messages[0].content == (TextPart(text="A"), TextPart(text="B"))
    # The thinking-only turn is kept, its blocks whole; the trailing assistant turn (a
    # prefill) stays.
    assert [m.text for m in parsed.messages[1:]] == ["hi", "", "again", "Sure"]
    thought = parsed.messages[2]
    assert thought.thought_only
    assert thought.reasoning == (
        ReasoningBlock(text="x", signature="sig"),
        ReasoningBlock(redacted="opaque"),
    )
    assert parsed.sampling.thinking_budget is None
    assert parse(**request(system="")).messages[0].role is Role.USER
    assert parse(**request(system=[])).messages[0].role is Role.USER


def test_a_system_message_stays_in_place() -> None:
    parsed = parse(
        **request(
            system="first",
            messages=[
                *USER,
                {"role": "system", "content": [{"type": "text", "text": "later"}]},
                {"role": "user", "content": "more"},
            ],
        )
    )
    assert [(m.role, m.text) for m in parsed.messages] == [
        (Role.SYSTEM, "first"),
        (Role.USER, "hi"),
        (Role.SYSTEM, "later"),
        (Role.USER, "more"),
    ]


def test_an_empty_trailing_assistant_turn_is_left_out() -> None:
    parsed = parse(**request(messages=[*USER, {"role": "assistant", "content": ""}]))
    assert [m.role for m in parsed.messages] == [Role.USER]


def test_tool_results_without_content() -> None:
    parsed = parse(
        **request(
            messages=[
                *USER,
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
                        {"type": "tool_use", "id": "t2", "name": "f", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1"},
                        {"type": "tool_result", "tool_use_id": "t2", "content": []},
                    ],
                },
            ]
        )
    )
    assert [m.content for m in parsed.messages[2:]] == ["", ""]
    assert parsed.messages[1].content is None


_ASSISTANT_CALL = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
}


def _result(**fields: Any) -> list[dict[str, Any]]:
    block = {"type": "tool_result", "tool_use_id": "t1", **fields}
    return [*USER, _ASSISTANT_CALL, {"role": "user", "content": [block]}]


def _user_block(block: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [block]}]


def _image(source: Any) -> list[dict[str, Any]]:
    return _user_block({"type": "image", "source": source})


@pytest.mark.parametrize(
    ("document", "param", "fragment"),
    [
        ({"model": "m", "messages": USER}, "max_tokens", "max_tokens: Field required"),
        (request(max_tokens=0), "max_tokens", "greater than or equal to 1"),
        (request(max_tokens="9"), "max_tokens", "valid integer"),
        (request(max_tokens=True), "max_tokens", "valid integer"),
        ({"max_tokens": 5, "messages": USER}, "model", "model: Field required"),
        (request(model=""), "model", "at least 1 character"),
        (request(model=3), "model", "valid string"),
        (request(foo=1), "foo", "foo: Extra inputs are not permitted"),
        (request(container="c"), "container", "not supported by this gateway"),
        (request(top_k=0), "top_k", "greater than or equal to 1"),
        (request(top_k="5"), "top_k", "valid integer"),
        (request(thinking={"type": "adaptive"}), "thinking.type", "not supported"),
        (request(thinking={"type": "between_tools"}), "thinking.type", "not supported"),
        (request(thinking={"type": "on"}), "thinking.type", "'enabled', 'disabled'"),
        (request(thinking={"type": "enabled"}), "thinking.budget_tokens", "Field required"),
        (
            request(max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1023}),
            "thinking.budget_tokens",
            "greater than or equal to 1024",
        ),
        (
            request(thinking={"type": "enabled", "budget_tokens": 1024}),
            "max_tokens",
            "must be greater than `thinking.budget_tokens`",
        ),
        (
            request(
                max_tokens=4096,
                thinking={"type": "enabled", "budget_tokens": 1024, "display": "omitted"},
            ),
            "thinking.display",
            "not supported",
        ),
        (request(thinking="on"), "thinking", "valid dictionary"),
        (request(thinking={}), "thinking.type", "Field required"),
        (request(service_tier="priority"), "service_tier", "'auto' or 'standard_only'"),
        (request(cache_control="yes"), "cache_control", "valid dictionary"),
        (request(temperature=1.5), "temperature", "between 0 and 1"),
        (request(temperature="hot"), "temperature", "valid number"),
        (request(top_p=2), "top_p", "between 0 and 1"),
        (request(stop_sequences="END"), "stop_sequences", "valid list"),
        (request(stop_sequences=[1]), "stop_sequences.0", "valid string"),
        (request(stop_sequences=[""]), "stop_sequences.0", "at least 1 character"),
        (request(stop_sequences=list("abcde")), "stop_sequences", "at most 4"),
        (request(stream="yes"), "stream", "valid boolean"),
        (request(metadata=[]), "metadata", "valid dictionary"),
        (request(metadata={"user_id": 7}), "metadata.user_id", "valid string"),
        (request(system=5), "system", "valid list"),
        (request(system=[{"type": "image"}]), "system.0.type", "Input should be 'text'"),
        (request(system=[{"type": "text"}]), "system.0.text", "Field required"),
        (request(output_config=[]), "output_config", "valid dictionary"),
        (request(output_config={"effort": "low"}), "output_config.effort", "not supported"),
        (request(output_config={"format": 1}), "output_config.format", "valid dictionary"),
        (
            request(output_config={"format": {"type": "text"}}),
            "output_config.format.type",
            "'json_schema'",
        ),
        (
            request(output_config={"format": {"type": "json_schema"}}),
            "output_config.format.schema",
            "Field required",
        ),
        # messages
        ({"model": "m", "max_tokens": 5}, "messages", "messages: Field required"),
        (request(messages={}), "messages", "valid list"),
        (request(messages=[]), "messages", "at least 1 item"),
        (request(messages=[{"role": "assistant", "content": []}]), "messages", "content"),
        (request(messages=["hi"]), "messages.0", "valid dictionary"),
        (request(messages=[{"content": "x"}]), "messages.0.role", "Field required"),
        (request(messages=[{"role": "tool", "content": "x"}]), "messages.0.role", "'user'"),
        (request(messages=[{"role": "system", "content": "x"}]), "messages", "user or assistant"),
        (
            request(messages=[{"role": "system", "content": [{"type": "image"}]}, *USER]),
            "messages.0.content.0.type",
            "Input should be 'text'",
        ),
        (request(messages=[{"role": "user"}]), "messages.0.content", "Field required"),
        (request(messages=[{"role": "user", "content": 1}]), "messages.0.content", "string"),
        (request(messages=[{"role": "user", "content": ""}]), "messages.0", "non-empty"),
        (
            request(messages=[{"role": "assistant", "content": []}, *USER]),
            "messages.0",
            "non-empty",
        ),
        (request(messages=_user_block({"text": "x"})), "messages.0.content.0.type", "required"),
        (request(messages=_user_block({"type": 1})), "messages.0.content.0.type", "string"),
        (request(messages=_user_block({"type": "text"})), "messages.0.content.0.text", "required"),
        (
            request(messages=_user_block({"type": "text", "text": ""})),
            "messages.0.content.0.text",
            "at least 1 character",
        ),
        (
            request(messages=_user_block({"type": "search_result"})),
            "messages.0.content.0.type",
            "'search_result' are not supported",
        ),
        (
            request(messages=_user_block({"type": "document"})),
            "messages.0.content.0.source",
            "Field required",
        ),
        (
            request(
                messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [{"type": "document", "source": {}}]},
                ]
            ),
            "messages.1.content.0.type",
            "belong in user messages",
        ),
        (
            request(messages=_user_block({"type": "tool_use", "id": "t", "name": "f"})),
            "messages.0.content.0.type",
            "belong in assistant messages",
        ),
        (
            request(messages=[{"role": "assistant", "content": [{"type": "image"}]}]),
            "messages.0.content.0.type",
            "belong in user messages",
        ),
        (
            request(messages=[{"role": "assistant", "content": [{"type": "search_result"}]}]),
            "messages.0.content.0.type",
            "not supported",
        ),
        (
            request(messages=[{"role": "assistant", "content": [{"type": "tool_use"}]}]),
            "messages.0.content.0.id",
            "Field required",
        ),
        (
            request(
                messages=[
                    {
                        "role": "assistant",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": []}],
                    }
                ]
            ),
            "messages.0.content.0.input",
            "valid dictionary",
        ),
        # images
        (request(messages=_user_block({"type": "image"})), "messages.0.content.0.source", "req"),
        (request(messages=_image({})), "messages.0.content.0.source.type", "Field required"),
        (
            request(messages=_image({"type": "base64", "media_type": "image/bmp", "data": PNG})),
            "messages.0.content.0.source.media_type",
            "image/jpeg",
        ),
        (
            request(messages=_image({"type": "base64", "media_type": "image/png", "data": "%%"})),
            "messages.0.content.0.source.data",
            "not valid base64",
        ),
        (
            request(messages=_image({"type": "url", "url": "ftp://x"})),
            "messages.0.content.0.source.url",
            "http(s)",
        ),
        (
            request(messages=_image({"type": "file", "file_id": "f"})),
            "messages.0.content.0.source.type",
            "file sources are not supported",
        ),
        (
            request(messages=_image({"type": "bytes"})),
            "messages.0.content.0.source.type",
            "'base64' or 'url'",
        ),
        # tool results
        (
            request(messages=_user_block({"type": "tool_result", "tool_use_id": "t9"})),
            "messages.0.content.0.tool_use_id",
            "unexpected tool_use_id 't9'",
        ),
        (request(messages=_result(is_error="yes")), "messages.2.content.0.is_error", "boolean"),
        (request(messages=_result(content=5)), "messages.2.content.0.content", "valid list"),
        (
            request(messages=_result(content=[{"type": "image"}])),
            "messages.2.content.0.content.0.type",
            "inside a tool_result are not supported",
        ),
        # tools
        (request(tools={}), "tools", "valid list"),
        (request(tools=[1]), "tools.0", "valid dictionary"),
        (request(tools=[{"type": "web_search_20250305"}]), "tools.0.type", "server tools"),
        (request(tools=[{"input_schema": {}}]), "tools.0.name", "Field required"),
        (request(tools=[TOOL, TOOL]), "tools.1.name", "must be unique"),
        (request(tools=[{"name": "f"}]), "tools.0.input_schema", "Field required"),
        (request(tools=[{"name": "f", "input_schema": 1}]), "tools.0.input_schema", "dictionary"),
        (request(tools=[{**TOOL, "name": "a b"}]), "tools.0.name", "letters, digits"),
        (request(tools=[{**TOOL, "description": 1}]), "tools.0.description", "valid string"),
        (request(tools=[{**TOOL, "strict": "x"}]), "tools.0.strict", "valid boolean"),
        (request(tool_choice="auto"), "tool_choice", "valid dictionary"),
        (request(tool_choice={"type": "some"}), "tool_choice.type", "'auto', 'any'"),
        (request(tool_choice={"type": "any"}), "tool_choice", "'any' needs tools"),
        (request(tools=[TOOL], tool_choice={"type": "tool"}), "tool_choice.name", "required"),
        (
            request(tools=[TOOL], tool_choice={"type": "tool", "name": "other"}),
            "tool_choice.name",
            "not among the tools",
        ),
        (
            request(tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
            "tool_choice.disable_parallel_tool_use",
            "valid boolean",
        ),
    ],
)
def test_bad_requests_name_the_field(document: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(**document)
    assert caught.value.param == param
    assert caught.value.message.startswith(f"{param}: ")
    assert fragment in caught.value.message
    assert caught.value.http_status == 400


@pytest.mark.parametrize("body", [b"{", b"[1]"])
def test_a_body_that_is_not_a_json_object(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_messages_request(body, request_id=RID)


# ---------------------------------------------------------------------- unary rendering


def render_message(result: ChatCompletion, **options: Any) -> Any:
    document = orjson.loads(message_json(result, request_id=RID, model="m", **options))
    return Message.model_validate(document)


def test_a_text_message() -> None:
    usage = Usage(input_tokens=10, cached_input_tokens=4, output_tokens=3)
    message = render_message(
        ChatCompletion(text="Hi", reasoning="hidden", finish_reason=FinishReason.STOP, usage=usage)
    )
    assert message.id == message_id(RID) == "msg_0123456789abcdef0123456789abcdef"
    assert (message.type, message.role, message.model) == ("message", "assistant", "m")
    assert [block.type for block in message.content] == ["text"]
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 3)
    assert message.usage.cache_read_input_tokens == 4


def test_thinking_tool_use_and_unknown_usage() -> None:
    calls = (
        ToolCall(id="t1", name="f", arguments='{"city": "Paris"}'),
        ToolCall(id="t2", name="f", arguments=""),
        ToolCall(id="t3", name="f", arguments="[1, 2]"),
        ToolCall(id="t4", name="f", arguments="{not json"),
    )
    result = ChatCompletion(reasoning="Let me see.", tool_calls=calls)
    message = render_message(result, include_reasoning=True)
    kinds = [block.type for block in message.content]
    assert kinds == ["thinking", "tool_use", "tool_use", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Let me see."
    inputs = [getattr(block, "input", None) for block in message.content[1:]]
    assert inputs == [{"city": "Paris"}, {}, {}, {}]
    assert message.stop_reason == "tool_use"  # no finish reason, but tools were called
    assert (message.usage.input_tokens, message.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize(
    ("finish", "tools", "stop_reason"),
    [
        (FinishReason.STOP, False, "end_turn"),
        (FinishReason.STOP, True, "tool_use"),
        (FinishReason.LENGTH, False, "max_tokens"),
        (FinishReason.LENGTH, True, "max_tokens"),
        (FinishReason.TOOL_CALLS, True, "tool_use"),
        (FinishReason.CONTENT_FILTER, False, "refusal"),
        (FinishReason.ERROR, False, "end_turn"),
        (None, False, "end_turn"),
    ],
)
def test_stop_reasons(finish: FinishReason | None, tools: bool, stop_reason: str) -> None:
    calls = (ToolCall(id="t", name="f"),) if tools else ()
    message = render_message(ChatCompletion(text="x", tool_calls=calls, finish_reason=finish))
    assert message.stop_reason == stop_reason


def test_usage_json() -> None:
    assert anthropic_usage_json(None) == {"input_tokens": 0, "output_tokens": 0}
    usage = Usage(input_tokens=5, cached_input_tokens=9, output_tokens=1)
    assert anthropic_usage_json(usage) == {
        "input_tokens": 0,  # a malformed report never goes negative
        "cache_read_input_tokens": 9,
        "output_tokens": 1,
    }


# ---------------------------------------------------------------------- stream rendering


def sse_events(data: bytes) -> list[dict[str, Any]]:
    """Each event's JSON, after checking its ``event:`` line names its type."""
    events = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name, payload = block.split("\n")
        document = orjson.loads(payload.removeprefix("data: "))
        assert name == f"event: {document['type']}"
        events.append(document)
    return events


def fold(data: bytes) -> tuple[list[dict[str, Any]], Any]:
    """The events, each checked by the SDK's event models, and the message they build.

    Folded as the SDK's stream helper folds them: blocks by index, usage counts of the
    ``message_delta`` over those of ``message_start``.
    """
    events = sse_events(data)
    message: dict[str, Any] = {}
    partial_json: dict[int, str] = {}
    for document in events:
        if document["type"] != "ping":
            EVENTS.validate_python(document)
        match document["type"]:
            case "message_start":
                message = copy.deepcopy(document["message"])
            case "content_block_start":
                assert document["index"] == len(message["content"])
                message["content"].append(document["content_block"])
            case "content_block_delta":
                index, delta = document["index"], document["delta"]
                if delta["type"] == "input_json_delta":
                    partial_json[index] = partial_json.get(index, "") + delta["partial_json"]
                else:  # text_delta, thinking_delta
                    field = delta["type"].removesuffix("_delta")
                    message["content"][index][field] += delta[field]
            case "message_delta":
                message.update(document["delta"])
                message["usage"].update(document["usage"])
    for index, text in partial_json.items():
        message["content"][index]["input"] = orjson.loads(text)
    return events, Message.model_validate(message)


def stream(chunks: list[TokenChunk], *, include_reasoning: bool = False) -> bytes:
    renderer = MessageStreamRenderer(RID, "m", include_reasoning=include_reasoning)
    return renderer.first() + b"".join(renderer.render(c) for c in chunks) + renderer.final()


def test_a_text_stream() -> None:
    chunks = [
        TokenChunk(text="Hel"),
        TokenChunk(),
        TokenChunk(text="lo"),
        TokenChunk(finish_reason=FinishReason.LENGTH, usage=Usage(input_tokens=7, output_tokens=2)),
    ]
    events, message = fold(stream(chunks))
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert message.content[0].text == "Hello"
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 2)


def test_usage_rendered_before_first_goes_into_message_start() -> None:
    renderer = MessageStreamRenderer(RID, "m")
    assert renderer.render(TokenChunk(usage=Usage(input_tokens=12, output_tokens=1))) == b""
    held = renderer.render(TokenChunk(text="Hi"))
    start = sse_events(renderer.first())[0]
    assert start["message"]["usage"] == {
        "input_tokens": 12,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
    }
    assert start["message"]["id"] == message_id(RID)
    renderer.render(TokenChunk(usage=Usage(output_tokens=4)))
    assert renderer.usage == Usage(input_tokens=12, output_tokens=5)
    _, message = fold(renderer.first() + held + renderer.final())
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 5)


def test_reasoning_is_a_thinking_block_only_when_asked() -> None:
    chunks = [TokenChunk(reasoning="Think"), TokenChunk(reasoning="ing."), TokenChunk(text="Hi")]
    events, message = fold(stream(chunks, include_reasoning=True))
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking."
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    assert deltas == ["thinking_delta", "thinking_delta", "text_delta"]
    _, plain = fold(stream(chunks))
    assert [block.type for block in plain.content] == ["text"]


def test_text_then_parallel_tool_calls() -> None:
    chunks = [
        TokenChunk(text="Looking."),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, id="t1", name="f", arguments=""),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"city":'),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments=' "Paris"}'),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=1, id="t2", name="f", arguments="{}"),)),
        TokenChunk(finish_reason=FinishReason.STOP),
    ]
    events, message = fold(stream(chunks))
    assert [(b.type, getattr(b, "input", None)) for b in message.content] == [
        ("text", None),
        ("tool_use", {"city": "Paris"}),
        ("tool_use", {}),
    ]
    assert message.stop_reason == "tool_use"
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert starts == stops == [0, 1, 2]


def test_a_tool_call_waits_for_its_id_and_name() -> None:
    renderer = MessageStreamRenderer(RID, "m")
    assert renderer.render(TokenChunk(tool_calls=(ToolCallDelta(index=0, id="t1"),))) == b""
    assert (
        renderer.render(TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"a"'),))) == b""
    )
    data = renderer.render(
        TokenChunk(tool_calls=(ToolCallDelta(index=0, name="f", arguments=":1}"),))
    )
    _, message = fold(renderer.first() + data + renderer.final())
    assert [(b.id, b.name, b.input) for b in message.content] == [("t1", "f", {"a": 1})]


def test_a_tool_call_that_never_gets_a_name_fails_the_stream() -> None:
    renderer = MessageStreamRenderer(RID, "m")
    renderer.render(TokenChunk(tool_calls=(ToolCallDelta(index=3, id="t1"),)))
    with pytest.raises(ProtocolError, match="index 3 never received a name"):
        renderer.final()
    other = MessageStreamRenderer(RID, "m")
    other.render(TokenChunk(tool_calls=(ToolCallDelta(index=0, name="f"),)))
    with pytest.raises(ProtocolError, match="never received an id"):
        other.final()


def test_a_late_fragment_of_an_earlier_call_keeps_its_block_index() -> None:
    chunks = [
        TokenChunk(tool_calls=(ToolCallDelta(index=0, id="t1", name="f", arguments='{"a"'),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=1, id="t2", name="g", arguments='{"b":2}'),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments=":1}"),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=1),)),  # nothing to send
        TokenChunk(finish_reason=FinishReason.TOOL_CALLS),
    ]
    events, message = fold(stream(chunks))
    assert [(b.name, b.input) for b in message.content] == [("f", {"a": 1}), ("g", {"b": 2})]
    late = [e for e in events if e["type"] == "content_block_delta"][-1]
    assert (late["index"], late["delta"]["partial_json"]) == (0, ":1}")


def test_an_error_finish_reason_renders_none() -> None:
    _, message = fold(stream([TokenChunk(text="x", finish_reason=FinishReason.ERROR)]))
    assert message.stop_reason == "end_turn"


def test_the_in_stream_error_event() -> None:
    renderer = MessageStreamRenderer(RID, "m")
    data = renderer.error(StreamInterrupted("the upstream went away"))
    assert data == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
        b'"message":"the upstream went away"}}\n\n'
    )


# ---------------------------------------------------------------------- errors


class _Insufficient(InferenceError):
    http_status = 507


@pytest.mark.parametrize(
    ("error", "status", "kind", "headers"),
    [
        (BadRequest("x", param="p"), 400, "invalid_request_error", {}),
        (ClientUnauthorized("x"), 401, "authentication_error", {}),
        (Forbidden("x"), 403, "permission_error", {}),
        (ModelNotFound("x"), 404, "not_found_error", {}),
        (OperationRefused("x"), 409, "invalid_request_error", {}),
        (PayloadTooLarge("x"), 413, "request_too_large", {}),
        (RateLimited("x", retry_after=1.2), 429, "rate_limit_error", {"retry-after": "2"}),
        (QuotaExhausted("x"), 429, "billing_error", {"x-should-retry": "false"}),
        (RequestCancelled("x"), 499, "invalid_request_error", {}),
        (InternalError("x"), 500, "api_error", {}),
        (ServerError("x"), 502, "api_error", {}),
        (CircuitOpen("x", retry_after=3.0), 503, "overloaded_error", {"retry-after": "3"}),
        (Timeout("x", phase=TimeoutPhase.TOTAL), 504, "timeout_error", {}),
        (_Insufficient("x"), 507, "api_error", {}),
    ],
)
def test_anthropic_error_json(
    error: InferenceError, status: int, kind: str, headers: dict[str, str]
) -> None:
    got_status, got_headers, body = anthropic_error_json(error)
    assert (got_status, got_headers) == (status, headers)
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": "x"}}
