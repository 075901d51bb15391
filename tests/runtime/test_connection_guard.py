"""The guarded protocol at its edges, through an in-memory transport on the test's loop: a
response under way when a pipelined request misbehaves, reading paused by the
application, a transport closed before a timer fires. The usual paths run on real sockets
against ``rakka serve`` (``tests/apps/test_serve_connections.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.runtime.connection_guard import guarded_protocol
from rakka_inference.runtime.connection_limits import ConnectionGuard
from rakka_inference.testkit.clock import FakeClock


class Transport(asyncio.Transport):
    def __init__(self, *, eof: bool = True) -> None:
        super().__init__()
        self.written = b""
        self.closing = self.aborted = self.reading_paused = False
        self._eof = eof

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("10.0.0.9", 40000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return self._eof

    def write_eof(self) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False


class App:
    """Answers 200 once ``release`` is set; reads the whole body first when ``read``."""

    def __init__(self, *, read: bool = True) -> None:
        self.release = asyncio.Event()
        self.read = read
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.release.wait()
        while self.read:
            self.received.append(await receive())
            self.read = self.received[-1].get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


QUICK = ClusterConfig(header_timeout_ms=50, body_timeout_ms=50, max_header_bytes=1024)


def connection(app: App, transport: Transport) -> tuple[Any, ConnectionGuard]:
    g = ConnectionGuard(QUICK, clock=FakeClock(), file_limited=lambda wanted: wanted)
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol_class: Any = guarded_protocol(g)
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(transport)
    return protocol, g


async def finish(protocol: Any, app: App) -> None:
    app.release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    protocol.connection_lost(None)


async def test_a_pipelined_head_too_long_closes_without_a_second_answer() -> None:
    transport, app = Transport(), App(read=False)
    protocol, g = connection(app, transport)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.data_received(b"GET /b HTTP/1.1\r\nX-Long: " + b"a" * 2000)
    assert transport.closing
    assert transport.written == b""  # the first is still under way
    assert g.shed_counts["header_too_long"] == 1
    await finish(protocol, app)


async def test_a_pipelined_head_that_stalls_closes_without_a_second_answer() -> None:
    transport, app = Transport(), App(read=False)
    protocol, g = connection(app, transport)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    protocol.data_received(b"GET /b HTTP/1.1\r\n")  # and no more
    await asyncio.sleep(0.15)
    assert transport.closing
    assert transport.written == b""
    assert g.shed_counts["head_timeout"] == 1
    await finish(protocol, app)


async def test_a_body_waits_while_the_application_has_not_taken_what_came() -> None:
    transport, app = Transport(eof=False), App()
    protocol, g = connection(app, transport)
    head = b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 200000\r\n\r\n"
    protocol.data_received(head + b"a" * 70_000)  # past uvicorn's buffer: reading paused
    assert transport.reading_paused
    await asyncio.sleep(0.15)  # the body's time passed, twice: paused, it waits
    assert not transport.closing
    app.release.set()  # now the application reads, and the rest does not come
    await asyncio.sleep(0.15)
    assert g.shed_counts["body_timeout"] == 1
    assert transport.written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert app.received[0]["more_body"] is True
    assert app.received[-1] == {"type": "http.disconnect"}  # and its answer goes nowhere
    assert transport.written.count(b"HTTP/1.1") == 1
    await finish(protocol, app)


async def test_a_body_not_waited_for_still_has_to_arrive_in_time() -> None:
    transport, app = Transport(), App(read=False)
    app.release.set()
    protocol, g = connection(app, transport)
    protocol.data_received(b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\nab")
    for _ in range(20):
        await asyncio.sleep(0)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")  # answered, body unread
    await asyncio.sleep(0.15)
    assert transport.closing
    assert b"408" not in transport.written  # one answer only
    assert g.shed_counts["body_timeout"] == 1
    await finish(protocol, app)


async def test_no_timer_is_armed_for_a_closing_connection() -> None:
    transport, app = Transport(), App(read=False)
    app.release.set()
    protocol, _ = connection(app, transport)
    protocol.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert protocol._timer is None  # the first head came whole: its timer is gone
    transport.close()
    protocol.data_received(b"GET /b HTTP/1.1\r\n")
    assert protocol._timer is None
    await finish(protocol, app)


async def test_timers_of_a_closed_connection_do_nothing() -> None:
    transport, app = Transport(), App()
    protocol, g = connection(app, transport)
    transport.close()  # closing; the loop has not told the protocol yet
    protocol.data_received(b"GET /a HTTP/1.1\r\n")  # no timer is armed for it
    assert protocol._timer is not None  # the connection's first: armed when it opened
    await asyncio.sleep(0.15)
    assert g.shed_counts["head_timeout"] == 0
    protocol._body_late()
    assert g.shed_counts["body_timeout"] == 0
    await finish(protocol, app)
