"""What one client connection may cost the HTTP server: time, head size, and how many.

uvicorn's httptools protocol, left to itself, reads a connection for as long as the client
likes: it gives a request's head and body no time limit (a client that sends a header
line every few seconds holds its connection, and a file handle, for ever), keeps a header
however long it is (httptools grows it by concatenation: the cost grows with the square of
the header), and takes every connection the kernel hands it. :func:`guarded_protocol`
bounds each, with the ``[cluster]`` settings of the config
(:class:`~rakka_inference.core.deployment.ClusterConfig`) that a
:class:`~rakka_inference.runtime.connection_limits.ConnectionGuard` holds and counts:

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
  process's open-file limit cannot hold that many (the soft limit is raised towards the
  hard one first) — and ``max_connections_per_client`` from one address (an IPv6 client
  by its /64: one host's share of addresses). Past them a new connection is closed as
  it is accepted, before anything is read: answering it (a 503) would mean reading a
  request first, and holding the file handle the cap is there to save for up to the
  head's timeout, which is what a flood of connections wants; and an answer written
  before the request was read is often lost to the reset that closing an unread socket
  sends. The official SDKs retry a dropped connection with back-off, as they retry a
  503. Connections on a Unix socket (a node's control sockets, owner-only) are not
  capped.

After a 408, 414 or 431 the connection is closed for writing, and what the client still
sends is read and dropped for up to :data:`LINGER_S`: a client still sending an
oversized head then reads the answer, rather than a reset.

Every connection shed is counted by reason in ``inference_connections_shed_total`` and
logged, at most once per reason every 10 s with how many more were shed since: the
client's address and the limit, never anything the client sent.

How: :func:`guarded_protocol` makes a subclass of uvicorn's ``HttpToolsProtocol``, given
to uvicorn as its ``http`` class. It follows where each request of the connection is
through the connection's callbacks (``connection_made``, ``data_received``,
``connection_lost``) and the parser's (``on_headers_complete``, ``on_message_complete``).
The usual request, its head in one read no longer than the smallest head limit (its body
with it or not), costs a length comparison and a few attribute writes: the meter reads a
head only when it goes on past that read, or begins in a longer one; a timer is armed only
for a head or a body that does not arrive whole in the read that began it (and one per
connection, for its first head).

The gateway serves no WebSocket, so the protocol upgrades no connection: a request that
asks for one is answered as any other (upgraded, the connection would leave the guard).

A pipelined request whose head begins in the read that ended the request before it is
measured from the next read on: at most one read of it escapes the size limits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from rakka_inference.core.errors import InferenceError, RequestTimedOut
from rakka_inference.runtime.connection_limits import (
    BODY_TIMEOUT,
    HEAD_TIMEOUT,
    ConnectionGuard,
    ConnectionLimits,
    client_key,
)
from rakka_inference.wire.request_head import HeadLimit, HeadMeter

__all__ = ["LINGER_S", "guarded_protocol"]

LINGER_S: Final = 2.0
"""How long a connection answered 408, 414 or 431 goes on being read (and dropped)."""


def guarded_protocol(guard: ConnectionGuard) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol under ``guard``: give it to uvicorn as ``http=``."""

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

    def _should_upgrade_to_ws(self) -> bool:
        # The gateway serves no WebSocket: an upgrade request is answered as an ordinary
        # request, on a connection that stays under the guard (upgraded, it would leave
        # this protocol, its count, and its limits behind).
        return False

    def _unsupported_upgrade_warning(self) -> None:
        pass  # uvicorn would log two lines for every such request: a flood at will

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
