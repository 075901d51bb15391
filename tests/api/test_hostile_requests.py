"""Hostile and malformed request bodies: every one is a typed 400 naming its field, never a
500. Deep nesting, a content part whose ``type`` is not a string, an absurd embedding size,
JSON inside a string (a tool call's arguments) nested too deep or holding an integer past
64 bits, every number of every dialect past its bound, and a property: arbitrary JSON,
wherever it stands, is parsed or refused with a
:class:`~rakka_inference.core.errors.RequestError`, and nothing else escapes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.api.anthropic_request import (
    parse_count_tokens_request,
    parse_messages_request,
)
from rakka_inference.api.anthropic_response import anthropic_error_json, message_json
from rakka_inference.api.fields import MAX_JSON_DEPTH
from rakka_inference.api.openai_embeddings import EmbeddingCall, parse_embedding_request
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.api.openai_response import error_json
from rakka_inference.api.openai_responses_request import parse_responses_request
from rakka_inference.core.errors import BadRequest, RequestError
from rakka_inference.core.messages import (
    MAX_CHOICES,
    MAX_EMBEDDING_DIMENSIONS,
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_TOOLS,
    MAX_TOP_K,
    MAX_TOP_LOGPROBS,
    MAX_USER_LENGTH,
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    SamplingParams,
)
from rakka_inference.core.runtimes import AnthropicConfig, GeminiConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import ChatCompletion, FinishReason
from rakka_inference.core.tools import ToolCall, ToolDefinition
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.gemini import GeminiAdapter

RID = "req_0123456789abcdef0123456789abcdef"
DEEP = "\x00"
"""Stands in a fixture for an object nested :func:`body`'s ``depth`` levels deep."""


def body(document: dict[str, Any], depth: int = 300) -> bytes:
    """``document`` as JSON, each :data:`DEEP` replaced by ``{"a": {"a": ... {}}}``.

    Built as text: no JSON encoder writes a value nested this deep.
    """
    nested = '{"a":' * depth + "{}" + "}" * depth
    return json.dumps(document).replace(json.dumps(DEEP), nested).encode()


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], **fields}


def messages(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }


def openai_error(parse: Callable[..., object], data: bytes) -> tuple[str, dict[str, Any]]:
    """The ``param`` of the error ``parse`` raises, and its OpenAI JSON answer (a 400)."""
    with pytest.raises(BadRequest) as caught:
        parse(data, request_id=RID)
    status, _, answer = error_json(caught.value)
    assert status == 400
    assert caught.value.param is not None
    return caught.value.param, orjson.loads(answer)["error"]


def anthropic_error(data: bytes) -> tuple[str, dict[str, Any]]:
    """The ``param`` of the error the Messages parser raises, and its Anthropic answer."""
    with pytest.raises(BadRequest) as caught:
        parse_messages_request(data, request_id=RID)
    status, _, answer = anthropic_error_json(caught.value)
    assert status == 400
    assert caught.value.param is not None
    return caught.value.param, orjson.loads(answer)


# --------------------------------------------------------------------------- regressions


def test_a_content_part_whose_type_is_an_object() -> None:
    document = chat(messages=[{"role": "user", "content": [{"type": {}}]}])
    param, error = openai_error(parse_chat_request, orjson.dumps(document))
    assert param == error["param"] == "messages[0].content[0].type"
    assert error["type"] == "invalid_request_error"
    assert "expected a string, but got an object" in error["message"]


@pytest.mark.parametrize("kind", [[], ["text"], 1, True])
def test_a_content_part_type_of_any_non_string(kind: object) -> None:
    document = chat(messages=[{"role": "user", "content": [{"type": kind, "text": "x"}]}])
    param, _ = openai_error(parse_chat_request, orjson.dumps(document))
    assert param == "messages[0].content[0].type"


TOOL = {"type": "function", "function": {"name": "f", "parameters": DEEP}}


def named_tool(index: int) -> dict[str, Any]:
    return {"type": "function", "function": {"name": f"f{index}"}}


SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": DEEP}}


@pytest.mark.parametrize(
    ("document", "prefix"),
    [
        (chat(tools=[TOOL]), "tools[0].function.parameters.a"),
        (chat(response_format=SCHEMA), "response_format.json_schema.schema.a"),
        (chat(metadata={"k": DEEP}), "metadata.k.a"),
        (chat(messages=[{"role": "user", "content": [DEEP]}]), "messages[0].content[0].a"),
    ],
)
@pytest.mark.parametrize("depth", [300, 1000])
def test_deep_json_in_a_chat_request(document: dict[str, Any], prefix: str, depth: int) -> None:
    param, error = openai_error(parse_chat_request, body(document, depth))
    assert param.startswith(prefix)
    assert error["param"] == param
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]


def test_json_past_the_parsers_own_depth_limit_is_not_json() -> None:
    # orjson itself refuses nesting past 1024 levels: the body does not parse.
    with pytest.raises(BadRequest) as caught:
        parse_chat_request(body(chat(tools=[TOOL]), 2000), request_id=RID)
    assert "not valid JSON" in caught.value.message
    with pytest.raises(BadRequest) as caught:
        parse_messages_request(body(messages(tools=[TOOL]), 2000), request_id=RID)
    assert "parsing the body as JSON" in caught.value.message


def test_deep_json_in_an_embeddings_request() -> None:
    document = {"model": "m", "input": ["a", [DEEP]]}
    param, error = openai_error(parse_embedding_request, body(document))
    assert param.startswith("input[1][0].a")
    assert error["type"] == "invalid_request_error"


USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": DEEP}


@pytest.mark.parametrize(
    ("document", "prefix"),
    [
        (
            messages(
                messages=[
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": [USE]},
                ]
            ),
            "messages.1.content.0.input.a",
        ),
        (messages(tools=[{"name": "f", "input_schema": DEEP}]), "tools.0.input_schema.a"),
        (
            messages(output_config={"format": {"type": "json_schema", "schema": DEEP}}),
            "output_config.format.schema.a",
        ),
    ],
)
def test_deep_json_in_a_messages_request(document: dict[str, Any], prefix: str) -> None:
    param, answer = anthropic_error(body(document))
    assert param.startswith(prefix)
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["message"].startswith(f"{param}: ")
    assert f"at most {MAX_JSON_DEPTH} levels" in answer["error"]["message"]


def test_the_depth_limit_counts_the_body_as_the_first_level() -> None:
    # tools (2), the tool (3), function (4), parameters (5), then the nesting.
    fits = MAX_JSON_DEPTH - 5
    request = parse_chat_request(body(chat(tools=[TOOL]), fits), request_id=RID)
    assert request.estimated_prompt_tokens() > 0
    param, _ = openai_error(parse_chat_request, body(chat(tools=[TOOL]), fits + 1))
    assert param == "tools[0].function.parameters" + ".a" * (fits + 1)


def test_the_first_value_too_deep_is_named() -> None:
    second = {"type": "function", "function": {"name": "g", "parameters": DEEP}}
    param, _ = openai_error(parse_chat_request, body(chat(tools=[TOOL, second], metadata=DEEP)))
    assert param.startswith("tools[0].function.parameters.a")


@pytest.mark.parametrize("dimensions", [0, MAX_EMBEDDING_DIMENSIONS + 1, 20_000_000])
def test_embedding_dimensions_out_of_range(dimensions: int) -> None:
    document = {"model": "m", "input": "a", "dimensions": dimensions}
    param, error = openai_error(parse_embedding_request, orjson.dumps(document))
    assert param == error["param"] == "dimensions"
    assert f"at most {MAX_EMBEDDING_DIMENSIONS}" in error["message"]


@pytest.mark.parametrize("dimensions", [1, MAX_EMBEDDING_DIMENSIONS])
def test_embedding_dimensions_in_range(dimensions: int) -> None:
    document = {"model": "m", "input": "a", "dimensions": dimensions}
    call = parse_embedding_request(orjson.dumps(document), request_id=RID)
    assert call.request.dimensions == dimensions


# --------------------------------------------------------------------------- the property

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["user", "assistant", "system", "tool", "text", "image_url", "function"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["type", "role", "content", "text", "name", "id", "input"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=24,
)
"""Any JSON value, leaning towards the keys and strings that requests are made of."""

CHAT_KEYS = ["model", "messages", "tools", "tool_choice", "response_format", "stream", "stop"]
MESSAGES_KEYS = ["model", "messages", "max_tokens", "system", "tools", "tool_choice", "thinking"]
EMBEDDING_KEYS = ["model", "input", "dimensions", "encoding_format", "user"]


def documents(keys: list[str]) -> st.SearchStrategy[Any]:
    """Any JSON value as a whole body, or an object made mostly of the dialect's own keys."""
    return JSON_VALUES | st.dictionaries(
        st.sampled_from(keys) | st.text(max_size=6), JSON_VALUES, max_size=6
    )


def parses_or_refuses(parse: Callable[[bytes], object], document: object) -> None:
    """``parse`` answers the JSON ``document`` with a request, or with a ``RequestError``."""
    try:
        data = orjson.dumps(document)
    except orjson.JSONEncodeError:  # an integer past 64 bits, which orjson will not write
        data = json.dumps(document).encode()
    try:
        parsed = parse(data)
    except RequestError:
        return
    request = parsed.request if isinstance(parsed, EmbeddingCall) else parsed
    assert isinstance(request, ChatRequest | EmbeddingRequest)
    assert request.estimated_prompt_tokens() >= 1


def openai_chat(data: bytes) -> object:
    return parse_chat_request(data, request_id=RID)


def anthropic_messages(data: bytes) -> object:
    return parse_messages_request(data, request_id=RID)


def openai_embeddings(data: bytes) -> object:
    return parse_embedding_request(data, request_id=RID)


BUDGET = settings(max_examples=200, deadline=None)


@BUDGET
@given(documents(CHAT_KEYS))
def test_any_chat_body(document: object) -> None:
    parses_or_refuses(openai_chat, document)


@BUDGET
@given(documents(MESSAGES_KEYS))
def test_any_messages_body(document: object) -> None:
    parses_or_refuses(anthropic_messages, document)


@BUDGET
@given(documents(EMBEDDING_KEYS))
def test_any_embeddings_body(document: object) -> None:
    parses_or_refuses(openai_embeddings, document)


ROLES = st.sampled_from(["user", "assistant", "system", "developer", "tool"])


@BUDGET
@given(
    st.sampled_from([(openai_chat, chat), (anthropic_messages, messages)]),
    st.sampled_from(["messages", "content", "tools"]),
    ROLES,
    JSON_VALUES,
)
def test_any_value_in_messages_content_or_tools(
    dialect: tuple[Callable[[bytes], object], Callable[..., dict[str, Any]]],
    where: str,
    role: str,
    value: object,
) -> None:
    parse, base = dialect
    if where == "messages":
        document = base(messages=value)
    elif where == "content":
        document = base(messages=[{"role": role, "content": value}])
    else:
        document = base(tools=value)
    parses_or_refuses(parse, document)


@BUDGET
@given(st.sampled_from(["input", "dimensions", "encoding_format"]), JSON_VALUES)
def test_any_value_in_an_embeddings_field(field: str, value: object) -> None:
    parses_or_refuses(openai_embeddings, {"model": "m", "input": "a", field: value})


# --------------------------------------------------------------------------- JSON in a string

DEEP_ARGUMENTS = {depth: '{"a":' * depth + "{}" + "}" * depth for depth in (63, 64, 300, 2000)}
"""A tool call's arguments, nested ``depth + 1`` levels deep (the outer object counts)."""


def exchange(arguments: str) -> list[dict[str, Any]]:
    """A chat conversation whose assistant turn calls a tool with ``arguments``."""
    return [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]


@pytest.mark.parametrize("depth", [64, 300])
def test_tool_call_arguments_nested_too_deep_are_a_400_at_the_edge(depth: int) -> None:
    # The arguments are JSON inside a string: the body's depth check cannot see them, and
    # what writes them into Claude's or Gemini's request (orjson, at most 254 levels; past
    # 1000, Python's json recursion) failed with a 500. Refused where the request is read,
    # whatever the deployment, naming the string in the client's own dialect.
    body = orjson.dumps(chat(messages=exchange(DEEP_ARGUMENTS[depth])))
    param, error = openai_error(parse_chat_request, body)
    assert param == error["param"] == "messages[1].tool_calls[0].function.arguments"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in error["message"]
    responses = {
        "model": "m",
        "input": [
            {"type": "message", "role": "user", "content": "weather?"},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "f",
                "arguments": DEEP_ARGUMENTS[depth],
            },
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
    }
    param, error = openai_error(parse_responses_request, orjson.dumps(responses))
    assert param == error["param"] == "input[1].arguments"


def test_tool_call_arguments_at_the_depth_limit_or_not_json_pass_the_edge() -> None:
    for arguments in (DEEP_ARGUMENTS[MAX_JSON_DEPTH - 1], "not json {", DEEP_ARGUMENTS[2000]):
        request = parse_chat_request(
            orjson.dumps(chat(messages=exchange(arguments))), request_id=RID
        )
        assert request.messages[1].tool_calls[0].arguments == arguments  # verbatim


def tool_call(arguments: str) -> ToolCall:
    return ToolCall(id="c1", name="f", arguments=arguments)


@pytest.mark.parametrize("depth", [64, 300, 2000])
def test_tool_call_arguments_too_deep_to_parse_are_a_400(depth: int) -> None:
    # Where a provider parses them (a request built by other means than the HTTP edge, or
    # past orjson's own 1024 levels, which the edge leaves to the provider).
    with pytest.raises(BadRequest) as caught:
        tool_call(DEEP_ARGUMENTS[depth]).parsed_arguments(param="messages[1]")
    assert caught.value.param == "messages[1]"
    assert caught.value.http_status == 400


def test_tool_call_arguments_at_the_depth_limit_are_read() -> None:
    assert orjson.dumps(tool_call(DEEP_ARGUMENTS[MAX_JSON_DEPTH - 1]).parsed_arguments())


def test_tool_call_arguments_with_an_integer_past_64_bits_can_be_written() -> None:
    # Python's json read 10**30 as an int, which orjson cannot write: a 500 before.
    arguments = tool_call('{"big": 123456789012345678901234567890}').parsed_arguments()
    assert arguments["big"] == pytest.approx(1.2345678901234568e29)
    assert orjson.dumps(arguments)


@pytest.mark.parametrize(
    "adapter",
    [
        AnthropicAdapter(AnthropicConfig(), "claude-sonnet-4-5"),
        GeminiAdapter(GeminiConfig(), "gemini-2.5-flash"),
    ],
    ids=["anthropic", "gemini"],
)
@pytest.mark.parametrize("depth", [300, 2000])
def test_a_provider_that_takes_structured_arguments_refuses_them_too_deep(
    adapter: AnthropicAdapter | GeminiAdapter, depth: int
) -> None:
    request = ChatRequest(
        model="m",
        messages=(
            ChatMessage.user("weather?"),
            ChatMessage.assistant(tool_calls=(tool_call(DEEP_ARGUMENTS[depth]),)),
            ChatMessage.tool("c1", "sunny"),
        ),
    )
    with pytest.raises(BadRequest) as caught:
        adapter.build_request(request, Secret("k"))
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_deep_arguments_from_an_upstream_reach_an_anthropic_client_as_an_empty_input() -> None:
    # The model's own arguments (an OpenAI-format upstream's text) past the limit could not
    # be written into the Messages answer: the block's input is {} (and it is logged).
    result = ChatCompletion(
        tool_calls=(ToolCall(id="c1", name="f", arguments=DEEP_ARGUMENTS[300]),),
        finish_reason=FinishReason.TOOL_CALLS,
    )
    answer = orjson.loads(message_json(result, request_id=RID, model="m"))
    assert answer["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]


# --------------------------------------------------------------------------- numeric bounds

CHAT_BOUNDS = [
    ({"max_tokens": MAX_OUTPUT_TOKENS + 1}, "max_tokens"),
    ({"max_tokens": 2**63}, "max_tokens"),
    ({"max_completion_tokens": 2**64 - 1}, "max_completion_tokens"),
    ({"seed": 2**63}, "seed"),
    ({"n": MAX_CHOICES + 1}, "n"),
    ({"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS + 1}, "top_logprobs"),
    ({"stop": "x" * (MAX_STOP_LENGTH + 1)}, "stop"),
    ({"stop": ["ok", "x" * (MAX_STOP_LENGTH + 1)]}, "stop[1]"),
    ({"user": "u" * (MAX_USER_LENGTH + 1)}, "user"),
    ({"tools": [named_tool(i) for i in range(MAX_TOOLS + 1)]}, "tools"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
]


@pytest.mark.parametrize(("fields", "param"), CHAT_BOUNDS)
def test_every_number_of_a_chat_request_is_bounded(fields: dict[str, Any], param: str) -> None:
    got, error = openai_error(parse_chat_request, orjson.dumps(chat(**fields)))
    assert got == error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_the_chat_bounds_admit_their_limits() -> None:
    at_the_limits = chat(
        max_tokens=MAX_OUTPUT_TOKENS,
        seed=-(2**63),
        stop=["x" * MAX_STOP_LENGTH],
        user="u" * MAX_USER_LENGTH,
        tools=[named_tool(i) for i in range(MAX_TOOLS)],
    )
    request = parse_chat_request(orjson.dumps(at_the_limits), request_id=RID)
    assert request.sampling.max_tokens == MAX_OUTPUT_TOKENS
    assert len(request.tools) == MAX_TOOLS


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_output_tokens": MAX_OUTPUT_TOKENS + 1}, "max_output_tokens"),
        ({"user": "u" * (MAX_USER_LENGTH + 1)}, "user"),
        (
            {"tools": [{"type": "function", "name": f"f{i}"} for i in range(MAX_TOOLS + 1)]},
            "tools",
        ),
    ],
)
def test_every_number_of_a_responses_request_is_bounded(fields: dict[str, Any], param: str) -> None:
    document = {"model": "m", "input": "hi", **fields}
    got, error = openai_error(parse_responses_request, orjson.dumps(document))
    assert got == error["param"] == param


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"max_tokens": MAX_OUTPUT_TOKENS + 1}, "max_tokens", "less than or equal to"),
        ({"max_tokens": 2**64 - 1}, "max_tokens", "less than or equal to"),
        ({"top_k": MAX_TOP_K + 1}, "top_k", "less than or equal to"),
        ({"stop_sequences": ["x" * (MAX_STOP_LENGTH + 1)]}, "stop_sequences.0", "at most"),
        ({"metadata": {"user_id": "u" * (MAX_USER_LENGTH + 1)}}, "metadata.user_id", "at most"),
        (
            {"tools": [{"name": f"f{i}", "input_schema": {}} for i in range(MAX_TOOLS + 1)]},
            "tools",
            "at most 128 items",
        ),
    ],
)
def test_every_number_of_a_messages_request_is_bounded(
    fields: dict[str, Any], param: str, words: str
) -> None:
    got, answer = anthropic_error(orjson.dumps(messages(**fields)))
    assert got == param
    assert answer["error"]["message"].startswith(f"{param}: ")
    assert words in answer["error"]["message"]


def test_a_thinking_budget_to_count_is_bounded_naming_the_budget() -> None:
    # count_tokens takes no max_tokens: a budget past the most a request may generate is
    # refused naming the budget, not a field the client did not send.
    counted = {
        "model": "claude",
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": MAX_OUTPUT_TOKENS},
    }
    with pytest.raises(BadRequest) as caught:
        parse_count_tokens_request(orjson.dumps(counted), request_id=RID)
    assert caught.value.param == "thinking.budget_tokens"
    counted["thinking"] = {"type": "enabled", "budget_tokens": MAX_OUTPUT_TOKENS - 1}
    assert parse_count_tokens_request(orjson.dumps(counted), request_id=RID).sampling.thinks


def test_the_core_bounds_every_number_whatever_the_entry_point() -> None:
    message = (ChatMessage.user("hi"),)
    for sampling, param in [
        ({"max_tokens": MAX_OUTPUT_TOKENS + 1}, "max_tokens"),
        ({"seed": 2**63}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"top_k": MAX_TOP_K + 1}, "top_k"),
        ({"thinking_budget": MAX_OUTPUT_TOKENS + 1}, "thinking"),
        ({"stop": ("x" * (MAX_STOP_LENGTH + 1),)}, "stop"),
    ]:
        with pytest.raises(BadRequest) as caught:
            SamplingParams(**sampling)
        assert caught.value.param == param
    tools = tuple(ToolDefinition(name=f"f{i}") for i in range(MAX_TOOLS + 1))
    with pytest.raises(BadRequest) as caught:
        ChatRequest(model="m", messages=message, tools=tools)
    assert caught.value.param == "tools"
    with pytest.raises(BadRequest) as caught:
        ChatRequest(model="m", messages=message, user="u" * (MAX_USER_LENGTH + 1))
    assert caught.value.param == "user"
    with pytest.raises(BadRequest) as caught:
        EmbeddingRequest(model="m", inputs=("a",), user="u" * (MAX_USER_LENGTH + 1))
    assert caught.value.param == "user"
