"""Raw ASGI plumbing for the gateway: headers, client keys, request bodies, JSON answers.

Plain functions over ASGI's ``scope``/``receive``/``send``, with no framework: reading a
header, checking a client key in constant time, reading a body up to a limit, sending a
JSON answer or an error rendered in a dialect's format.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from rakka_inference.api.openai_response import error_json
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    InferenceError,
    InternalError,
    PayloadTooLarge,
    RequestCancelled,
)

__all__ = [
    "ErrorRenderer",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "bearer_matches",
    "disconnected",
    "header",
    "header_key_matches",
    "receive_body",
    "send_error",
    "send_json",
    "trace_headers",
]

log = logging.getLogger("rakka_inference.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ErrorRenderer = Callable[[InferenceError], tuple[int, dict[str, str], bytes]]
"""An error as ``(status, headers, body)`` in one dialect's format."""


def header(scope: Scope, name: bytes) -> str | None:
    """The value of the request's header ``name`` (lower case), or ``None``."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def bearer_matches(scope: Scope, keys: Iterable[bytes]) -> bool:
    """Whether the request's ``Authorization: Bearer`` token is one of ``keys``.

    Every key is compared, always, in constant time: the time taken says nothing about
    which key (or how much of one) matched.
    """
    scheme, _, presented = (header(scope, b"authorization") or "").partition(" ")
    return _one_of(presented.strip().encode(), keys) and scheme.lower() == "bearer"


def header_key_matches(scope: Scope, name: bytes, keys: Iterable[bytes]) -> bool:
    """Whether the request's header ``name`` (such as ``x-api-key``) holds one of ``keys``.

    Compared as :func:`bearer_matches` compares: every key, in constant time.
    """
    return _one_of((header(scope, name) or "").strip().encode(), keys)


def _one_of(token: bytes, keys: Iterable[bytes]) -> bool:
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(token, key)
    return valid


def trace_headers(scope: Scope) -> dict[str, str] | None:
    """The request's W3C Trace Context headers, so its trace joins the client's."""
    found = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in tracing.TRACE_HEADERS
    }
    return found or None


async def receive_body(scope: Scope, receive: Receive, max_body_bytes: int) -> bytes:
    """The request body; :class:`PayloadTooLarge` as soon as it is known to pass the limit.

    A declared ``content-length`` over the limit is refused before anything is read.
    """
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestCancelled("the client went away while sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def disconnected(receive: Receive) -> None:
    """Returns when the client goes away (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def send_json(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """A whole JSON answer: ``body`` with ``status``, and ``headers`` after our own."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *((k.encode(), v.encode()) for k, v in (headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: InferenceError, request_id: str, render: ErrorRenderer = error_json
) -> None:
    """``error`` as a JSON answer in the format of ``render`` (OpenAI's by default)."""
    try:
        status, headers, body = render(error)
    except Exception:  # pragma: no cover - a bug in rendering must still answer
        log.exception("rendering an error failed")
        status, headers, body = render(InternalError("internal error"))
    await send_json(send, status, body, request_id, headers)
