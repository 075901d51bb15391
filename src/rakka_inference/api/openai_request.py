"""OpenAI chat request JSON to our core values: the gateway's inbound edge, sans I/O.

:func:`parse_chat_request` (and, for embeddings,
:func:`~rakka_inference.api.openai_embeddings.parse_embedding_request`) take the raw body
and return validated core values, or raise :class:`~rakka_inference.core.errors.BadRequest`
(:class:`~rakka_inference.core.errors.PayloadTooLarge` for an oversized body) whose
``param`` is the path of the offending field, written as OpenAI writes it:
``messages[2].content[0].image_url.url``, ``tools[0].function.name``, ``temperature``.
Error messages follow OpenAI's wording where it has one
(:mod:`~rakka_inference.api.openai_fields`). Chat messages and their content are read by
:mod:`~rakka_inference.api.openai_messages`, tools and the response format by
:mod:`~rakka_inference.api.openai_tools`. Range checks are left to the core constructors
(one rule, every entry point), and a ``BadRequest`` they raise with a coarse ``param``
(``messages``, ``tools``) is refined to the element's path.

Decisions:

- **Unknown top-level fields** are rejected as OpenAI does: "Unrecognized request argument
  supplied: X". Fields OpenAI documents that we cannot honour (``audio``,
  ``functions``...) get "'X' is not supported by this gateway".
  A few are accepted when they hold their default, which changes nothing
  (:data:`INERT_PARAMS`: ``logit_bias`` absent, ``modalities`` ``["text"]``); any other
  value is rejected. ``store``, ``service_tier`` and ``prediction`` are checked and
  forwarded to OpenAI-format upstreams only (``ChatRequest.openai_options``); another
  provider refuses them, naming the field.
  ``parallel_tool_calls`` (a boolean) goes to the core request.
- **Unknown keys inside nested objects** (messages, parts, tools) are ignored: SDKs echo
  assistant messages back with extra fields (``refusal``, ``annotations``, ``audio``,
  ``reasoning_content``), and rejecting them would break ordinary agent loops.
- ``null`` for an optional field means "absent", as in OpenAI's API.
- ``max_tokens`` and ``max_completion_tokens`` both map to ``SamplingParams.max_tokens``;
  when both are given the **smaller** wins (the stricter cap is the one the client can
  rely on; OpenAI documents no precedence).
- ``n`` (1 to 128), ``logprobs`` and ``top_logprobs`` (0 to 20, only with ``logprobs``
  true, as OpenAI checks) go to the core request; a deployment that cannot give several
  choices or log probabilities refuses them, naming the field.
- An assistant message whose ``content`` is null but which carries a ``refusal`` string
  (an SDK echoing a refused answer) takes the refusal as its text; ``refusal`` parts of
  assistant content likewise become text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rakka_inference.api.openai_fields import invalid_type, read
from rakka_inference.api.openai_messages import parse_message
from rakka_inference.api.openai_tools import (
    parse_response_format,
    parse_tool_choice,
    parse_tools,
)
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import (
    MAX_OUTPUT_TOKENS,
    MAX_STOP_LENGTH,
    MAX_USER_LENGTH,
    SEED_RANGE,
    ChatRequest,
    SamplingParams,
)

__all__ = [
    "INERT_PARAMS",
    "UNSUPPORTED_PARAMS",
    "parse_chat_request",
    "parse_metadata",
    "parse_stream_options",
    "parse_user",
]

_CHAT_PARAMS = frozenset(
    {
        "model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens",
        "stop", "seed", "presence_penalty", "frequency_penalty", "n", "user", "metadata",
        "tools", "tool_choice", "parallel_tool_calls", "response_format", "stream",
        "stream_options", "reasoning_effort", "store", "service_tier", "prediction",
        "logprobs", "top_logprobs",
    }
)  # fmt: skip

INERT_PARAMS: Mapping[str, tuple[Callable[[Any], bool], str]] = {
    "logit_bias": (lambda v: v is None or v == {}, "{}"),
    "modalities": (lambda v: v is None or v == ["text"], '["text"]'),
}
"""OpenAI parameters accepted only with a value that changes nothing (and that default)."""

UNSUPPORTED_PARAMS = frozenset(
    {
        "audio", "web_search_options", "functions", "function_call",
        "verbosity", "prompt_cache_key", "safety_identifier",
    }
)  # fmt: skip
"""OpenAI parameters this gateway knows but cannot honour."""

_STREAM_OPTIONS = frozenset({"include_usage", "include_obfuscation"})
_METADATA_PAIRS, _METADATA_KEY, _METADATA_VALUE = 16, 64, 512


def parse_chat_request(
    body: bytes, *, request_id: str, max_body_bytes: int | None = None
) -> ChatRequest:
    """A ``POST /v1/chat/completions`` body as a validated :class:`ChatRequest`.

    Raises :class:`BadRequest` with ``param`` naming the offending field, or
    :class:`PayloadTooLarge` when ``body`` exceeds ``max_body_bytes``. See the module
    docstring for the rules.
    """
    document = read.document(body, max_body_bytes)
    for key, value in document.items():
        if key in _CHAT_PARAMS:
            continue
        inert = INERT_PARAMS.get(key)
        if inert is not None:
            if not inert[0](value):
                raise BadRequest(
                    f"'{key}' is supported only with its default value ({inert[1]})", param=key
                )
        elif key in UNSUPPORTED_PARAMS:
            raise BadRequest(f"'{key}' is not supported by this gateway", param=key)
        else:
            raise BadRequest(f"Unrecognized request argument supplied: {key}", param=key)
    model = read.required_string(document.get("model"), "model")
    raw_messages = document.get("messages")
    if raw_messages is None:
        read.missing("messages")
    messages = tuple(
        parse_message(item, f"messages[{index}]")
        for index, item in enumerate(read.array(raw_messages, "messages", non_empty=True))
    )
    tools = parse_tools(document.get("tools"))
    parallel_tool_calls = read.boolean(document.get("parallel_tool_calls"), "parallel_tool_calls")
    stream = bool(read.boolean(document.get("stream"), "stream"))
    include_usage = parse_stream_options(document.get("stream_options"), stream)
    return ChatRequest(
        model=model,
        messages=messages,
        sampling=_sampling(document),
        tools=tools,
        tool_choice=parse_tool_choice(document.get("tool_choice")),
        parallel_tool_calls=parallel_tool_calls,
        response_format=parse_response_format(document.get("response_format")),
        stream=stream,
        include_usage=include_usage,
        user=parse_user(document.get("user")),
        metadata=parse_metadata(document.get("metadata")),
        openai_options=_openai_options(document),
        request_id=request_id,
    )


def _sampling(document: Mapping[str, Any]) -> SamplingParams:
    caps: list[int] = []
    for name in ("max_tokens", "max_completion_tokens"):
        cap = read.integer(document.get(name), name, low=1, high=MAX_OUTPUT_TOKENS)
        if cap is not None:
            caps.append(cap)
    n = read.integer(document.get("n"), "n")
    low, high = SEED_RANGE
    return SamplingParams(
        temperature=read.number(document.get("temperature"), "temperature"),
        top_p=read.number(document.get("top_p"), "top_p"),
        max_tokens=min(caps) if caps else None,
        stop=_stop(document.get("stop")),
        seed=read.integer(document.get("seed"), "seed", low=low, high=high),
        presence_penalty=read.number(document.get("presence_penalty"), "presence_penalty"),
        frequency_penalty=read.number(document.get("frequency_penalty"), "frequency_penalty"),
        n=1 if n is None else n,
        logprobs=bool(read.boolean(document.get("logprobs"), "logprobs")),
        top_logprobs=read.integer(document.get("top_logprobs"), "top_logprobs"),
        reasoning_effort=read.string(document.get("reasoning_effort"), "reasoning_effort"),
    )


_SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")


def _openai_options(document: Mapping[str, Any]) -> dict[str, Any]:
    """``store``, ``service_tier`` and ``prediction``, checked, for OpenAI-format upstreams
    (left out when absent, null, or at their defaults)."""
    options: dict[str, Any] = {}
    if read.boolean(document.get("store"), "store"):
        options["store"] = True
    tier = read.string(document.get("service_tier"), "service_tier")
    if tier is not None and tier not in _SERVICE_TIERS:
        raise BadRequest(
            f"service_tier must be one of {', '.join(_SERVICE_TIERS)}", param="service_tier"
        )
    if tier not in (None, "auto"):
        options["service_tier"] = tier
    prediction = document.get("prediction")
    if prediction is not None:
        content = read.mapping(prediction, "prediction")
        if content.get("type") != "content":
            raise BadRequest("prediction.type must be 'content'", param="prediction.type")
        if not isinstance(content.get("content"), str | list):
            invalid_type("prediction.content", "a string or an array of text parts", content)
        options["prediction"] = {"type": "content", "content": content["content"]}
    return options


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        _stop_sequence(value, "stop")
        return (value,)
    if not isinstance(value, list):
        invalid_type("stop", "a string or an array of strings", value)
    for index, item in enumerate(value):
        _stop_sequence(read.string(item, f"stop[{index}]"), f"stop[{index}]")
    return tuple(value)


def _stop_sequence(value: str | None, param: str) -> None:
    if value is not None and len(value) > MAX_STOP_LENGTH:
        raise BadRequest(
            f"Invalid '{param}': string too long. Expected a string with maximum length "
            f"{MAX_STOP_LENGTH}, but got a string with length {len(value)} instead.",
            param=param,
        )


def parse_user(value: object) -> str | None:
    """``user``: an end-user id of at most :data:`MAX_USER_LENGTH` characters, or None."""
    user = read.string(value, "user")
    if user is not None and len(user) > MAX_USER_LENGTH:
        raise BadRequest(
            f"Invalid 'user': string too long. Expected a string with maximum length "
            f"{MAX_USER_LENGTH}, but got a string with length {len(user)} instead.",
            param="user",
        )
    return user


def parse_stream_options(
    value: object, stream: bool, allowed: frozenset[str] = _STREAM_OPTIONS
) -> bool:
    """``stream_options`` (only with ``stream``; keys among ``allowed``): whether the
    stream's usage is asked for."""
    if value is None:
        return False
    if not stream:
        raise BadRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    options = read.mapping(value, "stream_options")
    for key in options:
        if key not in allowed:
            raise BadRequest(
                f"Unrecognized request argument supplied: stream_options.{key}",
                param=f"stream_options.{key}",
            )
    read.boolean(options.get("include_obfuscation"), "stream_options.include_obfuscation")
    return bool(read.boolean(options.get("include_usage"), "stream_options.include_usage"))


def parse_metadata(value: object) -> dict[str, str]:
    """The request's ``metadata``: at most 16 string pairs, keys to 64 and values to 512
    characters (OpenAI's limits); absent: none."""
    if value is None:
        return {}
    metadata = read.mapping(value, "metadata")
    if len(metadata) > _METADATA_PAIRS:
        raise BadRequest(
            f"metadata holds at most {_METADATA_PAIRS} key-value pairs", param="metadata"
        )
    for key, item in metadata.items():
        param = f"metadata.{key}"
        if len(key) > _METADATA_KEY:
            raise BadRequest(f"metadata keys are at most {_METADATA_KEY} characters", param=param)
        if not isinstance(item, str):
            read.wrong_type(param, "string", item)
        if len(item) > _METADATA_VALUE:
            raise BadRequest(
                f"metadata values are at most {_METADATA_VALUE} characters", param=param
            )
    return metadata
