"""Tools the model may call, the calls it makes, and how it may choose them.

These follow OpenAI's chat completions shapes (function tools, JSON-text arguments); the
provider adapters translate them to Anthropic's ``tool_use`` blocks and Gemini's
``functionCall`` parts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.json_depth import MAX_JSON_DEPTH, too_deep

__all__ = ["ToolCall", "ToolChoice", "ToolChoiceMode", "ToolDefinition"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolCall:
    """A call the assistant made to a tool.

    ``arguments`` is the JSON text exactly as the model produced it (which is what OpenAI
    sends and expects back); it is not guaranteed to be valid JSON.
    """

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self, *, param: str = "messages") -> dict[str, Any]:
        """The arguments as a JSON object, for providers that want structured input.

        An empty string means no arguments. Raises :class:`BadRequest` if the text is not
        a JSON object, or nests deeper than
        :data:`~rakka_inference.core.json_depth.MAX_JSON_DEPTH` (the object is written again
        into the provider's request: see :mod:`~rakka_inference.core.json_depth`). Read as
        the request body is (orjson): an integer past 64 bits is a float, as it would be in
        a body, so that the provider's request can always be written.
        """
        if not self.arguments.strip():
            return {}
        try:
            value = orjson.loads(self.arguments)
        except orjson.JSONDecodeError:
            raise BadRequest(
                f"arguments of tool call {self.id[:64]!r} are not valid JSON", param=param
            ) from None
        if not isinstance(value, dict):
            raise BadRequest(
                f"arguments of tool call {self.id[:64]!r} must be a JSON object", param=param
            )
        if too_deep(value, MAX_JSON_DEPTH) is not None:
            raise BadRequest(
                f"arguments of tool call {self.id[:64]!r} nest arrays and objects deeper than "
                f"{MAX_JSON_DEPTH} levels",
                param=param,
            )
        return value


# OpenAI's rule for function names; the strictest of the three providers.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _empty_object_schema() -> Mapping[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolDefinition:
    """A function the model may call. ``parameters`` is a JSON Schema, treated as read-only."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=_empty_object_schema)
    strict: bool | None = None
    """OpenAI structured outputs: the arguments must match the schema exactly."""

    def __post_init__(self) -> None:
        if not _TOOL_NAME.fullmatch(self.name):
            raise BadRequest(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'",
                param="tools",
            )


class ToolChoiceMode(enum.StrEnum):
    AUTO = "auto"
    """The model decides whether to call a tool."""
    NONE = "none"
    """The model must not call a tool."""
    REQUIRED = "required"
    """The model must call at least one tool."""
    NAMED = "named"
    """The model must call the tool named in :attr:`ToolChoice.name`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolChoice:
    """How the model may use the request's tools. Build one with the class methods."""

    mode: ToolChoiceMode
    name: str | None = None

    def __post_init__(self) -> None:
        if (self.mode is ToolChoiceMode.NAMED) != (self.name is not None):
            raise BadRequest(
                "tool_choice names a function exactly when its mode is 'named'",
                param="tool_choice",
            )

    @classmethod
    def auto(cls) -> ToolChoice:
        return cls(mode=ToolChoiceMode.AUTO)

    @classmethod
    def none(cls) -> ToolChoice:
        return cls(mode=ToolChoiceMode.NONE)

    @classmethod
    def required(cls) -> ToolChoice:
        return cls(mode=ToolChoiceMode.REQUIRED)

    @classmethod
    def named(cls, name: str) -> ToolChoice:
        return cls(mode=ToolChoiceMode.NAMED, name=name)
