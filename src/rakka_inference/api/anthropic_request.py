"""Anthropic Messages request JSON to our core values: the ``/v1/messages`` inbound edge.

The mirror image of :mod:`rakka_inference.providers.anthropic`, which turns a
:class:`~rakka_inference.core.messages.ChatRequest` into this format. Sans I/O:
:func:`parse_messages_request` takes the raw body and returns a validated ``ChatRequest``
or raises :class:`~rakka_inference.core.errors.BadRequest` whose ``param`` is the path of
the offending field, written as Anthropic writes it (``messages.2.content.0.source.data``,
``tools.0.input_schema``), and whose message starts with that path, in the API's own
wording: ``max_tokens: Field required``.

The mapping:

- ``system`` (a string, or text blocks) becomes the first message, role ``system``; a
  message of role ``system`` (which newer SDKs accept in ``messages``) stays in place.
- A user turn's ``tool_result`` blocks become ``tool`` messages, in order, before a user
  message with the turn's text and images; an assistant turn's ``tool_use`` blocks become
  its ``tool_calls`` (``input`` as JSON text). A ``tool_result`` must answer a
  ``tool_use`` made earlier in the conversation. Its content may be a string or text
  blocks; ``is_error`` has no core equivalent and is dropped (the content stays).
- Images: ``base64`` sources of the types the API takes (JPEG, PNG, GIF, WebP) and
  ``url`` sources (http or https), in user turns only. ``document`` blocks likewise: a PDF
  by ``base64`` or ``url`` source (its ``title`` kept as the file's name), or a ``text``
  source, which is its text; ``context`` and ``citations`` are ignored.
- ``thinking: {type: enabled, budget_tokens}`` (at least 1024, below ``max_tokens``)
  becomes the core's thinking budget: an Anthropic deployment thinks with it, a Gemini one
  takes it as ``thinkingBudget``, an OpenAI-format one as the ``reasoning_effort`` it
  reaches (see :attr:`~rakka_inference.core.messages.SamplingParams.effort`). The answer
  then shows the thinking as ``thinking`` blocks, with their signatures where the provider
  signs them (Anthropic; others' blocks have an empty signature).
- ``thinking`` and ``redacted_thinking`` blocks sent back in assistant turns are kept, with
  their signatures, as the turn's reasoning: an Anthropic deployment gets them back
  unchanged (a tool loop with thinking needs them), other providers leave them out.
  ``cache_control`` and ``citations`` are ignored wherever they stand; so are unknown keys
  inside blocks, tools and ``metadata``.
- A trailing assistant turn is passed on as the conversation's last message: an
  Anthropic-backed deployment continues it (prefill), others read it as an earlier turn.
  It alone may have empty content, and is then left out.
- ``max_tokens`` is required, as in Anthropic's API, and at least 1 (0, which asks only to
  warm the prompt cache, is refused: nothing here can do that) and at most
  :data:`~rakka_inference.core.messages.MAX_OUTPUT_TOKENS`. ``temperature`` is 0 to 1
  (Anthropic's range, stricter than the core's), ``top_p`` 0 to 1, ``top_k`` 1 to
  :data:`~rakka_inference.core.messages.MAX_TOP_K`, ``stop_sequences`` at most four of at
  most :data:`~rakka_inference.core.messages.MAX_STOP_LENGTH` characters,
  ``metadata.user_id`` at most 256 characters (Anthropic's limits where it has one).
- ``tool_choice`` ``auto``/``any``/``tool``/``none`` becomes auto/required/named/none;
  ``disable_parallel_tool_use`` becomes the core's ``parallel_tool_calls`` (negated).
- ``metadata.user_id`` becomes the request's ``user``.
- ``output_config.format`` of type ``json_schema`` becomes a JSON-schema response format.
- Accepted and without effect: ``service_tier`` (``auto``/``standard_only``), a top-level
  ``cache_control``, ``thinking`` of type ``disabled``.
- ``top_k`` goes to the core request (Anthropic and Gemini take it; an OpenAI deployment
  refuses it with a 400 naming it).
- Refused with "not supported by this gateway": ``thinking`` of type ``adaptive`` or
  ``between_tools`` and ``thinking.display`` (the core asks for reasoning by budget or
  effort only), server tools,
  ``search_result``/server-tool content blocks, ``file`` image and document sources,
  ``content`` document sources, images
  inside ``tool_result``, and the top-level fields in :data:`UNSUPPORTED_MESSAGES_PARAMS`.
  Any other unknown top-level field: "Extra inputs are not permitted".
- A stream always asks for usage (``include_usage``): Anthropic streams always carry it.
- ``null`` for an optional field means "absent".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from rakka_inference.api.anthropic_fields import block_type, invalid, read, unsupported
from rakka_inference.api.anthropic_messages import parse_messages, parse_system
from rakka_inference.api.anthropic_tools import (
    parallel_tool_calls,
    parse_tool_choice,
    parse_tools,
)
from rakka_inference.core.messages import (
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_STOP_SEQUENCES,
    MAX_TOP_K,
    MAX_USER_LENGTH,
    ChatRequest,
    ResponseFormat,
    Role,
    SamplingParams,
)

__all__ = ["UNSUPPORTED_MESSAGES_PARAMS", "parse_count_tokens_request", "parse_messages_request"]

_PARAMS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
        "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
        "cache_control", "output_config",
    }
)  # fmt: skip

UNSUPPORTED_MESSAGES_PARAMS = frozenset(
    {
        "container", "mcp_servers", "context_management", "inference_geo", "speed",
        "diagnostics", "output_format",
    }
)  # fmt: skip
"""Anthropic parameters this gateway knows but cannot honour."""

_SERVICE_TIERS = frozenset({"auto", "standard_only"})
_MIN_THINKING_BUDGET = 1024
_COUNT_MAX_TOKENS = MAX_OUTPUT_TOKENS
_COUNT_PARAMS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
"""What ``POST /v1/messages/count_tokens`` takes: the prompt, without sampling."""


def parse_messages_request(body: bytes, *, request_id: str) -> ChatRequest:
    """A ``POST /v1/messages`` body as a validated :class:`ChatRequest`.

    Raises :class:`BadRequest` with ``param`` naming the offending field; see the module
    docstring for the mapping and what is refused.
    """
    document = read.document(body)
    for key in document:
        if key in UNSUPPORTED_MESSAGES_PARAMS:
            unsupported(key, "this parameter is")
        if key not in _PARAMS:
            invalid(key, "Extra inputs are not permitted")
    model = read.required_string(document.get("model"), "model")
    max_tokens = read.integer(
        document.get("max_tokens"), "max_tokens", low=1, high=MAX_OUTPUT_TOKENS
    )
    if max_tokens is None:
        read.missing("max_tokens")
    _inert(document)
    thinking_budget = _thinking(document.get("thinking"), max_tokens)
    raw_messages = document.get("messages")
    if raw_messages is None:
        read.missing("messages")
    messages = parse_messages(read.array(raw_messages, "messages", non_empty=True))
    if all(message.role is Role.SYSTEM for message in messages):
        invalid("messages", "at least one user or assistant message must have content")
    tools = parse_tools(document.get("tools"))
    stream = bool(read.boolean(document.get("stream"), "stream"))
    sampling = SamplingParams(
        temperature=read.number(document.get("temperature"), "temperature", low=0.0, high=1.0),
        top_p=read.number(document.get("top_p"), "top_p", low=0.0, high=1.0),
        max_tokens=max_tokens,
        stop=_stop_sequences(document.get("stop_sequences")),
        top_k=_top_k(document.get("top_k")),
        thinking_budget=thinking_budget,
    )
    return ChatRequest(
        model=model,
        messages=(*parse_system(document.get("system")), *messages),
        sampling=sampling,
        tools=tools,
        tool_choice=parse_tool_choice(document.get("tool_choice"), tools),
        parallel_tool_calls=parallel_tool_calls(document.get("tool_choice")),
        response_format=_output_config(document.get("output_config")),
        stream=stream,
        include_usage=stream,
        user=_user(document.get("metadata")),
        request_id=request_id,
    )


def parse_count_tokens_request(body: bytes, *, request_id: str) -> ChatRequest:
    """A ``POST /v1/messages/count_tokens`` body (the prompt of a Messages request:
    ``model``, ``messages``, ``system``, ``tools``, ``tool_choice``, ``thinking``) as the
    :class:`ChatRequest` whose prompt is counted. Other fields are refused as Anthropic
    refuses them."""
    document = read.document(body)
    for key in document:
        if key not in _COUNT_PARAMS:
            invalid(key, "Extra inputs are not permitted")
    # A prompt is counted whatever the answer's cap: the largest one leaves any thinking
    # budget below it.
    counted = {**document, "max_tokens": _COUNT_MAX_TOKENS}
    return parse_messages_request(orjson.dumps(counted), request_id=request_id)


def _top_k(value: object) -> int | None:
    return read.integer(value, "top_k", low=1, high=MAX_TOP_K)


def _inert(document: Mapping[str, Any]) -> None:
    """Fields accepted only with a value that changes nothing."""
    tier = read.string(document.get("service_tier"), "service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        invalid("service_tier", "Input should be 'auto' or 'standard_only'")
    if document.get("cache_control") is not None:
        read.mapping(document["cache_control"], "cache_control")


def _thinking(value: object, max_tokens: int) -> int | None:
    """``thinking``: the budget of ``enabled``; None for ``disabled`` or absent."""
    if value is None:
        return None
    thinking = read.mapping(value, "thinking")
    kind = block_type(thinking, "thinking")
    if kind == "disabled":
        return None
    if kind in ("adaptive", "between_tools"):
        unsupported("thinking.type", f"thinking of type '{kind}' is")
    if kind != "enabled":
        invalid(
            "thinking.type",
            "Input tag does not match any of the expected tags: 'enabled', 'disabled'",
        )
    if thinking.get("display") is not None:
        unsupported("thinking.display", "'thinking.display' is")
    # Below max_tokens, so below the most any request may generate: a count (which sends
    # no max_tokens) is told which field is wrong.
    budget = read.integer(
        thinking.get("budget_tokens"), "thinking.budget_tokens", high=MAX_OUTPUT_TOKENS - 1
    )
    if budget is None:
        read.missing("thinking.budget_tokens")
    if budget < _MIN_THINKING_BUDGET:
        invalid(
            "thinking.budget_tokens",
            f"Input should be greater than or equal to {_MIN_THINKING_BUDGET}",
        )
    if budget >= max_tokens:
        invalid("max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`")
    return budget


def _stop_sequences(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    sequences = read.array(value, "stop_sequences")
    for index, item in enumerate(sequences):
        sequence = read.string(item, f"stop_sequences.{index}")
        if not sequence:
            invalid(f"stop_sequences.{index}", "String should have at least 1 character")
        if len(sequence) > MAX_STOP_LENGTH:
            invalid(
                f"stop_sequences.{index}",
                f"String should have at most {MAX_STOP_LENGTH} characters",
            )
    if len(sequences) > MAX_STOP_SEQUENCES:  # the core's limit, whatever the provider
        invalid("stop_sequences", f"List should have at most {MAX_STOP_SEQUENCES} items")
    return tuple(sequences)


def _user(value: object) -> str | None:
    if value is None:
        return None
    user = read.string(read.mapping(value, "metadata").get("user_id"), "metadata.user_id")
    if user is not None and len(user) > MAX_USER_LENGTH:
        invalid("metadata.user_id", f"String should have at most {MAX_USER_LENGTH} characters")
    return user


def _output_config(value: object) -> ResponseFormat | None:
    if value is None:
        return None
    config = read.mapping(value, "output_config")
    for key in config:
        if key != "format":
            unsupported(f"output_config.{key}", f"'output_config.{key}' is")
    if config.get("format") is None:
        return None
    spec = read.mapping(config["format"], "output_config.format")
    if block_type(spec, "output_config.format") != "json_schema":
        invalid("output_config.format.type", "Input should be 'json_schema'")
    schema = spec.get("schema")
    if schema is None:
        read.missing("output_config.format.schema")
    # The core wants a schema name (OpenAI requires one); Anthropic's format has none.
    return ResponseFormat.from_schema(
        "response", read.mapping(schema, "output_config.format.schema")
    )
