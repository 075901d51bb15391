"""Token usage, and folding a provider's usage reports into one total.

One convention for every provider. Adapters translate into it, once:

- ``input_tokens`` counts *all* prompt tokens, cached ones included. ``cached_input_tokens``
  is the subset served from a prompt cache (billed at the cached price). OpenAI and Gemini
  report it this way already; Anthropic reports cache reads and cache writes *next to*
  ``input_tokens``, so its adapter adds them in.
- ``output_tokens`` counts all generated tokens, reasoning included. ``reasoning_tokens`` is
  the subset spent on hidden reasoning (OpenAI's ``completion_tokens_details``); Gemini
  reports ``thoughtsTokenCount`` beside ``candidatesTokenCount``, so its adapter adds it in.

Providers differ in *how* they report during a stream. Some send increments (each report
adds to the total); others send a running total each time (Gemini's ``usageMetadata`` on
every chunk, Anthropic's ``message_delta.usage.output_tokens``). :class:`UsageAccumulator`
folds either kind without double counting, and says what each report added, so an adapter
can emit increments whatever its provider sends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields

__all__ = ["Usage", "UsageAccumulator", "UsageMode"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Usage:
    """Tokens used by one request (or one report of it). All counts are >= 0.

    ``cached_input_tokens`` is a subset of ``input_tokens`` and ``reasoning_tokens`` a
    subset of ``output_tokens`` (see the module docstring).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self) -> None:
        # Checked on one line of arithmetic: a Usage is built for many stream chunks.
        if (
            min(
                self.input_tokens,
                self.output_tokens,
                self.cached_input_tokens,
                self.reasoning_tokens,
            )
            < 0
        ):
            negative = {f.name: getattr(self, f.name) for f in fields(self)}
            raise ValueError(f"Usage counts must be >= 0, got {negative}")

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens (the subsets are already inside them)."""
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Prompt tokens billed at the full input price."""
        # A malformed report could claim more cached than total tokens; never go negative.
        return max(0, self.input_tokens - self.cached_input_tokens)

    @property
    def is_zero(self) -> bool:
        return self == _ZERO

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )

    def maximum(self, other: Usage) -> Usage:
        """The field-wise maximum: how two running totals of one stream combine."""
        return Usage(
            input_tokens=max(self.input_tokens, other.input_tokens),
            output_tokens=max(self.output_tokens, other.output_tokens),
            cached_input_tokens=max(self.cached_input_tokens, other.cached_input_tokens),
            reasoning_tokens=max(self.reasoning_tokens, other.reasoning_tokens),
        )

    def minus(self, other: Usage) -> Usage:
        """The field-wise difference, floored at 0: what ``self`` adds over ``other``."""
        return Usage(
            input_tokens=max(0, self.input_tokens - other.input_tokens),
            output_tokens=max(0, self.output_tokens - other.output_tokens),
            cached_input_tokens=max(0, self.cached_input_tokens - other.cached_input_tokens),
            reasoning_tokens=max(0, self.reasoning_tokens - other.reasoning_tokens),
        )


_ZERO = Usage()


class UsageMode(enum.StrEnum):
    """How a usage report relates to the ones before it in the same stream."""

    DELTA = "delta"
    """Each report is an increment; the total is their sum."""
    CUMULATIVE = "cumulative"
    """Each report is the running total so far; the total is the latest (largest) one."""


class UsageAccumulator:
    """Folds one stream's usage reports into its total.

    Reports in :attr:`UsageMode.CUMULATIVE` combine by field-wise maximum, not "last wins":
    a provider that leaves a field out of a later report (read as 0) must not erase an
    earlier value, and a report seen twice (a retransmitted event) must not count twice.
    Reports in :attr:`UsageMode.DELTA` are summed.

    One stream may mix the two (:meth:`add` takes a per-call ``mode``): the total is the
    sum of the delta reports plus the field-wise maximum of the cumulative ones. That is
    right as long as the two kinds count different tokens, as with Anthropic, whose
    ``message_start`` carries the prompt and whose ``message_delta`` carries the running
    output count.

    Not thread-safe; it belongs to one stream.
    """

    __slots__ = ("_cumulative", "_delta", "_mode", "_reported")

    def __init__(self, mode: UsageMode = UsageMode.DELTA) -> None:
        self._mode = mode
        self._delta = _ZERO
        self._cumulative = _ZERO
        self._reported = False

    @property
    def mode(self) -> UsageMode:
        """The mode used by :meth:`add` when a call gives none."""
        return self._mode

    @property
    def total(self) -> Usage:
        """The usage so far."""
        return self._delta + self._cumulative

    @property
    def reported(self) -> bool:
        """Whether any report was added: tells "no usage known" from "zero tokens"."""
        return self._reported

    def add(self, report: Usage, *, mode: UsageMode | None = None) -> Usage:
        """Fold in one report; return what it added to :attr:`total` (never negative).

        The return value lets an adapter whose provider reports running totals emit
        increments downstream.
        """
        self._reported = True
        before = self.total
        if (self._mode if mode is None else mode) is UsageMode.DELTA:
            self._delta = self._delta + report
        else:
            self._cumulative = self._cumulative.maximum(report)
        return self.total.minus(before)
