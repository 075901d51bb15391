"""A small HTTP/1.1 client over a Unix socket, for the node's own control traffic.

The workers of a node answer each other (and the parent) on Unix sockets in the node's
private directory: a forwarded admin request, a worker's ``/metrics``, an apply. One request
per connection (``Connection: close``), the answer read to the end, its size bounded, the
whole exchange under one timeout. It is not a general client: the peer is always our own
server (uvicorn), which answers with a status line, headers and a body it then closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_RESPONSE_BYTES", "UnixHttpError", "UnixResponse", "request"]

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
"""The largest answer read from a peer (a worker's metrics are well under it)."""


class UnixHttpError(Exception):
    """The peer could not be reached, did not answer in time, or answered garbage."""


@dataclass(frozen=True, slots=True)
class UnixResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


async def request(
    path: str,
    method: str,
    target: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    timeout: float = 10.0,
) -> UnixResponse:
    """Send one request to the server on the Unix socket ``path``; its answer."""
    try:
        async with asyncio.timeout(timeout):
            return await _exchange(path, method, target, headers, body)
    except TimeoutError:
        raise UnixHttpError(f"no answer within {timeout:g} s") from None
    except OSError as error:
        raise UnixHttpError(f"cannot reach the peer: {error.strerror or error}") from None


async def _exchange(
    path: str, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes
) -> UnixResponse:
    reader, writer = await asyncio.open_unix_connection(path, limit=MAX_RESPONSE_BYTES)
    try:
        lines = [f"{method} {target} HTTP/1.1", "host: localhost", "connection: close"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"content-length: {len(body)}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        raw = await reader.read(MAX_RESPONSE_BYTES + 1)
        while raw and len(raw) <= MAX_RESPONSE_BYTES:
            more = await reader.read(MAX_RESPONSE_BYTES + 1 - len(raw))
            if not more:
                break
            raw += more
    finally:
        writer.close()
    if len(raw) > MAX_RESPONSE_BYTES:
        raise UnixHttpError(f"the answer is over {MAX_RESPONSE_BYTES} bytes")
    return _parse(raw)


def _parse(raw: bytes) -> UnixResponse:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise UnixHttpError("the peer's answer is not HTTP")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    elif (length := headers.get("content-length", "")).isdigit():
        rest = rest[: int(length)]
    return UnixResponse(int(parts[1]), rest, headers)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, sep, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise UnixHttpError("a malformed chunk in the peer's answer") from None
        if not sep or size == 0:
            return bytes(out)
        out += data[:size]
        data = data[size + 2 :]
