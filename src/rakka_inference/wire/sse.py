"""A sans-I/O decoder for ``text/event-stream`` (Server-Sent Events).

``SseDecoder().feed(data)`` takes bytes as they arrive from the socket, in chunks of any
size, and returns the events completed by them. It follows the WHATWG HTML "event stream
interpretation" rules:

- one leading UTF-8 byte-order mark is dropped, even when split across chunks;
- lines end in CRLF, LF or CR — including a CR that ends one chunk and an LF that starts
  the next, which together are *one* line end;
- a line starting with ``:`` is a comment;
- ``field:value`` — one space after the colon is removed; a line with no colon is a field
  with an empty value; unknown fields are ignored;
- ``data`` lines are joined with ``\\n``; ``event`` sets the type (default ``message``);
  ``id`` sets the last event id, which persists across events (a value containing NUL is
  ignored); ``retry`` sets the reconnection time when it is all ASCII digits;
- a blank line dispatches the event — unless no ``data`` line was seen since the last
  dispatch, in which case nothing is dispatched and the type is reset;
- an unterminated event at the end of the stream is discarded (``close()`` reports it).

Bytes are split into lines *before* decoding: line terminators are single bytes that never
occur inside a multi-byte UTF-8 sequence, so a complete line is complete UTF-8 however the
stream was chunked. Invalid UTF-8 decodes with replacement characters, as the spec says.

An event keeps its payload as the raw bytes (``SseEvent.raw``) and decodes it to text only
when ``SseEvent.data`` is read: provider adapters hand the bytes straight to the JSON
parser, so the common path never builds the intermediate string.

Speed: most provider streams are ``data: {json}\n\n`` blocks with LF line ends. While the
decoder sits at an event boundary (nothing pending), LF-only input is taken a block at a
time: everything up to the last blank line is complete events, and when those are all
single ``data:`` lines — one count of LFs proves it — their payloads come from one
``split``, with no per-line Python work; the rest waits, unread, for the next chunk. Other
input (CRs, named events, ids, several data lines) takes the line-by-line path, which
inlines the ``data`` field. Both paths follow the same rules; property tests check that
every chunking, and feeding byte by byte, give the same events.

The only exception ``feed`` raises is :class:`ProtocolError`, when one event or line grows
beyond ``max_event_bytes`` (a misbehaving upstream must not exhaust memory).
"""

from __future__ import annotations

from itertools import repeat
from typing import NamedTuple

from rakka_inference.core.errors import ProtocolError

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "SseDecoder", "SseEvent"]

DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class SseEvent(NamedTuple):
    """One dispatched event. ``id`` is the last event id seen so far on the stream."""

    raw: bytes
    """The payload: the event's ``data`` lines joined with LF, as received."""
    event: str = "message"
    id: str = ""
    retry: int | None = None
    """The ``retry`` value set in this event's block, if any (milliseconds)."""

    @property
    def data(self) -> str:
        """The payload as text (invalid UTF-8 becomes U+FFFD, as the standard says)."""
        return self.raw.decode("utf-8", "replace")


# Building the tuple directly skips NamedTuple's Python-level __new__: events are built
# once per token on the hot path.
_new_event = tuple.__new__
_DATA = b"data: "


class SseDecoder:
    """Incremental event-stream decoder. One instance per stream."""

    __slots__ = (
        "_bom_checked",
        "_buffer",
        "_data",
        "_data_size",
        "_event",
        "_idle",
        "_last_id",
        "_max",
        "_pending_cr",
        "_reconnect",
        "_retry",
    )

    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._buffer = b""
        self._pending_cr = False
        self._bom_checked = False
        # True when nothing is pending: no buffered bytes, no partial event, no CR to
        # pair, BOM handled. Only then may a chunk take the bulk path.
        self._idle = False
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: bytes | None = None
        self._last_id = ""
        self._retry: int | None = None
        self._reconnect: int | None = None

    @property
    def retry(self) -> int | None:
        """The stream's reconnection time (ms), from the last valid ``retry`` field so far."""
        value = self._reconnect
        # The block path leaves complete lines of an unfinished event unread; a retry
        # field among them takes effect when its line arrives, as the standard says.
        *complete, _ = self._buffer.split(b"\n")
        for line in complete:
            name, _, raw = line.partition(b":")
            if name == b"retry":
                raw = raw[1:] if raw[:1] == b" " else raw
                if raw.isdigit():
                    value = int(raw)
        return value

    def feed(self, data: bytes) -> list[SseEvent]:
        """Decode a chunk; return the events it completed, in order."""
        if self._idle:
            if not self._buffer and data[-2:] == b"\n\n":
                # A chunk of whole blocks at an event boundary (providers flush one event
                # per write): the common single "data: ..." event needs no field walking.
                lines = data.splitlines()
                if len(lines) == 2 and not lines[1] and lines[0][:6] == _DATA:
                    raw = lines[0][6:]
                    if len(raw) > self._max:
                        raise ProtocolError(f"event-stream event larger than {self._max} bytes")
                    return [_new_event(SseEvent, (raw, "message", self._last_id, None))]
            if data.find(b"\r") < 0:
                return self._feed_blocks(data)
        if not data:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        buffer = self._buffer + data if self._buffer else data
        if not self._bom_checked:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._buffer = buffer  # could still be a split BOM: wait for more
                return []
            self._bom_checked = True
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        last = buffer[-1:]
        if last in {b"\n", b"\r"}:
            self._buffer = b""
            self._pending_cr = last == b"\r"
            lines = buffer.splitlines()
        else:
            lines = buffer.splitlines()
            self._buffer = lines.pop() if lines else b""
            if len(self._buffer) > self._max:
                raise ProtocolError(f"event-stream line longer than {self._max} bytes")
        events = self._lines(lines)
        self._idle = not (
            self._pending_cr or self._data or self._event is not None or self._retry is not None
        )
        return events

    def _feed_blocks(self, data: bytes) -> list[SseEvent]:
        """LF-only bytes while the buffer starts at an event boundary: whole blocks at once.

        Everything up to the last blank line is complete events; what follows stays in the
        buffer, unread, so the decoder is still at an event boundary afterwards. When the
        blocks are all single ``data: ...`` lines — checked with one count of LFs over them
        — the payloads come from one split, with no per-line work.
        """
        old = self._buffer
        buffer = old + data if old else data
        cut = buffer.rfind(b"\n\n", max(0, len(old) - 1))
        if cut < 0:
            if len(buffer) > self._max:
                raise ProtocolError(f"event-stream event larger than {self._max} bytes")
            self._buffer = buffer
            return []
        head = buffer[:cut]
        self._buffer = rest = buffer[cut + 2 :]
        if len(rest) > self._max:
            raise ProtocolError(f"event-stream event larger than {self._max} bytes")
        if head[:6] == _DATA:
            payloads = head[6:].split(b"\n\ndata: ")
            # The separators hold 2 LFs each; any other LF is a line of another shape.
            if head.count(b"\n") == 2 * len(payloads) - 2:
                if len(head) > self._max and max(map(len, payloads)) > self._max:
                    raise ProtocolError(f"event-stream event larger than {self._max} bytes")
                fields = zip(payloads, repeat("message"), repeat(self._last_id), repeat(None))
                return list(map(_new_event, repeat(SseEvent), fields))
        lines = head.split(b"\n")
        lines.append(b"")
        return self._lines(lines)  # ends on the blank line: the state is clean again

    def _lines(self, lines: list[bytes]) -> list[SseEvent]:
        events: list[SseEvent] = []
        append = events.append
        # The loop keeps the pending data in locals (written back before any call that
        # reads them): this is the per-line hot path of chunked streams.
        parts = self._data
        size = self._data_size
        limit = self._max
        for line in lines:
            if line[:6] == _DATA:  # the commonest field, inlined
                value = line[6:]
                parts.append(value)
                size += len(value) + 1
                if size > limit:
                    raise ProtocolError(f"event-stream event larger than {limit} bytes")
            elif line:
                self._data, self._data_size = parts, size
                self._field(line)
                parts, size = self._data, self._data_size
            else:
                if parts:
                    event = self._event
                    append(
                        _new_event(
                            SseEvent,
                            (
                                parts[0] if len(parts) == 1 else b"\n".join(parts),
                                event.decode("utf-8", "replace") if event else "message",
                                self._last_id,
                                self._retry,
                            ),
                        )
                    )
                    parts = []
                    size = 0
                self._event = None
                self._retry = None
        self._data = parts
        self._data_size = size
        return events

    def close(self) -> bool:
        """End of stream. True when an unterminated event was discarded."""
        # The buffer may still hold complete lines the block path left unread (never a
        # blank line after data, so nothing here can dispatch) and one unterminated line.
        *lines, unterminated = self._buffer.split(b"\n")
        self._lines(lines)
        partial = bool(self._data) or bool(unterminated)
        self._buffer = b""
        self._data = []
        self._data_size = 0
        self._event = None
        self._retry = None
        self._idle = self._bom_checked and not self._pending_cr
        return partial

    def _field(self, line: bytes) -> None:
        colon = line.find(b":")
        if colon == 0:
            return  # comment
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                raise ProtocolError(f"event-stream event larger than {self._max} bytes")
        elif name == b"event":
            self._event = value
        elif name == b"id":
            if b"\x00" not in value:
                self._last_id = value.decode("utf-8", "replace")
        elif name == b"retry" and value.isdigit():
            self._retry = self._reconnect = int(value)
