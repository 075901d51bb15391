"""Both HTTP transports, one suite, over real loopback against the scripted server.

Every case runs on httpx and on aiohttp. Faults are real: a server that waits before the
status line, goes silent mid-body, resets or closes the TCP connection, or a listener whose
accept queue is full so that a connect cannot complete. Limits are tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from rakka_inference.core.errors import (
    ConfigError,
    InferenceError,
    InternalError,
    NetworkError,
    ProtocolError,
    RequestCancelled,
    Timeout,
    TimeoutPhase,
)
from rakka_inference.core.policies import Timeouts
from rakka_inference.remote.transports import aiohttp as aiohttp_transport
from rakka_inference.remote.transports import httpx as httpx_transport
from rakka_inference.remote.transports.aiohttp import AiohttpTransport
from rakka_inference.remote.transports.base import Deadlines, lower_headers, timeout_error
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.remote.transports.httpx import HttpxTransport
from rakka_inference.testkit.http_script import Chunk, ScriptedResponse
from rakka_inference.testkit.http_server import ScriptedHttpServer
from rakka_inference.wire.http import HttpRequest, HttpResponse, HttpTransport

KINDS = ["httpx", "aiohttp"]

# First byte and read limits far apart, so a test can tell which one struck.
LIMITS = Timeouts(connect_timeout_ms=500, request_timeout_ms=1000, read_timeout_ms=60)


@pytest.fixture(params=KINDS)
async def transport(request: pytest.FixtureRequest) -> AsyncIterator[HttpTransport]:
    client = create_transport(prefer=request.param)
    yield client
    await client.aclose()


@pytest.fixture
async def server() -> AsyncIterator[ScriptedHttpServer]:
    async with ScriptedHttpServer() as scripted:
        yield scripted


def get(server: ScriptedHttpServer, path: str = "/x") -> HttpRequest:
    return HttpRequest("GET", server.url + path)


async def drain(response: HttpResponse, into: list[bytes]) -> None:
    """Read the body chunk by chunk into ``into`` (kept even when the read fails)."""
    try:
        async for chunk in response.iter_bytes():
            into.append(chunk)  # noqa: PERF401 - keep what came before a failure
    finally:
        await response.aclose()


def assert_ours(error: BaseException, kind: type[InferenceError]) -> None:
    """The error is exactly ``kind``, one of ours: no vendor exception escaped."""
    assert type(error) is kind
    assert type(error).__module__ == "rakka_inference.core.errors"


# ------------------------------------------------------------------ happy paths


async def test_unary_read_delivers_status_headers_and_body(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("POST", "/v1/chat", ScriptedResponse.json({"ok": True}))
    request = HttpRequest(
        "POST",
        server.url + "/v1/chat?api-version=2024-06-01",
        headers={"Authorization": "Bearer sk-test", "Content-Type": "application/json"},
        body=b'{"model": "m"}',
    )
    response = await transport.send(request, LIMITS, stream=False)
    try:
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert await response.read() == b'{"ok":true}'
    finally:
        await response.aclose()
    (recorded,) = server.requests
    assert (recorded.method, recorded.path, recorded.query) == (
        "POST",
        "/v1/chat",
        "api-version=2024-06-01",
    )
    assert recorded.headers["authorization"] == "Bearer sk-test"
    assert recorded.headers["user-agent"] == "rakka-inference"
    assert recorded.json() == {"model": "m"}


async def test_request_headers_and_binary_body_arrive_intact(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    body = os.urandom(200_000)
    server.default = lambda request: ScriptedResponse.text(request.body)
    headers = {"X-Api-Key": "k-123", "anthropic-version": "2023-06-01", "User-Agent": "mine/1"}
    response = await transport.send(
        HttpRequest("PUT", server.url + "/blob", headers=headers, body=body), LIMITS, stream=False
    )
    try:
        assert await response.read() == body
    finally:
        await response.aclose()
    recorded = server.requests[0]
    assert recorded.body == body
    assert recorded.headers["x-api-key"] == "k-123"
    assert recorded.headers["anthropic-version"] == "2023-06-01"
    assert recorded.headers["user-agent"] == "mine/1"  # the request's own wins
    assert recorded.headers["content-length"] == str(len(body))


async def test_response_headers_are_keyed_in_lower_case(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    headers = [("X-Request-ID", "req-1"), ("Retry-After", "3"), ("X-Multi", "a"), ("x-multi", "b")]
    server.script("GET", "/x", ScriptedResponse.json({}, status=429, headers=headers))
    response = await transport.send(get(server), LIMITS, stream=False)
    try:
        assert repr(response).endswith(f"(429, HttpRequest(GET {server.url}/x, 0 bytes))")
        assert response.status == 429
        assert response.headers["x-request-id"] == "req-1"
        assert response.headers["retry-after"] == "3"
        assert response.headers["x-multi"] == "a, b"
        assert all(name == name.lower() for name in response.headers)
        assert await response.read() == b"{}"
    finally:
        await response.aclose()


async def test_stream_chunks_arrive_as_they_are_sent(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    parts = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    server.script("GET", "/x", ScriptedResponse.stream(parts, chunk_delay=0.04))
    response = await transport.send(get(server), LIMITS, stream=True)
    try:
        arrivals = [(time.monotonic(), chunk) async for chunk in response.iter_bytes()]
    finally:
        await response.aclose()
    assert [chunk for _, chunk in arrivals] == parts  # each one alone: none waited for the next
    assert arrivals[-1][0] - arrivals[0][0] > 0.05


async def test_long_healthy_stream_is_not_cut_without_a_total_limit(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    # 8 chunks 25 ms apart: 200 ms in all, three times the 60 ms between-bytes limit.
    parts = [b"%d" % i for i in range(8)]
    server.script("GET", "/x", ScriptedResponse.stream(parts, chunk_delay=0.025))
    received: list[bytes] = []
    await drain(await transport.send(get(server), LIMITS, stream=True), received)
    assert b"".join(received) == b"".join(parts)


async def test_keep_alive_reuses_one_connection(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse.json([1]), ScriptedResponse.stream([b"a", b"b"]))
    first = await transport.send(get(server), LIMITS, stream=False)
    assert await first.read() == b"[1]"
    await first.aclose()
    received: list[bytes] = []
    await drain(await transport.send(get(server), LIMITS, stream=True), received)
    assert b"".join(received) == b"ab"
    assert server.connections_opened == 1
    assert [r.connection for r in server.requests] == [1, 1]


async def test_empty_body(transport: HttpTransport, server: ScriptedHttpServer) -> None:
    server.script("DELETE", "/x", ScriptedResponse(204))
    response = await transport.send(HttpRequest("DELETE", server.url + "/x"), LIMITS, stream=True)
    received: list[bytes] = []
    await drain(response, received)
    assert response.status == 204
    assert received == []


# ------------------------------------------------------------------ connect


async def test_connection_refused_is_a_network_error(transport: HttpTransport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on ``port`` now.
    with pytest.raises(InferenceError) as caught:
        await transport.send(HttpRequest("GET", f"http://127.0.0.1:{port}/"), LIMITS, stream=False)
    assert_ours(caught.value, NetworkError)


@contextlib.asynccontextmanager
async def full_accept_queue() -> AsyncIterator[int]:
    """A loopback port where a connect hangs: the listener's accept queue is full.

    Linux drops a SYN that arrives while the accept queue is full, so the client keeps
    waiting (for a SYN retransmit, a second away) — a connect timeout without leaving
    127.0.0.1.
    """
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    listener = socket.socket()
    sockets.append(listener)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(16):
            filler = socket.socket()
            filler.setblocking(False)
            sockets.append(filler)
            try:
                await asyncio.wait_for(loop.sock_connect(filler, address), 0.05)
            except TimeoutError:
                break  # this one's SYN was dropped: the queue is full
        else:  # pragma: no cover - an OS that accepts past the backlog
            pytest.skip("the accept queue never filled here; connect timeouts untestable")
        yield address[1]
    finally:
        for sock in sockets:
            sock.close()


async def test_connect_timeout(transport: HttpTransport) -> None:
    limits = Timeouts(connect_timeout_ms=50, request_timeout_ms=1000, read_timeout_ms=1000)
    async with full_accept_queue() as port:
        started = time.monotonic()
        with pytest.raises(InferenceError) as caught:
            await transport.send(
                HttpRequest("GET", f"http://127.0.0.1:{port}/"), limits, stream=False
            )
        assert time.monotonic() - started < 0.9  # the connect limit, not the first-byte one
    assert_ours(caught.value, Timeout)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.CONNECT


# ------------------------------------------------------------------ first byte


@pytest.mark.parametrize("stream", [False, True])
async def test_slow_first_byte_times_out(
    transport: HttpTransport, server: ScriptedHttpServer, stream: bool
) -> None:
    server.script("GET", "/x", ScriptedResponse.json({}, first_byte_delay=0.2))
    limits = Timeouts(request_timeout_ms=50, read_timeout_ms=1000)
    with pytest.raises(InferenceError) as caught:
        await transport.send(get(server), limits, stream=stream)
    assert_ours(caught.value, Timeout)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.FIRST_BYTE
    # We gave up and closed the connection; the server saw it before its delay was over.
    (abort,) = await asyncio.wait_for(server.wait_client_aborts(1), 1)
    assert abort.chunks_sent == 0


async def test_the_head_waits_under_the_first_byte_limit_not_the_read_limit(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    # 120 ms to the head: twice the 60 ms between-bytes limit, well inside the first-byte one.
    server.script("GET", "/x", ScriptedResponse.json({"late": 1}, first_byte_delay=0.12))
    response = await transport.send(get(server), LIMITS, stream=False)
    try:
        assert await response.read() == b'{"late":1}'
    finally:
        await response.aclose()


# ------------------------------------------------------------------ between bytes


async def test_stall_mid_stream_times_out_after_delivering_what_came(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    parts = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    server.script("GET", "/x", ScriptedResponse.stream(parts, stall_after_chunks=2))
    received: list[bytes] = []
    response = await transport.send(get(server), LIMITS, stream=True)
    started = time.monotonic()
    with pytest.raises(InferenceError) as caught:
        await drain(response, received)
    assert_ours(caught.value, Timeout)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.BETWEEN_BYTES
    assert b"".join(received) == parts[0] + parts[1]
    assert time.monotonic() - started < 0.9  # the read limit struck, not the first-byte one


async def test_stall_in_a_unary_body_times_out(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    answer = ScriptedResponse(200, body=[b'{"a":', b"1}"], stall_after_chunks=1)
    server.script("GET", "/x", answer)
    response = await transport.send(get(server), LIMITS, stream=False)
    try:
        with pytest.raises(InferenceError) as caught:
            await response.read()
    finally:
        await response.aclose()
    assert_ours(caught.value, Timeout)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.BETWEEN_BYTES


async def test_stall_right_after_the_head_times_out(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse.stream([b"x"], stall_after_chunks=0))
    response = await transport.send(get(server), LIMITS, stream=True)
    with pytest.raises(InferenceError) as caught:
        await drain(response, [])
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.BETWEEN_BYTES


@pytest.mark.parametrize("fault", ["reset", "close"])
async def test_connection_broken_mid_stream_is_a_network_error(
    transport: HttpTransport, server: ScriptedHttpServer, fault: str
) -> None:
    parts = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    if fault == "reset":
        answer = ScriptedResponse.stream(parts, reset_after_chunks=1)
    else:
        answer = ScriptedResponse.stream(parts, close_after_chunks=1)
    server.script("GET", "/x", answer)
    received: list[bytes] = []
    response = await transport.send(get(server), LIMITS, stream=True)
    with pytest.raises(InferenceError) as caught:
        await drain(response, received)
    assert_ours(caught.value, NetworkError)
    assert parts[0].startswith(b"".join(received))  # whatever came is a prefix, never more


async def test_reset_in_a_unary_body_is_a_network_error(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse(200, body=[b"12345", b"678"], reset_after_chunks=1))
    response = await transport.send(get(server), LIMITS, stream=False)
    try:
        with pytest.raises(InferenceError) as caught:
            await response.read()
    finally:
        await response.aclose()
    assert_ours(caught.value, NetworkError)


# ------------------------------------------------------------------ total


async def test_total_limit_cuts_a_healthy_stream_it_was_given(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    parts = [b"%d," % i for i in range(20)]
    server.script("GET", "/x", ScriptedResponse.stream(parts, chunk_delay=0.02))
    limits = Timeouts(request_timeout_ms=1000, read_timeout_ms=100, total_timeout_ms=120)
    received: list[bytes] = []
    response = await transport.send(get(server), limits, stream=True)
    with pytest.raises(InferenceError) as caught:
        await drain(response, received)
    assert_ours(caught.value, Timeout)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.TOTAL
    assert received  # what came before the limit was delivered
    assert b"".join(parts).startswith(b"".join(received))


async def test_total_limit_sooner_than_first_byte_applies_to_the_head(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse.json({}, first_byte_delay=0.2))
    limits = Timeouts(request_timeout_ms=1000, total_timeout_ms=50)
    with pytest.raises(InferenceError) as caught:
        await transport.send(get(server), limits, stream=False)
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.TOTAL


async def test_total_limit_on_a_unary_body(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    body: list[bytes | Chunk] = [b"[1", Chunk(b",2", 0.05), Chunk(b",3", 0.05), Chunk(b"]", 0.05)]
    server.script("GET", "/x", ScriptedResponse(200, body=body))
    limits = Timeouts(request_timeout_ms=1000, read_timeout_ms=1000, total_timeout_ms=80)
    response = await transport.send(get(server), limits, stream=False)
    try:
        with pytest.raises(InferenceError) as caught:
            await response.read()
    finally:
        await response.aclose()
    assert isinstance(caught.value, Timeout)
    assert caught.value.phase is TimeoutPhase.TOTAL


async def test_a_total_limit_that_is_not_reached_changes_nothing(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse.stream([b"a", b"b"]), ScriptedResponse.json(1))
    limits = Timeouts(request_timeout_ms=1000, total_timeout_ms=2000)
    received: list[bytes] = []
    await drain(await transport.send(get(server), limits, stream=True), received)
    assert b"".join(received) == b"ab"
    response = await transport.send(get(server), limits, stream=False)
    assert await response.read() == b"1"
    await response.aclose()


# ------------------------------------------------------------------ closing early


async def test_closing_a_response_early_closes_the_connection(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    parts = [b"data: %d\n\n" % i for i in range(10)]
    server.script("GET", "/x", ScriptedResponse.stream(parts, chunk_delay=0.03))
    response = await transport.send(get(server), LIMITS, stream=True)
    chunks = response.iter_bytes()
    assert await anext(chunks) == parts[0]
    await response.aclose()
    (abort,) = await asyncio.wait_for(server.wait_client_aborts(1), 1)
    assert abort.request.path == "/x"
    assert abort.chunks_sent < len(parts)
    with pytest.raises(RequestCancelled):
        await anext(chunks)
    with pytest.raises(RequestCancelled):
        await response.read()
    await response.aclose()  # idempotent


async def test_cancelling_the_reader_propagates_and_ends_the_upstream_request(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    parts = [b"data: %d\n\n" % i for i in range(10)]
    server.script("GET", "/x", ScriptedResponse.stream(parts, chunk_delay=0.03))
    first = asyncio.Event()

    async def consume() -> None:
        response = await transport.send(get(server), LIMITS, stream=True)
        try:
            async for _ in response.iter_bytes():
                first.set()
        finally:
            await response.aclose()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.wait_client_aborts(1), 1)


async def test_a_complete_response_goes_back_to_the_pool_on_close(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    server.script("GET", "/x", ScriptedResponse.stream([b"a"]), ScriptedResponse.stream([b"b"]))
    for expected in (b"a", b"b"):
        received: list[bytes] = []
        await drain(await transport.send(get(server), LIMITS, stream=True), received)
        assert received == [expected]
    assert server.connections_opened == 1
    assert server.client_aborts == []


# ------------------------------------------------------------------ requests that cannot go


async def test_an_illegal_header_value_is_an_internal_error_that_quotes_no_secret(
    transport: HttpTransport, server: ScriptedHttpServer
) -> None:
    request = HttpRequest("GET", server.url + "/x", headers={"Authorization": "sk-SECRET\r\nX: y"})
    with pytest.raises(InferenceError) as caught:
        await transport.send(request, LIMITS, stream=False)
    assert_ours(caught.value, InternalError)
    assert "SECRET" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert server.requests == []


async def test_a_url_that_is_not_http_is_an_internal_error(transport: HttpTransport) -> None:
    with pytest.raises(InferenceError) as caught:
        await transport.send(HttpRequest("GET", "ftp://127.0.0.1/x"), LIMITS, stream=False)
    assert_ours(caught.value, InternalError)


# ------------------------------------------------------------------ choosing a transport


async def test_create_transport_default_and_choices(server: ScriptedHttpServer) -> None:
    default = create_transport()
    h2 = create_transport(http2=True)
    try:
        assert isinstance(default, AiohttpTransport)
        assert isinstance(h2, HttpxTransport)
        assert h2.http2
        assert "http2=True" in repr(h2)
        assert repr(default) == "AiohttpTransport()"
        # Cleartext http://: no ALPN, so the HTTP/2 client speaks HTTP/1.1 to this server.
        server.script("GET", "/x", ScriptedResponse.json("h1"))
        response = await h2.send(get(server), LIMITS, stream=False)
        assert await response.read() == b'"h1"'
        assert "200" in repr(response)
        await response.aclose()
    finally:
        await default.aclose()
        await h2.aclose()


def test_create_transport_rejects_what_cannot_be() -> None:
    with pytest.raises(ValueError, match="unknown HTTP transport"):
        create_transport(prefer="requests")
    with pytest.raises(ValueError, match=r"HTTP/1\.1 only"):
        create_transport(http2=True, prefer="aiohttp")


def test_without_httpx_installed_http2_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rakka_inference.remote.transports.httpx", None)
    with pytest.raises(ConfigError, match=r"rakka-inference\[http2\]"):
        create_transport(http2=True)


def test_http2_without_h2_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_h2(*args: object, **kwargs: object) -> None:
        raise ImportError("h2 is not installed")

    monkeypatch.setattr(httpx, "AsyncClient", no_h2)
    with pytest.raises(ConfigError, match="h2"):
        HttpxTransport(http2=True)


async def test_a_closed_aiohttp_transport_refuses_to_send(server: ScriptedHttpServer) -> None:
    transport = AiohttpTransport()
    await transport.aclose()
    with pytest.raises(RequestCancelled):
        await transport.send(get(server), LIMITS, stream=False)


# ------------------------------------------------------------------ shared pieces


def test_deadlines_pick_the_sooner_of_first_byte_and_total() -> None:
    plain = Deadlines.start(Timeouts(), stream=True, now=100.0)
    assert plain.head_at == 160.0  # 60 s to the first byte of a stream
    assert plain.head_phase is TimeoutPhase.FIRST_BYTE
    assert plain.total_at is None
    unary = Deadlines.start(Timeouts(total_timeout_ms=45_000), stream=False, now=0.0)
    assert (unary.head_at, unary.head_phase, unary.total_at) == (
        30.0,
        TimeoutPhase.FIRST_BYTE,
        45.0,
    )
    short = Deadlines.start(Timeouts(total_timeout_ms=5_000), stream=False, now=0.0)
    assert (short.head_at, short.head_phase) == (5.0, TimeoutPhase.TOTAL)


def test_lower_headers_joins_repeated_fields() -> None:
    assert lower_headers([("A", "1"), ("b", "2"), ("a", "3")]) == {"a": "1, 3", "b": "2"}


def test_timeout_messages_name_the_limit() -> None:
    deadlines = Deadlines.start(
        Timeouts(
            connect_timeout_ms=10, request_timeout_ms=20, read_timeout_ms=30, total_timeout_ms=40
        ),
        stream=False,
        now=0.0,
    )
    request = HttpRequest("POST", "http://h/v1")
    expected = {
        TimeoutPhase.CONNECT: "10 ms",
        TimeoutPhase.FIRST_BYTE: "20 ms",
        TimeoutPhase.BETWEEN_BYTES: "30 ms",
        TimeoutPhase.TOTAL: "40 ms",
    }
    for phase, text in expected.items():
        error = timeout_error(request, phase, deadlines)
        assert error.phase is phase
        assert text in str(error)
        assert str(error).startswith("POST http://h/v1: ")
    assert "timed out" in str(timeout_error(request, TimeoutPhase.DEADLINE, deadlines))


# ------------------------------------------------------------------ exception tables

DEADLINES = Deadlines.start(Timeouts(total_timeout_ms=90_000), stream=True, now=0.0)
REQUEST = HttpRequest("POST", "http://h/v1")
HEAD, BODY = TimeoutPhase.FIRST_BYTE, TimeoutPhase.BETWEEN_BYTES


@pytest.mark.parametrize(
    ("exc", "read_phase", "kind", "phase"),
    [
        (httpx.ConnectTimeout("t"), HEAD, Timeout, TimeoutPhase.CONNECT),
        (httpx.PoolTimeout("t"), BODY, Timeout, TimeoutPhase.CONNECT),
        (httpx.ReadTimeout("t"), HEAD, Timeout, TimeoutPhase.FIRST_BYTE),
        (httpx.ReadTimeout("t"), BODY, Timeout, TimeoutPhase.BETWEEN_BYTES),
        (httpx.WriteTimeout("t"), HEAD, Timeout, TimeoutPhase.FIRST_BYTE),
        (TimeoutError(), HEAD, Timeout, TimeoutPhase.FIRST_BYTE),
        (TimeoutError(), BODY, Timeout, TimeoutPhase.TOTAL),
        (httpx.DecodingError("bad gzip"), BODY, ProtocolError, None),
        (httpx.UnsupportedProtocol("ftp"), HEAD, InternalError, None),
        (httpx.LocalProtocolError("Illegal header value b'sk-x'"), HEAD, InternalError, None),
        (httpx.InvalidURL("bad"), HEAD, InternalError, None),
        (httpx.ConnectError("refused"), HEAD, NetworkError, None),
        (httpx.RemoteProtocolError("peer closed"), BODY, NetworkError, None),
        (httpx.ReadError(""), BODY, NetworkError, None),
        (ConnectionResetError(104, "reset"), BODY, NetworkError, None),
        (httpx.StreamClosed(), BODY, InternalError, None),
    ],
)
def test_httpx_exception_table(
    exc: Exception, read_phase: TimeoutPhase, kind: type[InferenceError], phase: TimeoutPhase | None
) -> None:
    error = httpx_transport.translate_error(
        exc, REQUEST, read_phase=read_phase, deadlines=DEADLINES
    )
    assert_ours(error, kind)
    if phase is not None:
        assert isinstance(error, Timeout)
        assert error.phase is phase
    assert "sk-x" not in str(error)


@pytest.mark.parametrize(
    ("exc", "read_phase", "kind", "phase"),
    [
        (aiohttp.ConnectionTimeoutError("t"), HEAD, Timeout, TimeoutPhase.CONNECT),
        (aiohttp.SocketTimeoutError("t"), HEAD, Timeout, TimeoutPhase.FIRST_BYTE),
        (aiohttp.SocketTimeoutError("t"), BODY, Timeout, TimeoutPhase.BETWEEN_BYTES),
        (TimeoutError(), HEAD, Timeout, TimeoutPhase.FIRST_BYTE),
        (TimeoutError(), BODY, Timeout, TimeoutPhase.TOTAL),
        (aiohttp.InvalidURL("ftp://x"), HEAD, InternalError, None),
        (ValueError("Newline in header: sk-x"), HEAD, InternalError, None),
        (aiohttp.ServerDisconnectedError(), HEAD, NetworkError, None),
        (aiohttp.ClientPayloadError("not complete"), BODY, NetworkError, None),
        (aiohttp.ClientOSError(104, "reset"), BODY, NetworkError, None),
        (ConnectionResetError(104, "reset"), BODY, NetworkError, None),
        (RuntimeError("?"), BODY, InternalError, None),
    ],
)
def test_aiohttp_exception_table(
    exc: Exception, read_phase: TimeoutPhase, kind: type[InferenceError], phase: TimeoutPhase | None
) -> None:
    error = aiohttp_transport.translate_error(
        exc, REQUEST, read_phase=read_phase, deadlines=DEADLINES
    )
    assert_ours(error, kind)
    if phase is not None:
        assert isinstance(error, Timeout)
        assert error.phase is phase
    assert "sk-x" not in str(error)


def test_aiohttp_malformed_head_is_a_protocol_error() -> None:
    url = yarl.URL("http://h/v1")
    info = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    exc = aiohttp.ClientResponseError(info, (), status=400, message="Invalid HTTP")
    error = aiohttp_transport.translate_error(exc, REQUEST, read_phase=HEAD, deadlines=DEADLINES)
    assert_ours(error, ProtocolError)
