"""Hostile and malformed request bodies: every one is a typed 400 naming its field, never a
500. Deep nesting, a content part whose ``type`` is not a string, an absurd embedding size,
and a property: arbitrary JSON, wherever it stands, is parsed or refused with a
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

from rakka_inference.api.anthropic_request import parse_messages_request
from rakka_inference.api.anthropic_response import anthropic_error_json
from rakka_inference.api.fields import MAX_JSON_DEPTH
from rakka_inference.api.openai_embeddings import EmbeddingCall, parse_embedding_request
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.api.openai_response import error_json
from rakka_inference.core.errors import BadRequest, RequestError
from rakka_inference.core.messages import (
    MAX_EMBEDDING_DIMENSIONS,
    ChatRequest,
    EmbeddingRequest,
)

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
