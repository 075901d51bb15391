"""The request-head meter: each limit, named, on the read that passes it and no later."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from rakka_inference.wire.request_head import HeadLimit, HeadMeter

LINE, HEADER, HEAD = 64, 48, 256


def meter() -> HeadMeter:
    return HeadMeter(max_request_line=LINE, max_header=HEADER, max_head=HEAD)


def feed_bytewise(data: bytes) -> tuple[HeadLimit | None, int]:
    """Fed one byte at a time: the verdict and how many bytes it took."""
    m = meter()
    for index in range(len(data)):
        passed = m.feed(data[index : index + 1])
        if passed is not None or m.complete:
            return passed, index + 1
    return None, len(data)


def test_a_whole_short_head_in_one_read_passes_and_ends_there() -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n"
    m = HeadMeter(max_request_line=8192, max_header=8192, max_head=65536)
    assert m.feed(head + b'{"model": "m"}') is None
    assert (m.complete, m.total) == (True, len(head))


def test_a_head_in_pieces_is_measured_line_by_line() -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    m = meter()
    for piece in (head[:5], head[5:23], head[23:24], head[24:-1]):
        assert m.feed(piece) is None
        assert not m.complete
    assert m.feed(head[-1:]) is None
    assert (m.complete, m.total) == (True, len(head))


def test_a_cr_and_its_lf_in_two_reads_end_the_head() -> None:
    m = meter()
    assert m.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r") is None
    assert not m.complete
    assert m.feed(b"\n") is None
    assert m.complete


def test_a_lone_cr_carried_into_the_next_read_is_not_an_empty_line() -> None:
    m = meter()
    assert m.feed(b"GET / HTTP/1.1\r\nX") is None
    assert m.feed(b"\n") is None  # "X\n": a header line, not the end
    assert not m.complete
    assert m.feed(b"\n") is None
    assert m.complete


def test_bare_lf_lines_and_empty_lines_before_the_request_line() -> None:
    m = meter()
    assert m.feed(b"\r\n\nGET / HTTP/1.1\nHost: x\n\n") is None
    assert m.complete
    assert m.total == len(b"\r\n\nGET / HTTP/1.1\nHost: x\n\n")


def test_a_long_request_line_is_named_on_the_byte_that_passes_it() -> None:
    line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"
    assert meter().feed(line + b"\r\n") is HeadLimit.REQUEST_LINE
    assert feed_bytewise(line) == (HeadLimit.REQUEST_LINE, LINE + 1)


def test_a_long_header_line_is_named_and_short_ones_pass() -> None:
    request_line = b"GET / HTTP/1.1\r\n"
    ok = b"X-A: " + b"a" * (HEADER - 7) + b"\r\n"  # exactly the limit, CRLF included
    assert len(ok) == HEADER
    m = meter()
    assert m.feed(request_line + ok + b"\r\n") is None
    assert m.complete
    long = b"X-A: " + b"a" * HEADER + b"\r\n"
    assert meter().feed(request_line + long) is HeadLimit.HEADER
    assert feed_bytewise(request_line + long) == (HeadLimit.HEADER, len(request_line) + HEADER + 1)


def test_many_short_headers_pass_the_heads_limit() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 40 + b"\r\n"
    assert meter().feed(data) is HeadLimit.HEAD
    assert feed_bytewise(data) == (HeadLimit.HEAD, HEAD + 1)


def test_endless_empty_lines_pass_the_heads_limit() -> None:
    assert meter().feed(b"\r\n" * 200) is HeadLimit.HEAD


def test_once_ended_only_the_head_limit_counts_until_reset() -> None:
    m = meter()
    assert m.feed(b"GET / HTTP/1.1\r\n\r\n") is None
    assert m.complete
    assert m.feed(b"x" * 100) is None  # the parser has not said the head ended yet
    assert m.feed(b"x" * 200) is HeadLimit.HEAD
    m.reset()
    assert (m.total, m.complete) == (0, False)
    assert m.feed(b"GET / HTTP/1.1\r\n\r\n") is None
    assert m.complete


# --------------------------------------------------------------------------- any split


def first_passing_byte(data: bytes) -> int | None:
    """Where a limit is first passed (0-based), read a byte at a time by the rules of
    the module; None when the head ends first or the data does."""
    line = 0
    in_headers = previous_cr = False
    for index, byte in enumerate(data):
        line += 1
        limit = HEADER if in_headers else LINE
        if line > limit or index + 1 > HEAD:
            return index
        if byte == ord("\n"):
            empty = line == 1 or (line == 2 and previous_cr)
            if empty and in_headers:
                return None
            in_headers = in_headers or not empty
            line = 0
        previous_cr = byte == ord("\r")
    return None


text = st.text(alphabet="abcXYZ:/ -", max_size=90).map(str.encode)
heads = st.builds(
    lambda blanks, request, headers, body: (
        b"\r\n" * blanks
        + request
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + b"\r\n"
        + body
    ),
    st.integers(0, 2),
    text.filter(bool),
    st.lists(text.filter(bool), max_size=12),
    st.binary(max_size=40),
)


@given(heads, st.lists(st.integers(0, 400), max_size=8))
def test_any_split_names_the_read_that_passes_a_limit(data: bytes, cuts: list[int]) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    reads = [data[a:b] for a, b in itertools.pairwise(points) if b > a]
    passing = first_passing_byte(data)
    m = meter()
    start = 0
    for read in reads:
        passed = m.feed(read)
        end = start + len(read)
        if passed is not None:
            assert passing is not None, passed
            assert start <= passing < end, (passed, passing, start)
            return
        if m.complete:
            break
        start = end
    assert passing is None
    if m.complete:
        request_line = len(data) - len(data.lstrip(b"\r\n"))
        assert m.total == data.index(b"\r\n\r\n", request_line) + 4
