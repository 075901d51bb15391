"""OpenAI's ``tools``, ``tool_choice`` and ``response_format`` as core values.

Part of :func:`~rakka_inference.api.openai_request.parse_chat_request`. Only ``function``
tools exist here, at most :data:`~rakka_inference.core.messages.MAX_TOOLS`; a tool
without ``parameters`` takes an empty object schema. A JSON-schema response format needs
a ``name`` (1-64 letters, digits, ``_`` or ``-``) and a ``schema``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rakka_inference.api.openai_fields import invalid_value, read
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import MAX_TOOLS, ResponseFormat
from rakka_inference.core.tools import ToolChoice, ToolDefinition

__all__ = ["function_definition", "parse_response_format", "parse_tool_choice", "parse_tools"]

_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def parse_tools(value: object) -> tuple[ToolDefinition, ...]:
    """The request's ``tools`` (absent: none)."""
    if value is None:
        return ()
    return tuple(
        _tool(item, f"tools[{index}]")
        for index, item in enumerate(
            read.array(value, "tools", non_empty=True, max_items=MAX_TOOLS)
        )
    )


def _tool(value: object, param: str) -> ToolDefinition:
    tool = read.mapping(value, param)
    kind = tool.get("type")
    if kind != "function":
        if kind is None:
            read.missing(f"{param}.type")
        invalid_value(f"{param}.type", kind, "'function'")
    function_param = f"{param}.function"
    if tool.get("function") is None:
        read.missing(function_param)
    return function_definition(read.mapping(tool["function"], function_param), function_param)


def function_definition(function: Mapping[str, Any], param: str) -> ToolDefinition:
    """A function's ``name``, ``description``, ``parameters`` and ``strict`` (chat's
    ``tools[i].function``, or a Responses function tool) as a core tool; ``param`` is its
    path."""
    name_param = f"{param}.name"
    name = read.required_string(function.get("name"), name_param)
    parameters = function.get("parameters")
    try:
        return ToolDefinition(
            name=name,
            description=read.string(function.get("description"), f"{param}.description"),
            parameters=(
                {"type": "object", "properties": {}}
                if parameters is None
                else read.mapping(parameters, f"{param}.parameters")
            ),
            strict=read.boolean(function.get("strict"), f"{param}.strict"),
        )
    except BadRequest as error:
        if error.param == "tools":  # the core's name rule
            error.param = name_param
        raise


def parse_tool_choice(value: object) -> ToolChoice | None:
    """The request's ``tool_choice``: a mode's name, or a named function."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == "auto":
            return ToolChoice.auto()
        if value == "none":
            return ToolChoice.none()
        if value == "required":
            return ToolChoice.required()
        invalid_value("tool_choice", value, "'none', 'auto' and 'required'")
    choice = read.mapping(value, "tool_choice")
    kind = choice.get("type")
    if kind != "function":
        invalid_value("tool_choice.type", kind, "'function'")
    if choice.get("function") is None:
        read.missing("tool_choice.function")
    function = read.mapping(choice["function"], "tool_choice.function")
    return ToolChoice.named(read.required_string(function.get("name"), "tool_choice.function.name"))


def parse_response_format(value: object) -> ResponseFormat | None:
    """The request's ``response_format``: text, a JSON object, or a named JSON schema."""
    if value is None:
        return None
    spec = read.mapping(value, "response_format")
    kind = spec.get("type")
    if kind == "text":
        return ResponseFormat.text()
    if kind == "json_object":
        return ResponseFormat.json_object()
    if kind != "json_schema":
        if kind is None:
            read.missing("response_format.type")
        invalid_value("response_format.type", kind, "'text', 'json_object' and 'json_schema'")
    if spec.get("json_schema") is None:
        read.missing("response_format.json_schema")
    schema = read.mapping(spec["json_schema"], "response_format.json_schema")
    name = read.required_string(schema.get("name"), "response_format.json_schema.name")
    if not _SCHEMA_NAME.fullmatch(name):
        raise BadRequest(
            f"schema name {name!r} must be 1-64 letters, digits, '_' or '-'",
            param="response_format.json_schema.name",
        )
    body = schema.get("schema")
    if body is None:
        read.missing("response_format.json_schema.schema")
    return ResponseFormat.from_schema(
        name,
        read.mapping(body, "response_format.json_schema.schema"),
        strict=read.boolean(schema.get("strict"), "response_format.json_schema.strict"),
    )
