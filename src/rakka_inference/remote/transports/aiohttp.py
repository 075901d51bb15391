"""The :class:`~rakka_inference.wire.http.HttpTransport` on aiohttp (HTTP/1.1).

How the phases map onto aiohttp (see :mod:`rakka_inference.remote.transports.base` for the
shared design): requests go out with ``ClientTimeout(connect=, sock_connect=)`` only, so
aiohttp's read timer is off while the head is awaited and our first-byte deadline governs.
Once the head is in and the body is not yet complete, the connection's protocol gets
``read_timeout = read_timeout_ms`` and its timer is started: aiohttp re-arms it on every
packet received, which is exactly the between-bytes limit, at no cost of ours per chunk.

The session is opened on first use, inside the running event loop (aiohttp binds to it).

Exceptions, translated once by :func:`translate_error`:

=====================================================  ==================================
aiohttp                                                ours
=====================================================  ==================================
``ConnectionTimeoutError``                             ``Timeout(CONNECT)``
``ServerTimeoutError`` (``SocketTimeoutError``)        ``Timeout(FIRST_BYTE)`` before the
                                                       head, ``Timeout(BETWEEN_BYTES)`` after
our own deadline (``TimeoutError``)                    ``Timeout(FIRST_BYTE)`` or ``TOTAL``
``ClientResponseError`` (malformed head)               ``ProtocolError``
``InvalidURL``, ``NonHttpUrlClientError``,           ``InternalError`` — the request we
``ValueError`` (an illegal header value)               built cannot be sent (not retried)
``ClientConnectorError`` (refused, DNS, TLS),          ``NetworkError``
``ServerDisconnectedError``, ``ClientPayloadError``
(closed or reset mid-body), ``ClientOSError``,
``OSError``, any other ``ClientError``
=====================================================  ==================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp

from rakka_inference.core.errors import RequestCancelled, TimeoutPhase
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

__all__ = ["AiohttpResponse", "AiohttpTransport", "translate_error"]

_ERRORS = VendorErrors(
    # aiohttp's own timeouts are ``TimeoutError`` subclasses.
    caught=(TimeoutError, aiohttp.ClientError, OSError, ValueError),
    connect_timeout=(aiohttp.ConnectionTimeoutError,),
    read_timeout=(aiohttp.ServerTimeoutError,),
    unsendable=(aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError),
    malformed=(aiohttp.ClientResponseError,),
    network=(aiohttp.ClientError, OSError),
)

translate_error = _ERRORS.translate
"""Our typed error for an aiohttp exception: the table above, read by
:meth:`~rakka_inference.remote.transports.base.VendorErrors.translate`."""


class AiohttpTransport:
    """A pooled aiohttp session with phase-split timeouts and typed errors."""

    __slots__ = (
        "_closed",
        "_keepalive_s",
        "_max_connections",
        "_session",
        "_timeouts",
        "_trust_env",
    )

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_s: float = DEFAULT_KEEPALIVE_S,
        trust_env: bool = False,
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_s = keepalive_s
        self._trust_env = trust_env
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RequestCancelled("the HTTP transport was closed")
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            limit_per_host=0,
            keepalive_timeout=self._keepalive_s,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),  # one pool serves many callers
            trust_env=self._trust_env,
            headers={"User-Agent": USER_AGENT},
            raise_for_status=False,
        )
        return self._session

    def _client_timeout(self, connect_s: float) -> aiohttp.ClientTimeout:
        # No read limit here: the head is under our deadline, the body's is set per response.
        timeout = self._timeouts.get(connect_s)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s)
            self._timeouts[connect_s] = timeout
        return timeout

    async def send(
        self, request: HttpRequest, timeouts: Timeouts, *, stream: bool
    ) -> AiohttpResponse:
        """Send ``request`` and wait for the response head (first byte)."""
        session = self._session or self._open()
        deadlines = Deadlines.start(timeouts, stream=stream, now=asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout_at(deadlines.head_at):
                response = await session.request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    data=request.body or None,
                    timeout=self._client_timeout(deadlines.connect_s),
                    allow_redirects=False,
                )
        except _ERRORS.caught as exc:
            raise translate_error(
                exc, request, read_phase=TimeoutPhase.FIRST_BYTE, deadlines=deadlines
            ) from _ERRORS.cause(exc)
        connection = response.connection
        if connection is not None and not response.content.is_eof():
            protocol = connection.protocol
            if protocol is not None:
                protocol.read_timeout = deadlines.read_s
                protocol.start_timeout()
        return AiohttpResponse(response, request, deadlines)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        return "AiohttpTransport()"


class AiohttpResponse(TransportResponse):
    """A response whose head has arrived; the body is read under the between-bytes limit."""

    __slots__ = ("_content", "_response")

    _errors = _ERRORS

    def __init__(
        self, response: aiohttp.ClientResponse, request: HttpRequest, deadlines: Deadlines
    ) -> None:
        super().__init__(request, deadlines, status=response.status)
        self._response = response
        self._content = response.content

    def _header_items(self) -> Iterable[tuple[str, str]]:
        return self._response.headers.items()

    async def _read_all(self) -> bytes:
        return await self._response.read()

    async def _read_chunk(self) -> bytes:
        return await self._content.readany()

    async def _release(self) -> None:
        if self._content.is_eof():
            self._response.release()  # complete: back to the pool
        else:
            self._response.close()  # the upstream sees the request end
