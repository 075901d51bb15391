"""What one client connection may cost the HTTP server: time, head size, and how many.

uvicorn's httptools protocol, left to itself, reads a connection for as long as the client
likes: it gives a request's head and body no time limit (a client that sends a header
line every few seconds holds its connection, and a file handle, for ever), keeps a header
however long it is (httptools grows it by concatenation: the cost grows with the square of
the header), and takes every connection the kernel hands it. :class:`ConnectionGuard`
bounds each, with the ``[cluster]`` settings of the config
(:class:`~rakka_inference.core.deployment.ClusterConfig`):

- **time**: a request's head must arrive whole within ``header_timeout_ms`` of its first
  byte (of the connection's opening, for the first request), its body within
  ``body_timeout_ms`` of the head's end. Past it the client is answered 408 — when nothing
  else is being answered on the connection — and the connection is closed. Waiting for
  the next request of a kept-alive connection is uvicorn's ``timeout_keep_alive``, as
  before. Time during which the server has stopped reading a body (the application has
  not taken what came) is not the client's, and does not count.
- **size**: a :class:`~rakka_inference.wire.request_head.HeadMeter` measures each head
  before the parser sees it. A request line longer than ``max_request_line_bytes`` is
  answered 414 (URI Too Long: the request-target is what makes a request line long), a
  header line longer than ``max_header_bytes`` or a head longer than ``max_head_bytes``
  431 (Request Header Fields Too Large), each an OpenAI-style JSON error, having let at
  most the limit plus the read that passed it (uvloop reads at most 256 KiB at a time)
  reach the parser.
- **count**: at most ``max_connections`` client connections at once — fewer when the
  process's open-file limit cannot hold that many (:func:`connections_within`; the soft
  limit is raised towards the hard one first) — and ``max_connections_per_client`` from
  one address (an IPv6 client by its /64: one host's share of addresses). Past them a new
  connection is closed as it is accepted, before anything is read: answering it (a 503)
  would mean reading a request first, and holding the file handle the cap is there to
  save, for up to the head's timeout, which is what a flood of connections wants; and
  an answer written before the request was read is often lost to the reset that closing
  an unread socket sends. The official SDKs retry a dropped connection with back-off, as
  they retry a 503. Connections on a Unix socket (a node's control sockets, owner-only)
  are not capped.

After a 408, 414 or 431 the connection is closed for writing, and what the client still
sends is read and dropped for up to :data:`LINGER_S`: a client still sending an
oversized head then reads the answer, rather than a reset.

Every connection shed is counted by reason (:data:`SHED_REASONS`) in
``inference_connections_shed_total`` and logged, at most once per reason every
:data:`LOG_EVERY_S` seconds with how many more were shed since: the client's address and
the limit, never anything the client sent.

How: :meth:`ConnectionGuard.protocol` is a subclass of uvicorn's ``HttpToolsProtocol``
that uvicorn is given as its ``http`` class. It follows where each request of the
connection is through the connection's callbacks (``connection_made``,
``data_received``, ``connection_lost``) and the parser's (``on_headers_complete``,
``on_message_complete``). On the fast path, a request whose head and body come in one
read, that costs one ``bytes.find`` and a few attribute writes: a timer is armed only for a
head or a body that does not arrive whole in the read that began it (and one per
connection, for its first head).

A pipelined request whose head begins in the read that ended the request before it is
measured from the next read on: at most one read of it escapes the size limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.core.errors import HeadTooLarge, InferenceError, RequestTimedOut, UriTooLong
from rakka_inference.wire.request_head import HeadLimit, HeadMeter

__all__ = [
    "LINGER_S",
    "LOG_EVERY_S",
    "SHED_REASONS",
    "ConnectionGuard",
    "ConnectionLimits",
    "client_key",
    "connections_within",
]

log = logging.getLogger("rakka_inference.connections")

HEAD_TIMEOUT: Final = "head_timeout"
BODY_TIMEOUT: Final = "body_timeout"
CLIENT_LIMIT: Final = "client_limit"
TOTAL_LIMIT: Final = "total_limit"
SHED_REASONS: Final = (
    HEAD_TIMEOUT,
    BODY_TIMEOUT,
    CLIENT_LIMIT,
    TOTAL_LIMIT,
    *(limit.value for limit in HeadLimit),
)
"""The ``reason`` label of ``inference_connections_shed_total``: every value it takes."""

LINGER_S: Final = 2.0
"""How long a connection answered 408, 414 or 431 goes on being read (and dropped)."""
LOG_EVERY_S: Final = 10.0
"""The least time between two log lines for one reason."""
FILE_RESERVE: Final = 128
"""Open files kept apart from client connections: the process's own, engines' pipes."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits of :mod:`this module <rakka_inference.runtime.connection_guard>`, in the
    units the server uses."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    """Already lowered to what the open-file limit holds."""
    max_connections_per_client: int
    max_request_line_bytes: int
    max_header_bytes: int
    max_head_bytes: int

    @classmethod
    def of(cls, cluster: ClusterConfig, *, max_connections: int) -> ConnectionLimits:
        return cls(
            header_timeout_s=cluster.header_timeout_ms / 1000,
            body_timeout_s=cluster.body_timeout_ms / 1000,
            max_connections=max_connections,
            max_connections_per_client=cluster.max_connections_per_client,
            max_request_line_bytes=cluster.max_request_line_bytes,
            max_header_bytes=cluster.max_header_bytes,
            max_head_bytes=cluster.max_head_bytes,
        )

    def meter(self) -> HeadMeter:
        return HeadMeter(
            max_request_line=self.max_request_line_bytes,
            max_header=self.max_header_bytes,
            max_head=self.max_head_bytes,
        )

    def describe(self, reason: str) -> str:
        """Why a connection was shed, for the log (never what the client sent)."""
        return {
            HEAD_TIMEOUT: f"its request head did not arrive within {self.header_timeout_s:g} s",
            BODY_TIMEOUT: f"its request body did not arrive within {self.body_timeout_s:g} s",
            CLIENT_LIMIT: f"{self.max_connections_per_client} connections from that address "
            "are open (max_connections_per_client)",
            TOTAL_LIMIT: f"{self.max_connections} connections are open (max_connections)",
            HeadLimit.REQUEST_LINE.value: "its request line is longer than "
            f"{self.max_request_line_bytes} bytes (max_request_line_bytes)",
            HeadLimit.HEADER.value: "a header line is longer than "
            f"{self.max_header_bytes} bytes (max_header_bytes)",
            HeadLimit.HEAD.value: "its request head is longer than "
            f"{self.max_head_bytes} bytes (max_head_bytes)",
        }[reason]

    def error(self, limit: HeadLimit) -> InferenceError:
        """The answer to a head that passed ``limit``."""
        if limit is HeadLimit.REQUEST_LINE:
            return UriTooLong(
                f"the request line is longer than {self.max_request_line_bytes} bytes"
            )
        if limit is HeadLimit.HEADER:
            return HeadTooLarge(f"a request header is longer than {self.max_header_bytes} bytes")
        return HeadTooLarge(f"the request headers are longer than {self.max_head_bytes} bytes")


def connections_within(max_connections: int, file_limit: int) -> int:
    """The client connections a process whose open-file limit is ``file_limit`` (negative:
    none) can hold: each may hold a connection upstream too, and :data:`FILE_RESERVE`
    files are the process's own."""
    if file_limit < 0:
        return max_connections
    return max(1, min(max_connections, (file_limit - FILE_RESERVE) // 2))


def _file_limited(max_connections: int) -> int:
    """:func:`connections_within` this process's open-file limit, having raised its soft
    limit towards what ``max_connections`` need (never past the hard limit)."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + FILE_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return connections_within(max_connections, -1 if soft == resource.RLIM_INFINITY else soft)


def client_key(peer: Any) -> str | None:
    """Whose connection it is, from the transport's ``peername``: an IPv4 address, an IPv6
    client's /64 (an IPv4-mapped one as IPv4), ``None`` for a Unix socket."""
    if not isinstance(peer, tuple) or not peer:
        return None
    host = str(peer[0])
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ConnectionGuard:
    """The limits of one server's connections, and their counts (see the module).

    Used from the server's event loop only. ``cluster`` gives the settings: a config's
    ``[cluster]``, or where to read the current one (:meth:`follow`).
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        file_limited: Callable[[int], int] = _file_limited,
    ) -> None:
        self._source: Callable[[], ClusterConfig] = lambda: cluster
        self._cluster = cluster
        self._file_limited = file_limited
        self.limits = self._limits_of(cluster)
        self.open = 0
        """Client connections open now (Unix sockets not counted)."""
        self._per_client: dict[str, int] = {}
        self.shed_counts: dict[str, int] = dict.fromkeys(SHED_REASONS, 0)
        self.on_shed: Callable[[str], None] | None = None
        """Told each reason a connection was shed for (the metrics)."""
        self._clock = clock
        self._next_log: dict[str, float] = {}
        self._held: dict[str, int] = {}

    @property
    def open_connections(self) -> int:
        return self.open

    @property
    def shed_reasons(self) -> tuple[str, ...]:
        return SHED_REASONS

    def follow(self, source: Callable[[], ClusterConfig]) -> None:
        """Take the settings from ``source()`` from now on (the running config's, which a
        reload replaces): a connection gets those current when it is accepted."""
        self._source = source

    def _current(self) -> ConnectionLimits:
        cluster = self._source()
        if cluster is not self._cluster:
            self._cluster = cluster
            self.limits = self._limits_of(cluster, self.limits)
        return self.limits

    def _limits_of(
        self, cluster: ClusterConfig, before: ConnectionLimits | None = None
    ) -> ConnectionLimits:
        wanted = cluster.max_connections
        held = self._file_limited(wanted)
        if held < wanted and (before is None or before.max_connections != held):
            log.warning(
                "the open-file limit holds %d client connections, not max_connections = %d: "
                "raise it (ulimit -n, systemd's LimitNOFILE)",
                held,
                wanted,
            )
        return ConnectionLimits.of(cluster, max_connections=held)

    def admit(self, client: str | None) -> ConnectionLimits | None:
        """Count a connection from ``client`` in: its limits, or ``None`` (and it is shed)
        when a cap is reached."""
        limits = self._current()
        if client is None:
            return limits
        if self.open >= limits.max_connections:
            self.shed(TOTAL_LIMIT, client, limits)
            return None
        count = self._per_client.get(client, 0)
        if count >= limits.max_connections_per_client:
            self.shed(CLIENT_LIMIT, client, limits)
            return None
        self._per_client[client] = count + 1
        self.open += 1
        return limits

    def release(self, client: str | None) -> None:
        """Count a connection admitted from ``client`` out."""
        if client is None:
            return
        self.open -= 1
        count = self._per_client.pop(client) - 1
        if count:
            self._per_client[client] = count

    def shed(self, reason: str, client: str | None, limits: ConnectionLimits) -> None:
        """Count a connection shed, and log it unless one was logged for ``reason`` within
        :data:`LOG_EVERY_S` (the next line says how many were held back)."""
        self.shed_counts[reason] += 1
        if self.on_shed is not None:
            self.on_shed(reason)
        now = self._clock()
        if now < self._next_log.get(reason, -1.0):
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._next_log[reason] = now + LOG_EVERY_S
        held = self._held.pop(reason, 0)
        since = f" ({held} more since the last line for this)" if held else ""
        who = "a local socket" if client is None else client
        log.warning("closed a connection from %s: %s%s", who, limits.describe(reason), since)

    def protocol(self) -> type[asyncio.Protocol]:
        """uvicorn's httptools protocol under this guard: give it as ``http=``."""
        guard = self

        class Guarded(_GuardedProtocol):
            _guard = guard

        return Guarded


# uvicorn's own, called without super()'s lookup: they run for every request.
_parse = HttpToolsProtocol.data_received
_headers_complete = HttpToolsProtocol.on_headers_complete
_message_complete = HttpToolsProtocol.on_message_complete


class _GuardedProtocol(HttpToolsProtocol):
    """uvicorn's protocol, following where each request of the connection is."""

    _guard: ConnectionGuard

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits: ConnectionLimits | None = None
        """Set once admitted: the limits it was accepted under."""
        self._client: str | None = None
        self._meter: HeadMeter = None  # type: ignore[assignment]  # set once admitted
        self._short = 0
        """A read no longer than this that begins a head passes no limit, whatever it holds."""
        self._head_s = self._body_s = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True
        """Reading a head, or waiting for one."""
        self._in_body = False
        self._heads = 0
        """Heads the parser has read whole."""
        self._dropping = False
        """Answered and closing: what still comes is dropped."""

    # ---------------------------------------------------------------- the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        client = client_key(transport.get_extra_info("peername"))
        limits = self._guard.admit(client)
        if limits is None:
            transport.abort()
            return
        self._limits, self._client, self._meter = limits, client, limits.meter()
        self._short = min(
            limits.max_request_line_bytes, limits.max_header_bytes, limits.max_head_bytes
        )
        self._head_s, self._body_s = limits.header_timeout_s, limits.body_timeout_s
        super().connection_made(transport)
        self._timer = self.loop.call_later(limits.header_timeout_s, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._limits is None:
            return  # never admitted
        self._limits = None
        self._guard.release(self._client)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            return
        if not self._in_head:
            _parse(self, data)
        elif self._meter.total or len(data) > self._short:
            passed = self._meter.feed(data)
            if passed is not None:
                self._refuse(passed)
                return
            _parse(self, data)
        else:
            # The usual: a head begins in a short read (and ends in it, with the body). The
            # parser cannot keep more than the read, so it is measured only if the head
            # goes on past it: all of it is the head begun, and the next reads are measured
            # before the parser has them.
            heads = self._heads
            _parse(self, data)
            if self._heads == heads:
                self._meter.feed(data)
        if self._timer is None:
            if self._in_body:
                self._arm(self._body_s, self._body_late)
            elif self._in_head and self._meter.total:
                self._arm(self._head_s, self._head_late)

    # ---------------------------------------------------------------- the parser's

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body = False, True
        self._heads += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        _headers_complete(self)

    def on_message_complete(self) -> None:
        _message_complete(self)
        self._in_head, self._in_body = True, False
        if self._meter.total:
            self._meter.reset()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- shedding

    def _arm(self, delay: float, late: Callable[[], None]) -> None:
        if not self.transport.is_closing():
            self._timer = self.loop.call_later(delay, late)

    def _answering(self) -> bool:
        """Whether a response is under way on the connection (a pipelined request)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_late(self) -> None:
        self._timer = None
        limits = self._limits
        if limits is None or self.transport.is_closing():  # closed before it fired
            return
        self._guard.shed(HEAD_TIMEOUT, self._client, limits)
        if not self._meter.total or self._answering():
            self.transport.close()  # nothing sent: nothing to answer
            return
        error = RequestTimedOut(
            f"the request head did not arrive within {limits.header_timeout_s:g} s"
        )
        self._answer_and_close(error)

    def _body_late(self) -> None:
        self._timer = None
        limits = self._limits
        if limits is None or self.transport.is_closing():  # closed before it fired
            return
        if self.flow.read_paused:  # the application has not taken what came yet
            self._arm(self._body_s, self._body_late)
            return
        self._guard.shed(BODY_TIMEOUT, self._client, limits)
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()
            return
        # The application reading the body is told the client went away, and its answer
        # goes nowhere: this one is the connection's last.
        cycle.disconnected = True
        cycle.message_event.set()
        error = RequestTimedOut(
            f"the request body did not arrive within {limits.body_timeout_s:g} s"
        )
        self._answer_and_close(error)

    def _refuse(self, passed: HeadLimit) -> None:
        limits = self._limits
        assert limits is not None
        self._in_head = False
        self._guard.shed(passed.value, self._client, limits)
        if self._answering():
            self.transport.close()
            return
        self._answer_and_close(limits.error(passed))

    def _answer_and_close(self, error: InferenceError) -> None:
        """Answer ``error`` as the connection's last response; read and drop what the
        client still sends for :data:`LINGER_S`, then close."""
        self._unset_keepalive_if_required()
        if self._timer is not None:
            self._timer.cancel()
        body = orjson.dumps(error.to_openai_error())
        transport = self.transport
        transport.write(
            b"".join(
                (
                    STATUS_LINE[error.http_status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                )
            )
        )
        self._dropping = True
        self.flow.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(LINGER_S, transport.abort)
