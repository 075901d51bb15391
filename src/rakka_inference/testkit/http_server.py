"""A real HTTP/1.1 server on loopback whose every answer — faults included — is scripted.

Written on bare asyncio streams, so that what goes on the wire is exactly what a test asked
for: the head after ``first_byte_delay``, each body chunk after its own delay, and then, if
scripted, silence (``stall_after_chunks``), a TCP reset (``reset_after_chunks``) or a plain
close (``close_after_chunks``) in the middle of the body.

Scripting::

    async with ScriptedHttpServer() as server:
        server.script("POST", "/v1/chat/completions",
                      ScriptedResponse.json({"ok": True}),                     # 1st call
                      ScriptedResponse.stream([b"data: 1\\n\\n", b"data: 2\\n\\n"],
                                              chunk_delay=0.02,
                                              stall_after_chunks=1))           # 2nd call
        server.default = lambda request: ScriptedResponse.json(               # then this
            {"key": request.headers.get("authorization")})
        ... call server.url + "/v1/chat/completions" ...
        assert server.requests[0].json() == {...}
        await server.wait_client_aborts(1)     # the client closed while we streamed

Each route (method and path; the query is ignored) has a FIFO of answers, a
:class:`ScriptedResponse` or a *responder*: a callable given the
:class:`RecordedRequest` that returns (or awaits) a :class:`ScriptedResponse`, so a test can
answer by header, say per API key. When a route's FIFO is empty, :attr:`default` answers;
with no default, the answer is a 404 naming the route. A responder that raises is answered
with a 500 and the exception kept in :attr:`errors`.

The answers and the records are the values of :mod:`rakka_inference.testkit.http_script`,
which also sets out how a response is framed. Connections are kept alive between requests
unless the request or the script says ``close``.

Observations: :attr:`requests` (every request, in order; with ``records`` set, the most
recent ``records`` at least, so a long-running mock's memory stays flat),
:attr:`connections_opened` and
:attr:`connections_closed`, and :attr:`client_aborts`: each response the client abandoned
before it was complete (closed or reset the connection during the first-byte delay, a
chunk delay, or a stall), which :meth:`wait_client_aborts` awaits. That is how a test
proves that closing a response upstream really ends the request on the provider's side.

Delays are real (``asyncio.sleep`` semantics); keep them in the tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import socket
import struct
from collections import deque
from typing import Any

from rakka_inference.testkit.http_script import (
    ClientAbort,
    RecordedRequest,
    Responder,
    ScriptedResponse,
)
from rakka_inference.testkit.lifecycle import AsyncService

__all__ = ["ScriptedHttpServer"]


class _BadRequest(Exception):
    """The client sent something this server does not parse; the connection is dropped."""


class _ClientGone(Exception):
    """The client closed or reset the connection while a response was in flight."""


class _Reader(asyncio.StreamReader):
    """A stream reader that also tells when the client closed or reset the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def feed_eof(self) -> None:
        super().feed_eof()
        if not self.gone.done():
            self.gone.set_result(None)

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if not self.gone.done():
            self.gone.set_result(None)


_NO_BODY_STATUSES = frozenset({204, 304})
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class ScriptedHttpServer(AsyncService):
    """A scripted HTTP/1.1 server on ``host`` (loopback) and ``port`` (0: any free one)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: ScriptedResponse | Responder | None = None,
        backlog: int = 1024,
        records: int | None = None,
    ) -> None:
        self.host = host
        # Load tests open hundreds of connections at once; asyncio's default backlog (100)
        # would drop the rest's SYNs and turn them into one-second connect stalls.
        self.backlog = backlog
        self.port = port
        self.default = default
        if records is not None and records < 1:
            raise ValueError(f"records must be at least 1, got {records}")
        self.records = records
        """How many recent requests, aborts and errors are kept at least; None: all."""
        self.requests: list[RecordedRequest] = []
        self.client_aborts: list[ClientAbort] = []
        self.errors: list[BaseException] = []
        self.connections_opened = 0
        self.connections_closed = 0
        self._routes: dict[tuple[str, str], deque[ScriptedResponse | Responder]] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on ``host``:``port``; :attr:`port` then holds the one bound."""
        if self._server is not None:
            raise RuntimeError("the server is already started")
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._server = await loop.create_server(
            lambda: asyncio.StreamReaderProtocol(_Reader(), self._serve),
            self.host,
            self.port,
            backlog=self.backlog,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, end every connection (stalled ones included) and wait for them."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping = True
        server.close()
        for _ in range(3):  # let connections accepted just now reach _serve
            await asyncio.sleep(0)
        while self._handlers:
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the server stopped"))

    @property
    def url(self) -> str:
        """``http://host:port``, with no trailing slash."""
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ scripting

    def script(self, method: str, path: str, *answers: ScriptedResponse | Responder) -> None:
        """Queue ``answers`` for ``method path``, to be used one per request, in order."""
        self._routes.setdefault((method.upper(), path), deque()).extend(answers)

    def pending(self, method: str, path: str) -> int:
        """How many scripted answers for ``method path`` are not used yet."""
        return len(self._routes.get((method.upper(), path), ()))

    async def wait_client_aborts(self, count: int = 1) -> list[ClientAbort]:
        """Wait until the client has abandoned at least ``count`` responses mid-flight.

        Raises :class:`RuntimeError` if the server stops first.
        """
        loop = asyncio.get_running_loop()
        while len(self.client_aborts) < count:
            if self._server is None:
                raise RuntimeError("the server is not running")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                self._waiters.remove(waiter)
        return list(self.client_aborts)

    def _trim(self, kept: list[Any]) -> None:
        """Forget the oldest of ``kept`` once it holds twice :attr:`records` (so trimming
        costs O(1) per record, amortized)."""
        if self.records is not None and len(kept) > 2 * self.records:
            del kept[: -self.records]

    def _record_abort(self, request: RecordedRequest, chunks_sent: int) -> None:
        self.client_aborts.append(ClientAbort(request, chunks_sent))
        self._trim(self.client_aborts)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(reader, _Reader)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_opened += 1
        connection = self.connections_opened
        try:
            while not self._stopping:
                request = await self._read_request(reader, connection)
                if request is None:
                    break
                self.requests.append(request)
                self._trim(self.requests)
                answer = await self._answer(request)
                if not await self._write(request, answer, reader, writer):
                    break
        except (_BadRequest, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the client broke the connection, or sent what we do not parse
        except asyncio.CancelledError:
            # Only stop() cancels a handler. Ending normally keeps asyncio's stream callback
            # (which on some 3.11 releases asks a cancelled task for its exception) quiet.
            if not self._stopping:  # pragma: no cover - someone else cancelled us
                raise
        finally:
            self.connections_closed += 1
            self._handlers.discard(task)
            if self._stopping:
                writer.transport.abort()
            else:
                writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
            except asyncio.CancelledError:
                writer.transport.abort()  # stopping: do not wait for a client that never reads

    async def _read_request(self, reader: _Reader, connection: int) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None  # closed between requests: the normal end of keep-alive
            raise
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, _version = lines[0].split(" ")
        except ValueError:
            raise _BadRequest(lines[0]) from None
        raw_headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise _BadRequest(line)
            raw_headers.append((name.strip(), value.strip()))
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _read_chunked(reader)
        else:
            length = headers.get("content-length", "0")
            if not length.isdigit():
                raise _BadRequest(length)
            body = await reader.readexactly(int(length))
        path, _, query = target.partition("?")
        return RecordedRequest(
            method=method.upper(),
            path=path,
            query=query,
            headers=headers,
            body=body,
            connection=connection,
            raw_headers=tuple(raw_headers),
        )

    async def _answer(self, request: RecordedRequest) -> ScriptedResponse:
        queue = self._routes.get((request.method, request.path))
        answer = queue.popleft() if queue else self.default
        if answer is None:
            return ScriptedResponse.json(
                {"error": f"nothing scripted for {request.method} {request.path}"}, status=404
            )
        if isinstance(answer, ScriptedResponse):
            return answer
        try:
            result = answer(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # a broken responder is the test's to see
            self.errors.append(exc)
            self._trim(self.errors)
            return ScriptedResponse.json({"error": f"responder raised {exc!r}"}, status=500)
        return result

    async def _write(
        self,
        request: RecordedRequest,
        answer: ScriptedResponse,
        reader: _Reader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Write ``answer``; whether the connection stays open for the next request."""
        sent = 0
        try:
            await _pause(reader.gone, answer.first_byte_delay)
            asked_close = request.headers.get("connection", "").lower() == "close"
            keep_alive = answer.keep_alive and not asked_close
            has_body = request.method != "HEAD" and answer.status not in _NO_BODY_STATUSES
            writer.write(_head(answer, keep_alive=keep_alive, has_body=has_body))
            await writer.drain()
            limit = answer.fault_after
            for chunk in answer.chunks[:limit] if has_body else ():
                await _pause(reader.gone, chunk.delay)
                if chunk.data:
                    if answer.chunked:
                        writer.write(b"%x\r\n%s\r\n" % (len(chunk.data), chunk.data))
                    else:
                        writer.write(chunk.data)
                await writer.drain()
                sent += 1
            if answer.stall_after_chunks is not None:
                await asyncio.wait((reader.gone,))
                raise _ClientGone
            if answer.reset_after_chunks is not None:
                _reset(writer)
                return False
            if answer.close_after_chunks is not None:
                return False
            if answer.chunked and has_body:
                writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (_ClientGone, ConnectionError):
            self._record_abort(request, sent)
            return False
        return keep_alive


async def _pause(gone: asyncio.Future[None], delay: float) -> None:
    """Sleep ``delay`` seconds, cut short (with :class:`_ClientGone`) if the client leaves."""
    if delay > 0:
        await asyncio.wait((gone,), timeout=delay)
    if gone.done():
        raise _ClientGone


def _head(answer: ScriptedResponse, *, keep_alive: bool, has_body: bool) -> bytes:
    try:
        reason = answer.reason or http.HTTPStatus(answer.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {answer.status} {reason}"]
    names = set()
    for name, value in answer.header_pairs:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if has_body and not names & {"content-length", "transfer-encoding"}:
        if answer.chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(f"Content-Length: {sum(len(c.data) for c in answer.chunks)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


async def _read_chunked(reader: _Reader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequest(size_line) from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailer fields: not recorded
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise _BadRequest(b"chunk not followed by CRLF")
