"""OpenAI embeddings (``POST {endpoint}/embeddings``): the body and the answer.

Shared by OpenAI, Azure OpenAI and the LiteLLM proxy, which all speak this format.

Vectors are asked for as ``base64`` (little-endian float32, the official SDK's default):
a quarter of the bytes of a JSON float list, decoded with one ``struct.unpack`` instead of
parsing thousands of numbers. The answer is checked, not trusted: one vector per input,
each at its ``index``, all of one length, else :class:`ProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.messages import EmbeddingRequest, EmbeddingResult
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import load_json_object

__all__ = ["embedding_body", "parse_embeddings"]


def embedding_body(request: EmbeddingRequest, model: str) -> dict[str, Any]:
    """The JSON body for ``request`` sent to ``model``."""
    body: dict[str, Any] = {
        "model": model,
        "input": [list(ids) for ids in request.token_ids] or list(request.inputs),
        "encoding_format": "base64",
    }
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


def parse_embeddings(body: bytes, request: EmbeddingRequest, provider: str) -> EmbeddingResult:
    """The vectors of an embeddings answer, in input order, and the input tokens it cost."""
    document = load_json_object(body, provider)
    data = document.get("data")
    if not isinstance(data, list) or len(data) != request.count:
        raise ProtocolError(
            f"the embeddings answer holds {_count(data)} vectors for {request.count} inputs",
            provider=provider,
        )
    vectors: list[tuple[float, ...] | None] = [None] * len(data)
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise ProtocolError("an embeddings item is not an object", provider=provider)
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < len(data) or vectors[index]:
            raise ProtocolError(f"bad embeddings index {index!r}", provider=provider)
        vectors[index] = _vector(item.get("embedding"), provider)
    found = [vector for vector in vectors if vector is not None]
    if len({len(vector) for vector in found}) > 1:
        raise ProtocolError("the embeddings answer mixes vector lengths", provider=provider)
    usage = document.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not isinstance(tokens, int) or tokens < 0:
        tokens = request.estimated_prompt_tokens()
    return EmbeddingResult(vectors=tuple(found), usage=Usage(input_tokens=tokens))


def _vector(value: object, provider: str) -> tuple[float, ...]:
    if isinstance(value, str):
        try:
            packed = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("an embedding is not valid base64", provider=provider) from None
        if not packed or len(packed) % 4:
            raise ProtocolError("an embedding is not a float32 array", provider=provider)
        return struct.unpack(f"<{len(packed) // 4}f", packed)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(x, float | int) and not isinstance(x, bool) for x in value)
    ):
        return tuple(float(x) for x in value)
    raise ProtocolError("an embedding is neither base64 nor a list of numbers", provider=provider)


def _count(data: object) -> int:
    return len(data) if isinstance(data, list) else 0
