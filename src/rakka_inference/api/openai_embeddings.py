"""OpenAI embeddings request JSON to an :class:`EmbeddingCall`: the ``/v1/embeddings`` edge.

Sans I/O, with the field rules and wording of
:mod:`~rakka_inference.api.openai_request`: unknown top-level fields are rejected
("Unrecognized request argument supplied: X"), ``null`` means "absent".
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from rakka_inference.api.openai_fields import invalid_value, read
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import EmbeddingRequest

__all__ = ["EmbeddingCall", "EncodingFormat", "parse_embedding_request"]

EncodingFormat: TypeAlias = Literal["float", "base64"]

_EMBEDDING_PARAMS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
_MAX_EMBEDDING_INPUTS = 2048


class EmbeddingCall(NamedTuple):
    """A parsed embeddings request and the vector encoding the client asked for.

    ``encoding_format`` is kept beside the request because it is a property of the HTTP
    answer, not of the inference (the ``openai`` SDK asks for ``base64`` by default).
    """

    request: EmbeddingRequest
    encoding_format: EncodingFormat


def parse_embedding_request(
    body: bytes, *, request_id: str, max_body_bytes: int | None = None
) -> EmbeddingCall:
    """A ``POST /v1/embeddings`` body as an :class:`EmbeddingCall`.

    ``input`` is a string or an array of non-empty strings (at most 2048); token-id
    inputs are rejected. ``encoding_format`` is ``float`` (the default) or ``base64``.
    ``dimensions``, when given, is 1 to
    :data:`~rakka_inference.core.messages.MAX_EMBEDDING_DIMENSIONS` (the core's rule).
    """
    document = read.document(body, max_body_bytes)
    for key in document:
        if key not in _EMBEDDING_PARAMS:
            raise BadRequest(f"Unrecognized request argument supplied: {key}", param=key)
    model = read.required_string(document.get("model"), "model")
    encoding = read.string(document.get("encoding_format"), "encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        invalid_value("encoding_format", encoding, "'float' and 'base64'")
    request = EmbeddingRequest(
        model=model,
        inputs=_embedding_inputs(document.get("input")),
        dimensions=read.integer(document.get("dimensions"), "dimensions"),
        user=read.string(document.get("user"), "user"),
        request_id=request_id,
    )
    return EmbeddingCall(request, "base64" if encoding == "base64" else "float")


def _embedding_inputs(value: object) -> tuple[str, ...]:
    if value is None:
        read.missing("input")
    if isinstance(value, str):
        return (read.required_string(value, "input"),)
    items = read.array(value, "input", non_empty=True)
    if len(items) > _MAX_EMBEDDING_INPUTS:
        raise BadRequest(
            f"input holds at most {_MAX_EMBEDDING_INPUTS} strings, got {len(items)}",
            param="input",
        )
    for index, item in enumerate(items):
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise BadRequest(
                "token-id input is not supported by this gateway; send strings",
                param=f"input[{index}]",
            )
        read.required_string(item, f"input[{index}]")
    return tuple(items)
