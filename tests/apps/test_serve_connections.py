"""``rakka serve`` against clients that cost it more than a request should, on real
sockets: a head or a body that trickles in, a head too long, too many connections
(:mod:`rakka_inference.runtime.connection_guard`). Each server runs with short limits of
its config's ``[cluster]``, so each case takes well under a second; a normal client (the
openai SDK, httpx) meanwhile sheds nothing."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from tests.apps.serve_process import CLI, clean_env, free_port, run_rakka

HEAD_S, BODY_S = 0.3, 0.6
SETTINGS = {
    "header_timeout_ms": int(HEAD_S * 1000),
    "body_timeout_ms": int(BODY_S * 1000),
    "max_connections": 64,
    "max_connections_per_client": 32,
    "max_request_line_bytes": 1024,
    "max_header_bytes": 1024,
    "max_head_bytes": 4096,
}
CANARY = "sk-canary-0123456789abcdef"
"""A header value that must never reach the log."""


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024  # type: ignore[index]


def config_text(port: int, **settings: object) -> str:
    lines = "".join(f"{key} = {value}\n" for key, value in {**SETTINGS, **settings}.items())
    return f"""\
[cluster]
bind = "127.0.0.1:{port}"
mock_providers = true
{lines}
[[deployment]]
name = "gpt"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
api_key = {{ from_file = "mock.key" }}
"""


@contextmanager
def serving(
    directory: Path,
    *,
    preexec: Callable[[], None] | None = None,
    ready: str = "rakka: serving",
    **settings: object,
) -> Iterator[Server]:
    """``rakka serve --config`` with ``settings`` in ``[cluster]``, until the block ends."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mock.key").write_text("any-key-will-do\n")
    port = free_port()
    config = directory / "rakka.toml"
    config.write_text(config_text(port, **settings))
    log_path = directory / "serve.log"
    with log_path.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, "serve", "--config", str(config), "--grace", "2"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(),
            preexec_fn=preexec,  # noqa: PLW1509 - only setrlimit, before exec
        )
    server = Server(port, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while ready not in server.log():
            assert process.poll() is None, server.log()
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.02)
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("serve")) as running:
        yield running


# --------------------------------------------------------------------------- raw HTTP


async def connect(
    server: Server, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def until_closed(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    """Everything the server sends until it closes (a reset counts as closed)."""
    data = b""
    async with asyncio.timeout(timeout):
        with suppress(ConnectionResetError):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


async def healthz(
    server: Server, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A kept-alive connection that was answered (so the server has counted it)."""
    reader, writer = await connect(server, source)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status_line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status_line.startswith(b"HTTP/1.1 200 "), status_line
    length = int(parse(status_line)[1]["content-length"])
    await reader.readexactly(length)
    return reader, writer


async def refused(server: Server, source: str) -> bool:
    """Whether a new connection from ``source`` is closed at once, unanswered."""
    reader, writer = await connect(server, source)
    try:
        with suppress(ConnectionResetError, BrokenPipeError):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return await until_closed(reader, timeout=2) == b""
    finally:
        await close(writer)


def shed(server: Server) -> dict[str, float]:
    """``inference_connections_shed_total`` by reason, and the open connections, summed
    over a node's workers."""
    return counted(httpx.get(f"{server.url}/metrics", timeout=5).text)


async def scrape(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> dict[str, float]:
    """:func:`shed`, over a connection already open."""
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(parse(head)[1]["content-length"])
    return counted((await reader.readexactly(length)).decode())


def counted(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for reason, value in re.findall(
        r'^inference_connections_shed_total\{[^}]*reason="(\w+)"[^}]*\} (\S+)$', text, re.M
    ):
        counts[reason] = counts.get(reason, 0) + float(value)
    opened = re.findall(r"^inference_connections_open(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert counts, "no inference_connections_shed_total in /metrics"
    assert opened, "no inference_connections_open in /metrics"
    counts["open"] = sum(float(v) for v in opened)
    return counts


async def settled(server: Server, fds: int) -> None:
    """The server's open files are back to ``fds``: it left no connection behind."""
    async with asyncio.timeout(5):
        while server.fds() > fds:
            await asyncio.sleep(0.02)


def error_of(body: bytes) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- time


async def test_a_head_that_trickles_in_is_answered_408_and_closed(server: Server) -> None:
    fds = server.fds()
    before = shed(server)
    started = time.monotonic()  # measured from before the server could start its clock
    reader, writer = await connect(server)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")

    async def trickle() -> None:  # a header line every 50 ms, for ever
        while True:
            await asyncio.sleep(0.05)
            writer.write(f"X-Trickle: {CANARY}\r\n".encode())

    task = asyncio.create_task(trickle())
    try:
        raw = await until_closed(reader)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await task
        await close(writer)
    elapsed = time.monotonic() - started
    status, headers, body = parse(raw)
    assert (status, headers["connection"]) == (408, "close")
    assert error_of(body)["code"] == "request_timeout"
    assert HEAD_S <= elapsed < HEAD_S + 2
    assert shed(server)["head_timeout"] == before["head_timeout"] + 1
    assert "closed a connection from 127.0.0.1: its request head did not arrive within 0.3 s" in (
        server.log()
    )
    assert CANARY not in server.log()
    await settled(server, fds)


async def test_a_connection_that_sends_nothing_is_closed_unanswered(server: Server) -> None:
    before = shed(server)
    started = time.monotonic()  # before the connection: the server's clock starts at accept
    reader, writer = await connect(server)
    try:
        assert await until_closed(reader) == b""
    finally:
        await close(writer)
    assert HEAD_S <= time.monotonic() - started < HEAD_S + 2
    assert shed(server)["head_timeout"] == before["head_timeout"] + 1


async def test_idle_keep_alive_is_not_a_late_head_but_a_later_head_is_timed(
    server: Server,
) -> None:
    reader, writer = await healthz(server)
    try:
        await asyncio.sleep(HEAD_S * 2)  # idle between requests: uvicorn's keep-alive (5 s)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert parse(head)[0] == 200
        await reader.readexactly(int(parse(head)[1]["content-length"]))
        started = time.monotonic()  # before the write: the server's clock starts at its bytes
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # the next head begins, and stalls
        assert parse(await until_closed(reader))[0] == 408
        assert HEAD_S <= time.monotonic() - started < HEAD_S + 2
    finally:
        await close(writer)


async def test_a_body_that_trickles_in_is_answered_408_and_closed(server: Server) -> None:
    fds = server.fds()
    before = shed(server)
    reader, writer = await connect(server)
    started = time.monotonic()  # before the head goes: the body's clock starts at its end
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 1000\r\n\r\n{"
    )

    async def trickle() -> None:  # a byte every 50 ms: the head's timer would pass
        while True:
            await asyncio.sleep(0.05)
            writer.write(b" ")

    task = asyncio.create_task(trickle())
    try:
        raw = await until_closed(reader)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError, ConnectionError):
            await task
        await close(writer)
    elapsed = time.monotonic() - started
    status, _, body = parse(raw)
    assert status == 408
    assert "body did not arrive within 0.6 s" in str(error_of(body)["message"])
    assert BODY_S <= elapsed < BODY_S + 2
    assert shed(server)["body_timeout"] == before["body_timeout"] + 1
    assert "its request body did not arrive within 0.6 s" in server.log()
    await settled(server, fds)


# --------------------------------------------------------------------------- size


async def test_a_long_request_line_header_or_head_is_refused_with_a_json_error(
    server: Server,
) -> None:
    before = shed(server)
    async with httpx.AsyncClient(base_url=server.url) as client:
        line = await client.get("/healthz", params={"q": "a" * 1100})
        header = await client.get("/healthz", headers={"x-canary": CANARY + "a" * 1100})
        many = await client.get("/healthz", headers={f"x-h{i}": "b" * 200 for i in range(20)})
        fine = await client.get("/healthz", headers={"x-h": "b" * 900})
    assert line.status_code == 414
    assert error_of(line.content)["code"] == "uri_too_long"
    for answer in (header, many):
        assert answer.status_code == 431
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["connection"] == "close"
        assert error_of(answer.content)["code"] == "request_header_fields_too_large"
    assert "a request header is longer than 1024 bytes" in header.json()["error"]["message"]
    assert "headers are longer than 4096 bytes" in many.json()["error"]["message"]
    assert fine.status_code == 200
    after = shed(server)
    for reason in ("request_line_too_long", "header_too_long", "head_too_large"):
        assert after[reason] == before[reason] + 1, reason
    log = server.log()
    assert "its request line is longer than 1024 bytes (max_request_line_bytes)" in log
    assert CANARY not in log


async def test_a_huge_header_is_refused_without_being_kept(server: Server) -> None:
    """64 MiB of one header line: the server answers 431 having kept none of it (its RSS
    does not grow by it) and answers /healthz at once meanwhile. Before the guard it
    buffered it all, and the parser's copies stalled the loop for seconds."""
    idle_rss = server.rss_mb()
    reader, writer = await connect(server)
    mib = b"a" * (1024 * 1024)

    async def send() -> None:
        with suppress(ConnectionError):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):
                writer.write(mib)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()

    sender = asyncio.create_task(send())
    answer = asyncio.create_task(until_closed(reader, timeout=30))
    slowest = peak = 0.0
    try:
        while not (answer.done() and sender.done()):
            started = time.monotonic()
            async with httpx.AsyncClient() as probe:
                assert (await probe.get(f"{server.url}/healthz", timeout=30)).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            peak = max(peak, server.rss_mb())
            await asyncio.sleep(0.01)
    finally:
        await asyncio.gather(sender, answer, return_exceptions=True)
        await close(writer)
    status, _, body = parse(answer.result())
    assert status == 431
    assert error_of(body)["code"] == "request_header_fields_too_large"
    assert peak - idle_rss < 16, (idle_rss, peak)
    assert slowest < 1.0


# --------------------------------------------------------------------------- normal clients


async def test_normal_clients_shed_nothing(server: Server) -> None:
    before = shed(server)
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
    try:
        for _ in range(2):  # a kept-alive connection, idle longer than the head's timeout
            answer = await client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": "hi"}]
            )
            assert answer.choices[0].message.content
            await asyncio.sleep(HEAD_S * 1.5)
        stream = await client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "x" * 200_000}], stream=True
        )
        assert [chunk async for chunk in stream]
    finally:
        await client.close()

    async def body_in_pieces() -> AsyncIterator[bytes]:
        document = orjson.dumps({"model": "gpt", "messages": [{"role": "user", "content": "hi"}]})
        for start in range(0, len(document), 16):
            await asyncio.sleep(BODY_S / 20)
            yield document[start : start + 16]

    async with httpx.AsyncClient(base_url=server.url) as raw:
        answer = await raw.post(
            "/v1/chat/completions",
            content=body_in_pieces(),
            headers={"content-type": "application/json", "authorization": "Bearer " + "k" * 900},
        )
        assert answer.status_code == 200, answer.text
    after = shed(server)
    assert {k: v for k, v in after.items() if k != "open"} == {
        k: v for k, v in before.items() if k != "open"
    }


async def test_a_websocket_upgrade_is_an_ordinary_request_and_counted_out(
    server: Server,
) -> None:
    fds, before = server.fds(), shed(server)
    for _ in range(3):
        reader, writer = await connect(server)
        writer.write(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        finally:
            await close(writer)
        assert parse(head)[0] == 200
    await settled(server, fds)
    assert shed(server)["open"] == before["open"]  # each was counted out as it closed
    assert "upgrade" not in server.log().lower()


# --------------------------------------------------------------------------- count


async def test_connections_past_the_caps_are_closed_at_once(tmp_path: Path) -> None:
    with serving(tmp_path, max_connections=5, max_connections_per_client=3) as server:
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            opened += [await healthz(server, "127.0.0.1") for _ in range(3)]
            started = time.monotonic()
            assert await refused(server, "127.0.0.1")
            assert time.monotonic() - started < 1  # at once, not after a timeout
            opened += [await healthz(server, "127.0.0.2") for _ in range(2)]
            assert await refused(server, "127.0.0.3")  # five open in all
            await close(opened.pop()[1])
            async with asyncio.timeout(5):  # counted out once the server sees it closed
                while True:
                    try:
                        opened.append(await healthz(server, "127.0.0.3"))
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        await asyncio.sleep(0.02)
            counts = await scrape(*opened[-1])
        finally:
            for _, writer in opened:
                await close(writer)
        assert counts["client_limit"] == 1
        assert counts["total_limit"] >= 1
        assert counts["open"] == 5
        log = server.log()
        assert (
            "closed a connection from 127.0.0.1: 3 connections from that address are open "
            "(max_connections_per_client)"
        ) in log
        assert "closed a connection from 127.0.0.3: 5 connections are open (max_connections)" in log


def low_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 400))


async def test_the_total_cap_stays_within_the_open_file_limit(tmp_path: Path) -> None:
    """With ``ulimit -n`` 200 (hard 400), the soft limit is raised to 400, and 4096
    connections do not fit in it: 136 do ((400 - 128) / 2); the next is refused, and the
    process never runs out of files (before, the 400th ended every accept)."""
    with serving(
        tmp_path, preexec=low_file_limit, max_connections=4096, max_connections_per_client=4096
    ) as server:
        limits = await asyncio.to_thread(Path(f"/proc/{server.process.pid}/limits").read_text)
        assert re.search(r"Max open files\s+400\s+400", limits), limits
        assert (
            "the open-file limit holds 136 client connections, not max_connections = 4096 "
            "(and 136 from one client)"
        ) in server.log()
        opened = await asyncio.gather(
            *(healthz(server) for _ in range(136)), return_exceptions=True
        )
        try:
            assert all(isinstance(one, tuple) for one in opened), opened
            assert await refused(server, "127.0.0.1")
        finally:
            for one in opened:
                if isinstance(one, tuple):
                    await close(one[1])


# --------------------------------------------------------------------------- a node


async def test_every_worker_of_a_node_guards_its_connections_and_follows_a_reload(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, ready="serving on", workers=2, max_header_bytes=2048) as server:
        reader, writer = await connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and no more
        try:
            assert parse(await until_closed(reader))[0] == 408
        finally:
            await close(writer)
        header = {"x-h": "a" * 1500}
        async with httpx.AsyncClient(base_url=server.url) as client:
            for _ in range(6):  # each on a connection of its own: both workers answer
                answer = await client.get("/healthz", headers={**header, "connection": "close"})
                assert answer.status_code == 200
        config = tmp_path / "rakka.toml"
        config.write_text(
            config.read_text().replace("max_header_bytes = 2048", "max_header_bytes = 1024")
        )
        server.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(20), httpx.AsyncClient(base_url=server.url) as client:
            in_a_row = 0
            while in_a_row < 6:  # the parent reloads its workers one by one
                answer = await client.get("/healthz", headers={**header, "connection": "close"})
                in_a_row = in_a_row + 1 if answer.status_code == 431 else 0
                await asyncio.sleep(0.02)
        counts = shed(server)
        assert counts["head_timeout"] == 1
        assert counts["header_too_long"] >= 6


# --------------------------------------------------------------------------- rakka validate


async def test_validate_names_each_bad_limit_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "rakka.toml"
    path.write_text(
        "[cluster]\nheader_timeout_ms = 0\nmax_connections = 0\nmax_head_bytes = 2048\n"
        "max_header_bytes = 4096\nmax_request_line_bytes = 100\n"
    )
    finished = await run_rakka("validate", "--no-secrets", str(path))
    assert finished.status == 1
    lines = finished.stderr.splitlines()
    assert f"  {path}:2: cluster.header_timeout_ms: must be > 0, got 0" in lines
    assert f"  {path}:3: cluster.max_connections: must be in 1..1000000, got 0" in lines
    assert f"  {path}:6: cluster.max_request_line_bytes: must be in 256..1048576, got 100" in lines
    assert len(lines) == 4, lines  # the record's own rules wait for its fields
    path.write_text("[cluster]\nmax_head_bytes = 2048\nmax_header_bytes = 4096\n")
    finished = await run_rakka("validate", "--no-secrets", str(path))
    assert finished.status == 1
    assert f"  {path}:3: cluster.max_header_bytes: must be <= max_head_bytes (2048)" in (
        finished.stderr.splitlines()
    )
