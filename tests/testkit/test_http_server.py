"""The scripted HTTP/1.1 server, checked byte for byte with a bare asyncio client."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from rakka_inference.testkit.http_script import Chunk, RecordedRequest, ScriptedResponse
from rakka_inference.testkit.http_server import ScriptedHttpServer


@pytest.fixture
async def server() -> AsyncIterator[ScriptedHttpServer]:
    async with ScriptedHttpServer() as scripted:
        yield scripted


class RawClient:
    """One TCP connection that writes requests as given and reads answers by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: ScriptedHttpServer) -> RawClient:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def request(self, method: str, path: str, *headers: str, body: bytes = b"") -> None:
        lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[str, dict[str, str]]:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status, *lines = raw[:-4].decode("latin-1").split("\r\n")
        return status, dict(line.split(": ", 1) for line in lines)

    async def response(self) -> tuple[str, dict[str, str], bytes]:
        status, headers = await self.head()
        if headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while size := int(await self.reader.readuntil(b"\r\n"), 16):
                body += await self.reader.readexactly(size)
                assert await self.reader.readexactly(2) == b"\r\n"
            assert await self.reader.readexactly(2) == b"\r\n"
        else:
            body = await self.reader.readexactly(int(headers.get("Content-Length", "0")))
        return status, headers, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.fixture
async def client(server: ScriptedHttpServer) -> AsyncIterator[RawClient]:
    raw = await RawClient.connect(server)
    yield raw
    await raw.close()


# ------------------------------------------------------------------ recording


async def test_records_every_part_of_a_request(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    await client.request(
        "POST", "/v1/chat?a=1&b=2", "X-Key: k1", "X-Multi: a", "x-multi: b", body=b'{"m": 1}'
    )
    status, _, _ = await client.response()
    assert status == "HTTP/1.1 404 Not Found"  # nothing was scripted
    (recorded,) = server.requests
    assert recorded == RecordedRequest(
        method="POST",
        path="/v1/chat",
        query="a=1&b=2",
        headers={"host": "test", "x-key": "k1", "x-multi": "a, b", "content-length": "8"},
        body=b'{"m": 1}',
        connection=1,
        raw_headers=(
            ("Host", "test"),
            ("X-Key", "k1"),
            ("X-Multi", "a"),
            ("x-multi", "b"),
            ("Content-Length", "8"),
        ),
    )
    assert recorded.json() == {"m": 1}


async def test_reads_a_chunked_request_body_with_trailers(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    await client.send(
        b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    await client.response()
    assert server.requests[0].body == b"hello world"


# ------------------------------------------------------------------ scripting


async def test_routes_answer_in_fifo_order_then_the_default(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.script("GET", "/a", ScriptedResponse.text("one"), ScriptedResponse.text("two"))
    server.script("get", "/b", ScriptedResponse.text("bee"))
    assert server.pending("GET", "/a") == 2
    bodies = []
    for path in ("/a?x=1", "/b", "/a", "/a"):
        await client.request("GET", path)
        bodies.append((await client.response())[2])
    assert bodies[:3] == [b"one", b"bee", b"two"]
    assert b"nothing scripted for GET /a" in bodies[3]
    server.default = ScriptedResponse.text("fallback")
    await client.request("GET", "/a")
    assert (await client.response())[2] == b"fallback"
    assert server.pending("GET", "/a") == 0


async def test_a_responder_answers_by_header_sync_or_async(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    def by_key(request: RecordedRequest) -> ScriptedResponse:
        if request.headers.get("x-api-key") == "bad":
            return ScriptedResponse.json({"error": "no"}, status=401)
        return ScriptedResponse.json({"key": request.headers.get("x-api-key")})

    async def slow(request: RecordedRequest) -> ScriptedResponse:
        await asyncio.sleep(0)
        return ScriptedResponse.text(request.method)

    server.default = by_key
    server.script("DELETE", "/thing", slow)
    await client.request("GET", "/any", "X-Api-Key: bad")
    assert (await client.response())[0] == "HTTP/1.1 401 Unauthorized"
    await client.request("GET", "/any", "X-Api-Key: good")
    assert (await client.response())[2] == b'{"key":"good"}'
    await client.request("DELETE", "/thing")
    assert (await client.response())[2] == b"DELETE"


async def test_a_responder_that_raises_is_answered_500_and_kept(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    def broken(request: RecordedRequest) -> ScriptedResponse:
        raise KeyError("oops")

    server.default = broken
    await client.request("GET", "/")
    status, _, body = await client.response()
    assert status == "HTTP/1.1 500 Internal Server Error"
    assert b"oops" in body
    assert isinstance(server.errors[0], KeyError)


async def test_with_records_it_keeps_the_recent_ones_only() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ScriptedHttpServer(records=0)

    def broken(request: RecordedRequest) -> ScriptedResponse:
        raise KeyError(request.path)

    async with ScriptedHttpServer(records=2, default=broken) as bounded:
        raw = await RawClient.connect(bounded)
        try:
            for n in range(7):
                await raw.request("GET", f"/{n}")
                await raw.response()
        finally:
            await raw.close()
        # Trimmed to the last two once it held five: then two more came.
        assert [r.path for r in bounded.requests] == ["/3", "/4", "/5", "/6"]
        assert len(bounded.errors) == 4


# ------------------------------------------------------------------ framing on the wire


async def test_a_stream_is_chunked_one_http_chunk_per_scripted_chunk(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    answer = ScriptedResponse.stream([b"abc", b"", Chunk(b"0123456789abcdef", 0.01)])
    server.script("GET", "/s", answer)
    await client.request("GET", "/s")
    wire = await client.reader.readuntil(b"0\r\n\r\n")
    assert wire == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n"  # the empty chunk is a pause, not the terminator
        b"10\r\n0123456789abcdef\r\n"
        b"0\r\n\r\n"
    )


async def test_a_unary_answer_has_content_length_over_all_its_chunks(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.script("GET", "/u", ScriptedResponse(201, [("X-A", "1")], [b"ab", b"cd"], reason="Yes"))
    await client.request("GET", "/u")
    status, headers, body = await client.response()
    assert status == "HTTP/1.1 201 Yes"
    assert headers == {"X-A": "1", "Content-Length": "4"}
    assert body == b"abcd"


async def test_explicit_framing_headers_are_left_alone(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    # A test may lie about the length on purpose.
    server.script("GET", "/u", ScriptedResponse(200, {"Content-Length": "2"}, [b"ab"]))
    await client.request("GET", "/u")
    assert (await client.response())[1] == {"Content-Length": "2"}


@pytest.mark.parametrize(("method", "status"), [("HEAD", 200), ("GET", 204), ("GET", 304)])
async def test_no_body_for_head_204_and_304(
    server: ScriptedHttpServer, client: RawClient, method: str, status: int
) -> None:
    server.script(method, "/n", ScriptedResponse.text("ignored", status=status))
    server.script("GET", "/next", ScriptedResponse.text("next"))
    await client.request(method, "/n")
    _, headers = await client.head()
    assert "Content-Length" not in headers
    await client.request("GET", "/next")  # nothing stray sits before the next answer
    assert (await client.response())[2] == b"next"


async def test_an_unknown_status_gets_a_placeholder_reason(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse(599)
    await client.request("GET", "/")
    assert (await client.head())[0] == "HTTP/1.1 599 Unknown"


# ------------------------------------------------------------------ connections


async def test_keep_alive_until_the_client_or_the_script_says_close(
    server: ScriptedHttpServer,
) -> None:
    server.default = ScriptedResponse.text("ok")
    client = await RawClient.connect(server)
    for _ in range(2):
        await client.request("GET", "/")
        await client.response()
    await client.request("GET", "/", "Connection: close")
    _, headers, _ = await client.response()
    assert headers["Connection"] == "close"
    assert await client.reader.read() == b""  # the server closed
    await client.close()

    server.default = ScriptedResponse.text("bye", keep_alive=False)
    client = await RawClient.connect(server)
    await client.request("GET", "/")
    assert (await client.response())[1]["Connection"] == "close"
    assert await client.reader.read() == b""
    await client.close()
    assert [r.connection for r in server.requests] == [1, 1, 1, 2]
    assert server.connections_opened == 2
    await asyncio.sleep(0.01)
    assert server.connections_closed == 2
    assert server.client_aborts == []


async def test_first_byte_delay_holds_the_status_line(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse.text("late", first_byte_delay=0.05)
    started = time.monotonic()
    await client.request("GET", "/")
    await client.head()
    assert time.monotonic() - started >= 0.045


async def test_reset_after_chunks_aborts_the_connection(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse.stream([b"abc", b"def"], reset_after_chunks=1)
    await client.request("GET", "/")
    await client.head()
    assert await client.reader.readexactly(8) == b"3\r\nabc\r\n"
    with pytest.raises(ConnectionResetError):
        await client.reader.read(100)
    assert server.client_aborts == []  # we broke it, not the client


async def test_close_after_chunks_ends_the_connection_mid_body(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse(200, body=[b"abc", b"def"], close_after_chunks=1)
    await client.request("GET", "/")
    _, headers = await client.head()
    assert headers["Content-Length"] == "6"
    assert await client.reader.read() == b"abc"  # then EOF, three bytes short


async def test_a_stall_lasts_until_the_client_leaves(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse.stream([b"abc", b"def"], stall_after_chunks=1)
    await client.request("GET", "/")
    await client.head()
    assert await client.reader.readexactly(8) == b"3\r\nabc\r\n"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.reader.read(1), 0.05)
    await client.close()
    (abort,) = await asyncio.wait_for(server.wait_client_aborts(), 1)
    assert abort.chunks_sent == 1
    assert abort.request.path == "/"


async def test_a_client_reset_during_a_stall_is_seen_as_an_abort(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse.stream([b"abc"], stall_after_chunks=0)
    await client.request("GET", "/")
    await client.head()
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()  # RST, not FIN
    (abort,) = await asyncio.wait_for(server.wait_client_aborts(1), 1)
    assert abort.chunks_sent == 0


async def test_leaving_during_a_chunk_delay_is_seen_at_once(
    server: ScriptedHttpServer, client: RawClient
) -> None:
    server.default = ScriptedResponse.stream([b"a", Chunk(b"b", 10.0)])
    await client.request("GET", "/")
    await client.head()
    await client.reader.readexactly(6)
    await client.close()
    (abort,) = await asyncio.wait_for(server.wait_client_aborts(1), 1)
    assert abort.chunks_sent == 1


async def test_stop_ends_stalled_connections_and_wakes_waiters() -> None:
    server = ScriptedHttpServer(default=ScriptedResponse.stream([b"x"], stall_after_chunks=0))
    await server.start()
    with pytest.raises(RuntimeError, match="already started"):
        await server.start()
    client = await RawClient.connect(server)
    await client.request("GET", "/")
    await client.head()
    waiter = asyncio.create_task(server.wait_client_aborts(1))
    await asyncio.sleep(0)
    await asyncio.wait_for(server.stop(), 1)
    with pytest.raises(RuntimeError, match="stopped"):
        await waiter
    assert await client.reader.read() == b""
    await client.close()
    await server.stop()  # idempotent
    assert server.connections_closed == 1
    with pytest.raises(RuntimeError, match="not running"):
        await server.wait_client_aborts(1)


@pytest.mark.parametrize(
    "garbage",
    [
        b"NONSENSE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        b"GET / HTTP/1.1\r\nHost:",  # then the client closes mid-head
    ],
)
async def test_a_request_it_cannot_parse_drops_the_connection(
    server: ScriptedHttpServer, client: RawClient, garbage: bytes
) -> None:
    await client.send(garbage)
    if not garbage.endswith(b"\r\n"):
        client.writer.write_eof()
    assert await client.reader.read() == b""
    assert server.requests == []


def test_url_names_the_bound_port() -> None:
    server = ScriptedHttpServer(port=8123)
    assert server.url == "http://127.0.0.1:8123"


# ------------------------------------------------------------------ script values


def test_constructors_fill_content_type_and_chunk_delays() -> None:
    answer = ScriptedResponse.stream([b"a", Chunk(b"b", 0.5)], chunk_delay=0.1, headers={"X": "1"})
    assert answer.chunked
    assert answer.chunks == (Chunk(b"a", 0.1), Chunk(b"b", 0.5))
    assert answer.header_pairs == (("Content-Type", "text/event-stream"), ("X", "1"))
    assert ScriptedResponse.json([1], headers=[("X", "2")]).chunks == (Chunk(b"[1]"),)
    assert ScriptedResponse.text("é").chunks == (Chunk("é".encode()),)
    assert ScriptedResponse.text(b"raw", stall_after_chunks=1).fault_after == 1
    assert ScriptedResponse().fault_after is None
    assert ScriptedResponse(body=b"one chunk").chunks == (Chunk(b"one chunk"),)


def test_faults_are_validated() -> None:
    with pytest.raises(ValueError, match="at most one"):
        ScriptedResponse(body=[b"a"], stall_after_chunks=1, reset_after_chunks=1)
    with pytest.raises(ValueError, match="after 2 chunks, but 1"):
        ScriptedResponse(body=[b"a"], close_after_chunks=2)
