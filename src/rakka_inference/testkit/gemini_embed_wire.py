"""The embeddings half of the Gemini mock: request checks and answers, in the real format.

:class:`~rakka_inference.testkit.mock_gemini.GeminiMock` routes these two calls here, after
the credential check (the same as for ``generateContent``)::

    POST /{v1,v1beta,v1alpha}/models/{model}:batchEmbedContents           AI Studio
    POST /{v1,v1beta1}/projects/{p}/locations/{r}/publishers/google/models/{model}:predict
                                                                          Vertex AI

(the other variant's method is the API's 404 ``NOT_FOUND``). :func:`embedding_answer`
checks the body and builds the answer; the mock then takes a fault and renders it as it
does for ``generateContent`` (``rate_limit``, ``server_error``, ``overloaded``,
``unauthorized``, ``context_length`` as error answers; ``slow_first_byte``, ``stall``,
``reset``, ``malformed_chunk`` on the one-chunk body). ``content_filter`` does nothing:
embeddings have no output filter.

AI Studio takes ``{"requests": [EmbedContentRequest, ...]}``, at most
:data:`MAX_BATCH_REQUESTS`, each with ``content.parts`` of text (joined into one text),
an optional ``model`` that must be ``models/{model}`` of the URL, and optional
``outputDimensionality`` (or ``embedContentConfig.outputDimensionality``), ``taskType``
and ``title``; it answers ``{"embeddings": [{"values": [...]}, ...]}`` and, like the
classic API, reports no usage. Vertex takes ``{"instances": [{"content": text}, ...],
"parameters": {"outputDimensionality", "autoTruncate"}}``, at most :data:`MAX_INSTANCES`,
and answers ``{"predictions": [{"embeddings": {"values": [...], "statistics":
{"token_count": N, "truncated": false}}}, ...], "metadata": {"billableCharacterCount":
N}}``. A body that breaks these rules gets a 400 ``INVALID_ARGUMENT``
(:class:`EmbeddingRefused`); proto JSON's snake_case spellings are accepted.

Vectors are :func:`~rakka_inference.testkit.mock_openai.embedding_vector` of each text:
deterministic unit vectors of ``EMBEDDING_DIMENSIONS`` (8) components, as the OpenAI
mock's, or of ``outputDimensionality`` (at most :data:`MAX_DIMENSIONS`) when given, which
reads fewer (or more) components of the same hash stream and renormalises them. Vertex's
``token_count`` is one token per 4 UTF-8 bytes, at least 1 (:func:`embedding_tokens`);
there a text over :data:`MAX_INPUT_TOKENS` is cut to that many tokens (``truncated:
true``), or, with ``autoTruncate: false``, refused with a 400. ``billableCharacterCount``
counts the characters read, whitespace aside.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rakka_inference.testkit.mock_openai import EMBEDDING_DIMENSIONS, embedding_vector
from rakka_inference.testkit.proto_json import field, json_object, unknown_field

__all__ = [
    "EMBEDDING_METHODS",
    "MAX_BATCH_REQUESTS",
    "MAX_DIMENSIONS",
    "MAX_INPUT_TOKENS",
    "MAX_INSTANCES",
    "EmbeddingRefused",
    "embedding_answer",
    "embedding_tokens",
]

EMBEDDING_METHODS = frozenset({"batchEmbedContents", "predict"})
"""The URL methods the mock routes to :func:`embedding_answer`."""
MAX_BATCH_REQUESTS = 100
"""AI Studio's limit on the requests of one ``batchEmbedContents`` call."""
MAX_INSTANCES = 250
"""Vertex's limit on the instances of one text-embedding ``predict`` call."""
MAX_DIMENSIONS = 3072
"""The largest ``outputDimensionality`` (that of ``gemini-embedding-001``)."""
MAX_INPUT_TOKENS = 2048
"""The longest text an embedding model reads."""

_BYTES_PER_TOKEN = 4
_BATCH_FIELDS = frozenset({"requests"})
_REQUEST_FIELDS = frozenset(
    {"model", "content", "taskType", "title", "outputDimensionality", "embedContentConfig"}
)
_PREDICT_FIELDS = frozenset({"instances", "parameters"})


class EmbeddingRefused(Exception):
    """A call the API refuses: ``code`` (400 or 404), ``status`` and ``message`` as in its
    error body."""

    def __init__(self, message: str, *, code: int = 400, status: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


def embedding_tokens(text: str) -> int:
    """The mock's token count of one input: one per 4 UTF-8 bytes, at least 1."""
    return max(1, -(-len(text.encode()) // _BYTES_PER_TOKEN))


def embedding_answer(body: bytes, *, method: str, vertex: bool, model: str) -> dict[str, Any]:
    """The answer document to one embeddings call, or :class:`EmbeddingRefused`.

    ``method`` is one of :data:`EMBEDDING_METHODS`; ``model`` the URL's model id.
    """
    if method != ("predict" if vertex else "batchEmbedContents"):
        raise EmbeddingRefused(
            f"Method {method} is not found for this endpoint.", code=404, status="NOT_FOUND"
        )
    document = _object(body)
    return _predict(document) if vertex else _batch(document, model)


# ---------------------------------------------------------------------- AI Studio


def _batch(document: Mapping[str, Any], model: str) -> dict[str, Any]:
    _known(document, _BATCH_FIELDS, "")
    requests = document.get("requests")
    if not isinstance(requests, list) or not requests:
        raise EmbeddingRefused("* BatchEmbedContentsRequest.requests: requests is not specified\n")
    if len(requests) > MAX_BATCH_REQUESTS:
        raise EmbeddingRefused(
            "* BatchEmbedContentsRequest.requests: at most "
            f"{MAX_BATCH_REQUESTS} requests can be in one batch\n"
        )
    embeddings = []
    for index, request in enumerate(requests):
        where = f"BatchEmbedContentsRequest.requests[{index}]"
        if not isinstance(request, dict):
            raise EmbeddingRefused(f"* {where}: expected an EmbedContentRequest object\n")
        _known(request, _REQUEST_FIELDS, f"requests[{index}].")
        named = field(request, "model")
        if named is not None and named != f"models/{model}":
            raise EmbeddingRefused(
                f"* {where}.model: the model of every request must be models/{model}, "
                "the batch's model\n"
            )
        config = field(request, "embedContentConfig")
        size = field(request, "outputDimensionality")
        if size is None and isinstance(config, dict):
            size = field(config, "outputDimensionality")
        vector = embedding_vector(_content_text(field(request, "content"), where), _size(size))
        embeddings.append({"values": vector})
    return {"embeddings": embeddings}


def _content_text(content: object, where: str) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise EmbeddingRefused(f"* {where}.content.parts: contents.parts must not be empty.\n")
    texts = [part.get("text") if isinstance(part, dict) else None for part in parts]
    if not all(isinstance(text, str) for text in texts):
        raise EmbeddingRefused(f"* {where}.content.parts: only text parts can be embedded.\n")
    return "".join(str(text) for text in texts)


# ---------------------------------------------------------------------- Vertex


def _predict(document: Mapping[str, Any]) -> dict[str, Any]:
    _known(document, _PREDICT_FIELDS, "")
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
        raise EmbeddingRefused("Invalid request: instances must be a non-empty list.")
    if len(instances) > MAX_INSTANCES:
        raise EmbeddingRefused(
            f"Invalid request: {len(instances)} instances; at most {MAX_INSTANCES} are allowed."
        )
    parameters = document.get("parameters", {})
    if not isinstance(parameters, dict):
        raise EmbeddingRefused("Invalid request: parameters must be an object.")
    size = _size(field(parameters, "outputDimensionality"))
    auto_truncate = field(parameters, "autoTruncate")
    predictions = []
    billable = 0  # Vertex bills the characters it read, whitespace aside
    for index, instance in enumerate(instances):
        text = instance.get("content") if isinstance(instance, dict) else None
        if not isinstance(text, str):
            raise EmbeddingRefused(f"Invalid request: instances[{index}].content must be a string.")
        tokens = embedding_tokens(text)
        truncated = tokens > MAX_INPUT_TOKENS
        if truncated and auto_truncate is False:
            raise EmbeddingRefused(
                f"Unable to submit request because the input token count is {tokens} but the "
                f"model supports up to {MAX_INPUT_TOKENS}. Reduce the input token count and "
                "try again. You can also use autoTruncate to truncate the input."
            )
        if truncated:  # the vector of the part the model read
            text = text.encode()[: MAX_INPUT_TOKENS * _BYTES_PER_TOKEN].decode(errors="ignore")
            tokens = MAX_INPUT_TOKENS
        statistics = {"truncated": truncated, "token_count": tokens}
        embedding = {"values": embedding_vector(text, size), "statistics": statistics}
        predictions.append({"embeddings": embedding})
        billable += len("".join(text.split()))
    return {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}


# ---------------------------------------------------------------------- small helpers


def _object(body: bytes) -> Mapping[str, Any]:
    try:
        return json_object(body)
    except ValueError as exc:
        raise EmbeddingRefused(str(exc)) from None


def _known(holder: Mapping[str, Any], fields: frozenset[str], prefix: str) -> None:
    unknown = unknown_field(holder, fields, prefix)
    if unknown is not None:
        raise EmbeddingRefused(unknown)


def _size(value: object) -> int:
    if value is None:
        return EMBEDDING_DIMENSIONS
    if type(value) is not int or not 1 <= value <= MAX_DIMENSIONS:
        raise EmbeddingRefused(
            f"outputDimensionality must be an integer from 1 to {MAX_DIMENSIONS}, got {value!r}."
        )
    return value
