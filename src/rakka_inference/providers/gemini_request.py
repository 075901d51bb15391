"""Translation of a ChatRequest into Gemini's ``generateContent`` request parts.

Holds the pieces :class:`~rakka_inference.providers.gemini.GeminiAdapter` assembles into a
request body: the conversation (``systemInstruction`` texts and ``contents``, with images
and function calls/responses as parts), the ``toolConfig`` of a ``tool_choice``, and the
adjustment of JSON Schemas to Gemini's OpenAPI subset. The rules are set out in the
adapter module's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    PDF,
    ChatMessage,
    DocumentPart,
    ImagePart,
    Role,
    TextPart,
)
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode
from rakka_inference.providers.base import alternating_turns

__all__ = ["SKIP_THOUGHT_SIGNATURE", "gemini_schema"]

SKIP_THOUGHT_SIGNATURE = "skip_thought_signature_validator"

_TOOL_MODES: Mapping[ToolChoiceMode, str] = {
    ToolChoiceMode.AUTO: "AUTO",
    ToolChoiceMode.NONE: "NONE",
    ToolChoiceMode.REQUIRED: "ANY",
    ToolChoiceMode.NAMED: "ANY",
}
_IMAGE_TYPES: Mapping[str, str] = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
}
_STRIPPED_SCHEMA_KEYS = ("$schema", "additionalProperties")
_SCHEMA_MAPS = ("properties", "$defs", "definitions")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")


def gemini_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON Schema adjusted to Gemini's OpenAPI subset (see the module docstring)."""
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _STRIPPED_SCHEMA_KEYS:
            continue
        if key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {
                name: gemini_schema(sub) if isinstance(sub, Mapping) else sub
                for name, sub in value.items()
            }
        elif key in _SCHEMA_LISTS and isinstance(value, list | tuple):
            out[key] = [gemini_schema(sub) if isinstance(sub, Mapping) else sub for sub in value]
        elif key in ("items", "not") and isinstance(value, Mapping):
            out[key] = gemini_schema(value)
        else:
            out[key] = value
    kind = out.get("type")
    if isinstance(kind, list | tuple):
        types = [name for name in kind if name != "null"]
        if len(types) == 1:
            out["type"] = types[0]
            if len(types) < len(kind):
                out["nullable"] = True
    return out


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    config: dict[str, Any] = {"mode": _TOOL_MODES[choice.mode]}
    if choice.mode is ToolChoiceMode.NAMED:
        config["allowedFunctionNames"] = [choice.name]
    return config


def _conversation(
    messages: Sequence[ChatMessage], *, vertex: bool
) -> tuple[list[str], list[dict[str, Any]]]:
    """``(system texts, contents)``: instructions hoisted, same-role turns merged."""
    call_names: dict[str, str] = {}  # tool call id -> function name, of the calls so far

    def parts(message: ChatMessage, position: int) -> list[dict[str, Any]]:
        if message.role is Role.TOOL:
            name = call_names.get(message.tool_call_id or "")
            if name is None:
                raise BadRequest(
                    f"tool message answers unknown tool call {message.tool_call_id!r}",
                    param=f"messages[{position}].tool_call_id",
                )
            return [{"functionResponse": {"name": name, "response": {"output": message.text}}}]
        found = _message_parts(message, position, vertex=vertex)
        call_names.update((call.id, call.name) for call in message.tool_calls)
        return found

    return alternating_turns(messages, parts, assistant="model", content="parts")


def _message_parts(message: ChatMessage, position: int, *, vertex: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part_index, part in enumerate(message.parts):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, DocumentPart):
            param = f"messages[{position}].content[{part_index}].file"
            parts.append(_document(part, param, vertex=vertex))
        else:
            param = f"messages[{position}].content[{part_index}].image_url"
            parts.append(_image(part, param, vertex=vertex))
    for call_index, call in enumerate(message.tool_calls):
        param = f"messages[{position}].tool_calls[{call_index}].function.arguments"
        function_call: dict[str, Any] = {
            "functionCall": {"name": call.name, "args": call.parsed_arguments(param=param)}
        }
        if call_index == 0:
            function_call["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE
        parts.append(function_call)
    return parts


def _document(part: DocumentPart, param: str, *, vertex: bool) -> dict[str, Any]:
    """A PDF as ``inlineData``, or by URL as ``fileData``."""
    if part.is_data_url:
        return {"inlineData": {"mimeType": PDF, "data": part.base64_data(param=param)}}
    _check_url(part.url, param, vertex=vertex, what="document")
    return {"fileData": {"mimeType": PDF, "fileUri": part.url}}


def _check_url(url: str, param: str, *, vertex: bool, what: str) -> None:
    scheme = url.partition(":")[0].lower()
    if scheme not in ("http", "https") and not (vertex and scheme == "gs"):
        allowed = "http(s), gs:// (Vertex)" if vertex else "http(s)"
        raise BadRequest(f"{what} URL must be {allowed} or a base64 data: URL", param=param)


def _image(part: ImagePart, param: str, *, vertex: bool) -> dict[str, Any]:
    if part.is_data_url:
        media_type, data = part.parse_data_url(param=param)
        return {"inlineData": {"mimeType": media_type, "data": data}}
    url = part.url
    _check_url(url, param, vertex=vertex, what="image")
    _, dot, extension = urlsplit(url).path.rsplit("/", 1)[-1].rpartition(".")
    file_type = _IMAGE_TYPES.get(extension.lower()) if dot else None
    if file_type is None:
        raise BadRequest(
            "cannot tell the image's type from its URL; Gemini needs it: use a URL ending in "
            ".png, .jpg, .jpeg, .webp, .gif, .heic or .heif, or a base64 data: URL",
            param=param,
        )
    return {"fileData": {"mimeType": file_type, "fileUri": url}}
