"""alternating_turns: the conversation shape Anthropic's and Gemini's adapters share."""

from __future__ import annotations

from typing import Any

from rakka_inference.core.messages import ChatMessage, Role
from rakka_inference.providers.base import alternating_turns


def _texts(message: ChatMessage, position: int) -> list[dict[str, Any]]:
    return [{"text": message.text, "at": position}] if message.text else []


def test_instructions_are_hoisted_and_same_role_turns_merge() -> None:
    messages = [
        ChatMessage.system("be brief"),
        ChatMessage.user("a"),
        ChatMessage(role=Role.DEVELOPER, content="no markdown"),
        ChatMessage.user("b"),
        ChatMessage.assistant("c"),
        ChatMessage(role=Role.TOOL, content="d", tool_call_id="call-1"),
        ChatMessage.system(""),
    ]
    system, turns = alternating_turns(messages, _texts, assistant="model", content="parts")
    assert system == ["be brief", "no markdown"]
    assert turns == [
        {"role": "user", "parts": [{"text": "a", "at": 1}, {"text": "b", "at": 3}]},
        {"role": "model", "parts": [{"text": "c", "at": 4}]},
        {"role": "user", "parts": [{"text": "d", "at": 5}]},
    ]


def test_a_message_without_blocks_is_dropped_and_does_not_split_a_turn() -> None:
    messages = [ChatMessage.user("a"), ChatMessage.assistant(""), ChatMessage.user("b")]
    _, turns = alternating_turns(messages, _texts, assistant="assistant", content="content")
    assert turns == [
        {"role": "user", "content": [{"text": "a", "at": 0}, {"text": "b", "at": 2}]},
    ]
