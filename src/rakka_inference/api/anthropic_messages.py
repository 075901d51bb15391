"""Anthropic messages and ``system`` to core messages: turns, content blocks, images, tools.

Part of :func:`~rakka_inference.api.anthropic_request.parse_messages_request`, whose
docstring sets out the mapping; ``param`` paths are Anthropic's (``messages.2.content.0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from rakka_inference.api.anthropic_fields import block_type, invalid, read, unsupported
from rakka_inference.api.fields import is_http_url
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    PDF,
    ChatMessage,
    ContentPart,
    DocumentPart,
    ImagePart,
    ReasoningBlock,
    Role,
    TextPart,
)
from rakka_inference.core.tools import ToolCall

__all__ = ["parse_messages", "parse_system"]

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


def parse_system(value: object, param: str = "system") -> tuple[ChatMessage, ...]:
    """The top-level ``system`` (or a ``system`` message's content) as a system message."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        return (ChatMessage.system(value),)
    parts: list[ContentPart] = []
    for block_param, block, kind in _blocks(value, param):
        if kind != "text":
            invalid(f"{block_param}.type", "Input should be 'text'")
        parts.append(_text(block, block_param))
    return (ChatMessage(role=Role.SYSTEM, content=tuple(parts)),) if parts else ()


def parse_messages(raw: list[Any]) -> list[ChatMessage]:
    """The request's ``messages`` as core messages: a turn may become several, or none."""
    messages: list[ChatMessage] = []
    called: set[str] = set()  # tool_use ids seen so far
    last = len(raw) - 1
    for index, item in enumerate(raw):
        param = f"messages.{index}"
        message = read.mapping(item, param)
        role = message.get("role")
        if role is None:
            read.missing(f"{param}.role")
        if role not in ("user", "assistant", "system"):
            invalid(f"{param}.role", "Input should be 'user', 'assistant' or 'system'")
        content = message.get("content")
        if content is None:
            read.missing(f"{param}.content")
        if not isinstance(content, str | list):
            invalid(f"{param}.content", "Input should be a valid string or a list of blocks")
        if not content:
            if role == "assistant" and index == last:
                continue  # an empty prefill adds nothing
            invalid(
                param,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        if role == "assistant":
            turn = _assistant(content, f"{param}.content", called)
            if turn is not None:
                messages.append(turn)
        elif role == "system":
            messages.extend(parse_system(content, f"{param}.content"))
        else:
            messages.extend(_user_turn(content, f"{param}.content", called))
    return messages


def _user_turn(content: str | list[Any], param: str, called: set[str]) -> list[ChatMessage]:
    if isinstance(content, str):
        return [ChatMessage.user(content)]
    results: list[ChatMessage] = []
    parts: list[ContentPart] = []
    for block_param, block, kind in _blocks(content, param):
        if kind == "text":
            parts.append(_text(block, block_param))
        elif kind == "image":
            parts.append(_image(block, block_param))
        elif kind == "document":
            parts.append(_document(block, block_param))
        elif kind == "tool_result":
            results.append(_tool_result(block, block_param, called))
        elif kind in ("tool_use", *_THINKING_BLOCKS):
            invalid(f"{block_param}.type", f"'{kind}' blocks belong in assistant messages")
        else:
            unsupported(f"{block_param}.type", f"content blocks of type {kind!r} are")
    # The API puts a turn's tool results first; the core wants them as their own messages.
    if parts:
        results.append(ChatMessage.user(tuple(parts)))
    return results


def _assistant(content: str | list[Any], param: str, called: set[str]) -> ChatMessage | None:
    if isinstance(content, str):
        return ChatMessage.assistant(content)
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    thinking: list[ReasoningBlock] = []
    for block_param, block, kind in _blocks(content, param):
        if kind == "text":
            parts.append(_text(block, block_param))
        elif kind == "tool_use":
            call = _tool_use(block, block_param)
            called.add(call.id)
            calls.append(call)
        elif kind in _THINKING_BLOCKS:
            thinking.append(_thinking(block, block_param, kind))
        elif kind in ("image", "document", "tool_result"):
            invalid(f"{block_param}.type", f"'{kind}' blocks belong in user messages")
        else:
            unsupported(f"{block_param}.type", f"content blocks of type {kind!r} are")
    return ChatMessage(
        role=Role.ASSISTANT,
        content=tuple(parts) or None,
        tool_calls=tuple(calls),
        reasoning=tuple(thinking),
    )


def _thinking(block: Mapping[str, Any], param: str, kind: str) -> ReasoningBlock:
    """A thinking block sent back as the API returned it: its text and signature, or a
    redacted block's data. Kept whole, for a provider that checks the signature."""
    if kind == "redacted_thinking":
        return ReasoningBlock(redacted=read.required_string(block.get("data"), f"{param}.data"))
    text = read.string(block.get("thinking"), f"{param}.thinking")
    if text is None:
        read.missing(f"{param}.thinking")
    signature = read.string(block.get("signature"), f"{param}.signature")
    if signature is None:
        read.missing(f"{param}.signature")
    return ReasoningBlock(text=text, signature=signature)


def _blocks(value: object, param: str) -> Iterator[tuple[str, dict[str, Any], str]]:
    """Each block of the list at ``param``, in order: its path, the block, its ``type``."""
    for index, raw in enumerate(read.array(value, param)):
        block_param = f"{param}.{index}"
        block = read.mapping(raw, block_param)
        yield block_param, block, block_type(block, block_param)


def _text(block: Mapping[str, Any], param: str) -> TextPart:
    return TextPart(text=read.required_string(block.get("text"), f"{param}.text"))


def _image(block: Mapping[str, Any], param: str) -> ImagePart:
    source_param = f"{param}.source"
    if block.get("source") is None:
        read.missing(source_param)
    source = read.mapping(block["source"], source_param)
    kind = block_type(source, source_param)
    if kind == "base64":
        media_type = read.required_string(source.get("media_type"), f"{source_param}.media_type")
        if media_type not in _IMAGE_MEDIA_TYPES:
            invalid(
                f"{source_param}.media_type",
                "Input should be 'image/jpeg', 'image/png', 'image/gif' or 'image/webp'",
            )
        data = read.required_string(source.get("data"), f"{source_param}.data")
        part = ImagePart.from_base64(media_type, data)
        try:
            part.parse_data_url(param=f"{source_param}.data")
        except BadRequest:
            invalid(f"{source_param}.data", "the image data is not valid base64")
        return part
    if kind == "url":
        url = read.required_string(source.get("url"), f"{source_param}.url")
        if not is_http_url(url):
            invalid(f"{source_param}.url", "the image URL must be an http(s) URL")
        return ImagePart(url=url)
    if kind == "file":
        unsupported(f"{source_param}.type", "file sources are")
    invalid(f"{source_param}.type", "Input should be 'base64' or 'url'")


def _document(block: Mapping[str, Any], param: str) -> ContentPart:
    """A ``document`` block: a PDF by ``base64`` or ``url`` source; a ``text`` source is
    its text. ``title`` names the PDF; ``context`` and ``citations`` are ignored."""
    source_param = f"{param}.source"
    if block.get("source") is None:
        read.missing(source_param)
    source = read.mapping(block["source"], source_param)
    kind = block_type(source, source_param)
    title = read.string(block.get("title"), f"{param}.title")
    if kind == "base64":
        media_type = read.required_string(source.get("media_type"), f"{source_param}.media_type")
        if media_type != PDF:
            invalid(f"{source_param}.media_type", f"Input should be '{PDF}'")
        data = read.required_string(source.get("data"), f"{source_param}.data")
        document = DocumentPart.from_base64(data, filename=title)
        try:
            document.base64_data(param=f"{source_param}.data")
        except BadRequest:
            invalid(f"{source_param}.data", "the document data is not valid base64")
        return document
    if kind == "url":
        url = read.required_string(source.get("url"), f"{source_param}.url")
        if not is_http_url(url):
            invalid(f"{source_param}.url", "the document URL must be an http(s) URL")
        return DocumentPart(url=url, filename=title)
    if kind == "text":
        return TextPart(text=read.required_string(source.get("data"), f"{source_param}.data"))
    if kind in ("content", "file"):
        unsupported(f"{source_param}.type", f"document sources of type '{kind}' are")
    invalid(f"{source_param}.type", "Input should be 'base64', 'url' or 'text'")


def _tool_use(block: Mapping[str, Any], param: str) -> ToolCall:
    call_id = read.required_string(block.get("id"), f"{param}.id")
    name = read.required_string(block.get("name"), f"{param}.name")
    raw_input = block.get("input")
    arguments = {} if raw_input is None else read.mapping(raw_input, f"{param}.input")
    return ToolCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode())


def _tool_result(block: Mapping[str, Any], param: str, called: set[str]) -> ChatMessage:
    call_id = read.required_string(block.get("tool_use_id"), f"{param}.tool_use_id")
    if call_id not in called:
        invalid(
            f"{param}.tool_use_id",
            f"unexpected tool_use_id {call_id!r}: no tool_use block with this id comes before",
        )
    read.boolean(block.get("is_error"), f"{param}.is_error")
    content = block.get("content")
    if content is None or isinstance(content, str):
        return ChatMessage(role=Role.TOOL, content=content or "", tool_call_id=call_id)
    parts: list[ContentPart] = []
    for part_param, part, kind in _blocks(content, f"{param}.content"):
        if kind != "text":
            unsupported(f"{part_param}.type", f"{kind!r} blocks inside a tool_result are")
        parts.append(_text(part, part_param))
    return ChatMessage(role=Role.TOOL, content=tuple(parts) or "", tool_call_id=call_id)
