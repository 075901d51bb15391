"""The :class:`~rakka_inference.wire.http.HttpTransport` on httpx (HTTP/1.1, HTTP/2).

How the phases map onto httpx (see :mod:`rakka_inference.remote.transports.base` for the
shared design): each request carries its own timeout mapping in ``extensions["timeout"]``, a
dict this module builds and owns. It starts with ``read`` unset, so the head is bounded only
by our first-byte deadline; once the head is in, ``read`` becomes ``read_timeout_ms``, which
httpcore looks up when the body read begins (HTTP/1.1) or on every read (HTTP/2). That keeps
the between-bytes limit on httpcore's own per-read timer, with no second timer per chunk.

Exceptions, translated once by :func:`translate_error`:

====================================================  ==================================
httpx                                                 ours
====================================================  ==================================
``ConnectTimeout``, ``PoolTimeout``                   ``Timeout(CONNECT)``
``ReadTimeout``, ``WriteTimeout``                     ``Timeout(FIRST_BYTE)`` before the
                                                      head, ``Timeout(BETWEEN_BYTES)`` after
our own deadline (``TimeoutError``)                   ``Timeout(FIRST_BYTE)`` or ``TOTAL``
``DecodingError`` (bad gzip/deflate/...)              ``ProtocolError``
``UnsupportedProtocol``, ``LocalProtocolError``,      ``InternalError`` — the request we
``InvalidURL``, ``ValueError``                        built cannot be sent (not retried)
any other ``TransportError`` (refused, reset,         ``NetworkError``
closed mid-body, TLS), ``OSError``
====================================================  ==================================

A ``LocalProtocolError`` can quote an illegal header value, which may be a credential, so
that one is raised without the vendor exception chained (``from None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
from collections.abc import AsyncGenerator, Iterable
from typing import cast

import httpx

from rakka_inference.core.errors import ConfigError, ConfigIssue, TimeoutPhase
from rakka_inference.core.policies import Timeouts
from rakka_inference.remote.transports.base import (
    DEFAULT_KEEPALIVE_S,
    DEFAULT_MAX_CONNECTIONS,
    USER_AGENT,
    Deadlines,
    TransportResponse,
    VendorErrors,
)
from rakka_inference.wire.http import HttpRequest

__all__ = ["HttpxResponse", "HttpxTransport", "translate_error"]

_VENDOR_ERRORS: tuple[type[Exception], ...] = (
    httpx.HTTPError,
    httpx.InvalidURL,
    httpx.StreamError,
    OSError,
    ValueError,
)
"""Everything httpx (with httpcore, h11, h2, anyio beneath it) is known to raise."""

_ERRORS = VendorErrors(
    caught=(TimeoutError, *_VENDOR_ERRORS),
    connect_timeout=(httpx.ConnectTimeout, httpx.PoolTimeout),
    read_timeout=(httpx.TimeoutException,),
    unsendable=(httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL, ValueError),
    malformed=(httpx.DecodingError,),
    network=(httpx.TransportError, OSError),
)

translate_error = _ERRORS.translate
"""Our typed error for an httpx exception: the table above, read by
:meth:`~rakka_inference.remote.transports.base.VendorErrors.translate`."""


def _no_cookies() -> http.cookiejar.CookieJar:
    # A pool shared by many callers must not replay one caller's cookies to another.
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


class HttpxTransport:
    """A pooled httpx client with phase-split timeouts and typed errors."""

    __slots__ = ("_client", "http2")

    def __init__(
        self,
        *,
        http2: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        trust_env: bool = False,
    ) -> None:
        self.http2 = http2
        try:
            self._client = httpx.AsyncClient(
                http2=http2,
                limits=httpx.Limits(
                    max_connections=max_connections,
                    max_keepalive_connections=max_connections,
                    keepalive_expiry=keepalive_s,
                ),
                timeout=None,  # noqa: S113 - every request carries its own limits
                follow_redirects=False,
                trust_env=trust_env,
                cookies=_no_cookies(),
                headers={"user-agent": USER_AGENT},
            )
        except ImportError as exc:  # http2=True without the h2 package
            issue = ConfigIssue(
                source="runtime_config",
                path="http2",
                message="needs the h2 package: pip install 'rakka-inference[http2]'",
            )
            raise ConfigError([issue]) from exc

    async def send(
        self, request: HttpRequest, timeouts: Timeouts, *, stream: bool
    ) -> HttpxResponse:
        """Send ``request`` and wait for the response head (first byte)."""
        deadlines = Deadlines.start(timeouts, stream=stream, now=asyncio.get_running_loop().time())
        limits: dict[str, float | None] = {
            "connect": deadlines.connect_s,
            "pool": deadlines.connect_s,
            "write": None,
            "read": None,
        }
        try:
            async with asyncio.timeout_at(deadlines.head_at):
                built = self._client.build_request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    content=request.body or None,
                    extensions={"timeout": limits},
                )
                response = await self._client.send(built, stream=True)
        except _ERRORS.caught as exc:
            raise translate_error(
                exc, request, read_phase=TimeoutPhase.FIRST_BYTE, deadlines=deadlines
            ) from _ERRORS.cause(exc)
        limits["read"] = deadlines.read_s
        return HttpxResponse(response, request, deadlines)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        with contextlib.suppress(*_VENDOR_ERRORS):
            await self._client.aclose()

    def __repr__(self) -> str:
        return f"HttpxTransport(http2={self.http2})"


class HttpxResponse(TransportResponse):
    """A response whose head has arrived; the body is read under the between-bytes limit."""

    __slots__ = ("_chunks", "_response")

    _errors = _ERRORS

    def __init__(self, response: httpx.Response, request: HttpRequest, deadlines: Deadlines):
        super().__init__(request, deadlines, status=response.status_code)
        self._response = response
        self._chunks: AsyncGenerator[bytes, None] | None = None

    def _header_items(self) -> Iterable[tuple[str, str]]:
        return self._response.headers.multi_items()

    async def _read_all(self) -> bytes:
        return await self._response.aread()

    async def _read_chunk(self) -> bytes:
        chunks = self._chunks
        if chunks is None:
            # httpx types it as an iterator; it is an async generator, closed in _release().
            chunks = self._chunks = cast(
                "AsyncGenerator[bytes, None]", self._response.aiter_bytes()
            )
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            return b""

    async def _release(self) -> None:
        # Errors while closing are dropped: the connection is gone either way.
        with contextlib.suppress(*_VENDOR_ERRORS):
            chunks = self._chunks
            if chunks is not None:
                await chunks.aclose()
            # httpcore closes the connection when the body was not read to its end.
            await self._response.aclose()
