"""Faults and scripted replies shared by the mock provider servers.

Every mock (OpenAI/Azure, Anthropic, Gemini) takes the same two things:

- a :class:`FaultPlan` — which faults to apply, to the next requests in order
  (:meth:`FaultPlan.next`), to every request made with one API key
  (:meth:`FaultPlan.for_key`), or to one request that asks for it with the
  ``x-mock-fault`` header (see :func:`parse_fault_header`); plus the set of valid keys, so
  a test can rotate a key and watch the old one get the provider's real 401;
- a :class:`ReplyScript` — what the model "says": deterministic text split into a chosen
  number of stream chunks with a chosen delay between them, or tool calls.

Each mock renders a fault in its own provider's wire format (status, headers, error body,
stream framing); this module only says *what* goes wrong.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "FAULT_HEADER",
    "Fault",
    "FaultKind",
    "FaultPlan",
    "ReplyScript",
    "ScriptedToolCall",
    "count_tokens",
    "parse_fault_header",
]

FAULT_HEADER = "x-mock-fault"
"""A request header naming one fault for that request, e.g. ``rate_limit;retry_after=0.5``."""


class FaultKind(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    """429 with Retry-After (and the provider's rate-limit headers)."""
    SERVER_ERROR = "server_error"
    """A 5xx: ``status`` (default 503)."""
    OVERLOADED = "overloaded"
    """The provider's overload answer (Anthropic's 529 ``overloaded_error``; 503 elsewhere)."""
    CONTENT_FILTER = "content_filter"
    """A refusal for content policy, in the provider's format."""
    CONTEXT_LENGTH = "context_length"
    """The prompt is too long for the model."""
    UNAUTHORIZED = "unauthorized"
    """The provider's real 401 for a wrong key."""
    SLOW_FIRST_BYTE = "slow_first_byte"
    """Wait ``delay_s`` before the status line."""
    STALL = "stall"
    """Stream ``after_chunks`` chunks, then go silent."""
    RESET = "reset"
    """Stream ``after_chunks`` chunks, then reset the connection."""
    MALFORMED_CHUNK = "malformed_chunk"
    """Replace stream chunk number ``after_chunks`` with broken JSON."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    status: int | None = None
    retry_after_s: float | None = None
    delay_s: float = 0.0
    after_chunks: int = 1

    @classmethod
    def rate_limit(cls, retry_after_s: float = 1.0) -> Fault:
        return cls(FaultKind.RATE_LIMIT, retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls, status: int = 503) -> Fault:
        return cls(FaultKind.SERVER_ERROR, status=status)

    @classmethod
    def overloaded(cls) -> Fault:
        return cls(FaultKind.OVERLOADED)

    @classmethod
    def content_filter(cls) -> Fault:
        return cls(FaultKind.CONTENT_FILTER)

    @classmethod
    def context_length(cls) -> Fault:
        return cls(FaultKind.CONTEXT_LENGTH)

    @classmethod
    def unauthorized(cls) -> Fault:
        return cls(FaultKind.UNAUTHORIZED)

    @classmethod
    def slow_first_byte(cls, delay_s: float) -> Fault:
        return cls(FaultKind.SLOW_FIRST_BYTE, delay_s=delay_s)

    @classmethod
    def stall(cls, after_chunks: int = 1) -> Fault:
        return cls(FaultKind.STALL, after_chunks=after_chunks)

    @classmethod
    def reset(cls, after_chunks: int = 1) -> Fault:
        return cls(FaultKind.RESET, after_chunks=after_chunks)

    @classmethod
    def malformed_chunk(cls, after_chunks: int = 1) -> Fault:
        return cls(FaultKind.MALFORMED_CHUNK, after_chunks=after_chunks)


def parse_fault_header(value: str) -> Fault:
    """``kind[;name=value]...`` — e.g. ``server_error;status=502``, ``stall;after_chunks=2``.

    Raises ValueError for an unknown kind or parameter.
    """
    kind_text, *params = (part.strip() for part in value.split(";"))
    kind = FaultKind(kind_text)
    options: dict[str, Any] = {}
    for param in params:
        name, _, raw = param.partition("=")
        if name in {"status", "after_chunks"}:
            options[name] = int(raw)
        elif name in {"retry_after", "retry_after_s"}:
            options["retry_after_s"] = float(raw)
        elif name in {"delay", "delay_s"}:
            options["delay_s"] = float(raw)
        else:
            raise ValueError(f"unknown fault parameter {name!r}")
    if kind is FaultKind.RATE_LIMIT:
        options.setdefault("retry_after_s", 1.0)
    return Fault(kind, **options)


@dataclass
class FaultPlan:
    """What the mock does wrong, and which keys it accepts. Mutable: tests drive it live."""

    valid_keys: set[str] | None = None
    """Keys the mock accepts; None accepts any non-empty key."""
    _next: deque[Fault] = field(default_factory=deque)
    _by_key: dict[str, list[Any]] = field(default_factory=dict)

    def next(self, *faults: Fault) -> None:
        """Apply ``faults`` to the next requests, one each, in order."""
        self._next.extend(faults)

    def for_key(self, key: str, fault: Fault, *, times: int | None = None) -> None:
        """Apply ``fault`` to requests made with ``key`` (``times`` of them, or all)."""
        self._by_key[key] = [fault, times]

    def clear(self) -> None:
        self._next.clear()
        self._by_key.clear()

    def rotate_key(self, old: str, new: str) -> None:
        """``new`` becomes valid and ``old`` gets the provider's 401 from now on."""
        keys = set(self.valid_keys or ())
        keys.discard(old)
        keys.add(new)
        self.valid_keys = keys

    def accepts(self, key: str | None) -> bool:
        if not key:
            return False
        return self.valid_keys is None or key in self.valid_keys

    def take(self, key: str | None, header: str | None = None) -> Fault | None:
        """The fault for one request: its header's, else the next queued, else its key's."""
        if header:
            return parse_fault_header(header)
        if self._next:
            return self._next.popleft()
        entry = self._by_key.get(key or "")
        if entry is None:
            return None
        fault, times = entry
        if times is not None:
            if times <= 1:
                del self._by_key[key or ""]
            else:
                entry[1] = times - 1
        assert isinstance(fault, Fault)
        return fault


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReplyScript:
    """What the mock model answers. Deterministic: the same request gets the same answer.

    With ``tool_calls`` set (and the request offering tools), the answer is those calls
    (several make parallel calls); otherwise it is ``text`` — by default an echo of the
    last user message — cut into ``chunks`` stream pieces ``chunk_delay_s`` apart.
    """

    text: str | None = None
    chunks: int = 4
    chunk_delay_s: float = 0.0
    tool_calls: Sequence[ScriptedToolCall] = ()

    def answer_text(self, last_user_text: str) -> str:
        return self.text if self.text is not None else f"You said: {last_user_text}"

    def pieces(self, text: str) -> list[str]:
        """``text`` cut into ``chunks`` pieces (fewer when the text is shorter)."""
        count = max(1, min(self.chunks, len(text) or 1))
        size, extra = divmod(len(text), count)
        pieces: list[str] = []
        start = 0
        for index in range(count):
            end = start + size + (1 if index < extra else 0)
            pieces.append(text[start:end])
            start = end
        return pieces


def count_tokens(texts: Iterable[str]) -> int:
    """The mocks' deterministic token count: whitespace-separated words, at least 1."""
    return max(1, sum(len(text.split()) for text in texts))
