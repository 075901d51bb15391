"""Reading an Anthropic Messages request for :mod:`rakka_inference.testkit.mock_anthropic`.

The key (``x-api-key``, else a bearer token), the body checks the real API makes, raising
:class:`Rejected` with its 400s word for word, and what the answer is made of: the prompt's
texts, the last user turn, the tool calls the script makes for this request, and the text
cut at the request's stop sequences and ``max_tokens``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.testkit.faults import ReplyScript, ScriptedToolCall

__all__ = [
    "Rejected",
    "api_key",
    "cut_text",
    "last_user_text",
    "prompt_texts",
    "tool_calls",
    "validated_body",
]

_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_WORD = re.compile(r"\S+")


class Rejected(Exception):
    """A request the API refuses: rendered as its error answer."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


def api_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``x-api-key``, else from ``Authorization: Bearer`` (newer SDKs send that)."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _invalid(message: str) -> Rejected:
    return Rejected(400, "invalid_request_error", message)


def validated_body(raw: bytes) -> dict[str, Any]:
    """The request body, or the API's 400 for what it would refuse."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("There was an error parsing the body as JSON") from None
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _invalid(f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _invalid("model: Input should be a valid string")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise _invalid("temperature: Input should be less than or equal to 1")
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream: Input should be a valid boolean")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        _check_message(index, message, messages)
    _check_tools(body)
    return body


def _blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or () if isinstance(block, dict)]


def _check_message(index: int, message: object, messages: list[Any]) -> None:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    if not isinstance(content, str | list) or not content:
        raise _invalid(
            f"messages.{index}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )
    blocks = _blocks(message)
    if isinstance(content, list) and len(blocks) != len(content):
        raise _invalid(f"messages.{index}.content: Input should be a valid list of blocks")
    if any(b.get("type") == "text" and not b.get("text") for b in blocks):
        raise _invalid("messages: text content blocks must be non-empty")
    answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
    previous = _blocks(messages[index - 1]) if index else []
    called = {b.get("id") for b in previous if b.get("type") == "tool_use"}
    if answered - called:
        unexpected = ", ".join(sorted(str(i) for i in answered - called))
        raise _invalid(
            f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` "
            f"blocks: {unexpected}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message."
        )
    if index and called - answered:
        missing = ", ".join(sorted(str(i) for i in called - answered))
        raise _invalid(
            f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {missing}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message."
        )


def _check_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        raise _invalid("tools: each tool needs a name")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise _invalid("tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'")
    if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
        raise _invalid(f"tool_choice: tool {choice.get('name')!r} is not among the tools")


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        if block.get("type") == "text":
            texts.append(str(block["text"]))
        elif block.get("type") == "tool_result":
            texts += _texts(_blocks(block))
    return texts


def prompt_texts(body: Mapping[str, Any]) -> list[str]:
    """The system prompt and every text and tool-result text of the messages."""
    system = body.get("system") or []
    texts = [system] if isinstance(system, str) else _texts(list(system))
    for message in body["messages"]:
        texts += _texts(_blocks(message))
    return texts


def _answers_tools(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    return last["role"] == "user" and any(b.get("type") == "tool_result" for b in _blocks(last))


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """The texts of the last user turn, tool results included, joined by spaces."""
    for message in reversed(messages):
        if message["role"] == "user":
            return " ".join(_texts(_blocks(message)))
    return ""


def tool_calls(body: Mapping[str, Any], script: ReplyScript) -> list[ScriptedToolCall]:
    """The calls the script makes for this request's tools and ``tool_choice``."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return []
    calls = list(script.tool_calls)
    if choice["type"] == "tool":
        calls = [c for c in calls if c.name == choice["name"]] or [ScriptedToolCall(choice["name"])]
    elif choice["type"] == "any":
        calls = calls or [ScriptedToolCall(tools[0]["name"])]
    elif _answers_tools(body["messages"]):
        return []
    return calls[:1] if choice.get("disable_parallel_tool_use") else calls


def cut_text(text: str, body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """``(text, stop_reason, stop_sequence)`` after the request's stop sequences and limit."""
    found = [(text.find(s), s) for s in body.get("stop_sequences") or () if s and s in text]
    if found:
        at, sequence = min(found)
        text, reason, stop_sequence = text[:at], "stop_sequence", sequence
    else:
        reason, stop_sequence = "end_turn", None
    words = list(_WORD.finditer(text))
    if len(words) > body["max_tokens"]:
        return text[: words[body["max_tokens"] - 1].end()], "max_tokens", None
    return text, reason, stop_sequence
