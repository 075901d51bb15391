"""The Anthropic mock's thinking checks: the 400s the real API gives for a bad ``thinking``
and for thinking blocks sent back changed, forged or missing from a tool loop."""

from __future__ import annotations

from typing import Any

import pytest

from rakka_inference.testkit.anthropic_thinking import (
    ThinkingScript,
    check_thinking,
    sign,
    thinking_blocks,
)
from rakka_inference.testkit.anthropic_wire import Rejected

ON = {"type": "enabled", "budget_tokens": 1024}
USE = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
RESULT = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}


def body(**fields: Any) -> dict[str, Any]:
    return {"max_tokens": 2048, "messages": [{"role": "user", "content": "hi"}], **fields}


def loop(first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "q"}, {"role": "assistant", "content": first}, RESULT]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"thinking": {"type": "sometimes"}}, "does not match"),
        ({"thinking": "on"}, "does not match"),
        ({"thinking": {"type": "enabled"}}, "greater than or equal to 1024"),
        ({"thinking": {"type": "enabled", "budget_tokens": 512}}, "greater than or equal"),
        ({"thinking": {"type": "enabled", "budget_tokens": 4096}}, "`max_tokens` must be"),
        ({"thinking": ON, "temperature": 0.5}, "`temperature` may only be set to 1"),
        ({"thinking": ON, "top_k": 5}, "`top_k` may not be set"),
        ({"thinking": ON, "messages": loop([USE])}, "Expected `thinking` or `redacted_thinking`"),
        (
            {"messages": loop([{"type": "thinking", "thinking": "a", "signature": "forged"}, USE])},
            "Invalid `signature`",
        ),
        ({"messages": loop([{"type": "thinking", "thinking": "a"}, USE])}, "are required"),
        (
            {"messages": loop([{"type": "redacted_thinking", "data": "made up"}, USE])},
            "Invalid `data`",
        ),
    ],
)
def test_what_the_api_refuses(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(Rejected, match=fragment) as caught:
        check_thinking(body(**fields))
    assert caught.value.status == 400


def test_what_the_api_takes() -> None:
    check_thinking(body())
    check_thinking(body(thinking={"type": "disabled"}))
    check_thinking(body(thinking=ON, temperature=1))
    blocks = thinking_blocks(ThinkingScript(text="why", redacted=True), "q")
    assert blocks[0] == {"type": "thinking", "thinking": "why", "signature": sign("why")}
    check_thinking(body(thinking=ON, messages=loop([*blocks, USE])))
    # A tool loop without thinking on needs no thinking; a first turn has no loop.
    check_thinking(body(messages=loop([USE])))
    check_thinking(body(thinking=ON, messages=[RESULT]))


def test_the_default_thinking_echoes_the_question() -> None:
    [block] = thinking_blocks(ThinkingScript(), "what time is it")
    assert block["thinking"] == "Thinking about: what time is it"
