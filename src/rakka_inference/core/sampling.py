"""How to sample an answer, and the shape it must take: part of
:mod:`rakka_inference.core.messages`, which re-exports every name.

Every number a client sends has a bound, checked here (one rule, every entry point) and,
with the dialect's own parameter name and wording, where the HTTP edge reads it. A bound
is either the API's own (OpenAI's, Anthropic's) or, where the APIs name none, far above any
real use and low enough that nothing downstream (the limiter's and the budget's
reservations, a provider's integer fields, a local runner's stop matching) is asked to hold
an absurd figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rakka_inference.core.errors import BadRequest

__all__ = [
    "MAX_CHOICES",
    "MAX_OUTPUT_TOKENS",
    "MAX_STOP_LENGTH",
    "MAX_STOP_SEQUENCES",
    "MAX_TOP_K",
    "MAX_TOP_LOGPROBS",
    "REASONING_EFFORTS",
    "SEED_RANGE",
    "THINKING_BUDGETS",
    "ResponseFormat",
    "SamplingParams",
    "refuse_choices_and_logprobs",
]


MAX_STOP_SEQUENCES = 4
"""OpenAI accepts at most four stop sequences; so do we, whatever the provider."""
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high")
"""The reasoning efforts OpenAI's reasoning models take, least first."""
THINKING_BUDGETS: Mapping[str, int] = {
    "none": 0,
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 24576,
}
"""The thinking budget (tokens) an effort becomes for a model that takes a budget rather
than an effort (Anthropic's extended thinking, Gemini's ``thinkingBudget``). 1024 is the
least Anthropic takes; 24576 the most Gemini Flash takes."""

MAX_CHOICES = 128
"""The most choices (``n``) a chat request may ask for: OpenAI's own limit."""
MAX_TOP_LOGPROBS = 20
"""The most alternatives per token ``top_logprobs`` may ask for: OpenAI's own limit."""

MAX_OUTPUT_TOKENS = 1 << 20
"""The largest output cap (``max_tokens``, ``max_completion_tokens``,
``max_output_tokens``) and thinking budget a request may set: 1,048,576 tokens, above every
model's output limit. The limiter and the budget reserve up to ``n`` times this."""
MAX_TOP_K = 1 << 20
"""The largest ``top_k``: above every tokenizer's vocabulary (the largest hold ~262k)."""
SEED_RANGE = (-(2**63), 2**63 - 1)
"""``seed`` is a signed 64-bit integer, as OpenAI takes it."""
MAX_STOP_LENGTH = 1024
"""The longest stop sequence, in characters. A local runner holds back up to this much of
an answer while it may still be the start of a stop, and compares it at every token."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFormat:
    """What shape the answer must take: free text, any JSON object, or a JSON Schema."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Mapping[str, Any] | None = None
    """The schema itself (OpenAI's ``json_schema.schema``); only with type json_schema."""
    schema_name: str | None = None
    """OpenAI requires a name for the schema (``json_schema.name``)."""
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.type == "json_schema":
            if self.json_schema is None or not self.schema_name:
                raise BadRequest(
                    "response_format json_schema needs a schema and a name",
                    param="response_format",
                )
        elif self.json_schema is not None or self.schema_name is not None:
            raise BadRequest(
                f"response_format {self.type} takes no schema", param="response_format"
            )

    @classmethod
    def text(cls) -> ResponseFormat:
        return cls(type="text")

    @classmethod
    def json_object(cls) -> ResponseFormat:
        return cls(type="json_object")

    @classmethod
    def from_schema(
        cls, name: str, schema: Mapping[str, Any], *, strict: bool | None = None
    ) -> ResponseFormat:
        return cls(type="json_schema", json_schema=schema, schema_name=name, strict=strict)


def _check_range(param: str, value: float | None, low: float, high: float) -> None:
    # Written as "not (low <= v <= high)" so NaN, which compares false, is rejected too.
    if value is not None and not low <= value <= high:
        raise BadRequest(f"{param} must be between {low:g} and {high:g}", param=param)


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplingParams:
    """How to sample. ``None`` leaves a setting to the provider's default.

    ``max_tokens`` is the cap on generated tokens. OpenAI has two names for it
    (``max_tokens`` and the newer ``max_completion_tokens``, which also counts reasoning
    tokens); the HTTP edge maps either into this one field. Ranges follow OpenAI's.
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int = 1
    """Number of choices to generate, 1 to :data:`MAX_CHOICES`."""
    logprobs: bool = False
    """Return each generated token's log probability (OpenAI's ``logprobs``)."""
    top_logprobs: int | None = None
    """With :attr:`logprobs`: this many likeliest alternatives per token, 0 to
    :data:`MAX_TOP_LOGPROBS` (OpenAI's ``top_logprobs``)."""
    reasoning_effort: str | None = None
    """How hard a reasoning model thinks: one of :data:`REASONING_EFFORTS` (OpenAI's
    ``reasoning_effort``, the Responses API's ``reasoning.effort``)."""
    top_k: int | None = None
    """Sample from the ``top_k`` likeliest tokens only (Anthropic's and Gemini's
    ``top_k``; OpenAI's API has none)."""
    thinking_budget: int | None = None
    """A thinking budget in tokens, as Anthropic's ``thinking.budget_tokens`` sets it; the
    other way to ask for reasoning than :attr:`reasoning_effort`, never with it."""

    def __post_init__(self) -> None:
        if self.top_k is not None and not 1 <= self.top_k <= MAX_TOP_K:
            raise BadRequest(f"top_k must be between 1 and {MAX_TOP_K}", param="top_k")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise BadRequest("seed must be a signed 64-bit integer", param="seed")
        if self.thinking_budget is not None:
            if not 1 <= self.thinking_budget <= MAX_OUTPUT_TOKENS:
                raise BadRequest(
                    f"thinking budget must be between 1 and {MAX_OUTPUT_TOKENS}", param="thinking"
                )
            if self.reasoning_effort is not None:
                raise BadRequest(
                    "ask for reasoning with an effort or a thinking budget, not both",
                    param="thinking",
                )
        if self.reasoning_effort is not None and self.reasoning_effort not in REASONING_EFFORTS:
            raise BadRequest(
                f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}",
                param="reasoning_effort",
            )
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.max_tokens is not None and not 1 <= self.max_tokens <= MAX_OUTPUT_TOKENS:
            raise BadRequest(
                f"max_tokens must be between 1 and {MAX_OUTPUT_TOKENS}", param="max_tokens"
            )
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise BadRequest(
                f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="stop"
            )
        if any(not sequence for sequence in self.stop):
            raise BadRequest("stop sequences must not be empty", param="stop")
        if any(len(sequence) > MAX_STOP_LENGTH for sequence in self.stop):
            raise BadRequest(
                f"stop sequences are at most {MAX_STOP_LENGTH} characters", param="stop"
            )
        if self.n < 1:
            raise BadRequest("n must be at least 1", param="n")
        if self.n > MAX_CHOICES:
            raise BadRequest(f"n must be at most {MAX_CHOICES}", param="n")
        if self.top_logprobs is not None:
            if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
                raise BadRequest(
                    f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs"
                )
            if not self.logprobs:
                raise BadRequest("top_logprobs needs logprobs set to true", param="top_logprobs")

    @property
    def thinks(self) -> bool:
        """Whether the request asks the model to reason (an effort but ``none``, or a
        budget)."""
        return self.thinking_budget is not None or self.reasoning_effort not in (None, "none")

    @property
    def effort(self) -> str | None:
        """The reasoning effort asked for: :attr:`reasoning_effort`, or for a budget the
        greatest effort whose :data:`THINKING_BUDGETS` figure it reaches (``minimal``
        below 2048), for a model that takes an effort."""
        if self.thinking_budget is None:
            return self.reasoning_effort
        reached = [e for e in REASONING_EFFORTS[1:] if THINKING_BUDGETS[e] <= self.thinking_budget]
        return reached[-1] if reached else "minimal"

    @property
    def thinking_tokens(self) -> int | None:
        """The thinking budget asked for: :attr:`thinking_budget`, or the effort's
        :data:`THINKING_BUDGETS` figure (0 for ``none``); None when neither is set."""
        if self.thinking_budget is not None:
            return self.thinking_budget
        if self.reasoning_effort is None:
            return None
        return THINKING_BUDGETS[self.reasoning_effort]


def refuse_choices_and_logprobs(sampling: SamplingParams, who: str) -> None:
    """A 400 naming ``n`` (above 1), ``top_logprobs`` or ``logprobs``, whichever ``sampling``
    asks for first, which ``who`` (a provider, a runtime) cannot give."""
    if sampling.n != 1:
        raise BadRequest(f"{who} generates one choice per request: n must be 1", param="n")
    if sampling.top_logprobs is not None:
        raise BadRequest(f"{who} returns no log probabilities", param="top_logprobs")
    if sampling.logprobs:
        raise BadRequest(f"{who} returns no log probabilities", param="logprobs")
