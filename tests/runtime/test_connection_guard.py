"""The connection guard's counts, caps, clients, log and limits, on a fake clock. What it
does to real connections is tested on real sockets against ``rakka serve``
(``tests/apps/test_serve_connections.py``)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import orjson
import pytest
import uvicorn
from uvicorn.server import ServerState

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.runtime.connection_guard import (
    FILE_RESERVE,
    SHED_REASONS,
    ConnectionGuard,
    ConnectionLimits,
    client_key,
    connections_within,
)
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.wire.request_head import HeadLimit

CLUSTER = ClusterConfig(max_connections=4, max_connections_per_client=2)


def guard(cluster: ClusterConfig = CLUSTER, clock: FakeClock | None = None) -> ConnectionGuard:
    return ConnectionGuard(cluster, clock=clock or FakeClock(), file_limited=lambda wanted: wanted)


def test_the_per_client_cap_then_the_total_cap() -> None:
    g = guard()
    assert g.admit("10.0.0.1") is not None
    assert g.admit("10.0.0.1") is not None
    assert g.admit("10.0.0.1") is None
    assert g.admit("10.0.0.2") is not None
    assert g.admit("10.0.0.3") is not None
    assert g.open == 4
    assert g.admit("10.0.0.4") is None
    assert g.shed_counts["client_limit"] == 1
    assert g.shed_counts["total_limit"] == 1
    g.release("10.0.0.1")
    assert g.admit("10.0.0.4") is not None
    g.release("10.0.0.2")
    assert g.open == 3
    assert g.admit("10.0.0.1") is not None  # one of its two was released


def test_local_sockets_are_not_capped_nor_counted() -> None:
    g = guard(ClusterConfig(max_connections=1))
    assert g.admit("10.0.0.1") is not None
    assert g.admit(None) is not None
    g.release(None)
    assert g.open == 1


def test_clients_are_addresses_and_ipv6_clients_their_64() -> None:
    assert client_key(("192.0.2.7", 5000)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::9", 5001, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert client_key(("fe80::1%eth0", 5000, 0, 2)) == "fe80::/64"
    assert client_key("") is None  # a Unix socket's peer
    assert client_key(None) is None


def test_the_file_limit_bounds_the_total() -> None:
    assert connections_within(4096, -1) == 4096  # no limit
    assert connections_within(4096, 20_000) == 4096
    assert connections_within(4096, 1024) == (1024 - FILE_RESERVE) // 2
    assert connections_within(10, 0) == 1


def test_a_lower_file_limit_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rakka_inference.connections")
    g = ConnectionGuard(ClusterConfig(max_connections=1000), file_limited=lambda wanted: 100)
    assert g.limits.max_connections == 100
    g.follow(lambda: ClusterConfig(max_connections=1000))
    assert g.admit("10.0.0.1") is not None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "the open-file limit holds 100 client connections, not max_connections = 1000: "
        "raise it (ulimit -n, systemd's LimitNOFILE)"
    ]


def test_a_connection_gets_the_limits_current_when_it_is_accepted() -> None:
    g = guard()
    current = [CLUSTER]
    g.follow(lambda: current[0])
    first = g.admit("10.0.0.1")
    assert first is not None
    assert first.max_head_bytes == 65_536
    current[0] = dataclasses.replace(CLUSTER, max_head_bytes=4096, header_timeout_ms=500)
    second = g.admit("10.0.0.2")
    assert second is not None
    assert (second.max_head_bytes, second.header_timeout_s) == (4096, 0.5)
    assert first.max_head_bytes == 65_536  # the first keeps what it was accepted with


def test_sheds_are_logged_once_per_reason_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "rakka_inference.connections")
    clock = FakeClock()
    g = guard(clock=clock)
    limits = g.limits
    for _ in range(5):
        g.shed("head_timeout", "10.0.0.1", limits)
    g.shed("header_too_long", "10.0.0.2", limits)
    clock.advance(9.9)
    g.shed("head_timeout", "10.0.0.3", limits)
    clock.advance(0.2)
    g.shed("head_timeout", "10.0.0.4", limits)
    assert [r.getMessage() for r in caplog.records] == [
        "closed a connection from 10.0.0.1: its request head did not arrive within 10 s",
        "closed a connection from 10.0.0.2: a header line is longer than 8192 bytes "
        "(max_header_bytes)",
        "closed a connection from 10.0.0.4: its request head did not arrive within 10 s "
        "(5 more since the last line for this)",
    ]
    assert g.shed_counts["head_timeout"] == 7


def test_every_reason_is_described_and_counted_into_the_metrics() -> None:
    g = guard()
    metrics = InferenceMetrics()
    metrics.watch_connections(g)
    g.on_shed = metrics.connection_shed
    assert g.admit("10.0.0.1") is not None
    text = metrics.render().decode()
    for reason in SHED_REASONS:
        assert f'inference_connections_shed_total{{reason="{reason}"}} 0' in text
        assert g.limits.describe(reason)
    assert "\ninference_connections_open 1\n" in text
    g.shed("body_timeout", "10.0.0.1", g.limits)
    assert 'inference_connections_shed_total{reason="body_timeout"} 1' in metrics.render().decode()


def test_the_answers_to_a_head_too_long_are_openai_errors() -> None:
    limits = ConnectionLimits.of(ClusterConfig(), max_connections=10)
    line = limits.error(HeadLimit.REQUEST_LINE)
    assert line.http_status == 414
    assert line.to_openai_error() == {
        "error": {
            "message": "the request line is longer than 8192 bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "uri_too_long",
        }
    }
    for limit, words in ((HeadLimit.HEADER, "a request header"), (HeadLimit.HEAD, "headers")):
        error = limits.error(limit)
        body = orjson.loads(orjson.dumps(error.to_openai_error()))
        assert error.http_status == 431
        assert body["error"]["code"] == "request_header_fields_too_large"
        assert words in body["error"]["message"]


# --------------------------------------------------------------------------- the protocol
# Its edges, through an in-memory transport on the test's loop: a response under way when
# a pipelined request misbehaves, reading paused by the application, a transport closed
# before a timer fires. The usual paths run on real sockets in tests/apps.


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
    g = guard(QUICK)
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol: Any = g.protocol()(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
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


def test_an_unreadable_ipv6_host_is_its_own_client() -> None:
    assert client_key(("zz::not-an-address", 1, 0, 0)) == "zz::not-an-address"
