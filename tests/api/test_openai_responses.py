"""The Responses API edge: request JSON to core values, results to Responses JSON and events.

Rendered output is checked by the official ``openai`` SDK's own models, and streams are
folded by the SDK's own accumulator (``ResponseStreamState``), which proves their shape
and their meaning.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from rakka_inference.api.openai_responses_request import ResponsesCall, parse_responses_request
from rakka_inference.api.openai_responses_response import response_id, response_json
from rakka_inference.api.openai_responses_stream import ResponseStreamRenderer
from rakka_inference.core.errors import (
    BadRequest,
    ProtocolError,
    RateLimited,
    RequestError,
    StreamInterrupted,
)
from rakka_inference.core.messages import ImagePart, Role, TextPart
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk, ToolCallDelta
from rakka_inference.core.tools import ToolCall, ToolChoice
from rakka_inference.core.usage import Usage

RID = "req_0123456789abcdef0123456789abcdef"
PNG = "data:image/png;base64,iVBORw0KGgo="
TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
USAGE = Usage(input_tokens=10, output_tokens=5, cached_input_tokens=4, reasoning_tokens=2)


def parse(**fields: Any) -> ResponsesCall:
    document = {"model": "m", "input": "hi", **fields}
    return parse_responses_request(orjson.dumps(document), request_id=RID)


def refused(**fields: Any) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse(**fields)
    return caught.value


# ---------------------------------------------------------------------- parsing


def test_a_full_request_maps_to_the_core() -> None:
    call = parse(
        model="gpt",
        instructions="Be brief.",
        input=[
            {"role": "developer", "content": "Use metric units."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": PNG, "detail": "original"},
                    {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "low"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": "{"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "rain"}],
            },
        ],
        max_output_tokens=100,
        temperature=0.5,
        top_p=0.9,
        tools=[{**TOOL, "description": "Weather", "strict": True, "defer_loading": False}],
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        reasoning={"effort": "low"},
        user="u-1",
        metadata={"k": "v"},
        stream=True,
        stream_options={"include_obfuscation": False},
        store=False,
        background=False,
        include=[],
        truncation="disabled",
        service_tier="auto",
        prompt_cache_key=None,
    )
    assert call.instructions == "Be brief."
    assert call.parallel_tool_calls is False
    request = call.request
    assert (request.model, request.request_id, request.user) == ("gpt", RID, "u-1")
    assert request.stream
    assert request.include_usage
    assert request.metadata == {"k": "v"}
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.top_p) == (100, 0.5, 0.9)
    assert sampling.reasoning_effort == "low"
    assert request.tool_choice == ToolChoice.named("get_weather")
    assert (request.tools[0].description, request.tools[0].strict) == ("Weather", True)
    assert request.response_format is not None
    assert request.response_format.schema_name == "w"
    roles = [m.role for m in request.messages]
    assert roles == [Role.SYSTEM, Role.DEVELOPER, Role.USER, Role.ASSISTANT, Role.TOOL, Role.TOOL]
    system, _, user, assistant, first, second = request.messages
    assert system.content == "Be brief."
    assert user.content == (
        TextPart(text="look"),
        ImagePart(url=PNG, detail="high"),
        ImagePart(url="https://x.test/a.png", detail="low"),
    )
    # The answer's text and its two calls are one assistant message.
    assert assistant.text == "Checking."
    assert assistant.tool_calls == (
        ToolCall(id="c1", name="get_weather", arguments="{}"),
        ToolCall(id="c2", name="get_weather", arguments="{"),
    )
    assert (first.tool_call_id, first.content) == ("c1", "sunny")
    assert (second.tool_call_id, second.content) == ("c2", (TextPart(text="rain"),))


def test_a_string_input_is_one_user_message_and_defaults_hold() -> None:
    call = parse()
    assert [(m.role, m.content) for m in call.request.messages] == [(Role.USER, "hi")]
    assert call.instructions is None
    assert call.parallel_tool_calls is True
    assert not call.request.stream
    assert call.request.response_format is None


def test_a_call_without_a_message_before_it_opens_an_assistant_message() -> None:
    call = parse(
        input=[
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": ""},
            {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{}"},
        ]
    )
    messages = call.request.messages
    assert [m.role for m in messages] == [Role.USER, Role.ASSISTANT, Role.TOOL, Role.ASSISTANT]
    assert messages[1].content is None
    assert [c.id for c in messages[3].tool_calls] == ["c2"]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument supplied: frobnicate"),
        ({"store": True}, "store", "keeps no responses"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
        ({"background": True}, "background", "default value (false)"),
        ({"include": ["reasoning.encrypted_content"]}, "include", "default value"),
        ({"truncation": "auto"}, "truncation", 'default value ("disabled")'),
        ({"conversation": {"id": "c"}}, "conversation", "not supported by this gateway"),
        ({"prompt": {"id": "p"}}, "prompt", "not supported"),
        ({"max_tool_calls": 3}, "max_tool_calls", "default value"),
        ({"model": None}, "model", "Missing required parameter: 'model'."),
        ({"input": None}, "input", "Missing required parameter: 'input'."),
        ({"input": []}, "input", "empty array"),
        ({"input": 3}, "input", "a string or an array of input items"),
        ({"input": [{"content": "x"}]}, "input[0].type", "Missing"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "Invalid value"),
        ({"input": [{"role": "user"}]}, "input[0].content", "Missing"),
        ({"input": [{"role": "user", "content": []}]}, "input[0].content", "empty array"),
        ({"input": [{"id": "msg_1"}]}, "input[0]", "keeps no responses"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type", "not supported"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
            "input[0].call_id",
            "No tool call found",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
            "input[0].arguments",
            "Missing",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
            "not supported",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
            "not supported",
        ),
        (
            {
                "input": [
                    {"role": "user", "content": [{"type": "input_image", "image_url": "ftp:x"}]}
                ]
            },
            "input[0].content[0].image_url",
            "http(s)",
        ),
        (
            {"input": [{"role": "system", "content": [{"type": "input_image", "image_url": PNG}]}]},
            "input[0].content[0].type",
            "user messages only",
        ),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "not supported"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "Missing"),
        ({"tools": [{"type": "function", "name": "a b"}]}, "tools[0].name", "letters"),
        ({"tools": [TOOL, TOOL]}, "tools[1].name", "unique"),
        ({"tool_choice": "any"}, "tool_choice", "Invalid value"),
        ({"tool_choice": {"type": "file_search"}}, "tool_choice.type", "not supported"),
        ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice", "needs tools"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type", "Invalid value"),
        ({"text": {"format": {"type": "json_schema", "name": "w"}}}, "text.format.schema", ""),
        ({"text": {"verbosity": "low"}}, "text.verbosity", "default value"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "Invalid value"),
        ({"reasoning": {"summary": "auto"}}, "reasoning.summary", "not supported"),
        ({"max_output_tokens": 0}, "max_output_tokens", "Expected a value >= 1"),
        ({"temperature": 3}, "temperature", "between"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options", "only allowed"),
        ({"metadata": {"k": 1}}, "metadata.k", "a string"),
    ],
)
def test_a_bad_or_unsupported_field_is_refused_naming_it(
    fields: dict[str, Any], param: str, words: str
) -> None:
    error = refused(**fields)
    assert error.param == param
    assert words in error.message


def test_null_means_absent_even_for_what_is_not_supported() -> None:
    call = parse(conversation=None, prompt=None, previous_response_id=None, store=None)
    assert call.request.messages[0].content == "hi"


def test_deep_json_is_refused_naming_the_first_value_too_deep() -> None:
    nested: Any = "x"
    for _ in range(100):
        nested = [nested]
    error = refused(input=[{"type": "function_call_output", "call_id": "c", "output": nested}])
    assert error.param is not None
    assert error.param.startswith("input[0].output[0][0]")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "user", "assistant", "developer", "message", "function_call",
            "function_call_output", "input_text", "input_image", "output_text", "function",
            "json_schema", "c1", PNG,
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type", "role", "content", "text", "name", "call_id", "arguments",
                    "output", "image_url", "format", "schema", "effort", "parameters",
                ]
            )
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=24,
)  # fmt: skip
"""Any JSON value, leaning towards the keys and strings Responses requests are made of."""
KEYS = ["model", "input", "instructions", "tools", "tool_choice", "text", "reasoning", "store"]
BUDGET = settings(max_examples=200, deadline=None)


def parses_or_refuses(document: object) -> None:
    """The body is answered with a request, or with a ``RequestError``: nothing else."""
    try:
        call = parse_responses_request(orjson.dumps(document), request_id=RID)
    except RequestError:
        return
    except orjson.JSONEncodeError:  # an integer past 64 bits, which orjson will not write
        return
    assert call.request.estimated_prompt_tokens() >= 1


@BUDGET
@given(st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), JSON, max_size=6))
def test_any_body_parses_or_is_refused(document: object) -> None:
    parses_or_refuses(document)


@BUDGET
@given(st.sampled_from(["input", "item", "content", "tools", "text"]), JSON)
def test_any_value_in_input_items_content_tools_or_text(where: str, value: object) -> None:
    document: dict[str, Any] = {"model": "m", "input": "hi"}
    if where == "input":
        document["input"] = value
    elif where == "item":
        document["input"] = [{"role": "user", "content": "hi"}, value]
    elif where == "content":
        document["input"] = [{"role": "user", "content": value}]
    else:
        document[where] = value
    parses_or_refuses(document)


# ---------------------------------------------------------------------- unary answers


def render(call: ResponsesCall, result: ChatCompletion) -> Response:
    document = orjson.loads(response_json(call, result, request_id=RID, created_at=1700))
    return Response.model_validate(document)


def test_a_text_answer_is_a_completed_response_echoing_the_request() -> None:
    call = parse(
        instructions="Be brief.",
        tools=[TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        temperature=0.2,
        metadata={"k": "v"},
    )
    result = ChatCompletion(text="Hello", finish_reason=FinishReason.STOP, usage=USAGE)
    response = render(call, result)
    assert response.id == response_id(RID) == "resp_0123456789abcdef0123456789abcdef"
    assert (response.status, response.created_at, response.model) == ("completed", 1700, "m")
    assert response.output_text == "Hello"
    assert response.output[0].id == "msg_0123456789abcdef0123456789abcdef_0"
    assert response.instructions == "Be brief."
    assert response.temperature == 0.2
    assert response.metadata == {"k": "v"}
    assert response.model_extra == {"store": False}  # the SDK's model has no field for it
    assert response.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert response.tool_choice.name == "get_weather"  # type: ignore[union-attr]
    assert response.text is not None
    assert response.text.format.type == "json_schema"  # type: ignore[union-attr]
    assert response.usage is not None
    assert response.usage.model_dump() == {
        "input_tokens": 10,
        "input_tokens_details": {
            "cached_tokens": 4,
            "cache_write_tokens": 0,
            "cache_write_tokens_details": None,
        },
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 15,
    }


def test_tool_calls_are_function_call_items_after_the_text() -> None:
    calls = (
        ToolCall(id="c1", name="get_weather", arguments='{"city":"Paris"}'),
        ToolCall(id="c2", name="get_weather", arguments="{}"),
    )
    result = ChatCompletion(text="Checking.", tool_calls=calls, finish_reason=FinishReason.STOP)
    response = render(parse(tools=[TOOL]), result)
    assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
    first, second = response.output[1:]
    assert (first.call_id, first.arguments, first.status) == (  # type: ignore[union-attr]
        "c1",
        '{"city":"Paris"}',
        "completed",
    )
    assert first.id != second.id
    assert response.usage is None  # unknown, never zeros


@pytest.mark.parametrize(
    ("finish", "reason"),
    [(FinishReason.LENGTH, "max_output_tokens"), (FinishReason.CONTENT_FILTER, "content_filter")],
)
def test_a_cut_answer_is_incomplete(finish: FinishReason, reason: str) -> None:
    response = render(parse(), ChatCompletion(text="Hel", finish_reason=finish))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == reason
    assert response.output[0].status == "incomplete"  # type: ignore[union-attr]


# ---------------------------------------------------------------------- streams


def stream(chunks: list[TokenChunk], *, held: int = 0, fail: Exception | None = None) -> list[Any]:
    """The events of ``chunks`` as the SDK's models, rendered as the gateway does: the first
    ``held`` chunks before :meth:`first`, whose bytes still go first."""
    renderer = ResponseStreamRenderer(parse(tools=[TOOL]), RID, 1700)
    opening = b"".join(renderer.render(chunk) for chunk in chunks[:held])
    body = renderer.first() + opening + b"".join(renderer.render(c) for c in chunks[held:])
    if fail is not None:
        assert isinstance(fail, RateLimited | StreamInterrupted)
        body += renderer.error(fail)
    else:
        body += renderer.final()
    events = []
    for block in body.decode().split("\n\n")[:-1]:
        name, data = block.split("\n")
        event = EVENT.validate_python(orjson.loads(data.removeprefix("data: ")))
        assert name == f"event: {event.type}"
        events.append(event)
    assert [event.sequence_number for event in events] == list(range(len(events)))
    return events


def folded(events: list[Any]) -> Any:
    """The final response the SDK's own stream accumulator makes of ``events``."""
    state: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=[TOOL],  # type: ignore[list-item]
        text_format=omit,
    )
    final = None
    for event in events:
        for seen in state.handle_event(event):
            if seen.type in ("response.completed", "response.incomplete", "response.failed"):
                final = seen.response
    assert final is not None
    return final


def test_a_text_stream() -> None:
    chunks = [
        TokenChunk(usage=Usage(input_tokens=3)),
        TokenChunk(text="Hel"),
        TokenChunk(text="lo"),
        TokenChunk(finish_reason=FinishReason.STOP, usage=Usage(output_tokens=2)),
    ]
    events = stream(chunks, held=2)
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[6].text == "Hello"
    response = folded(events)
    assert response.output_text == "Hello"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (3, 2)


def test_text_then_parallel_calls_each_in_its_own_item() -> None:
    chunks = [
        TokenChunk(text="Checking."),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, id="c1", name="get_weather"),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='{"city":'),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=1, id="c2"),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=1, name="get_weather", arguments="{}"),)),
        TokenChunk(tool_calls=(ToolCallDelta(index=0, arguments='"Oslo"}'),)),  # late
        TokenChunk(finish_reason=FinishReason.TOOL_CALLS),
    ]
    events = stream(chunks)
    added = [(e.output_index, e.item.type) for e in events if e.type.endswith("item.added")]
    assert added == [(0, "message"), (1, "function_call"), (2, "function_call")]
    done = [e.output_index for e in events if e.type == "response.output_item.done"]
    assert done == [0, 1, 2]
    response = folded(events)
    assert response.status == "completed"
    assert [(item.type, getattr(item, "arguments", None)) for item in response.output] == [
        ("message", None),
        ("function_call", '{"city":"Oslo"}'),
        ("function_call", "{}"),
    ]


def test_a_stream_cut_by_the_length_limit_is_incomplete() -> None:
    events = stream([TokenChunk(text="Hel"), TokenChunk(finish_reason=FinishReason.LENGTH)])
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].item.status == "incomplete"
    assert folded(events).output[0].content[0].text == "Hel"


def test_a_tool_call_that_never_gets_a_name_fails_the_stream() -> None:
    renderer = ResponseStreamRenderer(parse(), RID, 1700)
    renderer.render(TokenChunk(tool_calls=(ToolCallDelta(index=0, id="c1"),)))
    with pytest.raises(ProtocolError, match="never received a name"):
        renderer.final()


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (StreamInterrupted("the upstream stream broke"), "server_error"),
        (RateLimited("slow down", retry_after=1.0), "rate_limit_exceeded"),
    ],
)
def test_a_failure_after_the_first_byte_is_an_error_event_then_response_failed(
    error: Exception, code: str
) -> None:
    events = stream([TokenChunk(text="Hel")], fail=error)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message == str(error.args[0])
    failed = events[-1].response
    assert (failed.status, failed.error.code) == ("failed", code)
    assert failed.output[0].status == "incomplete"
    assert folded(events).output[0].content[0].text == "Hel"
