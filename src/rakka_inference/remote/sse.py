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

Speed: most provider streams are ``data: {json}\n\n`` blocks, flushed one per write. While
the decoder sits at an event boundary, such a chunk becomes an event without walking its
fields; anything else takes the general line-by-line path, which inlines the ``data``
field. Both paths implement the same rules; a property test checks every chunking agrees.

The only exception ``feed`` raises is :class:`ProtocolError`, when one event or line grows
beyond ``max_event_bytes`` (a misbehaving upstream must not exhaust memory).
"""

from __future__ import annotations

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
        "_retry",
        "retry",
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
        self.retry: int | None = None
        """The stream's reconnection time (ms), from the last valid ``retry`` field."""

    def feed(self, data: bytes) -> list[SseEvent]:
        """Decode a chunk; return the events it completed, in order."""
        if self._idle and data[-2:] == b"\n\n":
            # At an event boundary with a chunk of whole blocks (providers flush one event
            # per write): the common single "data: ..." event needs no field walking.
            lines = data.splitlines()
            if len(lines) == 2 and not lines[1] and lines[0][:6] == _DATA:
                raw = lines[0][6:]
                if len(raw) > self._max:
                    raise ProtocolError(f"event-stream event larger than {self._max} bytes")
                return [_new_event(SseEvent, (raw, "message", self._last_id, None))]
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
        events: list[SseEvent] = []
        append = events.append
        for line in lines:
            if line[:6] == _DATA:  # the commonest field, inlined
                value = line[6:]
                self._data.append(value)
                self._data_size += len(value) + 1
                if self._data_size > self._max:
                    raise ProtocolError(f"event-stream event larger than {self._max} bytes")
            elif line:
                self._field(line)
            elif self._data:
                append(self._dispatch())
            else:
                self._event = None
                self._retry = None
        self._idle = not (
            self._buffer
            or self._pending_cr
            or self._data
            or self._event is not None
            or self._retry is not None
        )
        return events

    def close(self) -> bool:
        """End of stream. True when an unterminated event was discarded."""
        partial = bool(self._data) or bool(self._buffer)
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
            self._retry = self.retry = int(value)

    def _dispatch(self) -> SseEvent:
        parts = self._data
        raw = parts[0] if len(parts) == 1 else b"\n".join(parts)
        event = self._event
        name = event.decode("utf-8", "replace") if event else "message"
        dispatched: SseEvent = _new_event(SseEvent, (raw, name, self._last_id, self._retry))
        self._data = []
        self._data_size = 0
        self._event = None
        self._retry = None
        return dispatched
