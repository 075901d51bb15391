"""Anthropic's ``tools`` and ``tool_choice`` as core values.

Part of :func:`~rakka_inference.api.anthropic_request.parse_messages_request`: custom
tools only (server tools are refused), at most
:data:`~rakka_inference.core.messages.MAX_TOOLS`, names unique; ``tool_choice``
``auto``/``any``/``tool``/``none`` becomes auto/required/named/none, and
``disable_parallel_tool_use`` is read by :func:`parallel_tool_calls`.
"""

from __future__ import annotations

from rakka_inference.api.anthropic_fields import block_type, invalid, read, unsupported
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import MAX_TOOLS
from rakka_inference.core.tools import ToolChoice, ToolDefinition

__all__ = ["parse_tool_choice", "parse_tools"]


def parse_tools(value: object) -> tuple[ToolDefinition, ...]:
    """The request's ``tools`` (absent: none)."""
    if value is None:
        return ()
    tools: list[ToolDefinition] = []
    names: set[str] = set()
    for index, raw in enumerate(read.array(value, "tools", max_items=MAX_TOOLS)):
        param = f"tools.{index}"
        tool = read.mapping(raw, param)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            unsupported(f"{param}.type", f"server tools ({kind!r}) are")
        name = read.required_string(tool.get("name"), f"{param}.name")
        if name in names:
            invalid(f"{param}.name", f"tool names must be unique; {name!r} is repeated")
        names.add(name)
        if tool.get("input_schema") is None:
            read.missing(f"{param}.input_schema")
        description = read.string(tool.get("description"), f"{param}.description")
        schema = read.mapping(tool["input_schema"], f"{param}.input_schema")
        strict = read.boolean(tool.get("strict"), f"{param}.strict")
        try:
            tools.append(
                ToolDefinition(name=name, description=description, parameters=schema, strict=strict)
            )
        except BadRequest as error:  # the core's rule for names
            raise BadRequest(f"{param}.name: {error.message}", param=f"{param}.name") from None
    return tuple(tools)


def parallel_tool_calls(value: object) -> bool | None:
    """``tool_choice.disable_parallel_tool_use`` as the core's ``parallel_tool_calls``
    (its negation; None when the request does not say)."""
    if not isinstance(value, dict):
        return None
    disable = read.boolean(
        value.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use"
    )
    return None if disable is None else not disable


def parse_tool_choice(value: object, tools: tuple[ToolDefinition, ...]) -> ToolChoice | None:
    """The request's ``tool_choice``; ``any`` and ``tool`` need ``tools``, ``tool`` one of them."""
    if value is None:
        return None
    choice = read.mapping(value, "tool_choice")
    read.boolean(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    kind = block_type(choice, "tool_choice")
    if kind == "auto":
        return ToolChoice.auto()
    if kind == "none":
        return ToolChoice.none()
    if kind not in ("any", "tool"):
        invalid("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if not tools:
        invalid("tool_choice", f"tool_choice {kind!r} needs tools")
    if kind == "any":
        return ToolChoice.required()
    name = read.required_string(choice.get("name"), "tool_choice.name")
    if name not in {tool.name for tool in tools}:
        invalid("tool_choice.name", f"tool {name!r} is not among the tools")
    return ToolChoice.named(name)
