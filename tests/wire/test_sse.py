"""The SSE decoder: WHATWG examples, every field rule, chunking property, fuzzing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.errors import ProtocolError
from rakka_inference.wire.sse import SseDecoder, SseEvent


def decode(stream: bytes) -> list[SseEvent]:
    return SseDecoder().feed(stream)


def decode_bytewise(stream: bytes) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for i in range(len(stream)):
        events.extend(decoder.feed(stream[i : i + 1]))
    return events


# ------------------------------------------------------------ the spec's examples


def test_spec_example_multiline_data() -> None:
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert decode(stream) == [SseEvent(b"YHOO\n+2\n10")]


def test_spec_example_comments_ids_and_trailing_event() -> None:
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n"
    )
    assert decode(stream) == [
        SseEvent(b"first event", id="1"),
        SseEvent(b"second event", id=""),
    ]


def test_spec_example_empty_data_lines() -> None:
    stream = b"data\n\ndata\ndata\n\ndata:"
    assert decode(stream) == [SseEvent(b""), SseEvent(b"\n")]


def test_spec_example_one_space_removed() -> None:
    assert decode(b"data:test\n\ndata: test\n\n") == [SseEvent(b"test"), SseEvent(b"test")]


# ------------------------------------------------------------ field rules


def test_event_type_and_reset_after_dispatch() -> None:
    stream = b"event: add\ndata: 1\n\ndata: 2\n\nevent:\ndata: 3\n\n"
    assert decode(stream) == [
        SseEvent(b"1", event="add"),
        SseEvent(b"2"),
        SseEvent(b"3"),  # an empty event type means "message"
    ]


def test_no_event_without_data_and_the_type_is_reset() -> None:
    stream = b"event: ping\n\ndata: x\n\n"
    assert decode(stream) == [SseEvent(b"x")]


def test_id_persists_and_nul_is_ignored() -> None:
    stream = b"id: 7\ndata: a\n\ndata: b\n\nid: bad\x00id\ndata: c\n\nid\ndata: d\n\n"
    assert [e.id for e in decode(stream)] == ["7", "7", "7", ""]


def test_retry_only_when_all_digits() -> None:
    decoder = SseDecoder()
    events = decoder.feed(b"retry: 1500\ndata: a\n\nretry: 15x\ndata: b\n\nretry: 20\n\n")
    assert [(e.data, e.retry) for e in events] == [("a", 1500), ("b", None)]
    assert decoder.retry == 20


def test_field_without_colon_and_unknown_fields() -> None:
    stream = b"data\nfoo: bar\nbar\ndata:x\n\n"
    assert decode(stream) == [SseEvent(b"\nx")]


def test_value_keeps_colons_and_extra_spaces() -> None:
    assert decode(b'data:  {"a": "b:c"}\n\n') == [SseEvent(b' {"a": "b:c"}')]


@pytest.mark.parametrize("newline", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"data: 1", b"data: 2", b"", b""])
    assert decode(stream) == [SseEvent(b"1\n2", event="e")]


def test_cr_at_chunk_end_then_lf_is_one_line_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [SseEvent(b"a")]
    assert decoder.feed(b"\ndata: b\r\n\r\n") == [SseEvent(b"b")]


def test_cr_at_chunk_end_then_another_cr_is_a_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [SseEvent(b"a")]


def test_leading_bom_is_dropped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert decode(bom + b"data: a\n\n") == [SseEvent(b"a")]
    assert decode_bytewise(bom + b"data: a\n\n") == [SseEvent(b"a")]
    # A second BOM is not at the start of the stream: it is part of the field name.
    assert decode(bom + bom + b"data: a\n\n") == []


def test_bom_prefix_that_is_not_a_bom() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"\xef") == []
    assert decoder.feed(b"data: x\n\n") == []  # "\ufffddata" is an unknown field
    assert decoder.feed(b"data: y\n\n") == [SseEvent(b"y")]


def test_utf8_split_across_chunks() -> None:
    text = "data: héllo wörld 你好 🎉\n\n".encode()
    for cut in range(1, len(text)):
        decoder = SseDecoder()
        [event] = decoder.feed(text[:cut]) + decoder.feed(text[cut:])
        assert event.data == "héllo wörld 你好 🎉"


def test_invalid_utf8_is_replaced_not_raised() -> None:
    [event] = decode(b"data: \xff\xfe\n\n")
    assert event.raw == b"\xff\xfe"
    assert event.data == "\ufffd\ufffd"


def test_empty_chunks_and_close() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"") == []
    assert decoder.feed(b"data: partial\n") == []
    assert decoder.close() is True  # the unterminated event is discarded
    assert decoder.feed(b"\n") == []
    assert decoder.close() is False
    decoder.feed(b"data: tail")
    assert decoder.close() is True


def test_openai_style_stream() -> None:
    stream = (
        b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
        b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    assert [e.data for e in decode_bytewise(stream)] == [
        '{"choices":[{"delta":{"content":"Hel"}}]}',
        '{"choices":[{"delta":{"content":"lo"}}]}',
        "[DONE]",
    ]


def test_anthropic_style_named_events() -> None:
    stream = (
        b"event: message_start\r\ndata: {}\r\n\r\n"
        b"event: ping\r\ndata: {}\r\n\r\n"
        b"event: message_stop\r\ndata: {}\r\n\r\n"
    )
    assert [e.event for e in decode(stream)] == ["message_start", "ping", "message_stop"]


# ------------------------------------------------------------ limits


def test_oversized_line_is_a_protocol_error() -> None:
    decoder = SseDecoder(max_event_bytes=16)
    with pytest.raises(ProtocolError, match="line longer than 16 bytes"):
        decoder.feed(b"data: " + b"x" * 32)


def test_bulk_path_handles_whole_data_blocks_and_falls_back() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"id: 1\ndata: warm\n\n") == [SseEvent(b"warm", id="1")]
    # Idle now: whole single-line data blocks are taken in bulk, keeping the last id.
    assert decoder.feed(b"data: a\n\ndata: b: c\n\n") == [
        SseEvent(b"a", id="1"),
        SseEvent(b"b: c", id="1"),
    ]
    # Chunks that look alike but are not all single-line data blocks fall back.
    assert decoder.feed(b"data: a\ndata: b\n\n") == [SseEvent(b"a\nb", id="1")]
    assert decoder.feed(b"data: a\n\n\n") == [SseEvent(b"a", id="1")]
    assert decoder.feed(b"data: a\r\n\n") == [SseEvent(b"a", id="1")]
    assert decoder.feed(b"data: x\n\nevent: e\ndata: y\n\n") == [
        SseEvent(b"x", id="1"),
        SseEvent(b"y", event="e", id="1"),
    ]


def test_bulk_path_enforces_the_size_limit() -> None:
    decoder = SseDecoder(max_event_bytes=8)
    assert decoder.feed(b"data: ok\n\n") == [SseEvent(b"ok")]
    with pytest.raises(ProtocolError, match="event larger than 8 bytes"):
        decoder.feed(b"data: 0123456789\n\n")


def test_oversized_event_is_a_protocol_error() -> None:
    decoder = SseDecoder(max_event_bytes=16)
    with pytest.raises(ProtocolError, match="event larger than 16 bytes"):
        decoder.feed(b"data: 0123456789\ndata: 0123456789\n")


# ------------------------------------------------------------ properties

_line_text = st.sampled_from(
    [
        b"data: x",
        b"data:",
        b"data",
        b"data: h\xc3\xa9 \xf0\x9f\x8e\x89",
        b"event: e",
        b"event:",
        b"id: 3",
        b"id",
        b"retry: 100",
        b"retry: x",
        b": comment",
        b"unknown: field",
        b"",
    ]
)
_newline = st.sampled_from([b"\n", b"\r", b"\r\n"])
_streams = st.builds(
    lambda bom, lines: (b"\xef\xbb\xbf" if bom else b"") + b"".join(a + b for a, b in lines),
    st.booleans(),
    st.lists(st.tuples(_line_text, _newline), max_size=30),
)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(stream)) for c in cuts})
    edges = [0, *points, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(stream=_streams, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_every_chunking_gives_the_same_events(stream: bytes, cuts: list[int]) -> None:
    whole = SseDecoder()
    expected = whole.feed(stream)
    chunked = SseDecoder()
    got: list[SseEvent] = []
    for chunk in _cut(stream, cuts):
        got.extend(chunked.feed(chunk))
    assert got == expected
    assert chunked.retry == whole.retry


@settings(max_examples=100, deadline=None)
@given(stream=_streams)
def test_bytewise_feeding_matches_whole(stream: bytes) -> None:
    assert decode_bytewise(stream) == decode(stream)


@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_only_typed_errors(chunks: list[bytes]) -> None:
    decoder = SseDecoder(max_event_bytes=48)
    try:
        for chunk in chunks:
            for event in decoder.feed(chunk):
                assert isinstance(event.data, str)
        decoder.close()
    except ProtocolError:
        pass


_lf_streams = st.builds(
    lambda lines: b"".join(line + b"\n" for line in lines),
    st.lists(_line_text, max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(stream=_lf_streams, cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_lf_only_streams_agree_with_bytewise_feeding(stream: bytes, cuts: list[int]) -> None:
    # LF-only input is where the block path runs; bytewise feeding walks line by line.
    chunked = SseDecoder()
    got: list[SseEvent] = []
    for chunk in _cut(stream, cuts):
        got.extend(chunked.feed(chunk))
    assert got == decode_bytewise(stream)


def test_block_path_keeps_the_unfinished_event_for_the_next_chunk() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: warm\n\n") == [SseEvent(b"warm")]
    assert decoder.feed(b"data: a\n\ndata: b\n\nevent: e\ndata: c") == [
        SseEvent(b"a"),
        SseEvent(b"b"),
    ]
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\ndata: d\n\n") == [SseEvent(b"c", event="e"), SseEvent(b"d")]
    assert decoder.feed(b"event: x\n") == []
    assert decoder.close() is False  # only an event name was pending: no data lost
    assert decoder.feed(b"data: y") == []
    assert decoder.close() is True


def test_block_path_limits() -> None:
    decoder = SseDecoder(max_event_bytes=8)
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: 0123456789")
    decoder = SseDecoder(max_event_bytes=8)
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: a\n\ndata: 0123456789")
    decoder = SseDecoder(max_event_bytes=8)
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(ProtocolError):
        decoder.feed(b"data: a\n\ndata: 0123456789\n\n")
