"""Replies like a model's: schema-valid tool arguments and JSON answers, in each dialect."""

from __future__ import annotations

from datetime import date, datetime
from enum import Enum
from typing import Any, Literal

import orjson
import pytest
from pydantic import BaseModel, Field

from rakka_inference.testkit.faults import ReplyScript
from rakka_inference.testkit.model_like import (
    MAX_EXAMPLE_TEXT,
    MAX_EXAMPLE_VALUES,
    example_of,
    model_like,
)


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str = Field(min_length=12)
    postcode: str | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=120)
    height_m: float = Field(gt=0.5)
    born: date
    seen: datetime
    email: str = Field(json_schema_extra={"format": "email"})
    colour: Colour
    kind: Literal["person"]
    tags: list[str] = Field(min_length=2)
    address: Address
    friends: list[Address] | None = None
    nested: dict[str, int] = {}


@pytest.mark.parametrize("model", [Person, Address])
def test_examples_validate_against_pydantic_schemas(model: type[BaseModel]) -> None:
    value = example_of(model.model_json_schema())
    model.model_validate(value)  # raises when the example does not fit


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "integer", "exclusiveMinimum": 3}, 4),
        ({"type": "number", "maximum": -2}, -2.0),
        ({"type": "integer", "exclusiveMaximum": 0}, -1),
        ({"type": "string", "maxLength": 3}, "san"),
        ({"type": ["null", "boolean"]}, True),
        ({"type": "null"}, None),
        ({"const": 7}, 7),
        (
            {"oneOf": [{"type": "null"}, {"type": "string", "format": "uuid"}]},
            "00000000-0000-4000-8000-000000000000",
        ),
        ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}]}, {"a": 1}),
        ({"type": "array", "items": {"type": "boolean"}, "minItems": 2}, [True, True]),
        ({"pattern": "^[a-z]+$"}, "sandbox"),
        ("not a schema", None),
        ({"$ref": "#/$defs/missing"}, None),
    ],
)
def test_example_of_each_kind(schema: Any, expected: Any) -> None:
    assert example_of(schema) == expected


def test_a_recursive_schema_ends() -> None:
    schema = {
        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    value = example_of(schema)
    depth = 0
    while isinstance(value, dict) and value.get("next") is not None:
        value, depth = value["next"], depth + 1
    assert depth < 20


BASE = ReplyScript(text="plain", chunks=3)
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def test_openai_tools_are_called_until_answered() -> None:
    tools = [
        {"type": "function", "function": {"name": "first", "parameters": {}}},
        {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
    ]
    ask = {"messages": [{"role": "user", "content": "hi"}], "tools": tools}
    script = model_like(BASE, ask)
    assert [(c.name, c.arguments) for c in script.tool_calls] == [("first", {})]
    named = model_like(
        BASE, {**ask, "tool_choice": {"type": "function", "function": {"name": "weather"}}}
    )
    assert [(c.name, c.arguments) for c in named.tool_calls] == [("weather", {"city": "sandbox"})]
    assert model_like(BASE, {**ask, "tool_choice": "none"}) is BASE
    answered = {**ask, "messages": [*ask["messages"], {"role": "tool", "content": "sunny"}]}
    assert model_like(BASE, answered) is BASE


def test_openai_formats() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    script = model_like(BASE, {"messages": [], "response_format": fmt})
    assert orjson.loads(script.text or "") == {"n": 1}
    plain = model_like(BASE, {"response_format": {"type": "json_object"}})
    assert orjson.loads(plain.text or "") == {"answer": "Hello from the rakka sandbox"}
    assert model_like(BASE, {"response_format": {"type": "text"}}) is BASE


def test_anthropic_tools_and_output_format() -> None:
    ask = {
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "weather", "input_schema": WEATHER}],
        "tool_choice": {"type": "tool", "name": "weather"},
    }
    assert model_like(BASE, ask).tool_calls[0].arguments == {"city": "sandbox"}
    assert model_like(BASE, {**ask, "tool_choice": {"type": "none"}}).tool_calls == ()
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]}
    assert model_like(BASE, {**ask, "messages": [*ask["messages"], result]}) is BASE
    fmt = {"type": "json_schema", "schema": WEATHER}
    assert orjson.loads(model_like(BASE, {"output_format": fmt}).text or "") == {"city": "sandbox"}


def test_gemini_tools_and_schemas() -> None:
    upper = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}
    ask = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "tools": [{"functionDeclarations": [{"name": "weather", "parameters": upper}]}],
        "toolConfig": {
            "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["weather"]}
        },
    }
    assert model_like(BASE, ask).tool_calls[0].arguments == {"city": "sandbox"}
    none = {**ask, "toolConfig": {"functionCallingConfig": {"mode": "NONE"}}}
    assert model_like(BASE, none) is BASE
    answered = {
        **ask,
        "contents": [*ask["contents"], {"role": "user", "parts": [{"functionResponse": {}}]}],
    }
    assert model_like(BASE, answered) is BASE
    schema = {"generationConfig": {"responseMimeType": "application/json", "responseSchema": upper}}
    assert orjson.loads(model_like(BASE, schema).text or "") == {"city": "sandbox"}
    json_only = {"generationConfig": {"responseMimeType": "application/json"}}
    assert orjson.loads(model_like(BASE, json_only).text or "")["answer"]
    assert model_like(BASE, {"generationConfig": {}}) is BASE


def values_in(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(values_in(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(values_in(v) for v in value)
    return 1


def text_in(value: object) -> int:
    if isinstance(value, dict):
        return sum(text_in(v) for v in value.values())
    if isinstance(value, list):
        return sum(text_in(v) for v in value)
    return len(value) if isinstance(value, str) else 0


FAN_OUT = {
    "$defs": {
        level: {
            "type": "object",
            "properties": {f"p{i}": {"$ref": f"#/$defs/{below}"} for i in range(100)},
        }
        for level, below in (("a", "b"), ("b", "c"), ("c", "d"))
    }
    | {"d": {"type": "string", "minLength": 50}},
    "$ref": "#/$defs/a",
}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "minItems": 10**12, "items": {"type": "integer"}},
        {"type": "array", "minItems": 10**6, "items": {"type": "array", "minItems": 10**6}},
        {"type": "string", "minLength": 10**12},
        {"type": "array", "minItems": 10**4, "items": {"type": "string", "minLength": 10**4}},
        FAN_OUT,  # 100^3 strings of 50 characters, from a schema of a few kilobytes
    ],
    ids=["items", "items-of-items", "string", "strings", "fan-out"],
)
def test_an_example_is_bounded_whatever_the_schema_asks(schema: dict[str, Any]) -> None:
    # A sandbox reply for a request of a few hundred bytes: before the bounds, these built
    # gigabytes (or took minutes).
    value = example_of(schema)
    assert values_in(value) <= MAX_EXAMPLE_VALUES
    assert text_in(value) <= MAX_EXAMPLE_TEXT
    assert len(orjson.dumps(value)) < 4 * (MAX_EXAMPLE_VALUES + MAX_EXAMPLE_TEXT)


def test_an_example_within_the_bounds_is_whole() -> None:
    schema = {"type": "array", "minItems": 100, "items": {"type": "string", "minLength": 20}}
    value = example_of(schema)
    assert len(value) == 100
    assert all(len(item) == 20 for item in value)
