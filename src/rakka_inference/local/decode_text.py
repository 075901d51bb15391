"""From generated token ids to the text a client sees: sans-I/O, no torch.

Three small state machines, fed one token (or one piece of text) at a time:

:class:`IncrementalDetokenizer`
    Turns a growing list of token ids into text deltas. A byte-level tokenizer splits a
    multi-byte character over several tokens, and a SentencePiece tokenizer decides a
    token's leading space from its left neighbour, so a token cannot be decoded alone.
    The detokenizer decodes a short window ending at the newest token and emits what the
    window adds beyond its already-emitted prefix; while the window ends in U+FFFD (an
    incomplete UTF-8 sequence) it emits nothing and waits for the bytes that complete it.
    :meth:`~IncrementalDetokenizer.flush` gives up waiting at the end of the answer.
:class:`StopMatcher`
    Finds the first stop sequence in the text stream, across delta boundaries. Text that
    could be the start of a stop sequence is held back until it is known not to be; the
    stop itself is never emitted.
:class:`CompletionText`
    One answer's decoding: the two above, plus the end-of-sequence tokens and the token
    cap, folded into ``(text, finish_reason)`` per token.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from rakka_inference.core.stream import FinishReason

__all__ = ["CompletionText", "Decode", "IncrementalDetokenizer", "StopMatcher"]

Decode = Callable[[Sequence[int]], str]
"""Token ids to text, special tokens skipped (the tokenizer's ``decode``)."""

REPLACEMENT = "\ufffd"
"""What a decoder makes of bytes that are not (yet) valid UTF-8."""

CONTEXT_TOKENS = 4
"""How many prompt tokens seed the window, so the first token's leading space is right."""


class IncrementalDetokenizer:
    """Text deltas from token ids; see the module docstring.

    ``context`` is the tail of the prompt: decoded but never emitted, it gives the first
    generated token the neighbour that decides how it decodes.
    """

    __slots__ = ("_decode", "_prefix_offset", "_read_offset", "_tokens")

    def __init__(self, decode: Decode, context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._tokens: list[int] = list(context[-CONTEXT_TOKENS:]) if context else []
        self._prefix_offset = 0
        """Start of the window: tokens before it are emitted and no longer decoded."""
        self._read_offset = len(self._tokens)
        """End of what has been emitted (as text) within the window."""

    def push(self, token: int) -> str:
        """The text that ``token`` completes (``""`` while a character is incomplete)."""
        self._tokens.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """What is still held back, incomplete characters shown as U+FFFD."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        tokens = self._tokens
        prefix = self._decode(tokens[self._prefix_offset : self._read_offset])
        text = self._decode(tokens[self._prefix_offset :])
        if len(text) <= len(prefix) or (text.endswith(REPLACEMENT) and not final):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(tokens)
        return text[len(prefix) :]


class StopMatcher:
    """Cuts the text stream at the first stop sequence; see the module docstring."""

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: Sequence[str]) -> None:
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must not be empty")
        self._stops = tuple(stops)
        self._held = ""

    def push(self, text: str) -> tuple[str, str | None]:
        """The text that is safe to emit, and the stop sequence that ended it, if any.

        After a match, the matcher has nothing held and the answer is over: the caller
        emits the text before the stop and nothing more.
        """
        if not self._stops:
            return text, None
        buffer = self._held + text
        first: tuple[int, str] | None = None
        for stop in self._stops:
            at = buffer.find(stop)
            if at >= 0 and (first is None or at < first[0]):
                first = (at, stop)
        if first is not None:
            self._held = ""
            return buffer[: first[0]], first[1]
        keep = max(_overlap(buffer, stop) for stop in self._stops)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], None

    def flush(self) -> str:
        """What was held back as a possible stop: at the end of the answer it is text."""
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that begins ``stop`` (shorter than it)."""
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


class CompletionText:
    """One answer's decoding: token in, ``(text, finish_reason)`` out.

    The answer ends at an end-of-sequence token (``stop``; the token adds no text), at a
    stop sequence (``stop``; :attr:`stopped_by` says which), or after ``max_tokens``
    tokens (``length``). :attr:`tokens` counts every token generated, the end-of-sequence
    token and those that spelled a stop sequence included: the model produced them.
    """

    __slots__ = ("_detokenizer", "_eos", "_max_tokens", "_stops", "stopped_by", "tokens")

    def __init__(
        self,
        decode: Decode,
        *,
        max_tokens: int,
        eos_ids: Collection[int] = (),
        stops: Sequence[str] = (),
        context: Sequence[int] = (),
    ) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        self._detokenizer = IncrementalDetokenizer(decode, context)
        self._stops = StopMatcher(stops)
        self._eos = frozenset(eos_ids)
        self._max_tokens = max_tokens
        self.tokens = 0
        self.stopped_by: str | None = None
        """The stop sequence that ended the answer, if one did."""

    def push(self, token: int) -> tuple[str, FinishReason | None]:
        """The text ``token`` makes visible, and the finish reason if the answer is over."""
        self.tokens += 1
        if token in self._eos:
            return self._finish(self._detokenizer.flush(), FinishReason.STOP)
        text, stop = self._stops.push(self._detokenizer.push(token))
        if stop is not None:
            self.stopped_by = stop
            return text, FinishReason.STOP
        if self.tokens >= self._max_tokens:
            tail, reason = self._finish(self._detokenizer.flush(), FinishReason.LENGTH)
            return text + tail, reason
        return text, None

    def _finish(self, tail: str, reason: FinishReason) -> tuple[str, FinishReason]:
        text, stop = self._stops.push(tail)
        if stop is not None:
            self.stopped_by = stop
            return text, FinishReason.STOP
        return text + self._stops.flush(), reason
