"""Anthropic Messages requests: the JSON body for a provider-neutral
:class:`~rakka_inference.core.messages.ChatRequest` (the translation rules are set out in
:mod:`rakka_inference.providers.anthropic`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    THINKING_BUDGETS,
    ChatMessage,
    ChatRequest,
    ImagePart,
    Role,
    TextPart,
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
    if sampling.n != 1:
        raise BadRequest("only n = 1 is supported", param="n")
    refuse_openai_options(request, "Anthropic")
    if sampling.temperature is not None and sampling.temperature > MAX_TEMPERATURE:
        raise BadRequest(
            f"temperature must be between 0 and {MAX_TEMPERATURE:g} for Anthropic models",
            param="temperature",
        )
    system, messages = _conversation(request.messages)
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
    """``reasoning_effort`` as extended thinking: a budget (:data:`THINKING_BUDGETS`) kept
    under ``max_tokens``, which counts the thinking too (as OpenAI's cap counts reasoning).
    Thinking takes no ``temperature`` but 1 and no ``top_k``: those are refused with it."""
    effort = request.sampling.reasoning_effort
    if effort is None or effort == "none":
        return None
    if max_tokens <= _MIN_THINKING:
        raise BadRequest(
            f"with reasoning_effort, max_tokens must be above {_MIN_THINKING} for Anthropic "
            "models (the thinking is part of it)",
            param="max_tokens",
        )
    sampling = request.sampling
    if sampling.temperature not in (None, 1.0):
        raise BadRequest(
            "Anthropic models think only at temperature 1: leave temperature out with "
            "reasoning_effort",
            param="temperature",
        )
    if sampling.top_k is not None:
        raise BadRequest("Anthropic models take no top_k while thinking", param="top_k")
    budget = min(THINKING_BUDGETS[effort], max_tokens - 1)
    return {"type": "enabled", "budget_tokens": max(_MIN_THINKING, budget)}


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if choice.mode is ToolChoiceMode.NAMED:
        return {"type": "tool", "name": choice.name}
    return {"type": _TOOL_CHOICES[choice.mode]}


def _conversation(
    messages: tuple[ChatMessage, ...],
) -> tuple[str, list[dict[str, Any]]]:
    """``(system, messages)``: instructions hoisted, turns merged to alternate."""
    system, turns = alternating_turns(messages, _blocks, assistant="assistant", content="content")
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


def _text_blocks(message: ChatMessage) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": part.text}
        for part in message.parts
        if isinstance(part, TextPart) and part.text
    ]


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
