"""OpenAI embeddings request JSON to an :class:`EmbeddingCall`: the ``/v1/embeddings`` edge.

Sans I/O, with the field rules and wording of
:mod:`~rakka_inference.api.openai_request`: unknown top-level fields are rejected
("Unrecognized request argument supplied: X"), ``null`` means "absent".
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from rakka_inference.api.openai_fields import invalid_value, read
from rakka_inference.api.openai_request import parse_user
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import EmbeddingRequest

__all__ = ["EmbeddingCall", "EncodingFormat", "parse_embedding_request"]

EncodingFormat: TypeAlias = Literal["float", "base64"]

_EMBEDDING_PARAMS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})
_MAX_EMBEDDING_INPUTS = 2048
_MAX_TOKENS_PER_INPUT = 8192  # OpenAI's own limit per input
_MAX_TOKEN_ID = 1 << 31


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

    ``input`` is a string, an array of non-empty strings (at most 2048), one array of
    token ids, or an array of such arrays (OpenAI's token-id form, forwarded as is to
    OpenAI-format upstreams and refused with a 400 by a deployment that tokenizes itself).
    ``encoding_format`` is ``float`` (the default) or ``base64``.
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
    inputs, token_ids = _embedding_inputs(document.get("input"))
    request = EmbeddingRequest(
        model=model,
        inputs=inputs,
        token_ids=token_ids,
        dimensions=read.integer(document.get("dimensions"), "dimensions"),
        user=parse_user(document.get("user")),
        request_id=request_id,
    )
    return EmbeddingCall(request, "base64" if encoding == "base64" else "float")


def _embedding_inputs(value: object) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """The strings, or the token-id lists, of ``input`` (one of the two is empty)."""
    if value is None:
        read.missing("input")
    if isinstance(value, str):
        return (read.required_string(value, "input"),), ()
    items = read.array(value, "input", non_empty=True)
    if len(items) > _MAX_EMBEDDING_INPUTS:
        raise BadRequest(
            f"input holds at most {_MAX_EMBEDDING_INPUTS} inputs, got {len(items)}",
            param="input",
        )
    if any(isinstance(item, int) and not isinstance(item, bool) for item in items):
        return (), (_token_ids(items, "input"),)  # one input, already tokenized
    if any(isinstance(item, list) for item in items):
        return (), tuple(_token_ids(item, f"input[{index}]") for index, item in enumerate(items))
    for index, item in enumerate(items):
        read.required_string(item, f"input[{index}]")
    return tuple(items), ()


def _is_token(item: object) -> bool:
    return isinstance(item, int) and not isinstance(item, bool) and 0 <= item < _MAX_TOKEN_ID


def _token_ids(item: object, path: str) -> tuple[int, ...]:
    ids = read.array(item, path, non_empty=True)
    if len(ids) > _MAX_TOKENS_PER_INPUT:
        raise BadRequest(
            f"a token-id input holds at most {_MAX_TOKENS_PER_INPUT} tokens, got {len(ids)}",
            param=path,
        )
    for index, token in enumerate(ids):
        if not _is_token(token):
            raise BadRequest(
                f"token ids are integers from 0 to {_MAX_TOKEN_ID - 1}", param=f"{path}[{index}]"
            )
    return tuple(ids)
