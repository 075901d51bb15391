"""Anthropic Messages request JSON to our core values: the ``/v1/messages`` inbound edge.

The mirror image of :mod:`rakka_inference.providers.anthropic`, which turns a
:class:`~rakka_inference.core.messages.ChatRequest` into this format. Sans I/O:
:func:`parse_messages_request` takes the raw body and returns a validated ``ChatRequest``
or raises :class:`~rakka_inference.core.errors.BadRequest` whose ``param`` is the path of
the offending field, written as Anthropic writes it (``messages.2.content.0.source.data``,
``tools.0.input_schema``), and whose message starts with that path, in the API's own
wording: ``max_tokens: Field required``.

The mapping:

- ``system`` (a string, or text blocks) becomes the first message, role ``system``; a
  message of role ``system`` (which newer SDKs accept in ``messages``) stays in place.
- A user turn's ``tool_result`` blocks become ``tool`` messages, in order, before a user
  message with the turn's text and images; an assistant turn's ``tool_use`` blocks become
  its ``tool_calls`` (``input`` as JSON text). A ``tool_result`` must answer a
  ``tool_use`` made earlier in the conversation. Its content may be a string or text
  blocks; ``is_error`` has no core equivalent and is dropped (the content stays).
- Images: ``base64`` sources of the types the API takes (JPEG, PNG, GIF, WebP) and
  ``url`` sources (http or https), in user turns only.
- ``thinking`` and ``redacted_thinking`` blocks echoed back in assistant turns are dropped:
  core messages carry no reasoning. ``cache_control`` and ``citations`` are ignored
  wherever they stand; so are unknown keys inside blocks, tools and ``metadata``.
- A trailing assistant turn is passed on as the conversation's last message: an
  Anthropic-backed deployment continues it (prefill), others read it as an earlier turn.
  It alone may have empty content, and is then left out.
- ``max_tokens`` is required, as in Anthropic's API, and at least 1 (0, which asks only to
  warm the prompt cache, is refused: nothing here can do that). ``temperature`` is 0 to 1
  (Anthropic's range, stricter than the core's), ``top_p`` 0 to 1, ``stop_sequences`` at
  most four.
- ``tool_choice`` ``auto``/``any``/``tool``/``none`` becomes auto/required/named/none;
  ``disable_parallel_tool_use`` is accepted and has no effect (the core has no such switch).
- ``metadata.user_id`` becomes the request's ``user``.
- ``output_config.format`` of type ``json_schema`` becomes a JSON-schema response format.
- Accepted and without effect: ``service_tier`` (``auto``/``standard_only``), a top-level
  ``cache_control``, ``thinking`` of type ``disabled``.
- Refused with "not supported by this gateway": ``top_k`` (the core has no top-k
  sampling), ``thinking`` enabled or adaptive (the core request carries no reasoning
  budget), server tools, ``document``/``search_result``/server-tool content blocks,
  ``file`` image sources, images inside ``tool_result``, and the top-level fields in
  :data:`UNSUPPORTED_MESSAGES_PARAMS`. Any other unknown top-level field: "Extra inputs are
  not permitted".
- A stream always asks for usage (``include_usage``): Anthropic streams always carry it.
- ``null`` for an optional field means "absent".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

import orjson

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    MAX_STOP_SEQUENCES,
    ChatMessage,
    ChatRequest,
    ContentPart,
    ImagePart,
    ResponseFormat,
    Role,
    SamplingParams,
    TextPart,
)
from rakka_inference.core.tools import ToolCall, ToolChoice, ToolDefinition

__all__ = ["UNSUPPORTED_MESSAGES_PARAMS", "parse_messages_request"]

_PARAMS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "cache_control", "output_config",
    }
)  # fmt: skip

UNSUPPORTED_MESSAGES_PARAMS = frozenset(
    {
        "container", "mcp_servers", "context_management", "inference_geo", "speed",
        "diagnostics", "output_format",
    }
)  # fmt: skip
"""Anthropic parameters this gateway knows but cannot honour."""

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_DROPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
_NOT_JSON = "There was an error parsing the body as JSON"


# --------------------------------------------------------------------------- helpers


def _invalid(param: str, message: str) -> NoReturn:
    raise BadRequest(f"{param}: {message}", param=param)


def _missing(param: str) -> NoReturn:
    _invalid(param, "Field required")


def _unsupported(param: str, what: str) -> NoReturn:
    _invalid(param, f"{what} not supported by this gateway")


def _object(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _invalid(param, "Input should be a valid dictionary")
    return value


def _list(value: object, param: str) -> list[Any]:
    if not isinstance(value, list):
        _invalid(param, "Input should be a valid list")
    return value


def _str(value: object, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        _invalid(param, "Input should be a valid string")
    return value


def _required_str(value: object, param: str) -> str:
    text = _str(value, param)
    if text is None:
        _missing(param)
    if not text:
        _invalid(param, "String should have at least 1 character")
    return text


def _int(value: object, param: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(param, "Input should be a valid integer")
    return value


def _number(value: object, param: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        _invalid(param, "Input should be a valid number")
    # "not (low <= v <= high)" rejects NaN too, which compares false.
    if not low <= value <= high:
        _invalid(param, f"Input should be between {low:g} and {high:g}")
    return float(value)


def _bool(value: object, param: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        _invalid(param, "Input should be a valid boolean")
    return value


def _type(block: Mapping[str, Any], param: str) -> str:
    kind = block.get("type")
    if kind is None:
        _missing(f"{param}.type")
    if not isinstance(kind, str):
        _invalid(f"{param}.type", "Input should be a valid string")
    return kind


# --------------------------------------------------------------------------- request


def parse_messages_request(body: bytes, *, request_id: str) -> ChatRequest:
    """A ``POST /v1/messages`` body as a validated :class:`ChatRequest`.

    Raises :class:`BadRequest` with ``param`` naming the offending field; see the module
    docstring for the mapping and what is refused.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest(_NOT_JSON) from None
    if not isinstance(document, dict):
        raise BadRequest("body: Input should be a valid dictionary")
    for key in document:
        if key in UNSUPPORTED_MESSAGES_PARAMS:
            _unsupported(key, "this parameter is")
        if key not in _PARAMS:
            _invalid(key, "Extra inputs are not permitted")
    model = _required_str(document.get("model"), "model")
    max_tokens = _int(document.get("max_tokens"), "max_tokens")
    if max_tokens is None:
        _missing("max_tokens")
    if max_tokens < 1:
        _invalid("max_tokens", "Input should be greater than or equal to 1")
    if document.get("top_k") is not None:
        _unsupported("top_k", "top-k sampling is")
    _inert(document)
    raw_messages = document.get("messages")
    if raw_messages is None:
        _missing("messages")
    if not _list(raw_messages, "messages"):
        _invalid("messages", "List should have at least 1 item")
    messages = _messages(raw_messages)
    if all(message.role is Role.SYSTEM for message in messages):
        _invalid("messages", "at least one user or assistant message must have content")
    tools = _tools(document.get("tools"))
    stream = bool(_bool(document.get("stream"), "stream"))
    sampling = SamplingParams(
        temperature=_number(document.get("temperature"), "temperature", 0.0, 1.0),
        top_p=_number(document.get("top_p"), "top_p", 0.0, 1.0),
        max_tokens=max_tokens,
        stop=_stop_sequences(document.get("stop_sequences")),
    )
    return ChatRequest(
        model=model,
        messages=(*_system(document.get("system")), *messages),
        sampling=sampling,
        tools=tools,
        tool_choice=_tool_choice(document.get("tool_choice"), tools),
        response_format=_output_config(document.get("output_config")),
        stream=stream,
        include_usage=stream,
        user=_user(document.get("metadata")),
        request_id=request_id,
    )


def _inert(document: Mapping[str, Any]) -> None:
    """Fields accepted only with a value that changes nothing."""
    thinking = document.get("thinking")
    if thinking is not None and _type(_object(thinking, "thinking"), "thinking") != "disabled":
        _unsupported("thinking", "extended thinking is")
    tier = _str(document.get("service_tier"), "service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        _invalid("service_tier", "Input should be 'auto' or 'standard_only'")
    if document.get("cache_control") is not None:
        _object(document["cache_control"], "cache_control")


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    sequences = _list(value, "stop_sequences")
    for index, item in enumerate(sequences):
        if not _str(item, f"stop_sequences.{index}"):
            _invalid(f"stop_sequences.{index}", "String should have at least 1 character")
    if len(sequences) > MAX_STOP_SEQUENCES:  # the core's limit, whatever the provider
        _invalid("stop_sequences", f"List should have at most {MAX_STOP_SEQUENCES} items")
    return tuple(sequences)


def _user(value: object) -> str | None:
    if value is None:
        return None
    return _str(_object(value, "metadata").get("user_id"), "metadata.user_id")


def _system(value: object, param: str = "system") -> tuple[ChatMessage, ...]:
    """The top-level ``system`` (or a ``system`` message's content) as a system message."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (ChatMessage.system(value),)
    parts: list[ContentPart] = []
    for index, raw in enumerate(_list(value, param)):
        block_param = f"{param}.{index}"
        block = _object(raw, block_param)
        if _type(block, block_param) != "text":
            _invalid(f"{block_param}.type", "Input should be 'text'")
        parts.append(_text(block, block_param))
    return (ChatMessage(role=Role.SYSTEM, content=tuple(parts)),) if parts else ()


def _output_config(value: object) -> ResponseFormat | None:
    if value is None:
        return None
    config = _object(value, "output_config")
    for key in config:
        if key != "format":
            _unsupported(f"output_config.{key}", f"'output_config.{key}' is")
    if config.get("format") is None:
        return None
    spec = _object(config["format"], "output_config.format")
    if _type(spec, "output_config.format") != "json_schema":
        _invalid("output_config.format.type", "Input should be 'json_schema'")
    schema = spec.get("schema")
    if schema is None:
        _missing("output_config.format.schema")
    # The core wants a schema name (OpenAI requires one); Anthropic's format has none.
    return ResponseFormat.from_schema("response", _object(schema, "output_config.format.schema"))


# --------------------------------------------------------------------------- messages


def _messages(raw: list[Any]) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    called: set[str] = set()  # tool_use ids seen so far
    last = len(raw) - 1
    for index, item in enumerate(raw):
        param = f"messages.{index}"
        message = _object(item, param)
        role = message.get("role")
        if role is None:
            _missing(f"{param}.role")
        if role not in ("user", "assistant", "system"):
            _invalid(f"{param}.role", "Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if content is None:
            _missing(f"{param}.content")
        if not isinstance(content, str | list):
            _invalid(f"{param}.content", "Input should be a valid string or a list of blocks")
        if not content:
            if role == "assistant" and index == last:
                continue  # an empty prefill adds nothing
            _invalid(
                param,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        if role == "assistant":
            turn = _assistant(content, f"{param}.content", called)
            if turn is not None:
                messages.append(turn)
        elif role == "system":
            messages.extend(_system(content, f"{param}.content"))
        else:
            messages.extend(_user_turn(content, f"{param}.content", called))
    return messages


def _user_turn(content: str | list[Any], param: str, called: set[str]) -> list[ChatMessage]:
    if isinstance(content, str):
        return [ChatMessage.user(content)]
    results: list[ChatMessage] = []
    parts: list[ContentPart] = []
    for index, raw in enumerate(content):
        block_param = f"{param}.{index}"
        block = _object(raw, block_param)
        kind = _type(block, block_param)
        if kind == "text":
            parts.append(_text(block, block_param))
        elif kind == "image":
            parts.append(_image(block, block_param))
        elif kind == "tool_result":
            results.append(_tool_result(block, block_param, called))
        elif kind in ("tool_use", *_DROPPED_BLOCKS):
            _invalid(f"{block_param}.type", f"'{kind}' blocks belong in assistant messages")
        else:
            _unsupported(f"{block_param}.type", f"content blocks of type {kind!r} are")
    # The API puts a turn's tool results first; the core wants them as their own messages.
    if parts:
        results.append(ChatMessage.user(tuple(parts)))
    return results


def _assistant(content: str | list[Any], param: str, called: set[str]) -> ChatMessage | None:
    if isinstance(content, str):
        return ChatMessage.assistant(content)
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    for index, raw in enumerate(content):
        block_param = f"{param}.{index}"
        block = _object(raw, block_param)
        kind = _type(block, block_param)
        if kind == "text":
            parts.append(_text(block, block_param))
        elif kind == "tool_use":
            call = _tool_use(block, block_param)
            called.add(call.id)
            calls.append(call)
        elif kind in _DROPPED_BLOCKS:
            continue
        elif kind in ("image", "tool_result"):
            _invalid(f"{block_param}.type", f"'{kind}' blocks belong in user messages")
        else:
            _unsupported(f"{block_param}.type", f"content blocks of type {kind!r} are")
    if not parts and not calls:
        return None  # only thinking blocks: nothing the core can carry
    return ChatMessage(role=Role.ASSISTANT, content=tuple(parts) or None, tool_calls=tuple(calls))


def _text(block: Mapping[str, Any], param: str) -> TextPart:
    return TextPart(text=_required_str(block.get("text"), f"{param}.text"))


def _image(block: Mapping[str, Any], param: str) -> ImagePart:
    source_param = f"{param}.source"
    if block.get("source") is None:
        _missing(source_param)
    source = _object(block["source"], source_param)
    kind = _type(source, source_param)
    if kind == "base64":
        media_type = _required_str(source.get("media_type"), f"{source_param}.media_type")
        if media_type not in _IMAGE_MEDIA_TYPES:
            _invalid(
                f"{source_param}.media_type",
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
        data = _required_str(source.get("data"), f"{source_param}.data")
        part = ImagePart.from_base64(media_type, data)
        try:
            part.parse_data_url(param=f"{source_param}.data")
        except BadRequest:
            _invalid(f"{source_param}.data", "the image data is not valid base64")
        return part
    if kind == "url":
        url = _required_str(source.get("url"), f"{source_param}.url")
        if not url.lower().startswith(("https://", "http://")):
            _invalid(f"{source_param}.url", "the image URL must be an http(s) URL")
        return ImagePart(url=url)
    if kind == "file":
        _unsupported(f"{source_param}.type", "file sources are")
    _invalid(f"{source_param}.type", "Input should be 'base64' or 'url'")


def _tool_use(block: Mapping[str, Any], param: str) -> ToolCall:
    call_id = _required_str(block.get("id"), f"{param}.id")
    name = _required_str(block.get("name"), f"{param}.name")
    raw_input = block.get("input")
    arguments = {} if raw_input is None else _object(raw_input, f"{param}.input")
    return ToolCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode())


def _tool_result(block: Mapping[str, Any], param: str, called: set[str]) -> ChatMessage:
    call_id = _required_str(block.get("tool_use_id"), f"{param}.tool_use_id")
    if call_id not in called:
        _invalid(
            f"{param}.tool_use_id",
            f"unexpected tool_use_id {call_id!r}: no tool_use block with this id comes before",
        )
    _bool(block.get("is_error"), f"{param}.is_error")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return ChatMessage(role=Role.TOOL, content=content or "", tool_call_id=call_id)
    parts: list[ContentPart] = []
    for index, raw in enumerate(_list(content, f"{param}.content")):
        part_param = f"{param}.content.{index}"
        part = _object(raw, part_param)
        kind = _type(part, part_param)
        if kind != "text":
            _unsupported(f"{part_param}.type", f"{kind!r} blocks inside a tool_result are")
        parts.append(_text(part, part_param))
    return ChatMessage(role=Role.TOOL, content=tuple(parts) or "", tool_call_id=call_id)


# --------------------------------------------------------------------------- tools


def _tools(value: object) -> tuple[ToolDefinition, ...]:
    if value is None:
        return ()
    tools: list[ToolDefinition] = []
    names: set[str] = set()
    for index, raw in enumerate(_list(value, "tools")):
        param = f"tools.{index}"
        tool = _object(raw, param)
        kind = tool.get("type")
        if kind not in (None, "custom"):
            _unsupported(f"{param}.type", f"server tools ({kind!r}) are")
        name = _required_str(tool.get("name"), f"{param}.name")
        if name in names:
            _invalid(f"{param}.name", f"tool names must be unique; {name!r} is repeated")
        names.add(name)
        if tool.get("input_schema") is None:
            _missing(f"{param}.input_schema")
        description = _str(tool.get("description"), f"{param}.description")
        schema = _object(tool["input_schema"], f"{param}.input_schema")
        strict = _bool(tool.get("strict"), f"{param}.strict")
        try:
            tools.append(
                ToolDefinition(name=name, description=description, parameters=schema, strict=strict)
            )
        except BadRequest as error:  # the core's rule for names
            raise BadRequest(f"{param}.name: {error.message}", param=f"{param}.name") from None
    return tuple(tools)


def _tool_choice(value: object, tools: tuple[ToolDefinition, ...]) -> ToolChoice | None:
    if value is None:
        return None
    choice = _object(value, "tool_choice")
    _bool(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    kind = _type(choice, "tool_choice")
    if kind == "auto":
        return ToolChoice.auto()
    if kind == "none":
        return ToolChoice.none()
    if kind not in ("any", "tool"):
        _invalid("tool_choice.type", "Input should be 'auto', 'any', 'tool' or 'none'")
    if not tools:
        _invalid("tool_choice", f"tool_choice {kind!r} needs tools")
    if kind == "any":
        return ToolChoice.required()
    name = _required_str(choice.get("name"), "tool_choice.name")
    if name not in {tool.name for tool in tools}:
        _invalid("tool_choice.name", f"tool {name!r} is not among the tools")
    return ToolChoice.named(name)
