"""The node's small HTTP client over Unix sockets, against scripted servers."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from rakka_inference.cluster import unix_http
from rakka_inference.cluster.unix_http import UnixHttpError, request

Answer = Callable[[bytes], Awaitable[bytes | None]]


@pytest.fixture
async def server() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    servers: list[asyncio.AbstractServer] = []

    async def serve(answer: Answer) -> str:
        path = str(folder / f"s{len(servers)}.sock")

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            reply = await answer(head + body)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            writer.close()

        servers.append(await asyncio.start_unix_server(handle, path=path))
        return path

    yield serve
    for one in servers:
        one.close()


async def test_a_request_and_its_answer(server: Callable[[Answer], Awaitable[str]]) -> None:
    seen: list[bytes] = []

    async def answer(raw: bytes) -> bytes:
        seen.append(raw)
        return b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nokEXTRA"

    path = await server(answer)
    response = await request(path, "POST", "/x?y=1", headers=[("a", "b")], body=b"{}")
    assert response.status == 201
    assert response.body == b"ok"
    assert response.headers["x-a"] == "b"
    assert seen[0].startswith(b"POST /x?y=1 HTTP/1.1\r\n")
    assert b"a: b\r\n" in seen[0]
    assert seen[0].endswith(b"content-length: 2\r\n\r\n{}")


async def test_a_chunked_answer_is_joined(server: Callable[[Answer], Awaitable[str]]) -> None:
    async def answer(raw: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )

    assert (await request(await server(answer), "GET", "/")).body == b"abcde"


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_garbage_is_a_typed_error(
    server: Callable[[Answer], Awaitable[str]], reply: bytes
) -> None:
    async def answer(raw: bytes) -> bytes:
        return reply

    with pytest.raises(UnixHttpError, match=r"not HTTP|malformed"):
        await request(await server(answer), "GET", "/")


async def test_no_answer_in_time_and_no_peer_are_typed_errors(
    server: Callable[[Answer], Awaitable[str]],
) -> None:
    release = asyncio.Event()

    async def silent(raw: bytes) -> None:
        await release.wait()

    with pytest.raises(UnixHttpError, match=r"no answer within 0\.1 s"):
        await request(await server(silent), "GET", "/", timeout=0.1)
    release.set()
    await asyncio.sleep(0.01)
    with pytest.raises(UnixHttpError, match="cannot reach the peer"):
        await request("/tmp/rakka-no-such-socket", "GET", "/")


async def test_an_answer_over_the_limit_is_refused(
    server: Callable[[Answer], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(unix_http, "MAX_RESPONSE_BYTES", 64 * 1024)

    async def huge(raw: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (200 * 1024)

    with pytest.raises(UnixHttpError, match=r"over 65536 bytes"):
        await request(await server(huge), "GET", "/")
