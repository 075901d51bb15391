"""Anthropic Messages requests: the JSON body for a provider-neutral
:class:`~rakka_inference.core.messages.ChatRequest` (the translation rules are set out in
:mod:`rakka_inference.providers.anthropic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    PDF,
    ChatMessage,
    ChatRequest,
    DocumentPart,
    ImagePart,
    Role,
    TextPart,
    refuse_choices_and_logprobs,
    refuse_openai_options,
)
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode
from rakka_inference.providers.base import alternating_turns

__all__ = ["MAX_TEMPERATURE", "messages_body"]

MAX_TEMPERATURE = 1.0

_IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

_TOOL_CHOICES: Mapping[ToolChoiceMode, str] = {
    ToolChoiceMode.AUTO: "auto",
    ToolChoiceMode.REQUIRED: "any",
    ToolChoiceMode.NONE: "none",
}


_MIN_THINKING = 1024
"""The least thinking budget Anthropic takes."""


def messages_body(request: ChatRequest, model: str, max_tokens_default: int) -> dict[str, Any]:
    """The Messages API body for ``request``; ``max_tokens_default`` fills ``max_tokens``
    when the request sets none (the API requires it)."""
    sampling = request.sampling
    refuse_choices_and_logprobs(sampling, "Anthropic")
    refuse_openai_options(request, "Anthropic")
    if sampling.temperature is not None and sampling.temperature > MAX_TEMPERATURE:
        raise BadRequest(
            f"temperature must be between 0 and {MAX_TEMPERATURE:g} for Anthropic models",
            param="temperature",
        )
    system, messages = _conversation(request.messages, thinking=sampling.thinks)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_output_tokens(max_tokens_default),
        "messages": messages,
    }
    if system:
        body["system"] = system
    if sampling.temperature is not None:
        body["temperature"] = sampling.temperature
    if sampling.top_p is not None:
        body["top_p"] = sampling.top_p
    if sampling.top_k is not None:
        body["top_k"] = sampling.top_k
    if sampling.stop:
        body["stop_sequences"] = list(sampling.stop)
    if request.tools:
        body["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description else {}),
                "input_schema": dict(tool.parameters),
                **({"strict": True} if tool.strict else {}),
            }
            for tool in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
        if request.parallel_tool_calls is False:
            choice = body.setdefault("tool_choice", {"type": "auto"})
            if choice["type"] != "none":
                choice["disable_parallel_tool_use"] = True
    response_format = request.response_format
    if response_format is not None and response_format.type != "text":
        if response_format.type == "json_object":
            raise BadRequest(
                "response_format json_object is not supported by Anthropic models; "
                "use json_schema with a schema",
                param="response_format",
            )
        body["output_config"] = {
            "format": {"type": "json_schema", "schema": dict(response_format.json_schema or {})}
        }
    thinking = _thinking(request, body["max_tokens"])
    if thinking is not None:
        body["thinking"] = thinking
    if request.user is not None:
        body["metadata"] = {"user_id": request.user}
    if request.stream:
        body["stream"] = True
    return body


def _thinking(request: ChatRequest, max_tokens: int) -> dict[str, Any] | None:
    """Extended thinking: a thinking budget as it is, or ``reasoning_effort`` as its budget
    (:data:`~rakka_inference.core.messages.THINKING_BUDGETS`) kept under ``max_tokens``,
    which counts the thinking too (as OpenAI's cap counts reasoning). Thinking takes no
    ``temperature`` but 1 and no ``top_k``: those are refused with it."""
    sampling = request.sampling
    budget = sampling.thinking_tokens
    if not budget:
        return None
    asked = "thinking" if sampling.thinking_budget is not None else "reasoning_effort"
    if max_tokens <= _MIN_THINKING:
        raise BadRequest(
            f"with {asked}, max_tokens must be above {_MIN_THINKING} for Anthropic models "
            "(the thinking is part of it)",
            param="max_tokens",
        )
    if sampling.temperature not in (None, 1.0):
        raise BadRequest(
            f"Anthropic models think only at temperature 1: leave temperature out with {asked}",
            param="temperature",
        )
    if sampling.top_k is not None:
        raise BadRequest("Anthropic models take no top_k while thinking", param="top_k")
    if sampling.thinking_budget is not None:
        if not _MIN_THINKING <= budget < max_tokens:
            raise BadRequest(
                f"thinking.budget_tokens must be at least {_MIN_THINKING} and below max_tokens",
                param="thinking.budget_tokens",
            )
        return {"type": "enabled", "budget_tokens": budget}
    return {"type": "enabled", "budget_tokens": max(_MIN_THINKING, min(budget, max_tokens - 1))}


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "tool", "name": choice.name}
    return {"type": _TOOL_CHOICES[choice.mode]}


def _conversation(
    messages: tuple[ChatMessage, ...], *, thinking: bool
) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)``: instructions hoisted, turns merged to alternate. Assistant
    turns begin with their signed thinking blocks when the request thinks (a tool loop
    must send them back); unsigned ones, another provider's, Anthropic would refuse."""

    def blocks(message: ChatMessage, position: int) -> list[dict[str, Any]]:
        replayed = _thinking_blocks(message) if thinking else []
        return replayed + _blocks(message, position)

    system, turns = alternating_turns(messages, blocks, assistant="assistant", content="content")
    for turn in turns:
        if turn["role"] == "user":
            # Stable: tool results first, in order, then the rest in order.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return "\n\n".join(system), turns


def _blocks(message: ChatMessage, position: int) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if isinstance(message.content, str):
            if message.content:
                result["content"] = message.content
        else:
            texts = _text_blocks(message)
            if texts:
                result["content"] = texts
        return [result]
    blocks: list[dict[str, Any]] = []
    for part_index, part in enumerate(message.parts):
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, DocumentPart):
            param = f"messages[{position}].content[{part_index}].file"
            blocks.append(_document(part, param))
        else:
            param = f"messages[{position}].content[{part_index}].image_url"
            blocks.append(_image(part, param))
    for call_index, call in enumerate(message.tool_calls):
        param = f"messages[{position}].tool_calls[{call_index}].function.arguments"
        blocks.append(
            {
                "type": "tool_use",
                "id": call.id,
                "name": call.name,
                "input": call.parsed_arguments(param=param),
            }
        )
    return blocks


def _thinking_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for block in message.reasoning:
        if block.redacted:
            blocks.append({"type": "redacted_thinking", "data": block.redacted})
        elif block.signature:
            thinking = {"type": "thinking", "thinking": block.text, "signature": block.signature}
            blocks.append(thinking)
    return blocks


def _text_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]


def _document(part: DocumentPart, param: str) -> dict[str, Any]:
    """A PDF as a ``document`` block: a ``base64`` source, or a ``url`` one."""
    if part.is_data_url:
        source = {"type": "base64", "media_type": PDF, "data": part.base64_data(param=param)}
    else:
        source = {"type": "url", "url": part.url}
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.filename:
        block["title"] = part.filename
    return block


def _image(part: ImagePart, param: str) -> dict[str, Any]:
    if part.is_data_url:
        media_type, data = part.parse_data_url(param=param)
        if media_type not in _IMAGE_MEDIA_TYPES:
            raise BadRequest(
                f"image type {media_type!r} is not supported; use JPEG, PNG, GIF or WebP",
                param=param,
            )
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if part.url[:8].lower() == "https://" or part.url[:7].lower() == "http://":
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    raise BadRequest("image URL must be http(s) or a base64 data: URL", param=param)
