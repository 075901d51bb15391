"""Extended thinking in :mod:`rakka_inference.testkit.mock_anthropic`, as the real API
checks and answers it.

A request with ``thinking: {type: enabled, budget_tokens}`` (at least 1024, below
``max_tokens``, temperature absent or 1, no ``top_k``) gets its answer preceded by a
``thinking`` block (:attr:`ThinkingScript.text`, or "Thinking about: " and the last user
turn) signed by the mock, and, when :attr:`ThinkingScript.redacted`, a ``redacted_thinking``
block after it. A signature is an HMAC of the block's text under the mock's own key, so
a block sent back changed, or one the mock never wrote, is refused as the API refuses it.

In a tool loop (the last turn carries tool results) with thinking on, the assistant turn
that made the calls must begin with its thinking blocks, as the API requires: else a 400
in the API's words.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rakka_inference.testkit.anthropic_wire import Rejected

__all__ = ["ThinkingScript", "check_thinking", "sign", "thinking_blocks"]

_KEY = b"rakka-inference mock anthropic thinking"
_MIN_BUDGET = 1024
_THINKING = frozenset({"thinking", "redacted_thinking"})


@dataclass(frozen=True, slots=True)
class ThinkingScript:
    """What the mock thinks when a request enables thinking."""

    text: str | None = None
    """The thinking text; None: "Thinking about: " and the last user turn."""
    redacted: bool = False
    """Whether a ``redacted_thinking`` block follows the thinking block."""


def sign(text: str) -> str:
    """The mock's signature over a thinking block's text."""
    digest = hmac.new(_KEY, text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


_REDACTED = "redacted:" + sign("redacted")
"""The data of every redacted block the mock writes."""


def _invalid(message: str) -> Rejected:
    return Rejected(400, "invalid_request_error", message)


def enabled(body: Mapping[str, Any]) -> bool:
    """Whether the request turns thinking on."""
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") == "enabled"


def check_thinking(body: Mapping[str, Any]) -> None:
    """The API's 400s for a request's ``thinking`` and the thinking blocks it sends back."""
    for index, message in enumerate(body["messages"]):
        content = message.get("content")
        for position, block in enumerate(content if isinstance(content, list) else ()):
            _check_block(f"messages.{index}.content.{position}", block)
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled"):
        raise _invalid("thinking: Input tag does not match any of 'enabled', 'disabled'")
    if not enabled(body):
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < _MIN_BUDGET:
        raise _invalid(
            "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        )
    if budget >= body["max_tokens"]:
        raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`")
    if body.get("temperature") not in (None, 1):
        raise _invalid("`temperature` may only be set to 1 when thinking is enabled")
    if body.get("top_k") is not None:
        raise _invalid("`top_k` may not be set when thinking is enabled")
    _check_tool_loop(body["messages"])


def _check_block(param: str, block: object) -> None:
    if not isinstance(block, dict) or block.get("type") not in _THINKING:
        return
    if block["type"] == "redacted_thinking":
        if block.get("data") != _REDACTED:
            raise _invalid(f"{param}: Invalid `data` in `redacted_thinking` block")
        return
    text, signature = block.get("thinking"), block.get("signature")
    if not isinstance(text, str) or not isinstance(signature, str):
        raise _invalid(f"{param}: thinking and signature are required")
    if not hmac.compare_digest(signature, sign(text)):
        raise _invalid(f"{param}: Invalid `signature` in `thinking` block")


def _check_tool_loop(messages: list[dict[str, Any]]) -> None:
    """With thinking on, the assistant turn whose calls the last turn answers must begin
    with thinking."""
    last = messages[-1]
    content = last.get("content")
    if last.get("role") != "user" or not isinstance(content, list):
        return
    if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return
    index = len(messages) - 2
    if index < 0:
        return
    blocks = messages[index].get("content")
    first = blocks[0] if isinstance(blocks, list) and blocks else {"type": "text"}
    kind = first.get("type") if isinstance(first, dict) else None
    if kind not in _THINKING:
        raise _invalid(
            f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, "
            f"but found `{kind}`. When `thinking` is enabled, a final `assistant` message "
            "must start with a thinking block (preceeding the lastmost set of `tool_use` and "
            "`tool_result` blocks). We recommend you include thinking blocks from previous "
            "turns. To avoid this requirement, disable `thinking`."
        )


def thinking_blocks(script: ThinkingScript, last_user_text: str) -> list[dict[str, Any]]:
    """The blocks an answer with thinking begins with."""
    text = script.text if script.text is not None else f"Thinking about: {last_user_text}"
    blocks: list[dict[str, Any]] = [{"type": "thinking", "thinking": text, "signature": sign(text)}]
    if script.redacted:
        blocks.append({"type": "redacted_thinking", "data": _REDACTED})
    return blocks
