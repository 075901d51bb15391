"""OpenAI's per-choice ``index`` and ``logprobs`` read into our values, for the chat
adapter (unary choices and stream deltas alike) and every OpenAI-format upstream behind it.

``logprobs`` is ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}],
"refusal": ...}``; only ``content`` is read (the tokens of the text a chunk carries).
``bytes`` may be null (a token that is no whole UTF-8 sequence has its bytes split over
records; OpenAI sends them, some compatible servers do not). A record that is not of that
shape is a :class:`~rakka_inference.core.errors.ProtocolError`, never a crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.stream import TokenLogprob

__all__ = ["choice_index", "choice_logprobs"]


def choice_index(choice: Mapping[str, Any], provider: str) -> int:
    """The choice's ``index`` (0 when absent, as single-choice servers may leave it out)."""
    index = choice.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ProtocolError("a choice's index is not a non-negative integer", provider=provider)
    return index


def choice_logprobs(choice: Mapping[str, Any], provider: str) -> tuple[TokenLogprob, ...]:
    """The records of ``choice["logprobs"]["content"]``; none when either is null or absent."""
    logprobs = choice.get("logprobs")
    if logprobs is None:
        return ()
    if not isinstance(logprobs, dict):
        raise ProtocolError("a choice's logprobs is not an object", provider=provider)
    content = logprobs.get("content")
    if content is None:
        return ()
    if not isinstance(content, list):
        raise ProtocolError("logprobs.content is not an array", provider=provider)
    return tuple(_record(entry, provider, top=True) for entry in content)


def _record(entry: object, provider: str, *, top: bool) -> TokenLogprob:
    if not isinstance(entry, dict):
        raise ProtocolError("a logprobs record is not an object", provider=provider)
    token = entry.get("token")
    logprob = entry.get("logprob")
    if not isinstance(token, str):
        raise ProtocolError("a logprobs record has no token", provider=provider)
    if not isinstance(logprob, int | float) or isinstance(logprob, bool):
        raise ProtocolError("a logprobs record has no logprob", provider=provider)
    raw = entry.get("bytes")
    if raw is not None and not (
        isinstance(raw, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in raw)
    ):
        raise ProtocolError("a logprobs record's bytes are not bytes", provider=provider)
    alternatives = entry.get("top_logprobs") if top else None
    if alternatives is not None and not isinstance(alternatives, list):
        raise ProtocolError("a logprobs record's top_logprobs is not an array", provider=provider)
    return TokenLogprob(
        token=token,
        logprob=float(logprob),
        bytes=None if raw is None else tuple(raw),
        top=tuple(_record(alt, provider, top=False) for alt in alternatives or ()),
    )
