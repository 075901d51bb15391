"""What an engine server's ``/metrics`` says about its load, for routing.

vLLM, SGLang and llama.cpp's ``llama-server`` each expose Prometheus text, each under its
own names. :func:`parse_engine_metrics` reads one scrape and answers the same
:class:`EngineLoad` for all three; :data:`METRIC_NAMES` says which series feed which field.

Reading a scrape
================
The text is split on ``\\n`` (a trailing ``\\r`` is dropped, so CRLF reads the same). Blank
lines and comments (``# HELP``, ``# TYPE``, anything else after ``#``) are skipped, as is every
sample of a metric not named in :data:`METRIC_NAMES` for the runtime. A sample line is::

    name [{label="value", ...}] value [timestamp] [# exemplar]

Label values may hold anything quoted, escaped quotes included (``\\"``, ``\\\\``), so the
label block is read by a small scanner, never by splitting on ``,`` or ``}``. A line that does
not read that way is skipped alone, as is a value that is not a finite, non-negative number
(``NaN``, ``+Inf``: no load is ever negative or infinite).

Several series of one field (per ``model_name``, ``tp_rank``, engine index, or the old and
new name of vLLM's KV-cache gauge) are combined: request counts and token counters are
summed, the KV-cache usage is the highest, clamped into [0, 1]. A field with no sample is
None: "the engine did not say", never 0.

The cost is linear in the text: every character is looked at a bounded number of times
(the only regular expressions match names, with no nested repetition). The caller caps
the body it hands over.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeAlias

from rakka_inference.core.runtimes import RuntimeKind

__all__ = ["METRIC_NAMES", "EngineLoad", "LoadField", "parse_engine_metrics"]

LoadField: TypeAlias = Literal[
    "running", "waiting", "kv_cache_usage", "generated_tokens", "prompt_tokens"
]


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One scrape of an engine's load; None where the engine reported nothing."""

    running: float | None = None
    """Requests the engine is running now."""
    waiting: float | None = None
    """Requests queued inside the engine."""
    kv_cache_usage: float | None = None
    """How full the KV cache is, 0..1."""
    generated_tokens: float | None = None
    """Tokens generated since the engine started (a counter: its rate is tokens/s)."""
    prompt_tokens: float | None = None
    """Prompt tokens processed since the engine started (a counter)."""


METRIC_NAMES: Mapping[RuntimeKind, Mapping[str, LoadField]] = MappingProxyType(
    {
        RuntimeKind.VLLM: MappingProxyType(
            {
                "vllm:num_requests_running": "running",
                "vllm:num_requests_waiting": "waiting",
                "vllm:kv_cache_usage_perc": "kv_cache_usage",
                "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # before vLLM 0.10
                "vllm:generation_tokens_total": "generated_tokens",
                "vllm:prompt_tokens_total": "prompt_tokens",
            }
        ),
        RuntimeKind.SGLANG: MappingProxyType(
            {
                "sglang:num_running_reqs": "running",
                "sglang:num_queue_reqs": "waiting",
                "sglang:token_usage": "kv_cache_usage",
                "sglang:generation_tokens_total": "generated_tokens",
                "sglang:prompt_tokens_total": "prompt_tokens",
            }
        ),
        RuntimeKind.LLAMACPP: MappingProxyType(
            {
                "llamacpp:requests_processing": "running",
                "llamacpp:requests_deferred": "waiting",
                "llamacpp:kv_cache_usage_ratio": "kv_cache_usage",
                "llamacpp:tokens_predicted_total": "generated_tokens",
                "llamacpp:prompt_tokens_total": "prompt_tokens",
            }
        ),
    }
)
"""Per engine runtime: metric name → the :class:`EngineLoad` field its samples feed."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SPACES = " \t"


def parse_engine_metrics(text: str, runtime: RuntimeKind) -> EngineLoad:
    """The load that ``text`` (one scrape of the engine's ``/metrics``) reports.

    Raises ValueError for a runtime that is not an engine server.
    """
    names = METRIC_NAMES.get(runtime)
    if names is None:
        raise ValueError(f"runtime {runtime.value!r} has no engine metrics")
    totals: dict[LoadField, float] = {}
    for line in text.split("\n"):
        sample = _sample(line, names)
        if sample is None:
            continue
        field, value = sample
        if field == "kv_cache_usage":
            totals[field] = max(totals.get(field, 0.0), min(value, 1.0))
        else:
            totals[field] = totals.get(field, 0.0) + value
    return EngineLoad(**totals)


def _sample(line: str, names: Mapping[str, LoadField]) -> tuple[LoadField, float] | None:
    """The field and value of one sample line of a wanted metric; None for anything else."""
    line = line.strip()
    if not line or line[0] == "#":
        return None
    name = _METRIC_NAME.match(line)
    if name is None:
        return None
    field = names.get(name.group())
    if field is None:
        return None
    rest = _after_labels(line, name.end())
    if rest < 0:
        return None
    value_and_timestamp = line[rest:].partition("#")[0].split()
    if not 1 <= len(value_and_timestamp) <= 2:
        return None
    value = _number(value_and_timestamp[0])
    if value is None or value < 0:
        return None
    if len(value_and_timestamp) == 2 and _number(value_and_timestamp[1]) is None:
        return None
    return field, value


def _number(token: str) -> float | None:
    """A finite number in Prometheus' syntax (no ``_`` separators, ASCII digits only)."""
    if not token.isascii() or "_" in token:
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _after_labels(line: str, start: int) -> int:
    """Where the value starts: past the label block at ``start``, if there is one, else
    ``start``; -1 when the label block is malformed."""
    at = _skip_spaces(line, start)
    if at == len(line) or line[at] != "{":
        return start
    at += 1
    while True:
        at = _skip_spaces(line, at)
        if line.startswith("}", at):  # no labels, or a trailing comma
            return at + 1
        label = _LABEL_NAME.match(line, at)
        if label is None:
            return -1
        at = _skip_spaces(line, label.end())
        if not line.startswith("=", at):
            return -1
        at = _skip_spaces(line, at + 1)
        if not line.startswith('"', at):
            return -1
        end = _after_quoted(line, at + 1)
        if end < 0:
            return -1
        at = _skip_spaces(line, end)
        if line.startswith(",", at):
            at += 1
        elif line.startswith("}", at):
            return at + 1
        else:
            return -1


def _after_quoted(line: str, start: int) -> int:
    """The index past the quote that closes a label value opened just before ``start``;
    -1 if it is never closed. A quote after an odd run of backslashes is escaped."""
    while True:
        quote = line.find('"', start)
        if quote < 0:
            return -1
        backslash = quote
        while backslash > start and line[backslash - 1] == "\\":
            backslash -= 1
        if (quote - backslash) % 2 == 0:
            return quote + 1
        start = quote + 1


def _skip_spaces(line: str, at: int) -> int:
    """The first index from ``at`` that is not a space or a tab."""
    while at < len(line) and line[at] in _SPACES:
        at += 1
    return at
