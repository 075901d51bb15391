"""JSON for fuzzing the gateway: text no encoder writes (:class:`Raw`), values that have
broken parsers and serializers elsewhere, any JSON value with them as leaves, and the
paths of a document's values, to replace one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st


@dataclass(frozen=True)
class Raw:
    """JSON text written as it is: what no encoder writes (``NaN``, ``1e400``, an integer
    past 64 bits, a lone surrogate, nesting deeper than any encoder goes)."""

    text: str


def encode(value: object) -> str:
    """``value`` as JSON text, :class:`Raw` pieces verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(item) for item in value) + "]"
    return json.dumps(value)


def nested(depth: int, opener: str = '{"a":', closer: str = "}") -> Raw:
    return Raw(opener * depth + "0" + closer * depth)


HOSTILE_LEAVES: st.SearchStrategy[Any] = st.sampled_from(
    [
        Raw("NaN"),
        Raw("Infinity"),
        Raw("-Infinity"),
        Raw("1e400"),
        Raw("-1e400"),
        Raw("1e-400"),
        Raw(str(2**63)),
        Raw(str(2**64)),
        Raw(str(-(2**63) - 1)),
        Raw(str(10**40)),
        Raw('"\\ud800"'),
        Raw('"\\u0000"'),
        nested(70),
        nested(300),
        nested(2000),
        nested(300, "[", "]"),
        Raw("[" + ",".join(["1"] * 5000) + "]"),
        -1,
        0,
        2**31,
        2**63 - 1,
        -(2**63),
        1.5,
        -0.0,
        1e308,
        "",
        "x" * 100_000,
        "\u202e\ufeff\U0001f600",
        [],
        {},
        [[]],
        {"": {}},
        True,
        None,
    ]
)
"""Values that have broken parsers and serializers elsewhere."""

KEYS = st.sampled_from(
    [
        "type", "role", "content", "text", "name", "id", "input", "arguments",
        "parameters", "schema", "properties", "items", "$ref", "$defs", "minItems",
        "minLength", "tool_calls", "tool_call_id", "tool_use_id", "function", "url",
        "image_url", "source", "data", "media_type", "detail", "format", "json_schema",
        "call_id", "output", "budget_tokens", "strict", "anyOf", "enum",
    ]
)  # fmt: skip

LEAVES = HOSTILE_LEAVES | st.none() | st.booleans() | st.integers() | st.text(max_size=10)
JSON = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(KEYS | st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)
"""Any JSON value, with hostile leaves, leaning on the keys requests are made of."""


def spots(value: object, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """The path of every value inside ``value`` (not ``value`` itself)."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield (*path, key)
        yield from spots(child, (*path, key))


def at(value: Any, path: tuple[str | int, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def replaced(value: Any, path: tuple[str | int, ...], new: object) -> Any:
    """``value`` with the value at ``path`` replaced by ``new`` (a copy along the path)."""
    if not path:
        return new
    head, *rest = path
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], tuple(rest), new)}
    copy = list(value)
    copy[head] = replaced(copy[head], tuple(rest), new)  # type: ignore[index]
    return copy


SWEEP_VALUES: dict[str, list[Any]] = {
    "string": [nested(300).text, '{"a": 123456789012345678901234567890}', "x" * 100_000, ""],
    "number": [Raw(str(2**64)), Raw("1e400"), -1, 2**63 - 1],
    "other": [nested(300), Raw("NaN"), "text", 1],
}


def sweep_values(value: object) -> list[Any]:
    if isinstance(value, str):
        return SWEEP_VALUES["string"]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return SWEEP_VALUES["number"]
    return SWEEP_VALUES["other"]


def swept(body: dict[str, Any]) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every value of ``body`` (its ``model`` aside), each hostile value of its type."""
    for path in spots(body):
        if path != ("model",):
            for value in sweep_values(at(body, path)):
                yield path, replaced(body, path, value)
