"""Our results as OpenAI Responses JSON: the ``/v1/responses`` outbound edge, sans I/O.

- :func:`response_json`: a :class:`ChatCompletion` as a ``response`` object.
- :func:`response_envelope`, :func:`message_item`, :func:`function_call_item`,
  :func:`responses_usage_json`: the pieces the unary answer and the event stream
  (:mod:`~rakka_inference.api.openai_responses_stream`) share.

Errors are OpenAI's (:func:`~rakka_inference.api.openai_response.error_json`): the
Responses API answers a failed request with the same ``{"error": {...}}`` body as chat.

Decisions:

- The response id is ``resp_`` plus the request id without its ``req_`` prefix; an output
  item's id is ``rs_`` (reasoning), ``msg_`` (a message) or ``fc_`` (a function call)
  plus the same, then its
  output index, so every id of an answer is the gateway's and unique.
- ``output``: when the request asked for reasoning and the answer has some, a
  ``reasoning`` item first (its text as a ``reasoning_text`` part, no summary, and the
  signed thinking blocks as ``encrypted_content``: see
  :mod:`~rakka_inference.api.openai_reasoning`); then a ``message`` item with one
  ``output_text`` part when the answer has text, then one ``function_call`` item per tool
  call, in order.
- ``status``: ``completed``, or ``incomplete`` when the output was cut: finish ``length``
  gives ``incomplete_details.reason`` ``max_output_tokens``, ``content_filter`` gives
  ``content_filter``. The items of an incomplete answer say ``incomplete`` too.
- ``usage``: OpenAI's, the cached prompt tokens and the reasoning tokens in their
  details. ``cache_write_tokens``, which the SDK's schema requires, is 0: the core does
  not count cache writes. Unknown usage (the provider reported none) is ``null``, never
  zeros, as on chat.
- The echo fields are the request's, as parsed: ``instructions``, ``model``,
  ``max_output_tokens``, ``temperature``, ``top_p``, ``tools``, ``tool_choice``
  (``auto`` when absent), ``parallel_tool_calls``, ``text`` (``{"format": {"type":
  "text"}}`` when absent), ``reasoning``, ``user``, ``metadata``; ``store`` is always
  false (nothing is kept), ``truncation`` ``disabled``, ``background`` false.
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

import orjson

from rakka_inference.api.openai_reasoning import reasoning_item
from rakka_inference.api.openai_responses_request import ResponsesCall
from rakka_inference.core.messages import ResponseFormat
from rakka_inference.core.stream import ChatCompletion, FinishReason
from rakka_inference.core.tools import ToolChoice, ToolChoiceMode, ToolDefinition
from rakka_inference.core.usage import Usage

__all__ = [
    "ItemStatus",
    "ResponseStatus",
    "function_call_item",
    "item_id",
    "message_item",
    "output_status",
    "output_text",
    "response_envelope",
    "response_id",
    "response_json",
    "responses_usage_json",
]

ResponseStatus: TypeAlias = Literal["completed", "incomplete", "in_progress", "failed"]
ItemStatus: TypeAlias = Literal["completed", "incomplete", "in_progress"]

_INCOMPLETE: dict[FinishReason, str] = {
    FinishReason.LENGTH: "max_output_tokens",
    FinishReason.CONTENT_FILTER: "content_filter",
}


def response_id(request_id: str) -> str:
    """The ``resp_...`` id of the answer to ``request_id``."""
    return f"resp_{request_id.removeprefix('req_')}"


def item_id(kind: Literal["rs", "msg", "fc"], request_id: str, output_index: int) -> str:
    """The id of the output item at ``output_index`` of the answer to ``request_id``."""
    return f"{kind}_{request_id.removeprefix('req_')}_{output_index}"


def output_status(finish: FinishReason | None) -> tuple[ItemStatus, dict[str, str] | None]:
    """The status an answer ending with ``finish`` has, and its ``incomplete_details``."""
    reason = _INCOMPLETE.get(finish) if finish is not None else None
    if reason is None:
        return "completed", None
    return "incomplete", {"reason": reason}


def responses_usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """The Responses API's usage object (module docstring); ``None`` when unknown."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": 0,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def message_item(identifier: str, text: str | None, status: ItemStatus) -> dict[str, Any]:
    """An assistant ``message`` output item holding ``text`` as one ``output_text`` part
    (no part when ``text`` is ``None``: an item just begun)."""
    return {
        "id": identifier,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if text is None else [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    """An ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(
    identifier: str, call_id: str, name: str, arguments: str, status: ItemStatus
) -> dict[str, Any]:
    """A ``function_call`` output item."""
    return {
        "id": identifier,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_envelope(
    call: ResponsesCall, *, request_id: str, created_at: int, status: ResponseStatus
) -> dict[str, Any]:
    """A ``response`` object with no output yet: its id, status and every echo field."""
    request = call.request
    sampling = request.sampling
    return {
        "id": response_id(request_id),
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": call.instructions,
        "max_output_tokens": sampling.max_tokens,
        "max_tool_calls": None,
        "metadata": dict(request.metadata),
        "model": request.model,
        "output": [],
        "parallel_tool_calls": call.parallel_tool_calls,
        "previous_response_id": None,
        "reasoning": {"effort": sampling.reasoning_effort, "summary": None},
        "store": False,
        "temperature": sampling.temperature,
        "text": {"format": _format_json(request.response_format)},
        "tool_choice": _tool_choice_json(request.tool_choice),
        "tools": [_tool_json(tool) for tool in request.tools],
        "top_p": sampling.top_p,
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
    }


def response_json(
    call: ResponsesCall, result: ChatCompletion, *, request_id: str, created_at: int
) -> bytes:
    """A non-streaming answer as a ``response`` object (see the module docstring)."""
    status, incomplete = output_status(result.finish_reason)
    output: list[dict[str, Any]] = []
    if call.request.sampling.thinks and (result.reasoning or result.reasoning_blocks):
        identifier = item_id("rs", request_id, 0)
        output.append(reasoning_item(identifier, result.reasoning, result.reasoning_blocks, status))
    if result.text:
        identifier = item_id("msg", request_id, len(output))
        output.append(message_item(identifier, result.text, status))
    for tool_call in result.tool_calls:
        identifier = item_id("fc", request_id, len(output))
        output.append(
            function_call_item(
                identifier, tool_call.id, tool_call.name, tool_call.arguments, status
            )
        )
    document = response_envelope(call, request_id=request_id, created_at=created_at, status=status)
    document["incomplete_details"] = incomplete
    document["output"] = output
    document["usage"] = responses_usage_json(result.usage)
    return orjson.dumps(document)


def _format_json(response_format: ResponseFormat | None) -> dict[str, Any]:
    if response_format is None or response_format.type == "text":
        return {"type": "text"}
    if response_format.type == "json_object":
        return {"type": "json_object"}
    return {
        "type": "json_schema",
        "name": response_format.schema_name,
        "schema": response_format.json_schema,
        "strict": response_format.strict,
    }


def _tool_choice_json(choice: ToolChoice | None) -> str | dict[str, str]:
    if choice is None:
        return "auto"
    if choice.mode is ToolChoiceMode.NAMED:
        assert choice.name is not None  # ToolChoice's own rule
        return {"type": "function", "name": choice.name}
    return choice.mode.value


def _tool_json(tool: ToolDefinition) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
        "strict": tool.strict,
    }
