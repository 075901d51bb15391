"""CORS for the gateway (``[cluster].cors_origins``, off by default).

A browser page from an allowed origin may call the inference API: its preflight
(``OPTIONS``) is answered for any route without a key (the key is checked on the request
itself), and every answer to it carries ``Access-Control-Allow-Origin`` and the headers it
may read. A page from any other origin gets no CORS headers at all, so its browser refuses
the answer. ``"*"`` allows every origin.
"""

from __future__ import annotations

from collections.abc import Collection

from rakka_inference.runtime.asgi import Message, Scope, Send, header

__all__ = ["allowed_origin", "preflight", "with_cors"]

_METHODS = b"GET, POST, HEAD, OPTIONS"
_ALLOWED_HEADERS = (
    b"authorization, content-type, content-encoding, x-api-key, anthropic-version, "
    b"anthropic-beta, x-request-id, x-rakka-priority, x-rakka-max-wait-ms, "
    b"openai-organization, openai-project"
)
_EXPOSED = b"x-request-id, retry-after, x-should-retry, x-rakka-token-count"
_MAX_AGE = b"600"


def allowed_origin(scope: Scope, origins: Collection[str]) -> str | None:
    """The request's ``Origin`` when ``origins`` allows it (``"*"`` when only the wildcard
    does); None otherwise, or when it sent none."""
    origin = header(scope, b"origin")
    if origin is None:
        return None
    if origin in origins:
        return origin
    return "*" if "*" in origins else None


async def preflight(send: Send, origin: str, request_id: str) -> None:
    """The answer to a preflight from an allowed ``origin``: which methods and headers its
    page may use."""
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", _ALLOWED_HEADERS),
        (b"access-control-max-age", _MAX_AGE),
        (b"vary", b"origin"),
        (b"x-request-id", request_id.encode("latin-1")),
        (b"content-length", b"0"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def with_cors(send: Send, origin: str) -> Send:
    """``send`` adding the headers an allowed ``origin``'s page needs to read the answer."""
    extra = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-expose-headers", _EXPOSED),
        (b"vary", b"origin"),
    ]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return sending
