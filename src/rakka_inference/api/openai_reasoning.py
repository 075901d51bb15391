"""Reasoning items of the Responses API: the model's thinking in an answer's ``output``, and
its signed blocks carried through the client and back in ``input``.

The Responses API keeps nothing for us (``store`` is false), so a reasoning model's state
travels in each reasoning item's ``encrypted_content``, which the client sends back
whole. Ours holds the answer's signed thinking blocks (Claude's ``thinking`` blocks with
their signatures, ``redacted_thinking`` data), so a tool loop through ``/v1/responses``
can give Claude its thinking back unchanged, as extended thinking requires. The token is
``rkr1.`` and the URL-safe base64 of a JSON list of ``[text, signature, redacted]``; its
text is the model's own thinking, which the item shows in ``content`` anyway, and its
signatures are the provider's, which only the provider can check. An item with no signed
block carries none.

A reasoning item sent back without our token (another service's, or one without
``encrypted_content``) is dropped, as the chat format drops prior thinking: no provider
behind the gateway could read it. A token of ours that does not decode is a 400 naming it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import orjson

from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import ReasoningBlock

__all__ = ["decode_reasoning", "encode_reasoning", "reasoning_item"]

_PREFIX = "rkr1."


def encode_reasoning(blocks: Sequence[ReasoningBlock]) -> str | None:
    """The ``encrypted_content`` that carries ``blocks``; None when none is signed."""
    if not any(block.signed for block in blocks):
        return None
    rows = [[block.text, block.signature, block.redacted] for block in blocks]
    return _PREFIX + base64.urlsafe_b64encode(orjson.dumps(rows)).decode()


def decode_reasoning(token: object, param: str) -> tuple[ReasoningBlock, ...]:
    """The blocks an item's ``encrypted_content`` carries: none for a token not ours."""
    if not isinstance(token, str) or not token.startswith(_PREFIX):
        return ()
    try:
        rows = orjson.loads(base64.urlsafe_b64decode(token[len(_PREFIX) :]))
    except (binascii.Error, ValueError):
        raise BadRequest("encrypted_content is not the gateway's", param=param) from None
    if not isinstance(rows, list) or not all(_is_row(row) for row in rows):
        raise BadRequest("encrypted_content is not the gateway's", param=param)
    try:
        return tuple(ReasoningBlock(text=t, signature=s, redacted=r) for t, s, r in rows)
    except BadRequest as error:
        error.param = param
        raise


def _is_row(row: object) -> bool:
    return isinstance(row, list) and len(row) == 3 and all(isinstance(v, str) for v in row)


def reasoning_item(
    identifier: str, text: str, blocks: Sequence[ReasoningBlock], status: str
) -> dict[str, Any]:
    """A ``reasoning`` output item: the thinking as one ``reasoning_text`` part (none
    while it has none), no summary (none is made), and the blocks' ``encrypted_content``."""
    item: dict[str, Any] = {
        "id": identifier,
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if text else [],
        "status": status,
    }
    token = encode_reasoning(blocks)
    if token is not None:
        item["encrypted_content"] = token
    return item
