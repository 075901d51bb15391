"""The Anthropic-compatible HTTP API's sans-I/O edge: Messages JSON in, JSON and SSE out.

``POST /v1/messages`` speaks Anthropic's Messages format on both sides, so an application
written against the official ``anthropic`` SDK works by pointing ``base_url`` at the
gateway, whatever provider serves the deployment. The gateway imports from here. Parsing
lives in :mod:`~rakka_inference.runtime.anthropic_request` (Messages JSON to a core
:class:`~rakka_inference.core.messages.ChatRequest`, errors naming the offending field),
rendering in :mod:`~rakka_inference.runtime.anthropic_response` (core results to the
``message`` object, the event stream and Anthropic error bodies). Neither touches a socket.
"""

from __future__ import annotations

from rakka_inference.runtime.anthropic_request import (
    UNSUPPORTED_MESSAGES_PARAMS,
    parse_messages_request,
)
from rakka_inference.runtime.anthropic_response import (
    MessageStreamRenderer,
    anthropic_error_json,
    anthropic_usage_json,
    message_id,
    message_json,
)

__all__ = [
    "parse_messages_request",
    "UNSUPPORTED_MESSAGES_PARAMS",
    "MessageStreamRenderer",
    "anthropic_error_json",
    "anthropic_usage_json",
    "message_id",
    "message_json",
]
