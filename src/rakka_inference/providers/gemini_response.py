"""Gemini's ``GenerateContentResponse``, whole or streamed, read into TokenChunks.

Holds the reading of each candidate (text, reasoning and function-call parts, the
``finishReason``, the ``logprobsResult``: :func:`candidate_chunk`), of ``usageMetadata``
(:func:`gemini_usage`), of refusals sent with HTTP 200 (an ``error`` object, a blocked
prompt), and :class:`GeminiStreamParser`, which merges a stream's running usage totals into
increments. The rules are set out in the adapter module's docstring
(:mod:`rakka_inference.providers.gemini`).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.core.errors import ContentFiltered, ProtocolError, ServerError
from rakka_inference.core.stream import FinishReason, TokenChunk, TokenLogprob, ToolCallDelta
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import load_json_object
from rakka_inference.providers.gemini_errors import _error_kind, _quote, _retry_delay
from rakka_inference.wire.classify import upstream_error
from rakka_inference.wire.redact import error_label
from rakka_inference.wire.sse import SseEvent

__all__ = ["GeminiStreamParser", "candidate_chunk", "candidates", "gemini_usage"]

# The adapter's logger: these records come from reading its answers.
log = logging.getLogger("rakka_inference.providers.gemini")

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "STOP": FinishReason.STOP,
    "MAX_TOKENS": FinishReason.LENGTH,
}
_FILTERED_FINISHES = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


class GeminiStreamParser:
    """``streamGenerateContent?alt=sse`` events to TokenChunks, for a request of
    ``choices`` candidates: ``done`` once each has sent its ``finishReason``.

    See :mod:`rakka_inference.providers.gemini` for the rules.
    """

    __slots__ = ("_calls", "_choices", "_counts", "_finished", "_provider", "_total", "done")

    def __init__(self, provider: str, choices: int = 1) -> None:
        self._provider = provider
        self._choices = choices
        self._calls: dict[int, int] = {}
        """Per candidate, the function calls it has made so far (the next call's index)."""
        self._finished: set[int] = set()
        self._counts: dict[str, int] = {}
        self._total: Usage | None = None
        self.done = False

    def feed(self, event: SseEvent) -> list[TokenChunk]:
        document = load_json_object(event.raw, self._provider)
        _raise_for_refusal(document, self._provider)
        chunks: list[TokenChunk] = []
        for candidate in candidates(document, self._provider):
            index = candidate.get("index", 0)
            made = self._calls.get(index, 0)
            chunk = candidate_chunk(candidate, made, self._provider)
            self._calls[index] = made + len(chunk.tool_calls)
            if chunk.finish_reason is not None:
                self._finished.add(index)
            if not chunk.is_empty:
                chunks.append(chunk)
        self.done = len(self._finished) >= self._choices
        usage = self._usage_increment(document.get("usageMetadata"))
        if usage is not None:
            if chunks:  # the request's usage, carried by the event's first chunk
                chunks[0] = dataclasses.replace(chunks[0], usage=usage)
            else:
                chunks.append(TokenChunk(usage=usage))
        return chunks

    def _usage_increment(self, usage: object) -> Usage | None:
        """What a running-total report adds; None when it adds nothing.

        The first report is emitted even at zero, so "zero tokens" is not read as "usage
        unknown" downstream.
        """
        if not isinstance(usage, dict):
            return None
        gemini_usage(usage, self._provider)  # checks every count before any is kept
        # Output is the sum of two of Gemini's counts, so running totals are merged count
        # by count (field-wise maximum): a report that leaves thoughtsTokenCount out must
        # not lower it, and a report seen twice adds nothing.
        counts = self._counts
        raised = False
        for key, value in usage.items():
            if isinstance(value, int) and value > counts.get(key, -1):
                counts[key] = value
                raised = True
        previous = self._total
        if previous is not None and not raised:
            return None  # the common repeated report: nothing new, nothing built
        total = gemini_usage(counts, self._provider)
        self._total = total
        if previous is None:
            return total
        increment = total.minus(previous)
        return None if increment.is_zero else increment


def gemini_usage(usage: Mapping[str, Any], provider: str | None = None) -> Usage:
    """Gemini's ``usageMetadata`` in our convention: thoughts are output and reasoning."""

    def count(key: str) -> int:
        value = usage.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProtocolError(f"usageMetadata.{key} is not a token count", provider=provider)
        return value

    thoughts = count("thoughtsTokenCount")
    return Usage(
        input_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        output_tokens=count("candidatesTokenCount") + thoughts,
        cached_input_tokens=count("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _raise_for_refusal(document: Mapping[str, Any], provider: str) -> None:
    """Raise the typed error of an ``error`` object or a blocked prompt (both HTTP 200)."""
    error = document.get("error")
    if isinstance(error, dict):
        # The status is the upstream's own string: shown only when it is an identifier.
        status = error_label(error.get("status")) or "UNKNOWN"
        message = f"{provider} error {status} in a 200 answer{_quote(error.get('message'))}"
        # A status we do not know, in an answer that had started, is upstream trouble.
        kind = _error_kind(error) or ServerError
        raise upstream_error(kind, message, provider=provider, retry_after=_retry_delay(error))
    feedback = document.get("promptFeedback")
    if isinstance(feedback, dict) and (reason := feedback.get("blockReason")):
        raise ContentFiltered(
            f"{provider} blocked the prompt: {reason}{_blocked(feedback)}", provider=provider
        )


def candidates(document: Mapping[str, Any], provider: str) -> list[dict[str, Any]]:
    """The candidates of a response (or of one stream event), each with its ``index``
    (absent: 0, as proto JSON leaves a zero out)."""
    found = document.get("candidates")
    if not isinstance(found, list):
        return []
    read: list[dict[str, Any]] = []
    for candidate in found:
        if not isinstance(candidate, dict):
            continue
        index = candidate.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise ProtocolError(
                "a candidate's index is not a non-negative integer", provider=provider
            )
        read.append(candidate)
    return read


def candidate_chunk(candidate: Mapping[str, Any], first_call: int, provider: str) -> TokenChunk:
    """One candidate (whole, or its part in a stream event) as a chunk of its choice; its
    function calls are numbered from ``first_call``."""
    text, reasoning, calls = _parts(candidate, first_call, provider)
    return TokenChunk(
        text=text,
        reasoning=reasoning,
        tool_calls=calls,
        finish_reason=_finish(candidate, first_call + len(calls) > 0, provider),
        choice=candidate.get("index", 0),
        logprobs=_logprobs(candidate, provider),
    )


def _logprobs(candidate: Mapping[str, Any], provider: str) -> tuple[TokenLogprob, ...]:
    """``logprobsResult``: the chosen token of each step, with that step's top candidates
    (proto JSON leaves a zero log probability and an empty token out)."""
    result = candidate.get("logprobsResult")
    if result is None:
        return ()
    if not isinstance(result, dict):
        raise ProtocolError("logprobsResult is not an object", provider=provider)
    chosen = result.get("chosenCandidates") or []
    steps = result.get("topCandidates") or []
    if not isinstance(chosen, list) or not isinstance(steps, list):
        raise ProtocolError("logprobsResult holds no arrays", provider=provider)
    records: list[TokenLogprob] = []
    for position, entry in enumerate(chosen):
        step = steps[position] if position < len(steps) else None
        alternatives = step.get("candidates") if isinstance(step, dict) else None
        if not isinstance(alternatives, list):
            alternatives = []
        top = tuple(_logprob(alternative, provider, ()) for alternative in alternatives)
        records.append(_logprob(entry, provider, top))
    return tuple(records)


def _logprob(entry: object, provider: str, top: tuple[TokenLogprob, ...]) -> TokenLogprob:
    if not isinstance(entry, dict):
        raise ProtocolError("a logprobs candidate is not an object", provider=provider)
    token = entry.get("token", "")
    logprob = entry.get("logProbability", 0.0)
    if (
        not isinstance(token, str)
        or not isinstance(logprob, int | float)
        or isinstance(logprob, bool)
    ):
        raise ProtocolError(
            "a logprobs candidate has no token or log probability", provider=provider
        )
    return TokenLogprob(
        token=token, logprob=float(logprob), bytes=tuple(token.encode("utf-8")), top=top
    )


def _parts(
    candidate: Mapping[str, Any], first_index: int, provider: str
) -> tuple[str, str, tuple[ToolCallDelta, ...]]:
    """``(text, reasoning, calls)`` of a candidate; calls are numbered from ``first_index``."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCallDelta] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall")
        if isinstance(call, dict):
            name = call.get("name")
            if not isinstance(name, str) or not name:
                raise ProtocolError("functionCall without a name", provider=provider)
            upstream_id = call.get("id")
            calls.append(
                ToolCallDelta(
                    index=first_index + len(calls),
                    id=upstream_id if isinstance(upstream_id, str) and upstream_id else _call_id(),
                    name=name,
                    arguments=orjson.dumps(call.get("args") or {}).decode(),
                )
            )
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") is True else text).append(part["text"])
        else:
            log.debug("skipping Gemini part with keys %s", sorted(part))
    return "".join(text), "".join(reasoning), tuple(calls)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _finish(candidate: Mapping[str, Any], has_calls: bool, provider: str) -> FinishReason | None:
    reason = candidate.get("finishReason")
    if not reason:
        return None
    reason = str(reason)
    if reason in _FILTERED_FINISHES:
        raise ContentFiltered(
            f"{provider} stopped the answer: finishReason {reason}{_blocked(candidate)}",
            provider=provider,
        )
    if has_calls:
        return FinishReason.TOOL_CALLS
    finish = _FINISH_REASONS.get(reason)
    if finish is None:
        log.debug("Gemini finishReason %r read as stop", reason)
        return FinishReason.STOP
    return finish


def _blocked(holder: Mapping[str, Any]) -> str:
    """The harm categories a safety verdict blocked, for the error message."""
    ratings = holder.get("safetyRatings")
    categories = [
        str(rating.get("category"))
        for rating in (ratings if isinstance(ratings, list) else ())
        if isinstance(rating, dict) and rating.get("blocked") is True
    ]
    return f" ({', '.join(categories)})" if categories else ""
