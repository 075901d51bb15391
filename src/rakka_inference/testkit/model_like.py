"""A mock reply that behaves like a model: it calls the tools it is offered and answers in
the JSON shape it is asked for — the sandbox's replies (``rakka serve`` with no config).

A newcomer's first agent or structured-output script against the sandbox then works:

- **tools**: with tools offered and ``tool_choice`` not ``none``, the reply calls one tool —
  the one ``tool_choice`` names, else the first — with arguments built from its JSON
  schema (:func:`example_of`), until the conversation holds the tool's result; then it
  answers in text (the mocks decide that last part, as for any scripted call);
- **structured output**: with a JSON schema asked for (``response_format`` json_schema on
  OpenAI's API, ``output_config.format`` on Anthropic's, ``responseSchema`` /
  ``responseJsonSchema`` on Gemini's) the text is a JSON document valid against it; with
  plain JSON asked for (``json_object``, ``responseMimeType: application/json``), a small
  JSON object.

:func:`model_like` reads what a request asks for in any of the three dialects and returns
the :class:`~rakka_inference.testkit.faults.ReplyScript` for it, built on a base script
(its text, chunking and pace). :func:`example_of` covers the JSON Schema that tools and
structured outputs use: objects, arrays, scalars with their bounds and formats, ``enum``,
``const``, ``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``/``definitions``, and
nullable types. A schema it cannot satisfy exactly (a ``pattern``) gets a plain value.

The sandbox answers anyone its gateway serves, so what one example costs is bounded,
whatever the schema asks: at most :data:`MAX_EXAMPLE_VALUES` values (a ``minItems`` of
millions, or a few references fanning out a hundred properties each, would otherwise build
megabytes from a request of a few hundred bytes) and :data:`MAX_EXAMPLE_TEXT` characters
of strings in all, and :data:`_MAX_DEPTH` levels (``$ref`` cycles). Past a bound the
example is cut short — shorter arrays and strings, ``null`` for what is left — rather
than refused: it is a stand-in's answer, not a promise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from rakka_inference.testkit.faults import ReplyScript, ScriptedToolCall

__all__ = ["MAX_EXAMPLE_TEXT", "MAX_EXAMPLE_VALUES", "example_of", "model_like"]

_MAX_DEPTH = 12
MAX_EXAMPLE_VALUES = 2048
"""The most values (objects, arrays and scalars) one example holds."""
MAX_EXAMPLE_TEXT = 64 * 1024
"""The most characters one example's strings hold, together."""
_FORMATS: Mapping[str, str] = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "12:00:00",
    "email": "sandbox@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "hostname": "example.com",
}


def example_of(schema: object, root: object = None, depth: int = 0) -> Any:
    """A value valid against the JSON schema ``schema`` (``root`` holds its ``$defs``),
    within the bounds of the module docstring."""
    return _example(schema, schema if root is None else root, depth, _Budget())


@dataclass(slots=True)
class _Budget:
    """What is left for the rest of one example."""

    values: int = MAX_EXAMPLE_VALUES
    text: int = MAX_EXAMPLE_TEXT


def _example(schema: object, root: object, depth: int, budget: _Budget) -> Any:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH or budget.values <= 0:
        return None
    budget.values -= 1
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return _example(_resolve(ref, root), root, depth + 1, budget)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next((o for o in options if _type_of(o) != "null"), options[0])
            return _example(chosen, root, depth + 1, budget)
    every = schema.get("allOf")
    if isinstance(every, list) and every:
        merged: dict[str, Any] = {}
        for part in every:
            merged |= dict(part) if isinstance(part, Mapping) else {}
        return _example(merged, root, depth + 1, budget)
    kind = _type_of(schema)
    if kind == "object":
        properties = schema.get("properties")
        fields = properties if isinstance(properties, Mapping) else {}
        return {name: _example(sub, root, depth + 1, budget) for name, sub in fields.items()}
    if kind == "array":
        items = schema.get("items", {})
        found = [_example(items, root, depth + 1, budget)]
        # Each item costs at least one value: none once the budget is spent.
        while len(found) < _int(schema.get("minItems"), 1) and budget.values > 0:
            found.append(_example(items, root, depth + 1, budget))
        return found
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = _string(schema, budget.text)
    budget.text -= len(text)
    return text


def model_like(base: ReplyScript, body: Mapping[str, Any]) -> ReplyScript:
    """The script for one request ``body`` (OpenAI's, Anthropic's or Gemini's): ``base``
    with the tool call and the JSON text that request asks for."""
    tools = _tools(body)
    choice = _chosen_tool(body)
    schema, wants_json = _format(body)
    if tools and choice is not False and not _answered(body):
        name = choice if isinstance(choice, str) and choice in tools else next(iter(tools))
        arguments = example_of(tools[name])  # a tool's arguments are an object
        call = ScriptedToolCall(name, arguments if isinstance(arguments, dict) else {})
        return dataclasses.replace(base, tool_calls=(call,), text=None)
    if schema is not None:
        return dataclasses.replace(base, text=orjson.dumps(example_of(schema)).decode())
    if wants_json:
        return dataclasses.replace(base, text='{"answer": "Hello from the rakka sandbox"}')
    return base


# ---------------------------------------------------------------------- the request


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    """Every offered function tool's name and parameter schema, in order."""
    found: dict[str, Any] = {}
    for tool in _list(body.get("tools")):
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        if isinstance(function, Mapping):  # OpenAI chat: {"type": "function", "function"}
            found[str(function.get("name"))] = function.get("parameters") or {}
        elif "input_schema" in tool:  # Anthropic
            found[str(tool.get("name"))] = tool.get("input_schema") or {}
        for declaration in _list(tool.get("functionDeclarations")):  # Gemini
            if isinstance(declaration, Mapping):
                parameters = declaration.get("parametersJsonSchema", declaration.get("parameters"))
                found[str(declaration.get("name"))] = _gemini_schema(parameters)
    return found


def _answered(body: Mapping[str, Any]) -> bool:
    """Whether the conversation ends with a tool's result (the model answers it now)."""
    messages = _list(body.get("messages")) or _list(body.get("contents"))
    last = messages[-1] if messages else None
    if not isinstance(last, Mapping):
        return False
    if last.get("role") == "tool":  # OpenAI
        return True
    parts = _list(last.get("content")) + _list(last.get("parts"))
    return any(
        isinstance(part, Mapping)
        and (part.get("type") == "tool_result" or "functionResponse" in part)
        for part in parts
    )


def _chosen_tool(body: Mapping[str, Any]) -> str | bool:
    """The tool the request names, ``False`` when it forbids tools, else ``True``."""
    choice = body.get("tool_choice")
    if choice == "none":
        return False
    if isinstance(choice, Mapping):
        if choice.get("type") == "none":
            return False
        function = choice.get("function")
        named = function.get("name") if isinstance(function, Mapping) else choice.get("name")
        if isinstance(named, str):
            return named
    config = body.get("toolConfig")
    calling = config.get("functionCallingConfig") if isinstance(config, Mapping) else None
    if isinstance(calling, Mapping):
        if calling.get("mode") == "NONE":
            return False
        allowed = _list(calling.get("allowedFunctionNames"))
        if allowed and isinstance(allowed[0], str):
            return allowed[0]
    return True


def _format(body: Mapping[str, Any]) -> tuple[Any, bool]:
    """The JSON schema the answer must follow (or None), and whether JSON is asked for."""
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):  # OpenAI chat
        kind = response_format.get("type")
        spec = response_format.get("json_schema")
        if kind == "json_schema" and isinstance(spec, Mapping):
            return spec.get("schema") or {}, True
        return None, kind == "json_object"
    output_config = body.get("output_config")  # Anthropic; the older beta's output_format
    wanted = output_config.get("format") if isinstance(output_config, Mapping) else None
    output_format = wanted if wanted is not None else body.get("output_format")
    if isinstance(output_format, Mapping) and output_format.get("type") == "json_schema":
        return output_format.get("schema") or {}, True
    generation = body.get("generationConfig")
    if isinstance(generation, Mapping):  # Gemini
        schema = generation.get("responseJsonSchema", generation.get("responseSchema"))
        if schema is not None:
            return _gemini_schema(schema), True
        return None, generation.get("responseMimeType") == "application/json"
    return None, False


def _gemini_schema(schema: object) -> object:
    """Gemini's OpenAPI-style schema (``type: OBJECT``) in JSON Schema's lower case."""
    if isinstance(schema, Mapping):
        return {
            key: (
                value.lower() if key == "type" and isinstance(value, str) else _gemini_schema(value)
            )
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_gemini_schema(item) for item in schema]
    return schema


# ---------------------------------------------------------------------- schema pieces


def _resolve(ref: str, root: object) -> object:
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _type_of(schema: object) -> str | None:
    if not isinstance(schema, Mapping):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    return "object" if "properties" in schema else None


def _number(schema: Mapping[str, Any], *, integer: bool) -> int | float:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    value: float = 1
    if isinstance(low, int | float):
        value = low + (1 if "exclusiveMinimum" in schema and "minimum" not in schema else 0)
    elif isinstance(high, int | float):
        value = min(value, high - (1 if "exclusiveMaximum" in schema else 0))
    return int(value) if integer else float(value)


def _string(schema: Mapping[str, Any], room: int) -> str:
    """A string for ``schema``, of at most ``room`` characters."""
    text = _FORMATS.get(str(schema.get("format")), "sandbox")
    low = min(_int(schema.get("minLength"), 0), max(0, room))
    high = _int(schema.get("maxLength"), len(text))
    if len(text) < low:
        text += "x" * (low - len(text))
    return text[: min(max(high, low), max(0, room))]


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []
