"""A mock of Anthropic's Messages API on real loopback HTTP, with injected faults.

``POST /v1/messages`` answers as the real API does — the ``message`` object, or with
``"stream": true`` the event stream — so the official ``anthropic`` SDK and our own adapter
are both its clients::

    async with AnthropicMock(faults=FaultPlan(valid_keys={"sk-ant-test"})) as mock:
        client = anthropic.AsyncAnthropic(base_url=mock.url, api_key="sk-ant-test")
        mock.faults.next(Fault.overloaded())          # the next request gets a 529
        mock.reply = ReplyScript(text="Hi.", chunks=2, chunk_delay_s=0.01)

A request is checked in this order; the first failure is the answer:

1. the route: anything but ``POST /v1/messages`` → 404 ``not_found_error``;
2. the key, from ``x-api-key`` or else ``Authorization: Bearer`` (the official SDK sends
   its ``api_key`` as a bearer token since 2.x): none → 401 "x-api-key header is
   required"; one :meth:`FaultPlan.accepts` refuses → 401 "invalid x-api-key";
3. ``anthropic-version`` (any value): missing → 400 "anthropic-version: header is
   required";
4. the body: JSON with ``model``, ``max_tokens`` and ``messages``, roles ``user`` and
   ``assistant``, no empty text, ``tool_use`` blocks answered by ``tool_result`` blocks in
   the next message and ``tool_result`` blocks answering the previous one, a valid
   ``tool_choice``, ``temperature`` within 0..1 → else 400 ``invalid_request_error``;
5. the fault: ``faults.take(key, x-mock-fault header)`` (a header that does not parse is a
   400), rendered in Anthropic's format (below);
6. the answer from :attr:`reply`.

The answer: with tools offered and ``tool_choice`` not ``none``, the script's tool calls
become ``tool_use`` blocks (``toolu_...`` ids; a text block first when the script sets
``text``) and ``stop_reason`` is ``tool_use``. ``tool_choice`` ``any`` or ``tool`` forces a
call (``{}`` input when the script has none for that tool); ``disable_parallel_tool_use``
keeps the first. Under ``auto``, a conversation whose last turn carries tool results gets
text — the model has its results — so a tool exchange ends. Otherwise the answer is text
(by default an echo of the last user turn, tool results included), cut at the first of
the request's ``stop_sequences`` (``stop_sequence``) or after ``max_tokens`` words
(``max_tokens``), else ``end_turn``. ``usage``: ``input_tokens`` is :func:`count_tokens`
of the system prompt and every text and tool-result text of the messages; ``output_tokens``
that of the answer's text, tool names and JSON inputs; both cache counts are 0.

The stream, one SSE event per HTTP chunk, each with its ``event:`` line: ``message_start``
(usage with ``output_tokens`` 1), ``ping``, then per content block ``content_block_start``,
its deltas (``text_delta`` pieces per :meth:`ReplyScript.pieces`, or ``input_json_delta``
pieces of the input's JSON; one empty piece for ``{}``), each ``chunk_delay_s`` after the
one before, ``content_block_stop``; then ``message_delta`` (stop reason, cumulative
``output_tokens``) and ``message_stop``. A fault's ``after_chunks`` counts these events.

Faults:

==================  =====================================================================
rate_limit          429 ``rate_limit_error``; ``retry-after`` in whole seconds as the API
                    sends it, plus ``retry-after-ms`` when the fault asks for a fraction
                    (our client and the SDK read it first, so tests wait milliseconds);
                    ``anthropic-ratelimit-*`` headers with nothing remaining
server_error        ``status`` (default 503) with ``api_error`` (``overloaded_error`` for 529)
overloaded          unary: 529 ``overloaded_error``. Streaming: a 200 whose stream sends
                    ``after_chunks`` events, then ``event: error`` with ``overloaded_error``
                    and ends — how the API reports overload once a stream has begun (for a
                    529 on a stream, use ``server_error;status=529``)
content_filter      a 200 with no content and ``stop_reason`` ``refusal``, as the API
                    reports a refusal
context_length      400 ``invalid_request_error`` "prompt is too long: N tokens > 200000
                    maximum"
unauthorized        401 ``authentication_error`` "invalid x-api-key", whatever the key
slow_first_byte     the normal answer after ``delay_s`` of silence
stall / reset       the normal answer cut after ``after_chunks`` events, then silence or
                    a TCP reset; a unary body is sent in two halves and cut after the first
                    (``after_chunks`` >= 1) or before any (0), under the full Content-Length
malformed_chunk     stream: event number ``after_chunks`` (0-based; the last event if there
                    are fewer) keeps its ``event:`` line but carries half its JSON; unary:
                    the body is half the JSON
==================  =====================================================================

Every answer carries ``request-id`` (``req_...``) and ``anthropic-organization-id``; a
success also carries ``anthropic-ratelimit-*`` headers. An error body is
``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultKind,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
    count_tokens,
)
from rakka_inference.testkit.http_server import (
    Chunk,
    Faults,
    RecordedRequest,
    ScriptedHttpServer,
    ScriptedResponse,
)
from rakka_inference.testkit.mock_base import MockProviderServer

__all__ = ["MAX_CONTEXT_TOKENS", "MESSAGES_PATH", "ORGANIZATION_ID", "AnthropicMock"]

MESSAGES_PATH = "/v1/messages"
ORGANIZATION_ID = "00000000-0000-4000-8000-00000000a11c"
"""The ``anthropic-organization-id`` on every answer."""
MAX_CONTEXT_TOKENS = 200_000
"""The context window named in the mock's "prompt is too long" answer."""

_RATE_LIMITS = {"requests": 50, "tokens": 80_000, "input-tokens": 40_000, "output-tokens": 16_000}
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})
_WORD = re.compile(r"\S+")


class _Rejected(Exception):
    """A request the API refuses: rendered as its error answer."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class _Reply:
    """One answer, before it is rendered as a message object or as events."""

    message_id: str
    model: str
    content: list[dict[str, Any]]
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int


class AnthropicMock(MockProviderServer):
    """``POST /v1/messages`` on a :class:`ScriptedHttpServer`, with faults and a reply script.

    :attr:`faults` and :attr:`reply` may be changed while it runs. Routes scripted on
    :attr:`server` directly take precedence over the mock.
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        reply: ReplyScript | None = None,
        port: int = 0,
    ) -> None:
        self.faults = faults if faults is not None else FaultPlan()
        self.reply = reply if reply is not None else ReplyScript()
        self.server = ScriptedHttpServer(port=port, default=self._respond)
        self._serial = itertools.count(1)

    # ------------------------------------------------------------------ answering

    def _ident(self, prefix: str) -> str:
        return f"{prefix}_01{next(self._serial):022d}"

    def _respond(self, request: RecordedRequest) -> ScriptedResponse:
        request_id = self._ident("req")
        try:
            if (request.method, request.path) != ("POST", MESSAGES_PATH):
                raise _Rejected(404, "not_found_error", "Not Found")
            key = _api_key(request.headers)
            if not key:
                raise _Rejected(401, "authentication_error", "x-api-key header is required")
            if not self.faults.accepts(key):
                raise _Rejected(401, "authentication_error", "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                raise _Rejected(
                    400, "invalid_request_error", "anthropic-version: header is required"
                )
            body = _validated(request.body)
            try:
                fault = self.faults.take(key, request.headers.get(FAULT_HEADER))
            except ValueError as exc:
                raise _Rejected(400, "invalid_request_error", f"{FAULT_HEADER}: {exc}") from None
            return self._answer(body, fault, request_id)
        except _Rejected as rejected:
            return _error(rejected.status, rejected.kind, rejected.message, request_id)

    def _answer(
        self, body: dict[str, Any], fault: Fault | None, request_id: str
    ) -> ScriptedResponse:
        stream = body.get("stream") is True
        if fault is not None:
            failed = _fault_error(fault, body, request_id, stream=stream)
            if failed is not None:
                return failed
        refusal = fault is not None and fault.kind is FaultKind.CONTENT_FILTER
        reply = self._compose(body, refusal=refusal)
        headers = [*_identity_headers(request_id), *_limit_headers(limited=False)]
        if stream:
            return self._stream(reply, fault, headers, request_id)
        return _unary(reply, fault, headers)

    def _compose(self, body: dict[str, Any], *, refusal: bool) -> _Reply:
        script = self.reply
        content: list[dict[str, Any]] = []
        stop_sequence: str | None = None
        calls = [] if refusal else _tool_calls(body, script)
        if refusal:
            stop_reason = "refusal"
        elif calls:
            if script.text:
                content.append({"type": "text", "text": script.text})
            for call in calls:
                tool_id = self._ident("toolu")
                block = {"type": "tool_use", "id": tool_id, "name": call.name}
                content.append({**block, "input": dict(call.arguments)})
            stop_reason = "tool_use"
        else:
            text = script.answer_text(_last_user_text(body["messages"]))
            text, stop_reason, stop_sequence = _cut(text, body)
            if text:
                content.append({"type": "text", "text": text})
        said = [
            b["text"] if b["type"] == "text" else f"{b['name']} {orjson.dumps(b['input']).decode()}"
            for b in content
        ]
        return _Reply(
            message_id=self._ident("msg"),
            model=str(body["model"]),
            content=content,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            input_tokens=count_tokens(_prompt_texts(body)),
            output_tokens=count_tokens(said),
        )

    def _stream(
        self,
        reply: _Reply,
        fault: Fault | None,
        headers: list[tuple[str, str]],
        request_id: str,
    ) -> ScriptedResponse:
        delay = self.reply.chunk_delay_s
        events: list[tuple[str, Mapping[str, Any], float]] = [
            ("message_start", {"message": _message(reply, start=True)}, 0.0),
            ("ping", {}, 0.0),
        ]
        for index, block in enumerate(reply.content):
            opening = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
            events.append(("content_block_start", {"index": index, "content_block": opening}, 0.0))
            if block["type"] == "text":
                deltas = [
                    {"type": "text_delta", "text": p} for p in self.reply.pieces(block["text"])
                ]
            else:
                arguments = orjson.dumps(block["input"]).decode() if block["input"] else ""
                pieces = self.reply.pieces(arguments)
                deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
            events += [("content_block_delta", {"index": index, "delta": d}, delay) for d in deltas]
            events.append(("content_block_stop", {"index": index}, 0.0))
        stop = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
        usage = {"output_tokens": reply.output_tokens}
        events.append(("message_delta", {"delta": stop, "usage": usage}, 0.0))
        events.append(("message_stop", {}, 0.0))
        chunks = [Chunk(_event(name, payload), wait) for name, payload, wait in events]
        if fault is not None and fault.kind is FaultKind.OVERLOADED:
            chunks = chunks[: fault.after_chunks]
            error = _error_body("overloaded_error", "Overloaded", request_id)
            chunks.append(Chunk(_event("error", error)))
        elif fault is not None and fault.kind is FaultKind.MALFORMED_CHUNK:
            at = min(fault.after_chunks, len(chunks) - 1)
            name, payload, wait = events[at]
            chunks[at] = Chunk(_event(name, payload, broken=True), wait)
        return ScriptedResponse.stream(
            chunks,
            content_type="text/event-stream; charset=utf-8",
            headers=[("cache-control", "no-cache"), *headers],
            **_transport_faults(fault, len(chunks)),
        )


# ---------------------------------------------------------------------- rendering


def _message(reply: _Reply, *, start: bool = False) -> dict[str, Any]:
    return {
        "id": reply.message_id,
        "type": "message",
        "role": "assistant",
        "model": reply.model,
        "content": [] if start else reply.content,
        "stop_reason": None if start else reply.stop_reason,
        "stop_sequence": None if start else reply.stop_sequence,
        "usage": {
            "input_tokens": reply.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1 if start else reply.output_tokens,
        },
    }


def _unary(reply: _Reply, fault: Fault | None, headers: list[tuple[str, str]]) -> ScriptedResponse:
    data = orjson.dumps(_message(reply))
    half = len(data) // 2
    pairs = [("content-type", "application/json"), *headers]
    kind = fault.kind if fault is not None else None
    if kind is FaultKind.MALFORMED_CHUNK:
        return ScriptedResponse(200, pairs, [data[:half]])
    body = [data[:half], data[half:]] if kind in (FaultKind.STALL, FaultKind.RESET) else [data]
    return ScriptedResponse(200, pairs, body, **_transport_faults(fault, 1))


def _transport_faults(fault: Fault | None, chunks: int) -> Faults:
    if fault is None:
        return {}
    if fault.kind is FaultKind.SLOW_FIRST_BYTE:
        return {"first_byte_delay": fault.delay_s}
    if fault.kind is FaultKind.STALL:
        return {"stall_after_chunks": min(fault.after_chunks, chunks)}
    if fault.kind is FaultKind.RESET:
        return {"reset_after_chunks": min(fault.after_chunks, chunks)}
    return {}


def _event(name: str, payload: Mapping[str, Any], *, broken: bool = False) -> bytes:
    """One SSE event; ``broken`` keeps only the first half of its JSON."""
    data = orjson.dumps({"type": name, **payload})
    if broken:
        data = data[: len(data) // 2]
    return b"event: %s\ndata: %s\n\n" % (name.encode(), data)


def _fault_error(
    fault: Fault, body: Mapping[str, Any], request_id: str, *, stream: bool
) -> ScriptedResponse | None:
    """The error answer ``fault`` stands for; None for faults that shape a normal answer."""
    kind = fault.kind
    if kind is FaultKind.RATE_LIMIT:
        message = (
            "This request would exceed your organization's rate limit of 50 requests per "
            "minute. Please retry after the time given in the retry-after header."
        )
        headers = _retry_headers(fault.retry_after_s or 0.0)
        return _error(429, "rate_limit_error", message, request_id, headers)
    if kind is FaultKind.SERVER_ERROR and fault.status == 529:
        return _error(529, "overloaded_error", "Overloaded", request_id)
    if kind is FaultKind.SERVER_ERROR:
        return _error(fault.status or 503, "api_error", "Internal server error", request_id)
    if kind is FaultKind.OVERLOADED and not stream:
        return _error(529, "overloaded_error", "Overloaded", request_id)
    if kind is FaultKind.CONTEXT_LENGTH:
        tokens = MAX_CONTEXT_TOKENS + count_tokens(_prompt_texts(body))
        message = f"prompt is too long: {tokens} tokens > {MAX_CONTEXT_TOKENS} maximum"
        return _error(400, "invalid_request_error", message, request_id)
    if kind is FaultKind.UNAUTHORIZED:
        return _error(401, "authentication_error", "invalid x-api-key", request_id)
    return None


def _error_body(kind: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": request_id}


def _error(
    status: int,
    kind: str,
    message: str,
    request_id: str,
    headers: Sequence[tuple[str, str]] = (),
) -> ScriptedResponse:
    return ScriptedResponse.json(
        _error_body(kind, message, request_id),
        status=status,
        headers=[*_identity_headers(request_id), *headers],
    )


def _identity_headers(request_id: str) -> list[tuple[str, str]]:
    """What the API puts on every answer."""
    return [("request-id", request_id), ("anthropic-organization-id", ORGANIZATION_ID)]


def _retry_headers(retry_after_s: float) -> list[tuple[str, str]]:
    headers = [("retry-after", str(math.ceil(retry_after_s)))]
    if retry_after_s != math.ceil(retry_after_s):
        headers.append(("retry-after-ms", f"{retry_after_s * 1000:g}"))
    return headers + _limit_headers(limited=True, reset_in_s=retry_after_s)


def _limit_headers(*, limited: bool, reset_in_s: float = 60.0) -> list[tuple[str, str]]:
    reset = datetime.fromtimestamp(math.ceil(time.time() + reset_in_s), UTC)
    stamp = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = []
    for name, limit in _RATE_LIMITS.items():
        remaining = 0 if limited else limit - 1
        headers += [
            (f"anthropic-ratelimit-{name}-limit", str(limit)),
            (f"anthropic-ratelimit-{name}-remaining", str(remaining)),
            (f"anthropic-ratelimit-{name}-reset", stamp),
        ]
    return headers


# ---------------------------------------------------------------------- reading the request


def _api_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``x-api-key``, else from ``Authorization: Bearer`` (newer SDKs send that)."""
    key = headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _invalid(message: str) -> _Rejected:
    return _Rejected(400, "invalid_request_error", message)


def _validated(raw: bytes) -> dict[str, Any]:
    """The request body, or the API's 400 for what it would refuse."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _invalid("There was an error parsing the body as JSON") from None
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise _invalid(f"{name}: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise _invalid("model: Input should be a valid string")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        raise _invalid("temperature: Input should be less than or equal to 1")
    if not isinstance(body.get("stream", False), bool):
        raise _invalid("stream: Input should be a valid boolean")
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: at least one message is required")
    for index, message in enumerate(messages):
        _check_message(index, message, messages)
    _check_tools(body)
    return body


def _blocks(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or () if isinstance(block, dict)]


def _check_message(index: int, message: object, messages: list[Any]) -> None:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
    content = message.get("content")
    if not isinstance(content, str | list) or not content:
        raise _invalid(
            f"messages.{index}: all messages must have non-empty content except for the "
            "optional final assistant message"
        )
    blocks = _blocks(message)
    if isinstance(content, list) and len(blocks) != len(content):
        raise _invalid(f"messages.{index}.content: Input should be a valid list of blocks")
    if any(b.get("type") == "text" and not b.get("text") for b in blocks):
        raise _invalid("messages: text content blocks must be non-empty")
    answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
    previous = _blocks(messages[index - 1]) if index else []
    called = {b.get("id") for b in previous if b.get("type") == "tool_use"}
    if answered - called:
        unexpected = ", ".join(sorted(str(i) for i in answered - called))
        raise _invalid(
            f"messages.{index}.content: unexpected `tool_use_id` found in `tool_result` "
            f"blocks: {unexpected}. Each `tool_result` block must have a corresponding "
            "`tool_use` block in the previous message."
        )
    if index and called - answered:
        missing = ", ".join(sorted(str(i) for i in called - answered))
        raise _invalid(
            f"messages.{index - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {missing}. Each `tool_use` block must have a corresponding "
            "`tool_result` block in the next message."
        )


def _check_tools(body: Mapping[str, Any]) -> None:
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
        isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools
    ):
        raise _invalid("tools: each tool needs a name")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise _invalid("tool_choice: Input tag does not match any of 'auto', 'any', 'tool', 'none'")
    if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in tools}:
        raise _invalid(f"tool_choice: tool {choice.get('name')!r} is not among the tools")


def _texts(blocks: list[dict[str, Any]]) -> list[str]:
    texts: list[str] = []
    for block in blocks:
        if block.get("type") == "text":
            texts.append(str(block["text"]))
        elif block.get("type") == "tool_result":
            texts += _texts(_blocks(block))
    return texts


def _prompt_texts(body: Mapping[str, Any]) -> list[str]:
    system = body.get("system") or []
    texts = [system] if isinstance(system, str) else _texts(list(system))
    for message in body["messages"]:
        texts += _texts(_blocks(message))
    return texts


def _answers_tools(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    return last["role"] == "user" and any(b.get("type") == "tool_result" for b in _blocks(last))


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message["role"] == "user":
            return " ".join(_texts(_blocks(message)))
    return ""


def _tool_calls(body: Mapping[str, Any], script: ReplyScript) -> list[ScriptedToolCall]:
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    if not tools or choice["type"] == "none":
        return []
    calls = list(script.tool_calls)
    if choice["type"] == "tool":
        calls = [c for c in calls if c.name == choice["name"]] or [ScriptedToolCall(choice["name"])]
    elif choice["type"] == "any":
        calls = calls or [ScriptedToolCall(tools[0]["name"])]
    elif _answers_tools(body["messages"]):
        return []
    return calls[:1] if choice.get("disable_parallel_tool_use") else calls


def _cut(text: str, body: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """``(text, stop_reason, stop_sequence)`` after the request's stop sequences and limit."""
    found = [(text.find(s), s) for s in body.get("stop_sequences") or () if s and s in text]
    if found:
        at, sequence = min(found)
        text, reason, stop_sequence = text[:at], "stop_sequence", sequence
    else:
        reason, stop_sequence = "end_turn", None
    words = list(_WORD.finditer(text))
    if len(words) > body["max_tokens"]:
        return text[: words[body["max_tokens"] - 1].end()], "max_tokens", None
    return text, reason, stop_sequence
