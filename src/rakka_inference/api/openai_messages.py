"""OpenAI chat messages to core messages: roles, content parts, images, tool calls.

Part of :func:`~rakka_inference.api.openai_request.parse_chat_request` (whose docstring
sets out the rules); ``param`` is the message's path, ``messages[2]``.

- Unknown keys inside a message or a part are ignored: SDKs echo assistant messages back
  with extra fields (``refusal``, ``annotations``, ``audio``, ``reasoning_content``).
- An assistant message whose ``content`` is null but which carries a ``refusal`` string
  takes the refusal as its text; ``refusal`` parts of assistant content likewise become
  text.
- Images (``image_url`` parts) in user messages only: an http(s) URL or a base64
  ``data:`` URL, ``detail`` auto/low/high. PDFs (``file`` parts) likewise, inline as
  ``file_data`` (``data:application/pdf;base64,…``), with an optional ``filename``.
- An assistant message's ``thinking_blocks`` (the convention LiteLLM set for Claude's
  signed thinking: ``{type: thinking, thinking, signature}`` and ``{type:
  redacted_thinking, data}``) are kept as its reasoning, so a tool loop with thinking can
  send them back to Claude unchanged. Elsewhere they are ignored, as unknown keys are.
"""

from __future__ import annotations

from rakka_inference.api.fields import is_http_url
from rakka_inference.api.openai_fields import invalid_type, invalid_value, read
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    ChatMessage,
    ContentPart,
    DocumentPart,
    ImagePart,
    ReasoningBlock,
    Role,
    TextPart,
)
from rakka_inference.core.tools import ToolCall

__all__ = ["parse_message", "parse_tool_call"]

_ROLES = {role.value: role for role in Role}
_IMAGE_DETAILS = ("auto", "low", "high")
_UNSUPPORTED_PARTS = frozenset({"input_audio", "audio"})


def parse_message(value: object, param: str) -> ChatMessage:
    """One element of ``messages``, at ``param``, as a :class:`ChatMessage`."""
    message = read.mapping(value, param)
    raw_role = message.get("role")
    if raw_role is None:
        read.missing(f"{param}.role")
    role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
    if role is None:
        if raw_role == "function":
            raise BadRequest(
                "the deprecated 'function' role is not supported; use 'tool' messages",
                param=f"{param}.role",
            )
        invalid_value(
            f"{param}.role", raw_role, "'system', 'developer', 'user', 'assistant' and 'tool'"
        )
    tool_calls: tuple[ToolCall, ...] = ()
    raw_calls = message.get("tool_calls")
    if raw_calls is not None:
        if role is not Role.ASSISTANT:
            raise BadRequest(
                f"only assistant messages may carry tool_calls, not {role.value}",
                param=f"{param}.tool_calls",
            )
        calls_param = f"{param}.tool_calls"
        tool_calls = tuple(
            parse_tool_call(call, f"{calls_param}[{index}]")
            for index, call in enumerate(read.array(raw_calls, calls_param, non_empty=True))
        )
    tool_call_id = read.string(message.get("tool_call_id"), f"{param}.tool_call_id")
    if role is Role.TOOL:
        tool_call_id = read.required_string(tool_call_id, f"{param}.tool_call_id")
    elif tool_call_id is not None:
        raise BadRequest(
            f"tool_call_id belongs on tool messages, not {role.value}",
            param=f"{param}.tool_call_id",
        )
    content = _content(message.get("content"), role, f"{param}.content")
    reasoning: tuple[ReasoningBlock, ...] = ()
    if role is Role.ASSISTANT:
        if content is None:
            content = read.string(message.get("refusal"), f"{param}.refusal")
        reasoning = _thinking_blocks(message.get("thinking_blocks"), f"{param}.thinking_blocks")
    if content is None and not tool_calls:
        read.missing(f"{param}.content")
    name = read.string(message.get("name"), f"{param}.name")
    try:
        return ChatMessage(
            role=role,
            content=content,
            name=name,
            tool_calls=tool_calls,
            tool_call_id=tool_call_id,
            reasoning=reasoning,
        )
    except BadRequest as error:  # pragma: no cover - every core rule is checked above
        # This keeps a rule added to the core later from surfacing as the bare "messages".
        if error.param == "messages":
            error.param = param
        raise


def _thinking_blocks(value: object, param: str) -> tuple[ReasoningBlock, ...]:
    if value is None:
        return ()
    blocks: list[ReasoningBlock] = []
    for index, raw in enumerate(read.array(value, param)):
        block_param = f"{param}[{index}]"
        block = read.mapping(raw, block_param)
        kind = block.get("type")
        if kind == "redacted_thinking":
            data = read.required_string(block.get("data"), f"{block_param}.data")
            blocks.append(ReasoningBlock(redacted=data))
        elif kind == "thinking":
            text = read.string(block.get("thinking"), f"{block_param}.thinking") or ""
            signature = read.string(block.get("signature"), f"{block_param}.signature") or ""
            blocks.append(ReasoningBlock(text=text, signature=signature))
        else:
            invalid_value(f"{block_param}.type", kind, "'thinking' and 'redacted_thinking'")
    return tuple(blocks)


def parse_tool_call(value: object, param: str) -> ToolCall:
    """One element of an assistant message's ``tool_calls`` as a :class:`ToolCall`."""
    call = read.mapping(value, param)
    call_id = read.required_string(call.get("id"), f"{param}.id")
    kind = call.get("type")
    if kind is not None and kind != "function":
        invalid_value(f"{param}.type", kind, "'function'")
    function_param = f"{param}.function"
    if call.get("function") is None:
        read.missing(function_param)
    function = read.mapping(call["function"], function_param)
    name = read.required_string(function.get("name"), f"{function_param}.name")
    arguments_param = f"{function_param}.arguments"
    arguments = read.string(function.get("arguments"), arguments_param)
    if arguments is None:
        read.missing(arguments_param)
    return ToolCall(id=call_id, name=name, arguments=read.json_text(arguments, arguments_param))


def _content(value: object, role: Role, param: str) -> str | tuple[ContentPart, ...] | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        invalid_type(param, "a string or an array of content parts", value)
    return tuple(
        _part(item, role, f"{param}[{index}]")
        for index, item in enumerate(read.array(value, param, non_empty=True))
    )


def _part(value: object, role: Role, param: str) -> ContentPart:
    part = read.mapping(value, param)
    kind = part.get("type")
    if kind is None:
        read.missing(f"{param}.type")
    if not isinstance(kind, str):
        read.wrong_type(f"{param}.type", "string", kind)
    if kind == "text":
        return TextPart(text=read.string(part.get("text"), f"{param}.text") or "")
    if kind == "refusal" and role is Role.ASSISTANT:
        return TextPart(text=read.string(part.get("refusal"), f"{param}.refusal") or "")
    if kind == "image_url":
        if role is not Role.USER:
            raise BadRequest(
                f"image content is accepted in user messages only, not {role.value}",
                param=f"{param}.type",
            )
        return _image(part.get("image_url"), f"{param}.image_url")
    if kind == "file":
        if role is not Role.USER:
            raise BadRequest(
                f"file content is accepted in user messages only, not {role.value}",
                param=f"{param}.type",
            )
        return _file(part.get("file"), f"{param}.file")
    if kind in _UNSUPPORTED_PARTS:
        raise BadRequest(
            f"content parts of type {kind!r} are not supported by this gateway",
            param=f"{param}.type",
        )
    invalid_value(
        f"{param}.type", kind, "'text', 'image_url' and 'file'" if role is Role.USER else "'text'"
    )


def _file(value: object, param: str) -> DocumentPart:
    """A ``file`` part: a PDF as ``file_data`` (a base64 data URL). A ``file_id`` names a
    file in one provider's store, which a gateway in front of many cannot resolve."""
    if value is None:
        read.missing(param)
    file = read.mapping(value, param)
    data = read.string(file.get("file_data"), f"{param}.file_data")
    if data is None:
        if file.get("file_id") is not None:
            raise BadRequest(
                "files by file_id are not supported by this gateway: send file_data",
                param=f"{param}.file_id",
            )
        read.missing(f"{param}.file_data")
    document = DocumentPart(
        url=data, filename=read.string(file.get("filename"), f"{param}.filename")
    )
    document.base64_data(param=f"{param}.file_data")
    return document


def _image(value: object, param: str) -> ImagePart:
    if value is None:
        read.missing(param)
    image = read.mapping(value, param)
    url = read.required_string(image.get("url"), f"{param}.url")
    detail = read.string(image.get("detail"), f"{param}.detail")
    if detail is not None and detail not in _IMAGE_DETAILS:
        invalid_value(f"{param}.detail", detail, "'auto', 'low' and 'high'")
    part = ImagePart(url=url, detail=detail)  # type: ignore[arg-type]  # checked above
    if part.is_data_url:
        part.parse_data_url(param=f"{param}.url")
    elif not is_http_url(url):
        raise BadRequest(
            "image URL must be an http(s) URL or a base64 data: URL", param=f"{param}.url"
        )
    return part
