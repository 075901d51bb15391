"""What a test scripts on a :class:`~rakka_inference.testkit.http_server.ScriptedHttpServer`,
and what the server records: sans-I/O values, no sockets here.

A :class:`ScriptedResponse` is one answer: status, headers, body chunks (each a
:class:`Chunk`, written after its own delay) and at most one fault — silence
(``stall_after_chunks``), a TCP reset (``reset_after_chunks``) or a plain close
(``close_after_chunks``) in the middle of the body — after ``first_byte_delay``. Its
constructors :meth:`~ScriptedResponse.json`, :meth:`~ScriptedResponse.text` and
:meth:`~ScriptedResponse.stream` take those options as :class:`Faults`.

Framing: a response built with ``chunked=True`` (:meth:`ScriptedResponse.stream`) uses
chunked transfer-encoding, one HTTP chunk per scripted chunk; otherwise the head carries
``Content-Length`` (the full scripted length, so a fault leaves the body visibly short).

A :class:`Responder` answers a :class:`RecordedRequest` (every request as the server read
it) with a :class:`ScriptedResponse`; a :class:`ClientAbort` is a response the client
abandoned mid-flight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Self, TypedDict, Unpack

import orjson

__all__ = [
    "Chunk",
    "ClientAbort",
    "Faults",
    "RecordedRequest",
    "Responder",
    "ScriptedResponse",
]


class Chunk(NamedTuple):
    """One piece of a response body, written ``delay`` seconds after the previous one."""

    data: bytes
    delay: float = 0.0


class Faults(TypedDict, total=False):
    """The keyword options that the :class:`ScriptedResponse` constructors pass through."""

    first_byte_delay: float
    stall_after_chunks: int
    reset_after_chunks: int
    close_after_chunks: int
    keep_alive: bool
    reason: str


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    """One scripted answer.

    ``first_byte_delay``: seconds before the status line is written.
    ``stall_after_chunks=N``: write the head and N chunks, then go silent until the client
    gives up or the server stops. ``reset_after_chunks=N``: write N chunks, then abort the
    connection with a TCP reset. ``close_after_chunks=N``: write N chunks, then close the
    connection cleanly (FIN) with the body incomplete. At most one of the three.
    """

    status: int = 200
    headers: Mapping[str, str] | Sequence[tuple[str, str]] = ()
    body: Sequence[bytes | Chunk] | bytes = ()
    """The chunks, in order; a bare ``bytes`` is one chunk."""
    chunked: bool = False
    first_byte_delay: float = 0.0
    stall_after_chunks: int | None = None
    reset_after_chunks: int | None = None
    close_after_chunks: int | None = None
    keep_alive: bool = True
    reason: str | None = None
    chunks: tuple[Chunk, ...] = field(init=False, repr=False)
    header_pairs: tuple[tuple[str, str], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        body = (self.body,) if isinstance(self.body, bytes) else self.body
        chunks = tuple(c if isinstance(c, Chunk) else Chunk(bytes(c)) for c in body)
        object.__setattr__(self, "chunks", chunks)
        object.__setattr__(self, "header_pairs", _pairs(self.headers))
        faults = [
            n
            for n in (self.stall_after_chunks, self.reset_after_chunks, self.close_after_chunks)
            if n is not None
        ]
        if len(faults) > 1:
            raise ValueError("script at most one of stall/reset/close_after_chunks")
        if faults and not 0 <= faults[0] <= len(chunks):
            raise ValueError(f"a fault after {faults[0]} chunks, but {len(chunks)} are scripted")

    @property
    def fault_after(self) -> int | None:
        """After how many chunks the scripted fault strikes, if one is scripted."""
        for n in (self.stall_after_chunks, self.reset_after_chunks, self.close_after_chunks):
            if n is not None:
                return n
        return None

    @classmethod
    def json(
        cls,
        payload: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        **options: Unpack[Faults],
    ) -> Self:
        """A ``Content-Length`` JSON answer in one chunk."""
        pairs = (("Content-Type", "application/json"), *_pairs(headers))
        return cls(status, pairs, [orjson.dumps(payload)], **options)

    @classmethod
    def text(
        cls,
        body: bytes | str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        **options: Unpack[Faults],
    ) -> Self:
        """A ``Content-Length`` plain-text answer in one chunk."""
        data = body.encode() if isinstance(body, str) else body
        pairs = (("Content-Type", "text/plain"), *_pairs(headers))
        return cls(status, pairs, [data], **options)

    @classmethod
    def stream(
        cls,
        chunks: Iterable[bytes | Chunk],
        *,
        status: int = 200,
        chunk_delay: float = 0.0,
        content_type: str = "text/event-stream",
        headers: Mapping[str, str] | Sequence[tuple[str, str]] = (),
        **options: Unpack[Faults],
    ) -> Self:
        """A chunked answer; bare ``bytes`` chunks are each written after ``chunk_delay``."""
        body = [c if isinstance(c, Chunk) else Chunk(c, chunk_delay) for c in chunks]
        pairs = (("Content-Type", content_type), *_pairs(headers))
        return cls(status, pairs, body, chunked=True, **options)


def _pairs(headers: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server read it. ``headers`` are keyed in lower case."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    connection: int
    """Which connection carried it: 1 for the first the server accepted, and so on."""
    raw_headers: tuple[tuple[str, str], ...] = ()

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(frozen=True, slots=True)
class ClientAbort:
    """A response the client abandoned after ``chunks_sent`` chunks of it were written."""

    request: RecordedRequest
    chunks_sent: int


Responder = Callable[[RecordedRequest], ScriptedResponse | Awaitable[ScriptedResponse]]
