"""The Responses API's reasoning items: the signed thinking blocks an ``encrypted_content``
carries through the client, and what is refused when it does not decode."""

from __future__ import annotations

import base64

import orjson
import pytest

from rakka_inference.api.openai_reasoning import (
    decode_reasoning,
    encode_reasoning,
    reasoning_item,
)
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import ReasoningBlock

BLOCKS = (ReasoningBlock(text="why", signature="sig"), ReasoningBlock(redacted="opaque"))


def token(rows: object) -> str:
    return "rkr1." + base64.urlsafe_b64encode(orjson.dumps(rows)).decode()


def test_signed_blocks_go_round_the_client() -> None:
    encoded = encode_reasoning(BLOCKS)
    assert encoded is not None
    assert decode_reasoning(encoded, "p") == BLOCKS


def test_unsigned_thinking_carries_no_token() -> None:
    assert encode_reasoning([ReasoningBlock(text="plain")]) is None
    item = reasoning_item("rs_1", "plain", [ReasoningBlock(text="plain")], "completed")
    assert "encrypted_content" not in item
    assert item["content"] == [{"type": "reasoning_text", "text": "plain"}]
    assert reasoning_item("rs_2", "", BLOCKS, "in_progress")["content"] == []


@pytest.mark.parametrize("value", [None, 7, "gAAAAB-openai-own", ""])
def test_a_token_not_ours_carries_nothing(value: object) -> None:
    assert decode_reasoning(value, "p") == ()


@pytest.mark.parametrize(
    "bad",
    [
        "rkr1.!!!",
        "rkr1.abc",
        token({"not": "a list"}),
        token([["only", "two"]]),
        token([[1, "", ""]]),
        token([["text", "", "and redacted"]]),
    ],
)
def test_a_token_of_ours_that_does_not_decode_is_a_400_naming_it(bad: str) -> None:
    with pytest.raises(BadRequest) as caught:
        decode_reasoning(bad, "input[3].encrypted_content")
    assert caught.value.param == "input[3].encrypted_content"
