"""What the two :class:`~rakka_inference.wire.http.HttpTransport` implementations share.

Two implementations sit behind the seam, and
:func:`~rakka_inference.remote.transports.factory.create_transport` chooses between them:

- :class:`~rakka_inference.remote.transports.aiohttp.AiohttpTransport` — aiohttp, HTTP/1.1;
- :class:`~rakka_inference.remote.transports.httpx.HttpxTransport` — httpx, HTTP/1.1 and,
  with the ``h2`` package (``pip install 'rakka-inference[http2]'``), HTTP/2.

This module holds what both use: the pool defaults, the :class:`Deadlines` of one exchange,
the :class:`~rakka_inference.core.errors.Timeout` naming its limit, :class:`VendorErrors`,
the one way a library's exceptions become ours, and :class:`TransportResponse`, the status,
headers and body reads under the between-bytes and total limits. Each library's module
keeps only what is its own: the client, the calls that read and release, and its table of
exceptions.

How the four limits of :class:`~rakka_inference.core.policies.Timeouts` are kept, the
same way in both:

=============  ==========================================================================
phase          enforced by
=============  ==========================================================================
connect        the library's own connect timeout; it also bounds the wait for a free
               pooled connection when ``max_connections`` are all busy
first byte     one ``asyncio.timeout_at`` around ``send``, counted from the call (so it
               includes connecting, as time-to-first-byte does for every client); the
               library's read timer is *off* while the head is awaited
between bytes  the library's own per-read timer, switched on with ``read_timeout_ms``
               once the head has arrived (httpx: the request's timeout mapping, which
               httpcore reads when the body read starts; aiohttp: the connection
               protocol's ``read_timeout``). It costs nothing per chunk beyond what the
               library pays anyway
total          only when set: the same deadline bounds the head wait and then every body
               read (one ``asyncio.timeout_at`` per read — the only per-chunk cost we add,
               and only for deployments that ask for a total limit)
=============  ==========================================================================

The transports ignore proxy variables and ``.netrc`` in the environment unless built with
``trust_env=True`` (aiohttp re-reads both on every request when trusting the environment),
keep no cookies (one pool serves many callers), follow no redirects, and say
``User-Agent: rakka-inference`` unless the request names its own.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from rakka_inference.core.errors import (
    InferenceError,
    InternalError,
    NetworkError,
    ProtocolError,
    RequestCancelled,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.policies import Timeouts
from rakka_inference.wire.http import HttpRequest

__all__ = [
    "DEFAULT_KEEPALIVE_S",
    "DEFAULT_MAX_CONNECTIONS",
    "USER_AGENT",
    "Deadlines",
    "TransportResponse",
    "VendorErrors",
    "describe",
    "lower_headers",
    "timeout_error",
]

DEFAULT_MAX_CONNECTIONS = 100
"""Pooled connections per transport (both libraries' own default)."""

DEFAULT_KEEPALIVE_S = 15.0
"""How long an idle pooled connection is kept: below the 60 s idle cut of common balancers."""

USER_AGENT = "rakka-inference"


@dataclass(frozen=True, slots=True)
class Deadlines:
    """The deadlines of one exchange, in event-loop time (``loop.time()`` seconds)."""

    head_at: float
    """When the response head must have arrived: the first-byte or the total deadline."""
    head_phase: TimeoutPhase
    """Which of the two ``head_at`` is: ``FIRST_BYTE``, or ``TOTAL`` when that is sooner."""
    total_at: float | None
    """The whole exchange's deadline, when ``total_timeout_ms`` is set."""
    connect_s: float
    first_byte_s: float
    read_s: float
    total_s: float | None

    @classmethod
    def start(cls, timeouts: Timeouts, *, stream: bool, now: float) -> Deadlines:
        first_byte_s = timeouts.first_byte_ms(streaming=stream) / 1000.0
        head_at = now + first_byte_s
        head_phase = TimeoutPhase.FIRST_BYTE
        total_s = total_at = None
        if timeouts.total_timeout_ms is not None:
            total_s = timeouts.total_timeout_ms / 1000.0
            total_at = now + total_s
            if total_at <= head_at:
                head_at, head_phase = total_at, TimeoutPhase.TOTAL
        return cls(
            head_at=head_at,
            head_phase=head_phase,
            total_at=total_at,
            connect_s=timeouts.connect_timeout_ms / 1000.0,
            first_byte_s=first_byte_s,
            read_s=timeouts.read_timeout_ms / 1000.0,
            total_s=total_s,
        )


def timeout_error(request: HttpRequest, phase: TimeoutPhase, deadlines: Deadlines) -> Timeout:
    """The :class:`Timeout` for ``phase`` expiring on ``request``, naming the limit."""
    limit = {
        TimeoutPhase.CONNECT: ("no connection", deadlines.connect_s),
        TimeoutPhase.FIRST_BYTE: ("no response head", deadlines.first_byte_s),
        TimeoutPhase.BETWEEN_BYTES: ("no body bytes", deadlines.read_s),
        TimeoutPhase.TOTAL: ("not complete", deadlines.total_s or 0.0),
    }
    what, seconds = limit.get(phase, ("timed out", 0.0))
    return Timeout(f"{describe(request)}: {what} within {seconds * 1000:g} ms", phase=phase)


def describe(request: HttpRequest) -> str:
    """``METHOD URL`` for messages (URLs carry no credentials; headers are never shown)."""
    return f"{request.method} {request.url}"


def lower_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header pairs keyed in lower case; repeated fields are joined with ``", "`` (RFC 9110)."""
    headers: dict[str, str] = {}
    for name, value in items:
        key = name.lower()
        if key in headers:
            headers[key] = f"{headers[key]}, {value}"
        else:
            headers[key] = value
    return headers


@dataclass(frozen=True, slots=True, kw_only=True)
class VendorErrors:
    """How one library's exceptions map onto ours: each transport fills in this table, and
    :meth:`translate` reads it the same way for both, first match wins:

    ===================================  ================================================
    exception                            ours
    ===================================  ================================================
    ``connect_timeout``                  ``Timeout(CONNECT)``
    ``read_timeout``                     ``Timeout(read_phase)``: ``FIRST_BYTE`` while the
                                         head is awaited, ``BETWEEN_BYTES`` in the body
    any other ``TimeoutError`` (our own  ``Timeout(deadlines.head_phase)`` before the head,
    ``asyncio`` deadline)                ``Timeout(TOTAL)`` after
    ``unsendable``                       ``InternalError``: the request we built cannot
                                         be sent (not retried)
    ``malformed``                        ``ProtocolError``
    ``network``                          ``NetworkError``
    anything else                        ``InternalError``
    ===================================  ================================================
    """

    caught: tuple[type[Exception], ...]
    """Every exception the library is known to raise, our own ``TimeoutError`` included."""
    connect_timeout: tuple[type[Exception], ...]
    read_timeout: tuple[type[Exception], ...]
    unsendable: tuple[type[Exception], ...]
    """Errors whose vendor text may quote a header value (a credential): never chained."""
    malformed: tuple[type[Exception], ...]
    network: tuple[type[Exception], ...]

    def translate(
        self,
        exc: BaseException,
        request: HttpRequest,
        *,
        read_phase: TimeoutPhase,
        deadlines: Deadlines,
    ) -> InferenceError:
        """Our typed error for an exception met while sending ``request``.

        ``read_phase`` says what a library read timeout means where it struck (``FIRST_BYTE``
        while waiting for the head, ``BETWEEN_BYTES`` in the body); a plain ``TimeoutError``
        is our own ``asyncio`` deadline: ``deadlines.head_phase`` before the head, ``TOTAL``
        after.
        """
        if isinstance(exc, self.connect_timeout):
            return timeout_error(request, TimeoutPhase.CONNECT, deadlines)
        if isinstance(exc, self.read_timeout):
            return timeout_error(request, read_phase, deadlines)
        if isinstance(exc, TimeoutError):
            head = read_phase is TimeoutPhase.FIRST_BYTE
            return timeout_error(
                request, deadlines.head_phase if head else TimeoutPhase.TOTAL, deadlines
            )
        where, name = describe(request), type(exc).__name__
        if isinstance(exc, self.unsendable):
            return InternalError(f"{where}: the request cannot be sent as built ({name})")
        if isinstance(exc, self.malformed):
            return ProtocolError(f"{where}: malformed response ({name})")
        if isinstance(exc, self.network):
            detail = f": {exc}" if str(exc) else ""
            return NetworkError(f"{where}: {name}{detail}")
        return InternalError(f"{where}: unexpected {name}")

    def cause(self, exc: BaseException) -> BaseException | None:
        """What to chain under our error: ``exc``, unless its text may quote a credential."""
        return None if isinstance(exc, self.unsendable) else exc


class TransportResponse(abc.ABC):
    """What both transports' responses share: the status and lower-cased headers, reading
    the body under the between-bytes and total limits, translating vendor errors once by
    the subclass's :class:`VendorErrors`, and refusing reads after close.

    A subclass supplies the library calls: ``_header_items``, ``_read_all``, ``_read_chunk``
    (returning ``b""`` at the end) and ``_release`` (give the connection back, or close it
    when the body was not read to its end).
    """

    __slots__ = ("_closed", "_deadlines", "_headers", "_request", "_status")

    _errors: ClassVar[VendorErrors]

    def __init__(self, request: HttpRequest, deadlines: Deadlines, *, status: int) -> None:
        self._request = request
        self._deadlines = deadlines
        self._status = status
        self._headers: dict[str, str] | None = None
        self._closed = False

    @property
    def status(self) -> int:
        return self._status

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers keyed in lower case, built on first use."""
        if self._headers is None:
            self._headers = lower_headers(self._header_items())
        return self._headers

    async def read(self) -> bytes:
        """The whole body, under the between-bytes and total limits."""
        return await self._bounded(self._read_all)

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """Body chunks as they arrive, under the between-bytes and total limits."""
        self._check_open()
        return _Chunks(self)

    async def next_chunk(self) -> bytes:
        """The next body chunk; StopAsyncIteration at the end."""
        data = await self._bounded(self._read_chunk)
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        """Release the connection; if the body was not fully read, close it."""
        if self._closed:
            return
        self._closed = True
        await self._release()

    async def _bounded(self, read: Callable[[], Awaitable[bytes]]) -> bytes:
        self._check_open()
        errors = self._errors
        try:
            total_at = self._deadlines.total_at
            if total_at is None:
                return await read()
            async with asyncio.timeout_at(total_at):
                return await read()
        except errors.caught as exc:
            error = errors.translate(
                exc, self._request, read_phase=TimeoutPhase.BETWEEN_BYTES, deadlines=self._deadlines
            )
            raise error from errors.cause(exc)

    def _check_open(self) -> None:
        if self._closed:
            raise RequestCancelled(f"{describe(self._request)}: the response was closed")

    @abc.abstractmethod
    def _header_items(self) -> Iterable[tuple[str, str]]: ...

    @abc.abstractmethod
    async def _read_all(self) -> bytes: ...

    @abc.abstractmethod
    async def _read_chunk(self) -> bytes: ...

    @abc.abstractmethod
    async def _release(self) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self._request!r})"


class _Chunks:
    """``iter_bytes()``: a plain async iterator, so breaking out of a loop leaves no
    half-finished async generator behind for the event loop to finalize."""

    __slots__ = ("_response",)

    def __init__(self, response: TransportResponse) -> None:
        self._response = response

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        return await self._response.next_chunk()
