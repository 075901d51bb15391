"""OpenAI Responses request JSON to our core values: the ``/v1/responses`` inbound edge.

:func:`parse_responses_request` takes the raw body and returns a :class:`ResponsesCall`
(the core :class:`~rakka_inference.core.messages.ChatRequest` and what the answer must
echo), or raises :class:`~rakka_inference.core.errors.BadRequest` whose ``param`` is the
path of the offending field, written as OpenAI writes it (``input[2].content[0].type``,
``tools[0].name``, ``text.format.schema``), in OpenAI's wording
(:mod:`~rakka_inference.api.openai_fields`). ``input`` is read by
:mod:`~rakka_inference.api.openai_responses_input`.

The mapping:

- ``instructions`` becomes the first message, role ``system``; ``input`` follows.
- ``max_output_tokens`` (1 to :data:`~rakka_inference.core.messages.MAX_OUTPUT_TOKENS`),
  ``temperature``, ``top_p``, ``reasoning.effort``
  become the sampling parameters (the core checks ranges and efforts).
- ``tools``: function tools, flat (``{"type": "function", "name", "description",
  "parameters", "strict"}``), names unique; no ``parameters`` means an empty object
  schema. An absent ``strict`` is left to the provider (the Responses API's default is
  true, which a schema written for non-strict calling would fail upstream).
- ``tool_choice``: ``auto``/``none``/``required`` or ``{"type": "function", "name"}``.
  ``parallel_tool_calls`` (a boolean, echoed) goes to the core request, as on chat.
- ``text.format``: ``text``, ``json_object``, or ``json_schema`` (``name``, ``schema``,
  ``strict``; ``description`` has no core slot and is dropped) becomes the response
  format. ``text.verbosity`` only with its default (``medium``).
- ``user`` and ``metadata`` as on chat; ``stream``, with ``stream_options``
  (``include_obfuscation``, without effect) only when streaming. A stream always carries
  usage: ``response.completed`` reports it.
- The gateway keeps no responses. ``store`` may be false or absent (the answer says
  ``"store": false`` either way); ``store: true`` and ``previous_response_id`` are
  refused naming the field.
- Accepted only with a value that changes nothing (:data:`INERT_RESPONSES_PARAMS`):
  ``background`` false, ``include`` empty, ``truncation`` ``disabled``, ``service_tier``
  auto/default, ``top_logprobs`` 0, ``max_tool_calls`` null.
- Refused as not supported (:data:`UNSUPPORTED_RESPONSES_PARAMS`): ``conversation``,
  ``prompt``, ``context_management``, the prompt-cache and moderation options,
  ``safety_identifier``...; built-in, custom and MCP tools, ``reasoning.summary``.
- Any other top-level field: "Unrecognized request argument supplied: X". Unknown keys
  inside nested objects (items, parts, tools) are ignored, as on chat.
- ``null`` for an optional field means "absent", as in OpenAI's API.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rakka_inference.api.openai_fields import invalid_value, read
from rakka_inference.api.openai_request import parse_metadata, parse_stream_options, parse_user
from rakka_inference.api.openai_responses_input import parse_input
from rakka_inference.api.openai_tools import function_definition
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    MAX_OUTPUT_TOKENS,
    MAX_TOOLS,
    REASONING_EFFORTS,
    ChatMessage,
    ChatRequest,
    ResponseFormat,
    SamplingParams,
)
from rakka_inference.core.tools import ToolChoice, ToolDefinition

__all__ = [
    "CORE_PARAM_NAMES",
    "INERT_RESPONSES_PARAMS",
    "UNSUPPORTED_RESPONSES_PARAMS",
    "ResponsesCall",
    "parse_responses_request",
]

_PARAMS = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
        "tools", "tool_choice", "parallel_tool_calls", "text", "reasoning", "user",
        "metadata", "stream", "stream_options", "store", "previous_response_id",
    }
)  # fmt: skip

INERT_RESPONSES_PARAMS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "background": (lambda v: v is None or v is False, "false"),
    "include": (lambda v: v is None or v == [], "[]"),
    "truncation": (lambda v: v in (None, "disabled"), '"disabled"'),
    "service_tier": (lambda v: v in (None, "auto", "default"), '"auto"'),
    "top_logprobs": (lambda v: v is None or v == 0, "0"),
    "max_tool_calls": (lambda v: v is None, "null"),
}
"""Responses parameters accepted only with a value that changes nothing (and that default)."""

UNSUPPORTED_RESPONSES_PARAMS = frozenset(
    {
        "conversation", "prompt", "context_management", "prompt_cache_key",
        "prompt_cache_retention", "prompt_cache_options", "safety_identifier", "moderation",
        "image", "access_programs", "background_options",
    }
)  # fmt: skip
"""Responses parameters this gateway knows but cannot honour (refused unless null)."""

CORE_PARAM_NAMES: Mapping[str, str] = {
    "max_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}
"""The Responses API's name of a field that a core rule or a provider adapter names as
chat does, when it refuses a request after this parser (an Anthropic deployment refusing
``reasoning_effort``): the route renames the error's ``param``."""

_KEEPS_NOTHING = "the gateway keeps no responses"
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STREAM_OPTIONS = frozenset({"include_obfuscation"})
_TOOL_CHOICES = {
    "auto": ToolChoice.auto,
    "none": ToolChoice.none,
    "required": ToolChoice.required,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesCall:
    """A parsed ``POST /v1/responses``: the core request, and what the answer echoes that
    the core request does not keep as given."""

    request: ChatRequest
    instructions: str | None = None
    parallel_tool_calls: bool = True


def parse_responses_request(
    body: bytes, *, request_id: str, max_body_bytes: int | None = None
) -> ResponsesCall:
    """A ``POST /v1/responses`` body as a validated :class:`ResponsesCall`.

    Raises :class:`BadRequest` with ``param`` naming the offending field, or
    :class:`~rakka_inference.core.errors.PayloadTooLarge` past ``max_body_bytes``; see
    the module docstring for the mapping and what is refused.
    """
    document = read.document(body, max_body_bytes)
    for key, value in document.items():
        _check_param(key, value)
    model = read.required_string(document.get("model"), "model")
    instructions = read.string(document.get("instructions"), "instructions")
    messages = parse_input(document.get("input"))
    if instructions:
        messages.insert(0, ChatMessage.system(instructions))
    tools = _tools(document.get("tools"))
    parallel = read.boolean(document.get("parallel_tool_calls"), "parallel_tool_calls")
    stream = bool(read.boolean(document.get("stream"), "stream"))
    parse_stream_options(document.get("stream_options"), stream, _STREAM_OPTIONS)
    request = ChatRequest(
        model=model,
        messages=tuple(messages),
        sampling=_sampling(document),
        tools=tools,
        tool_choice=_tool_choice(document.get("tool_choice")),
        parallel_tool_calls=parallel,
        response_format=_text(document.get("text")),
        stream=stream,
        include_usage=stream,
        user=parse_user(document.get("user")),
        metadata=parse_metadata(document.get("metadata")),
        request_id=request_id,
    )
    return ResponsesCall(
        request=request,
        instructions=instructions,
        parallel_tool_calls=True if parallel is None else parallel,
    )


def _check_param(key: str, value: object) -> None:
    """Refuse ``key`` unless it is a parameter this gateway honours (module docstring)."""
    if key in _PARAMS:
        if key == "store" and read.boolean(value, "store"):
            raise BadRequest(f"{_KEEPS_NOTHING}: 'store' must be false or left out", param="store")
        if key == "previous_response_id" and value is not None:
            raise BadRequest(
                f"{_KEEPS_NOTHING}: send the whole conversation in input",
                param="previous_response_id",
            )
        return
    inert = INERT_RESPONSES_PARAMS.get(key)
    if inert is not None:
        if not inert[0](value):
            raise BadRequest(
                f"'{key}' is supported only with its default value ({inert[1]})", param=key
            )
    elif key in UNSUPPORTED_RESPONSES_PARAMS:
        if value is not None:
            raise BadRequest(f"'{key}' is not supported by this gateway", param=key)
    else:
        raise BadRequest(f"Unrecognized request argument supplied: {key}", param=key)


def _sampling(document: Mapping[str, Any]) -> SamplingParams:
    cap = read.integer(
        document.get("max_output_tokens"), "max_output_tokens", low=1, high=MAX_OUTPUT_TOKENS
    )
    return SamplingParams(
        temperature=read.number(document.get("temperature"), "temperature"),
        top_p=read.number(document.get("top_p"), "top_p"),
        max_tokens=cap,
        reasoning_effort=_reasoning(document.get("reasoning")),
    )


def _reasoning(value: object) -> str | None:
    """``reasoning.effort``; a summary cannot be given (the core carries no reasoning items)."""
    if value is None:
        return None
    reasoning = read.mapping(value, "reasoning")
    for key in ("summary", "generate_summary"):
        if reasoning.get(key) is not None:
            raise BadRequest(
                "reasoning summaries are not supported by this gateway", param=f"reasoning.{key}"
            )
    effort = read.string(reasoning.get("effort"), "reasoning.effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        invalid_value(
            "reasoning.effort", effort, ", ".join(f"'{name}'" for name in REASONING_EFFORTS)
        )
    return effort


# --------------------------------------------------------------------------- tools


def _tools(value: object) -> tuple[ToolDefinition, ...]:
    if value is None:
        return ()
    tools: list[ToolDefinition] = []
    names: set[str] = set()
    for index, raw in enumerate(read.array(value, "tools", max_items=MAX_TOOLS)):
        tool = _tool(raw, f"tools[{index}]")
        if tool.name in names:
            raise BadRequest(
                f"tool names must be unique; {tool.name!r} is repeated",
                param=f"tools[{index}].name",
            )
        names.add(tool.name)
        tools.append(tool)
    return tuple(tools)


def _tool(value: object, param: str) -> ToolDefinition:
    tool = read.mapping(value, param)
    kind = tool.get("type")
    if kind is None:
        read.missing(f"{param}.type")
    if kind != "function":
        if not isinstance(kind, str):
            read.wrong_type(f"{param}.type", "string", kind)
        raise BadRequest(
            f"tools of type {kind!r} are not supported by this gateway: only 'function' tools",
            param=f"{param}.type",
        )
    return function_definition(tool, param)


def _tool_choice(value: object) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, str):
        make = _TOOL_CHOICES.get(value)
        if make is None:
            invalid_value("tool_choice", value, "'none', 'auto' and 'required'")
        return make()
    choice = read.mapping(value, "tool_choice")
    kind = choice.get("type")
    if kind is None:
        read.missing("tool_choice.type")
    if kind != "function":
        if not isinstance(kind, str):
            read.wrong_type("tool_choice.type", "string", kind)
        raise BadRequest(
            f"tool_choice of type {kind!r} is not supported by this gateway: "
            "use 'auto', 'none', 'required' or a function",
            param="tool_choice.type",
        )
    return ToolChoice.named(read.required_string(choice.get("name"), "tool_choice.name"))


# --------------------------------------------------------------------------- text


def _text(value: object) -> ResponseFormat | None:
    if value is None:
        return None
    text = read.mapping(value, "text")
    verbosity = read.string(text.get("verbosity"), "text.verbosity")
    if verbosity not in (None, "medium"):
        raise BadRequest(
            "'text.verbosity' is supported only with its default value (\"medium\")",
            param="text.verbosity",
        )
    if text.get("format") is None:
        return None
    spec = read.mapping(text["format"], "text.format")
    kind = spec.get("type")
    if kind == "text":
        return ResponseFormat.text()
    if kind == "json_object":
        return ResponseFormat.json_object()
    if kind != "json_schema":
        if kind is None:
            read.missing("text.format.type")
        invalid_value("text.format.type", kind, "'text', 'json_object' and 'json_schema'")
    name = read.required_string(spec.get("name"), "text.format.name")
    if not _SCHEMA_NAME.fullmatch(name):
        raise BadRequest(
            f"schema name {name!r} must be 1-64 letters, digits, '_' or '-'",
            param="text.format.name",
        )
    read.string(spec.get("description"), "text.format.description")
    schema = spec.get("schema")
    if schema is None:
        read.missing("text.format.schema")
    return ResponseFormat.from_schema(
        name,
        read.mapping(schema, "text.format.schema"),
        strict=read.boolean(spec.get("strict"), "text.format.strict"),
    )
