"""How long a request's head is, measured as it arrives: before an HTTP parser keeps it.

An HTTP/1.1 parser keeps the request line and each header until its line ends, however
long it is (httptools, under uvicorn, grows it by concatenation, one read at a time: the
cost grows with the square of the line). :class:`HeadMeter` reads the same bytes first and
says which limit the head passes, if one:

- :attr:`HeadLimit.REQUEST_LINE`: the request line (``POST /v1/chat/completions HTTP/1.1``);
- :attr:`HeadLimit.HEADER`: one header line, name and value;
- :attr:`HeadLimit.HEAD`: the request line and the headers together.

A line is measured with its line ending. The meter answers on the read that passes a
limit, so whoever calls it can refuse the request having let at most the limit, plus that
read, reach the parser: nothing more.

Heads are framed as RFC 9112 §2.2 frames them: a line ends with LF (CRLF, or a bare LF,
which the parser may refuse on its own); empty lines before the request line are skipped
(they count towards the head); the first empty line after it ends the head. Once the head
has ended the meter measures nothing more until :meth:`HeadMeter.reset` (the body, and a
request pipelined behind it, are the parser's to frame).

Sans-I/O: bytes in, a verdict out. A head that arrives whole in one read and is shorter
than every limit costs one ``bytes.find``; otherwise one ``find`` per line.
"""

from __future__ import annotations

import enum

__all__ = ["HeadLimit", "HeadMeter"]

_CR = 13


class HeadLimit(enum.Enum):
    """A limit a request head passed; the value names it in metrics and logs."""

    REQUEST_LINE = "request_line_too_long"
    HEADER = "header_too_long"
    HEAD = "head_too_large"


class HeadMeter:
    """Measures one request head at a time, read by read (see the module)."""

    __slots__ = (
        "_cr",
        "_in_headers",
        "_line",
        "_max_head",
        "_max_header",
        "_max_request_line",
        "_short",
        "complete",
        "total",
    )

    def __init__(self, *, max_request_line: int, max_header: int, max_head: int) -> None:
        self._max_request_line = max_request_line
        self._max_header = max_header
        self._max_head = max_head
        self._short = min(max_request_line, max_header, max_head)
        """A head no longer than this passes every limit, whatever its lines."""
        self.total = 0
        """Bytes of the head measured so far."""
        self.complete = False
        """Whether the head's empty line has been read."""
        self._line = 0
        """Bytes of the line not yet ended."""
        self._cr = False
        """Whether that line's last byte is CR."""
        self._in_headers = False
        """Whether the request line has ended."""

    def reset(self) -> None:
        """Measure the next head."""
        self.total = self._line = 0
        self.complete = self._cr = self._in_headers = False

    def feed(self, data: bytes) -> HeadLimit | None:
        """Measure the next bytes read; the limit the head passed, or ``None``.

        After a limit is passed the meter is spent: reset it or drop it.
        """
        if self.complete:
            # The head ended here and the parser has not said so yet: count what it reads.
            self.total += len(data)
            return HeadLimit.HEAD if self.total > self._max_head else None
        if not self.total:
            end = data.find(b"\r\n\r\n")
            if 0 < end <= self._short - 4:  # the usual: a whole, short head in one read
                self.total = end + 4
                self.complete = True
                return None
        return self._scan(data)

    def _scan(self, data: bytes) -> HeadLimit | None:
        position, size = 0, len(data)
        while True:
            newline = data.find(b"\n", position)
            if newline < 0:
                rest = size - position
                if rest:
                    self._line += rest
                    self.total += rest
                    self._cr = data[-1] == _CR
                return self._passed(self._line)
            taken = newline + 1 - position
            length = self._line + taken
            self.total += taken
            if length == 1:
                empty = True
            elif length == 2:
                empty = data[newline - 1] == _CR if newline > position else self._cr
            else:
                empty = False
            self._line, self._cr = 0, False
            position = newline + 1
            if empty:
                if self._in_headers:
                    self.complete = True
                    return HeadLimit.HEAD if self.total > self._max_head else None
                passed = self._passed(0)  # an empty line before the request line
            else:
                passed = self._passed(length)
                self._in_headers = True
            if passed is not None:
                return passed

    def _passed(self, line: int) -> HeadLimit | None:
        """The limit passed by a line of ``line`` bytes, of the kind now read, or by the
        head so far."""
        if self._in_headers:
            if line > self._max_header:
                return HeadLimit.HEADER
        elif line > self._max_request_line:
            return HeadLimit.REQUEST_LINE
        return HeadLimit.HEAD if self.total > self._max_head else None
