"""The OpenAI-compatible HTTP API's sans-I/O edge: request JSON in, response JSON and SSE out.

The gateway imports from here. Parsing lives in
:mod:`~rakka_inference.runtime.openai_request` (request JSON to core values, with OpenAI-
style errors naming the offending field), rendering in
:mod:`~rakka_inference.runtime.openai_response` (core values to ``chat.completion``,
``chat.completion.chunk`` SSE events, error bodies and embeddings). Neither touches a
socket: both take and return bytes and values.
"""

from __future__ import annotations

from rakka_inference.runtime.openai_request import (
    INERT_PARAMS,
    UNSUPPORTED_PARAMS,
    EmbeddingCall,
    EncodingFormat,
    parse_chat_request,
    parse_embedding_request,
)
from rakka_inference.runtime.openai_response import (
    ChunkRenderer,
    chat_completion_id,
    completion_json,
    embeddings_json,
    error_json,
    usage_json,
)

__all__ = [
    "parse_chat_request",
    "parse_embedding_request",
    "EmbeddingCall",
    "EncodingFormat",
    "INERT_PARAMS",
    "UNSUPPORTED_PARAMS",
    "ChunkRenderer",
    "completion_json",
    "embeddings_json",
    "error_json",
    "chat_completion_id",
    "usage_json",
]
