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
that of the answer's text, thinking, tool names and JSON inputs; both cache counts are 0.
With ``thinking`` enabled the answer begins with signed thinking (:attr:`thinking`;
the checks and blocks are :mod:`rakka_inference.testkit.anthropic_thinking`'s).

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

Layout: this module holds the server and composes its answers;
:mod:`rakka_inference.testkit.anthropic_wire` reads and checks requests,
:mod:`rakka_inference.testkit.anthropic_render` renders messages, events, errors and
headers.
"""

from __future__ import annotations

import itertools
from typing import Any, Unpack

import orjson

from rakka_inference.testkit.anthropic_render import (
    Reply,
    error_response,
    fault_error,
    identity_headers,
    limit_headers,
    stream_response,
    unary_response,
)
from rakka_inference.testkit.anthropic_thinking import (
    ThinkingScript,
    check_thinking,
    enabled,
    thinking_blocks,
)
from rakka_inference.testkit.anthropic_wire import (
    Rejected,
    api_key,
    cut_text,
    last_user_text,
    prompt_texts,
    tool_calls,
    validated_body,
)
from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultKind,
    ReplyScript,
    count_tokens,
)
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_base import MockOptions, MockProviderServer

__all__ = ["MESSAGES_PATH", "AnthropicMock"]

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"


class AnthropicMock(MockProviderServer):
    """``POST /v1/messages`` on a :class:`ScriptedHttpServer`, with faults and a reply script.

    :attr:`faults` and :attr:`reply` may be changed while it runs. Routes scripted on
    :attr:`server` directly take precedence over the mock.
    """

    def __init__(self, **options: Unpack[MockOptions]) -> None:
        super().__init__(**options)
        self._serial = itertools.count(1)
        self.thinking = ThinkingScript()
        """What the model thinks when a request enables thinking (see
        :mod:`rakka_inference.testkit.anthropic_thinking`)."""

    # ------------------------------------------------------------------ answering

    def _ident(self, prefix: str) -> str:
        return f"{prefix}_01{next(self._serial):022d}"

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        request_id = self._ident("req")
        try:
            counting = request.path == COUNT_TOKENS_PATH
            if request.method != "POST" or request.path not in (MESSAGES_PATH, COUNT_TOKENS_PATH):
                raise Rejected(404, "not_found_error", "Not Found")
            key = api_key(request.headers)
            if not key:
                raise Rejected(401, "authentication_error", "x-api-key header is required")
            if not self.faults.accepts(key):
                raise Rejected(401, "authentication_error", "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                raise Rejected(
                    400, "invalid_request_error", "anthropic-version: header is required"
                )
            if counting:
                return self._count(request.body, request_id)
            body = validated_body(request.body)
            check_thinking(body)
            try:
                fault = self.take_fault(key, request)
            except ValueError as exc:
                raise Rejected(400, "invalid_request_error", f"{FAULT_HEADER}: {exc}") from None
            return self._answer(body, fault, request_id)
        except Rejected as rejected:
            return error_response(rejected.status, rejected.kind, rejected.message, request_id)

    def _count(self, raw: bytes, request_id: str) -> ScriptedResponse:
        """``count_tokens``: the prompt's tokens as :func:`count_tokens` counts them. The
        body is a Messages body without ``max_tokens`` (and without sampling fields)."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Rejected(400, "invalid_request_error", "the body is not JSON") from None
        if not isinstance(body, dict) or "messages" not in body or "model" not in body:
            raise Rejected(400, "invalid_request_error", "model and messages are required")
        extra = sorted(
            set(body) - {"model", "messages", "system", "tools", "tool_choice", "thinking"}
        )
        if extra:
            raise Rejected(
                400, "invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"
            )
        answer = {"input_tokens": count_tokens(prompt_texts(body))}
        headers = [*identity_headers(request_id), ("content-type", "application/json")]
        return ScriptedResponse(200, headers, [orjson.dumps(answer)])

    def _answer(
        self, body: dict[str, Any], fault: Fault | None, request_id: str
    ) -> ScriptedResponse:
        stream = body.get("stream") is True
        if fault is not None:
            failed = fault_error(fault, body, request_id, stream=stream)
            if failed is not None:
                return failed
        refusal = fault is not None and fault.kind is FaultKind.CONTENT_FILTER
        script = self.script_for(body)
        reply = self._compose(body, script, refusal=refusal)
        headers = [*identity_headers(request_id), *limit_headers(limited=False)]
        if stream:
            return stream_response(reply, script, fault, headers, request_id)
        return unary_response(reply, fault, headers)

    def _compose(self, body: dict[str, Any], script: ReplyScript, *, refusal: bool) -> Reply:
        content: list[dict[str, Any]] = []
        stop_sequence: str | None = None
        calls = [] if refusal else tool_calls(body, script)
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
            text = script.answer_text(last_user_text(body["messages"]))
            text, stop_reason, stop_sequence = cut_text(text, body)
            if text:
                content.append({"type": "text", "text": text})
        if enabled(body) and not refusal:
            content[:0] = thinking_blocks(self.thinking, last_user_text(body["messages"]))
        said = [_said(block) for block in content]
        return Reply(
            message_id=self._ident("msg"),
            model=str(body["model"]),
            content=content,
            stop_reason=stop_reason,
            stop_sequence=stop_sequence,
            input_tokens=count_tokens(prompt_texts(body)),
            output_tokens=count_tokens(said),
        )


def _said(block: dict[str, Any]) -> str:
    """What a content block counts as, in output tokens."""
    kind = block["type"]
    if kind == "text":
        return str(block["text"])
    if kind == "thinking":
        return str(block["thinking"])
    if kind == "redacted_thinking":
        return "redacted"
    return f"{block['name']} {orjson.dumps(block['input']).decode()}"
