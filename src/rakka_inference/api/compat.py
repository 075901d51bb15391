"""What each kind of deployment does with each chat parameter: the compatibility table.

A row named for another dialect's parameter (Anthropic's ``top_k``, ``thinking``) says
what becomes of it as the core request carries it, whichever route it came in by.

A parameter a client sends is **forwarded** (sent upstream as it is), **translated** (sent
in the provider's own terms, named in the cell), or **refused** with a 400 naming it; never
dropped without a word. The table here is the one the README shows
(``python -m rakka_inference.api.compat`` prints it), and ``tests/api/test_compat.py``
checks every cell against the real adapters and runners, so the two cannot drift apart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ROWS", "TARGETS", "Fate", "Row", "render_markdown"]


class Fate(enum.StrEnum):
    FORWARDED = "forwarded"
    TRANSLATED = "translated"
    REFUSED = "400"


TARGETS = (
    "OpenAI",
    "Azure OpenAI",
    "Anthropic",
    "Gemini",
    "LiteLLM",
    "vLLM, SGLang, llama.cpp",
    "transformers",
)
"""The columns: what a deployment runs on."""


@dataclass(frozen=True, slots=True)
class Row:
    """One parameter (as the chat route takes it) and its fate on each target, in
    :data:`TARGETS` order; a cell's note says how it is translated or why refused."""

    parameter: str
    fates: tuple[tuple[Fate, str], ...]


F, T, R = Fate.FORWARDED, Fate.TRANSLATED, Fate.REFUSED
_OPENAI_ONLY = ((F, ""), (F, ""), (R, ""), (R, ""), (F, ""), (F, ""), (R, ""))

ROWS: tuple[Row, ...] = (
    Row(
        "reasoning_effort",
        ((F, ""), (F, ""), (T, "thinking.budget_tokens"), (T, "thinkingConfig.thinkingBudget"),
         (F, ""), (F, ""), (R, "")),
    ),
    Row(
        "parallel_tool_calls = false",
        ((F, ""), (F, ""), (T, "tool_choice.disable_parallel_tool_use"), (R, "no such switch"),
         (F, ""), (F, ""), (R, "no tools")),
    ),
    Row(
        "top_k (Anthropic's)",
        ((R, "not an OpenAI parameter"), (R, "not an OpenAI parameter"), (F, ""), (T, "topK"),
         (F, ""), (F, ""), (R, "")),
    ),
    Row("store", _OPENAI_ONLY),
    Row("service_tier", _OPENAI_ONLY),
    Row("prediction", _OPENAI_ONLY),
    Row("metadata", _OPENAI_ONLY),
    Row(
        "n > 1",
        ((F, ""), (F, ""), (R, "one choice per request"), (T, "candidateCount"), (F, ""),
         (F, ""), (R, "one choice per request")),
    ),
    Row(
        "logprobs = true",
        ((F, ""), (F, ""), (R, "no log probabilities"), (T, "responseLogprobs"), (F, ""),
         (F, ""), (R, "no log probabilities")),
    ),
    Row(
        "top_logprobs",
        ((F, ""), (F, ""), (R, "no log probabilities"), (T, "logprobs"), (F, ""), (F, ""),
         (R, "no log probabilities")),
    ),
    Row(
        "thinking.budget_tokens (Anthropic's)",
        ((T, "reasoning_effort"), (T, "reasoning_effort"), (F, ""),
         (T, "thinkingConfig.thinkingBudget"), (T, "reasoning_effort"), (T, "reasoning_effort"),
         (R, "")),
    ),
    Row(
        "file (a PDF content part)",
        ((F, ""), (F, ""), (T, "document block"), (T, "inlineData"), (F, ""), (F, ""),
         (R, "text only")),
    ),
)  # fmt: skip
"""Every row's cells, checked by ``tests/api/test_compat.py``."""


def render_markdown() -> str:
    """The table as Markdown, as the README shows it."""
    lines = [
        "| parameter | " + " | ".join(TARGETS) + " |",
        "|---|" + "---|" * len(TARGETS),
    ]
    for row in ROWS:
        cells = [f"{fate.value} ({note})" if note else fate.value for fate, note in row.fates]
        lines.append(f"| `{row.parameter}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a convenience for the README
    print(render_markdown(), end="")
