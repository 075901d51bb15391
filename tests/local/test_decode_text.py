"""decode_text: incremental detokenizing that never splits a UTF-8 character, stop
sequences across chunk boundaries, and one answer's finish — pure, on a byte tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rakka_inference.core.stream import FinishReason
from rakka_inference.local.decode_text import CompletionText, IncrementalDetokenizer, StopMatcher

EOS = 256


def byte_decode(tokens: Sequence[int]) -> str:
    """A byte-level tokenizer: token i < 256 is the byte i; 256 is a special token."""
    return bytes(token for token in tokens if token < EOS).decode("utf-8", errors="replace")


def byte_tokens(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def test_multi_byte_characters_split_over_tokens_come_out_whole() -> None:
    text = "héllo 世界 🎉!"
    detokenizer = IncrementalDetokenizer(byte_decode)
    deltas = [detokenizer.push(token) for token in byte_tokens(text)]
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + detokenizer.flush() == text
    # The four bytes of 🎉 give three empty deltas, then the whole character.
    emoji = deltas[len("héllo 世界 ".encode()) :][:4]
    assert emoji == ["", "", "", "🎉"]


@given(st.text(min_size=1, max_size=40))
def test_any_text_round_trips_without_broken_characters(text: str) -> None:
    detokenizer = IncrementalDetokenizer(byte_decode, context=byte_tokens("ctx"))
    deltas = [detokenizer.push(token) for token in byte_tokens(text)]
    if "\ufffd" not in text:
        assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + detokenizer.flush() == text


def test_an_unfinished_character_is_flushed_as_a_replacement() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode)
    assert detokenizer.push(0xE4) == ""  # the first byte of a three-byte character
    assert detokenizer.flush() == "\ufffd"
    assert detokenizer.flush() == ""


def test_the_prompt_context_is_never_emitted() -> None:
    detokenizer = IncrementalDetokenizer(byte_decode, context=byte_tokens("a long prompt"))
    assert detokenizer.push(ord("x")) == "x"


def test_stop_sequences_are_found_across_deltas_and_not_emitted() -> None:
    matcher = StopMatcher(["END", "##"])
    assert matcher.push("hello E") == ("hello ", None)  # "E" could begin END
    assert matcher.push("N") == ("", None)
    assert matcher.push("Dx") == ("", "END")


def test_the_earliest_stop_wins_and_false_starts_are_released() -> None:
    matcher = StopMatcher(["abc", "bd"])
    assert matcher.push("xab") == ("x", None)
    assert matcher.push("d") == ("a", "bd")
    released = StopMatcher(["abc"])
    assert released.push("ab") == ("", None)
    assert released.push("x") == ("abx", None)
    assert released.push("a") == ("", None)
    assert released.flush() == "a"


def test_no_stops_pass_text_through_and_empty_stops_are_refused() -> None:
    assert StopMatcher([]).push("anything") == ("anything", None)
    with pytest.raises(ValueError, match="empty"):
        StopMatcher([""])


@given(st.lists(st.text(alphabet="abc", max_size=4), max_size=8))
def test_splitting_the_stream_anywhere_finds_the_same_stop(pieces: list[str]) -> None:
    whole = "".join(pieces)
    stop = "bca"
    matcher = StopMatcher([stop])
    emitted, matched = "", None
    for piece in pieces:
        text, matched = matcher.push(piece)
        emitted += text
        if matched:
            break
    else:
        emitted += matcher.flush()
    expected = whole.split(stop)[0]
    assert (emitted, matched) == (expected, stop if stop in whole else None)


def completion(**options: object) -> CompletionText:
    settings: dict[str, object] = {"max_tokens": 100, "eos_ids": {EOS}, **options}
    return CompletionText(byte_decode, **settings)  # type: ignore[arg-type]


def feed(answer: CompletionText, tokens: Sequence[int]) -> tuple[str, FinishReason | None]:
    text = ""
    for token in tokens:
        delta, finish = answer.push(token)
        text += delta
        if finish is not None:
            return text, finish
    return text, None


def test_the_end_of_sequence_token_stops_without_text() -> None:
    answer = completion()
    assert feed(answer, [*byte_tokens("hi"), EOS, ord("x")]) == ("hi", FinishReason.STOP)
    assert (answer.tokens, answer.stopped_by) == (3, None)


def test_the_cap_ends_with_length_and_flushes_what_was_held() -> None:
    answer = completion(max_tokens=3, stops=["zz"])
    assert feed(answer, [*byte_tokens("az"), 0xC3]) == ("az\ufffd", FinishReason.LENGTH)
    assert answer.tokens == 3


def test_a_stop_sequence_ends_the_answer_and_says_which() -> None:
    answer = completion(stops=["\n\n", "STOP"])
    assert feed(answer, byte_tokens("one\ntwo\n\nthree")) == ("one\ntwo", FinishReason.STOP)
    assert (answer.stopped_by, answer.tokens) == ("\n\n", len("one\ntwo\n\n"))


def test_a_stop_completed_by_the_final_flush_is_still_a_stop() -> None:
    answer = completion(max_tokens=4, stops=["é!"])
    tokens = [*byte_tokens("aé"), ord("!")]  # "é" is two bytes: four tokens in all
    assert feed(answer, tokens) == ("a", FinishReason.STOP)
    at_eos = completion(stops=["b"])
    assert feed(at_eos, [ord("a"), ord("b") + 0, EOS]) == ("a", FinishReason.STOP)


def test_held_text_is_released_at_the_end_of_sequence() -> None:
    answer = completion(stops=["xyz"])
    assert feed(answer, [*byte_tokens("axy"), EOS]) == ("axy", FinishReason.STOP)
    assert answer.stopped_by is None


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        completion(max_tokens=0)


def test_a_stop_completed_only_by_the_final_flush_is_a_stop() -> None:
    answer = completion(stops=["x\ufffd"])
    assert feed(answer, [ord("a"), ord("x"), 0xE4, EOS]) == ("a", FinishReason.STOP)
    assert answer.stopped_by == "x\ufffd"
