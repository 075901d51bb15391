"""Gemini embeddings: ``batchEmbedContents`` on AI Studio, ``predict`` on Vertex AI.

Pure functions that :class:`~rakka_inference.providers.gemini.GeminiAdapter` delegates to;
the URL base and the credential header are the adapter's, as for ``generateContent``.

AI Studio: ``POST {base}:batchEmbedContents`` with one ``EmbedContentRequest`` per input,
in input order::

    {"requests": [{"model": "models/{model}",
                   "content": {"parts": [{"text": "..."}]},
                   "outputDimensionality": N}, ...]}

``outputDimensionality`` is sent only when the request sets ``dimensions`` (the per-request
field the ``google-genai`` SDK sends; the API reference now also offers it inside
``embedContentConfig``). The answer is ``{"embeddings": [{"values": [...]}, ...]}`` in the
same order. The classic answer reports no token usage, so the input tokens are the
request's estimate (``EmbeddingRequest.estimated_prompt_tokens()``), unless the answer
carries ``usageMetadata.promptTokenCount``.

Vertex AI: ``POST {base}:predict`` (the text-embedding prediction API)::

    {"instances": [{"content": "..."}, ...],
     "parameters": {"outputDimensionality": N}}

with ``parameters`` only when ``dimensions`` is set. The answer is
``{"predictions": [{"embeddings": {"values": [...], "statistics": {"token_count": N,
"truncated": false}}}, ...]}``; the input tokens are the sum of the ``token_count``
values (``tokenCount`` is read too), or the request's estimate when a prediction has no
statistics. Vertex serves ``gemini-embedding-001`` one instance per ``predict`` call; a
request with more inputs gets the upstream's 400, which is reported as is.

An answer that is not a JSON object, lacks its list, holds a different number of vectors
than there are inputs, or has a vector that is not a non-empty list of numbers (or vectors
of different sizes, or a token count that is not a count) raises
:class:`~rakka_inference.core.errors.ProtocolError`. An ``error`` object in a 200 answer
raises its typed error, as for ``generateContent``. Errors on status >= 400 have the shape
``generateContent``'s have, and go through the adapter's ``refine_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.messages import EmbeddingRequest, EmbeddingResult
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import load_json_object
from rakka_inference.providers.gemini_response import _raise_for_refusal

__all__ = ["embedding_body", "embedding_method", "parse_embeddings"]

_NUMBER = (int, float)


def embedding_method(*, vertex: bool) -> str:
    """The method appended to the model's URL: ``predict`` on Vertex, else
    ``batchEmbedContents``."""
    return "predict" if vertex else "batchEmbedContents"


def embedding_body(request: EmbeddingRequest, model: str, *, vertex: bool) -> dict[str, Any]:
    """The JSON body for ``request``; ``model`` is the bare model id (no ``models/``)."""
    texts = request.texts("Gemini's embeddings API")
    if vertex:
        body: dict[str, Any] = {"instances": [{"content": text} for text in texts]}
        if request.dimensions is not None:
            body["parameters"] = {"outputDimensionality": request.dimensions}
        return body
    resource = f"models/{model}"
    sized = {} if request.dimensions is None else {"outputDimensionality": request.dimensions}
    return {
        "requests": [
            {"model": resource, "content": {"parts": [{"text": text}]}, **sized} for text in texts
        ]
    }


def parse_embeddings(
    body: bytes, request: EmbeddingRequest, *, vertex: bool, provider: str
) -> EmbeddingResult:
    """The vectors of an answer, in input order, and the input tokens it cost."""
    document = load_json_object(body, provider)
    _raise_for_refusal(document, provider)
    name = "predictions" if vertex else "embeddings"
    items = document.get(name)
    if not isinstance(items, list):
        raise ProtocolError(f"embeddings answer has no {name} list", provider=provider)
    if len(items) != len(request.inputs):
        raise ProtocolError(
            f"embeddings answer has {len(items)} vectors for {len(request.inputs)} inputs",
            provider=provider,
        )
    vectors: list[tuple[float, ...]] = []
    counts: list[int | None] = []
    for index, item in enumerate(items):
        embedding = item.get("embeddings") if vertex and isinstance(item, dict) else item
        if not isinstance(embedding, dict):
            raise ProtocolError(f"{name}[{index}] is not an embedding object", provider=provider)
        vectors.append(_vector(embedding.get("values"), f"{name}[{index}]", provider))
        if vertex:
            counts.append(_statistics_tokens(embedding.get("statistics"), index, provider))
    if len({len(vector) for vector in vectors}) > 1:
        raise ProtocolError("embeddings answer has vectors of different sizes", provider=provider)
    if vertex:
        reported = [count for count in counts if count is not None]
        tokens = sum(reported) if len(reported) == len(counts) else None
    else:
        tokens = _prompt_token_count(document.get("usageMetadata"))
    if tokens is None:
        tokens = request.estimated_prompt_tokens()
    return EmbeddingResult(vectors=tuple(vectors), usage=Usage(input_tokens=tokens))


def _vector(values: object, where: str, provider: str) -> tuple[float, ...]:
    # orjson gives exact int and float types, so type() also keeps out bools.
    if not isinstance(values, list) or not values:
        raise ProtocolError(f"{where} has no values", provider=provider)
    if not all(type(value) in _NUMBER for value in values):
        raise ProtocolError(f"{where} has values that are not numbers", provider=provider)
    return tuple(float(value) for value in values)


def _statistics_tokens(statistics: object, index: int, provider: str) -> int | None:
    """A prediction's ``token_count``; None when it has no statistics."""
    if statistics is None:
        return None
    count = None
    if isinstance(statistics, Mapping):
        # A prediction is a protobuf Value, so Vertex keeps the snake_case name.
        count = statistics.get("token_count", statistics.get("tokenCount"))
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if type(count) is not int or count < 0:
        raise ProtocolError(
            f"predictions[{index}] has no valid statistics.token_count", provider=provider
        )
    return count


def _prompt_token_count(usage: object) -> int | None:
    count = usage.get("promptTokenCount") if isinstance(usage, Mapping) else None
    return count if type(count) is int and count >= 0 else None
