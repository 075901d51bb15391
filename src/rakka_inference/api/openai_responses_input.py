"""The Responses API's ``input`` as core messages: messages, content parts, function calls.

Part of :func:`~rakka_inference.api.openai_responses_request.parse_responses_request`;
``param`` paths are OpenAI's (``input[2].content[0].image_url``).

- ``input`` is a string (one user message) or a list of items. An item is a ``message``
  (its ``type`` may be left out when it has a ``role``), a ``function_call`` or a
  ``function_call_output``.
- Roles ``user``, ``assistant``, ``system`` and ``developer``. Content is a string or a
  list of parts: ``input_text`` and ``output_text`` (text, in any role), ``refusal`` (an
  assistant's, kept as text), ``input_image`` (user messages only: an http(s) URL or a
  base64 ``data:`` URL; ``detail`` ``original`` is sent as ``high``, the finest the core
  knows). An assistant message without text adds nothing and is left out.
- ``function_call`` items become the ``tool_calls`` of an assistant message: of the one
  just before when the conversation ends with an assistant message (so an answer's text
  and its calls, or parallel calls, make one message, as chat providers want them), else
  of a new one. ``arguments`` is kept as the JSON text it is.
- ``function_call_output`` becomes a tool message; its ``call_id`` must name a
  ``function_call`` made earlier in ``input``. Its ``output`` is a string or text parts.
- ``reasoning`` items are the thinking of the assistant turn they begin: their signed
  blocks, decoded from ``encrypted_content`` (:mod:`~rakka_inference.api.openai_reasoning`),
  go with that turn to a provider that takes them back (Claude). One without the gateway's
  ``encrypted_content`` (another service's) is dropped.
- Refused as not supported: ``item_reference`` items (they point into stored responses,
  and the gateway keeps none), every other item type (built-in tools' calls and outputs),
  ``input_audio`` parts, images and files given by ``file_id``, images and files inside a
  ``function_call_output``.
- ``input_file`` parts in user messages: a PDF as ``file_data`` (a base64 data URL) or
  ``file_url``, with an optional ``filename``.
- Unknown keys inside an item or a part (``id``, ``status``, ``annotations``,
  ``logprobs``, ``phase``...) are ignored: clients echo output items back whole.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rakka_inference.api.fields import is_http_url
from rakka_inference.api.openai_fields import invalid_type, invalid_value, read
from rakka_inference.api.openai_reasoning import decode_reasoning
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    ChatMessage,
    ContentPart,
    DocumentPart,
    ImageDetail,
    ImagePart,
    Role,
    TextPart,
)
from rakka_inference.core.tools import ToolCall

__all__ = ["parse_input"]

_ROLES = {
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "system": Role.SYSTEM,
    "developer": Role.DEVELOPER,
}
_IMAGE_DETAILS: dict[str, ImageDetail] = {
    "auto": "auto",
    "low": "low",
    "high": "high",
    "original": "high",
}
_TEXT_PARTS = frozenset({"input_text", "output_text"})
_UNSUPPORTED_PARTS = frozenset({"input_audio"})


def parse_input(value: object) -> list[ChatMessage]:
    """The request's ``input`` as core messages, in order."""
    if value is None:
        read.missing("input")
    if isinstance(value, str):
        return [ChatMessage.user(value)]
    if not isinstance(value, list):
        invalid_type("input", "a string or an array of input items", value)
    conversation = _Conversation()
    for index, item in enumerate(read.array(value, "input", non_empty=True)):
        conversation.add(item, f"input[{index}]")
    return conversation.messages


class _Conversation:
    """The core messages built so far, and the call ids a ``function_call_output`` may answer."""

    __slots__ = ("called", "messages")

    def __init__(self) -> None:
        self.messages: list[ChatMessage] = []
        self.called: set[str] = set()

    def add(self, value: object, param: str) -> None:
        item = read.mapping(value, param)
        kind = item.get("type")
        if kind is None:
            if item.get("role") is not None:
                kind = "message"
            elif item.get("id") is not None:
                kind = "item_reference"
            else:
                read.missing(f"{param}.type")
        if not isinstance(kind, str):
            read.wrong_type(f"{param}.type", "string", kind)
        if kind == "message":
            self._message(item, param)
        elif kind == "function_call":
            self._call(item, param)
        elif kind == "function_call_output":
            self._output(item, param)
        elif kind == "item_reference":
            raise BadRequest(
                "item references are not supported: the gateway keeps no responses; "
                "send the item itself",
                param=param,
            )
        elif kind == "reasoning":
            self._reasoning(item, param)
        else:
            raise BadRequest(
                f"input items of type {kind!r} are not supported by this gateway",
                param=f"{param}.type",
            )

    def _message(self, item: dict[str, Any], param: str) -> None:
        raw_role = item.get("role")
        if raw_role is None:
            read.missing(f"{param}.role")
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            invalid_value(
                f"{param}.role", raw_role, "'user', 'assistant', 'system' and 'developer'"
            )
        raw = item.get("content")
        if raw is None:
            read.missing(f"{param}.content")
        content_param = f"{param}.content"
        content: str | tuple[ContentPart, ...]
        if isinstance(raw, str):
            content = raw
        elif isinstance(raw, list):
            content = tuple(
                _part(part, role, f"{content_param}[{index}]")
                for index, part in enumerate(
                    read.array(raw, content_param, non_empty=role is not Role.ASSISTANT)
                )
            )
        else:
            invalid_type(content_param, "a string or an array of content parts", raw)
        if role is Role.ASSISTANT:
            if content:  # an assistant message with no text carries nothing
                thought = self._thought()
                reasoning = thought.reasoning if thought is not None else ()
                self.messages.append(ChatMessage(role=role, content=content, reasoning=reasoning))
            return
        self.messages.append(ChatMessage(role=role, content=content))

    def _reasoning(self, item: dict[str, Any], param: str) -> None:
        blocks = decode_reasoning(item.get("encrypted_content"), f"{param}.encrypted_content")
        if blocks:
            self.messages.append(ChatMessage.assistant(reasoning=blocks))

    def _thought(self) -> ChatMessage | None:
        """Take the last message out if it is thinking alone: the turn it begins."""
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role is Role.ASSISTANT and last.thought_only:
            return self.messages.pop()
        return None

    def _call(self, item: dict[str, Any], param: str) -> None:
        call_id = read.required_string(item.get("call_id"), f"{param}.call_id")
        name = read.required_string(item.get("name"), f"{param}.name")
        arguments = read.string(item.get("arguments"), f"{param}.arguments")
        if arguments is None:
            read.missing(f"{param}.arguments")
        read.json_text(arguments, f"{param}.arguments")
        call = ToolCall(id=call_id, name=name, arguments=arguments)
        self.called.add(call_id)
        last = self.messages[-1] if self.messages else None
        if last is not None and last.role is Role.ASSISTANT:
            self.messages[-1] = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
        else:
            self.messages.append(ChatMessage.assistant(tool_calls=(call,)))

    def _output(self, item: dict[str, Any], param: str) -> None:
        call_id = read.required_string(item.get("call_id"), f"{param}.call_id")
        if call_id not in self.called:
            raise BadRequest(
                f"No tool call found for function call output with call_id {call_id!r}: "
                "a function_call item with this call_id must come before it in input",
                param=f"{param}.call_id",
            )
        raw = item.get("output")
        output_param = f"{param}.output"
        if raw is None:
            read.missing(output_param)
        content: str | tuple[ContentPart, ...]
        if isinstance(raw, str):
            content = raw
        elif isinstance(raw, list):
            content = tuple(
                _output_part(part, f"{output_param}[{index}]") for index, part in enumerate(raw)
            )
        else:
            invalid_type(output_param, "a string or an array of content parts", raw)
        self.messages.append(
            ChatMessage(role=Role.TOOL, content=content or "", tool_call_id=call_id)
        )


def _part_type(part: dict[str, Any], param: str) -> str:
    kind = part.get("type")
    if kind is None:
        read.missing(f"{param}.type")
    if not isinstance(kind, str):
        read.wrong_type(f"{param}.type", "string", kind)
    return kind


def _part(value: object, role: Role, param: str) -> ContentPart:
    part = read.mapping(value, param)
    kind = _part_type(part, param)
    if kind in _TEXT_PARTS:
        return TextPart(text=read.string(part.get("text"), f"{param}.text") or "")
    if kind == "refusal" and role is Role.ASSISTANT:
        return TextPart(text=read.string(part.get("refusal"), f"{param}.refusal") or "")
    if kind == "input_image":
        if role is not Role.USER:
            raise BadRequest(
                f"image content is accepted in user messages only, not {role.value}",
                param=f"{param}.type",
            )
        return _image(part, param)
    if kind == "input_file":
        if role is not Role.USER:
            raise BadRequest(
                f"file content is accepted in user messages only, not {role.value}",
                param=f"{param}.type",
            )
        return _file(part, param)
    if kind in _UNSUPPORTED_PARTS:
        raise BadRequest(
            f"content parts of type {kind!r} are not supported by this gateway",
            param=f"{param}.type",
        )
    if role is Role.ASSISTANT:
        invalid_value(f"{param}.type", kind, "'output_text', 'input_text' and 'refusal'")
    if role is Role.USER:
        invalid_value(f"{param}.type", kind, "'input_text', 'input_image' and 'input_file'")
    invalid_value(f"{param}.type", kind, "'input_text'")


def _output_part(value: object, param: str) -> TextPart:
    part = read.mapping(value, param)
    kind = _part_type(part, param)
    if kind == "input_text":
        return TextPart(text=read.string(part.get("text"), f"{param}.text") or "")
    if kind in ("input_image", "input_file"):
        raise BadRequest(
            f"content parts of type {kind!r} inside a function_call_output are not "
            "supported by this gateway",
            param=f"{param}.type",
        )
    invalid_value(f"{param}.type", kind, "'input_text'")


def _file(part: dict[str, Any], param: str) -> DocumentPart:
    """An ``input_file``: a PDF as ``file_data`` (a base64 data URL) or ``file_url``."""
    filename = read.string(part.get("filename"), f"{param}.filename")
    data = read.string(part.get("file_data"), f"{param}.file_data")
    if data is not None:
        document = DocumentPart(url=data, filename=filename)
        document.base64_data(param=f"{param}.file_data")
        return document
    url = read.string(part.get("file_url"), f"{param}.file_url")
    if url is not None:
        if not is_http_url(url):
            raise BadRequest("file_url must be an http(s) URL", param=f"{param}.file_url")
        return DocumentPart(url=url, filename=filename)
    if part.get("file_id") is not None:
        raise BadRequest(
            "files by file_id are not supported by this gateway: send file_data or file_url",
            param=f"{param}.file_id",
        )
    read.missing(f"{param}.file_data")


def _image(part: dict[str, Any], param: str) -> ImagePart:
    raw_detail = read.string(part.get("detail"), f"{param}.detail")
    detail = None
    if raw_detail is not None:
        detail = _IMAGE_DETAILS.get(raw_detail)
        if detail is None:
            invalid_value(f"{param}.detail", raw_detail, "'auto', 'low', 'high' and 'original'")
    url = read.string(part.get("image_url"), f"{param}.image_url")
    if url is None:
        if part.get("file_id") is not None:
            raise BadRequest(
                "images by file_id are not supported by this gateway: send image_url",
                param=f"{param}.file_id",
            )
        read.missing(f"{param}.image_url")
    image = ImagePart(url=url, detail=detail)
    if image.is_data_url:
        image.parse_data_url(param=f"{param}.image_url")
    elif not is_http_url(url):
        raise BadRequest(
            "image URL must be an http(s) URL or a base64 data: URL", param=f"{param}.image_url"
        )
    return image
