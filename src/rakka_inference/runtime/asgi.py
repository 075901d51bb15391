"""Raw ASGI plumbing for the gateway: headers, request ids, client keys, request bodies,
JSON answers.

Plain functions over ASGI's ``scope``/``receive``/``send``, with no framework: reading a
header, a request's ids, checking a client key in constant time, reading a body up to a
limit, sending a JSON answer or an error rendered in a dialect's format.

A request's ids (:class:`RequestIds`): the gateway always makes its own (the answer's
``chatcmpl-``/``msg_`` id comes from it), and a client's ``x-request-id`` is only echoed
back in the response's ``x-request-id`` header, and only when it is short and plain
(:data:`CLIENT_REQUEST_ID`); otherwise the header carries our own id.

Every 429 answer says when to retry: ``Retry-After``, the error's own ``retry_after`` when
it has one, else :data:`DEFAULT_RETRY_AFTER_S`, so that no client retries at once and in a
loop — except a 429 that no retry can cure (a request whose own cost passes a budget or a
rate limit, a spent upstream quota), which says ``x-should-retry: false`` instead
(:func:`~rakka_inference.api.openai_response.error_status`).
"""

from __future__ import annotations

import hmac
import logging
import re
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from rakka_inference.api.openai_response import error_json
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    BadRequest,
    InferenceError,
    InternalError,
    PayloadTooLarge,
    RequestCancelled,
)
from rakka_inference.core.messages import new_request_id

_ZLIB_OR_GZIP = 32 + zlib.MAX_WBITS
"""zlib's window bits that accept a zlib (``deflate``) or a gzip stream."""

__all__ = [
    "CLIENT_REQUEST_ID",
    "DEFAULT_RETRY_AFTER_S",
    "ErrorRenderer",
    "Message",
    "Receive",
    "RequestIds",
    "Scope",
    "Send",
    "bearer_matches",
    "disconnected",
    "header",
    "header_key_matches",
    "receive_body",
    "request_ids",
    "send_error",
    "send_whole",
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

CLIENT_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
"""A client's ``x-request-id`` that is echoed back: at most 128 plain characters."""
DEFAULT_RETRY_AFTER_S: Final = 1
"""The ``Retry-After`` of a 429 whose error does not say when to retry."""


@dataclass(frozen=True, slots=True)
class RequestIds:
    """A request's ids: ``own`` is the gateway's, from which the answer's id is made;
    ``header`` is the response's ``x-request-id`` (the client's, when it is echoed)."""

    own: str
    header: str


def request_ids(scope: Scope) -> RequestIds:
    """A fresh id for the request, and the client's ``x-request-id`` when it is safe to
    echo (:data:`CLIENT_REQUEST_ID`); an unsafe one is dropped, never echoed."""
    own = new_request_id()
    client = header(scope, b"x-request-id")
    if client is not None and CLIENT_REQUEST_ID.fullmatch(client):
        return RequestIds(own, client)
    return RequestIds(own, own)


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

    A declared ``content-length`` over the limit is refused before anything is read. A body
    sent with ``content-encoding: gzip`` or ``deflate`` is decompressed as it arrives, and
    the limit holds for what it decompresses to as well as for what was sent: a small
    compressed body that would inflate past the limit (a zip bomb) is refused at the limit,
    having cost at most that much memory. Another encoding, or a compressed body that is
    corrupt or cut short, is a 400.
    """
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
    inflate = _decompressor(header(scope, b"content-encoding"))
    parts: list[bytes] = []
    sent = size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestCancelled("the client went away while sending its request")
        chunk = message.get("body", b"")
        sent += len(chunk)
        if sent > max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
        if inflate is not None and chunk:
            chunk = _inflate(inflate, chunk, max_body_bytes - size)
        size += len(chunk)
        if size > max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {max_body_bytes} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            if inflate is not None and not inflate.eof:
                raise BadRequest("the compressed body ends before its end")
            return b"".join(parts)


def _decompressor(encoding: str | None) -> Any:
    """A zlib decompressor for the body's ``content-encoding``; None for none."""
    name = (encoding or "identity").strip().lower()
    if name == "identity":
        return None
    if name in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(_ZLIB_OR_GZIP)
    raise BadRequest(f"content-encoding {name[:32]!r} is not supported: send gzip, deflate or none")


def _inflate(inflate: Any, chunk: bytes, room: int) -> bytes:
    """``chunk`` decompressed, at most ``room + 1`` bytes of it (one more tells the caller
    the limit is passed, without inflating the rest)."""
    try:
        out: bytes = inflate.decompress(chunk, room + 1)
    except zlib.error as error:
        raise BadRequest("the compressed body is corrupt") from error
    if inflate.eof and inflate.unused_data:
        raise BadRequest("the compressed body has data after its end")
    return out


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
    await send_whole(send, status, body, request_id, b"application/json", headers=headers)


async def send_whole(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    content_type: bytes,
    *,
    headers: Mapping[str, str] | None = None,
) -> None:
    """A whole answer of ``content_type``: ``body`` with ``status``, then ``headers``."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
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
    """``error`` as a JSON answer in the format of ``render`` (OpenAI's by default).

    A 429 always says when to retry (module docstring).
    """
    try:
        status, headers, body = render(error)
    except Exception:  # pragma: no cover - a bug in rendering must still answer
        log.exception("rendering an error failed")
        status, headers, body = render(InternalError("internal error"))
    if status == 429 and "retry-after" not in headers and "x-should-retry" not in headers:
        headers = {**headers, "retry-after": str(DEFAULT_RETRY_AFTER_S)}
    await send_json(send, status, body, request_id, headers)
