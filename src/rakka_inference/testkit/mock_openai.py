"""A mock OpenAI and Azure OpenAI server: the real Chat Completions wire format over
loopback HTTP, with the faults of :mod:`rakka_inference.testkit.faults`.

In a test, or behind a standalone runner::

    async with OpenAIMock(reply=ReplyScript(text="Hello there", chunks=2)) as mock:
        client = openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key="sk-test")
        mock.faults.next(Fault.rate_limit(0.02))   # the next request gets a 429
        ...

    mock = OpenAIMock(port=8080)
    await mock.start()      # ... serve ...
    await mock.stop()

Routes
======
OpenAI, with ``Authorization: Bearer KEY``: ``POST /v1/chat/completions``,
``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{model}``.

Azure OpenAI, with the ``api-key`` header (or an Entra ID bearer token) and an
``api-version`` query parameter: ``POST /openai/deployments/{deployment}/chat/completions``,
``POST /openai/deployments/{deployment}/embeddings``, ``GET /openai/models``.

A request goes through, in order: routing (an unknown route gets the dialect's 404), the
credential (one that ``faults.accepts`` refuses gets the dialect's real 401 — OpenAI quotes
the key masked, never whole), the fault (``faults.take(key, x-mock-fault header)``; a header
that does not parse is a 400 with ``param: "x-mock-fault"``) — a fault that is an error
answer ends it here —, the checks of the body the real API makes (its 400s, word for word,
for what the mock checks: missing fields, unknown roles, tool messages that answer no call,
calls left unanswered, ``n`` outside 1..128 and ``top_logprobs`` outside 0..20, so no
request builds more than the real API would), then the answer, with a transport fault
applied to it. Answers scripted on :attr:`OpenAIMock.server` directly take precedence over
all of this.

Answers
=======
A chat is answered with text — ``reply.answer_text`` of the last user message or, right
after tool results, of those results — or with tool calls: ``reply.tool_calls`` when the
request offers tools and ``tool_choice`` is not ``"none"`` and the last message is not a
tool result; a ``"required"`` or named ``tool_choice`` with nothing scripted calls that
(or the first) tool with ``{}``. A named choice ends with ``finish_reason: "stop"``, as the
real API does; ``parallel_tool_calls: false`` keeps only the first call. ``max_tokens`` /
``max_completion_tokens`` cut the text to that many words (``finish_reason: "length"``).
Usage is the real shape, counted by :func:`~rakka_inference.testkit.faults.count_tokens`:
the prompt is every message's text (and tool-call arguments), the completion the answer
(every choice's). ``n`` answers with that many choices, and ``logprobs: true`` gives each
choice's ``logprobs.content`` (``top_logprobs`` alternatives per token), as
:mod:`~rakka_inference.testkit.mock_choices` sets out.

A stream is one SSE event per HTTP chunk, and faults count these events:
``[Azure: prompt_filter_results]``, the role delta (carrying the first call's header when
calling tools), one event per content piece (per call header and argument fragment),
the finish, ``[the usage chunk, when stream_options.include_usage]``, ``data: [DONE]``.
Content pieces and argument fragments each come ``reply.chunk_delay_s`` after the previous.
With log probabilities asked for, each content piece is one token, with its record. The
events of several choices interleave, one of each choice in turn, from its role delta to its
finish; the usage chunk follows them all.

Faults
======
================  ===================================================================
kind              rendered as
================  ===================================================================
rate_limit        429 with ``retry-after`` (whole seconds, rounded up),
                  ``retry-after-ms`` and ``x-ratelimit-*`` (no requests remaining);
                  OpenAI: type ``requests``, code ``rate_limit_exceeded``; Azure: code "429"
server_error      ``status`` (default 503) with OpenAI's ``server_error`` body
overloaded        503 "That model is currently overloaded", type ``server_error``
content_filter    400, code ``content_filter``; Azure adds the ``innererror``
                  ``ResponsibleAIPolicyViolation`` with its filter results
context_length    400, code ``context_length_exceeded``, param ``messages``
unauthorized      the dialect's real 401
slow_first_byte   the normal answer, its status line ``delay_s`` late
stall / reset     a stream: ``after_chunks`` events, then silence / a TCP reset;
                  a unary answer: the head, then silence / a reset instead of the body
malformed_chunk   stream event number ``after_chunks`` (from 0; past the end: the last)
                  becomes ``data: {"choices": [``; a unary body becomes ``{"choices": [``
================  ===================================================================

Layout
======
This module holds the server and its answers; :mod:`rakka_inference.testkit.openai_wire`
reads and checks requests, :mod:`rakka_inference.testkit.openai_render` renders headers,
error bodies, refusals and stream events.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any, Unpack

from rakka_inference.testkit.faults import FAULT_HEADER, Fault, FaultKind, count_tokens
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_base import MockOptions, MockProviderServer
from rakka_inference.testkit.mock_choices import choice_text, openai_logprobs, tokens
from rakka_inference.testkit.openai_render import (
    AZURE_401,
    FILTER_RESULTS,
    FINGERPRINT,
    NO_KEY,
    PROMPT_FILTER,
    Answer,
    MockChoice,
    azure_error,
    chat_usage,
    deliver,
    error_response,
    mock_id,
    not_found,
    refusal,
    response_headers,
    stream_events,
)
from rakka_inference.testkit.openai_wire import (
    NOT_JSON,
    ChatRequest,
    InvalidRequest,
    Route,
    bounded_integer,
    call_arguments,
    credential,
    embedding_inputs,
    json_object,
    message_texts,
    parse_route,
    prompt_text,
    read_chat,
    request_model,
)

__all__ = ["DEFAULT_MODELS", "OpenAIMock", "embedding_vector", "mask_key"]

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
"""What ``GET /v1/models`` lists by default."""
EMBEDDING_DIMENSIONS = 8
_STRUCTURED = frozenset({"json_object", "json_schema"})
MAX_CHOICES, MAX_TOP_LOGPROBS = 128, 20
"""The real API's bounds on ``n`` and ``top_logprobs``."""
_REFUSALS = frozenset(
    {
        FaultKind.RATE_LIMIT,
        FaultKind.SERVER_ERROR,
        FaultKind.OVERLOADED,
        FaultKind.CONTENT_FILTER,
        FaultKind.CONTEXT_LENGTH,
        FaultKind.UNAUTHORIZED,
    }
)


def mask_key(key: str) -> str:
    """A key as OpenAI quotes it in a 401: its first three and last four characters.

    Keys shorter than 12 characters are masked whole, so no test key is ever echoed.
    """
    if len(key) < 12:
        return "*" * len(key)
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}"


def embedding_vector(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The mock's embedding of ``text``: a unit vector derived from its hash.

    Every component is exact in float32, so the ``float`` and ``base64`` encodings agree.
    """
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    values = [v / 32768.0 for v in struct.unpack(f"<{dimensions}h", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [_f32(v / norm) for v in values]


def _f32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


class OpenAIMock(MockProviderServer):
    """OpenAI and Azure OpenAI on a real loopback HTTP server (see the module docstring).

    ``faults`` and ``reply`` may be changed while it runs; ``requests`` lists every request
    the server read, in order. ``clock`` gives the ``created`` timestamps.
    """

    def __init__(
        self,
        *,
        models: Sequence[str] = DEFAULT_MODELS,
        clock: Callable[[], float] = time.time,
        **options: Unpack[MockOptions],
    ) -> None:
        super().__init__(**options)
        self.models = tuple(models)
        self._clock = clock
        self._count = 0

    @property
    def openai_base_url(self) -> str:
        """``url + "/v1"``: the OpenAI SDK's ``base_url``."""
        return f"{self.server.url}/v1"

    # ------------------------------------------------------------------ answering

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        self._count += 1
        route = parse_route(request)
        if route is None or (route.azure and not route.api_version):
            return not_found(self._count, request)
        key = credential(request, azure=route.azure)
        if not self.faults.accepts(key):
            return self._unauthorized(route, key)
        try:
            fault = self.take_fault(key, request)
        except ValueError as exc:
            message = f"{FAULT_HEADER}: {exc}"
            return error_response(self._count, 400, message, azure=route.azure, param=FAULT_HEADER)
        body = json_object(request.body) if request.method == "POST" else {}
        if fault is not None and fault.kind in _REFUSALS:
            return self._refusal(fault, route, key, body or {})
        try:
            if body is None:
                raise InvalidRequest(NOT_JSON)
            if route.operation == "chat":
                answer = self._chat(route, body)
            elif route.operation == "embeddings":
                answer = self._embeddings(route, body)
            else:
                answer = self._models(route)
        except InvalidRequest as invalid:
            return error_response(
                self._count,
                invalid.status,
                invalid.message,
                azure=route.azure,
                param=invalid.param,
                code=invalid.code,
            )
        return deliver(answer, fault)

    def _unauthorized(self, route: Route, key: str | None) -> ScriptedResponse:
        if route.azure:
            return azure_error(401, "401", AZURE_401)
        if not key:
            return error_response(self._count, 401, NO_KEY)
        message = (
            f"Incorrect API key provided: {mask_key(key)}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return error_response(self._count, 401, message, code="invalid_api_key")

    def _refusal(
        self, fault: Fault, route: Route, key: str | None, body: dict[str, Any]
    ) -> ScriptedResponse:
        if fault.kind is FaultKind.UNAUTHORIZED:
            return self._unauthorized(route, key)
        return refusal(self._count, fault, route, body)

    # ------------------------------------------------------------------ chat

    def _chat(self, route: Route, body: dict[str, Any]) -> Answer:
        chat = read_chat(route, body, self.script_for(body))
        prompt_tokens = count_tokens(message_texts(chat.messages))
        count = bounded_integer(body, "n", 1, MAX_CHOICES) or 1
        top = bounded_integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
        choices = [
            self._choice(chat, body, index, top if body.get("logprobs") is True else None)
            for index in range(count)
        ]
        completion = sum(
            count_tokens(f"{name} {args}" for _, name, args in choice.calls)
            if choice.calls
            else count_tokens([choice.text])
            for choice in choices
        )
        usage = chat_usage(prompt_tokens, completion)
        head = {
            "id": f"chatcmpl-{mock_id('chat', self._count, 29)}",
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": chat.model,
        }
        headers = response_headers(self._count, azure=route.azure, tokens=prompt_tokens)
        if chat.stream:
            return Answer(
                headers, events=stream_events(chat, route, head, choices=choices, usage=usage)
            )
        rendered = [self._unary_choice(index, choice) for index, choice in enumerate(choices)]
        document: dict[str, Any] = {**head, "choices": rendered, "usage": usage}
        if route.azure:
            for choice in rendered:
                choice["content_filter_results"] = FILTER_RESULTS
            document["prompt_filter_results"] = PROMPT_FILTER
        else:
            document |= {"service_tier": "default", "system_fingerprint": FINGERPRINT}
        return Answer(headers, document=document)

    def _choice(
        self, chat: ChatRequest, body: dict[str, Any], index: int, top: int | None
    ) -> MockChoice:
        """Choice ``index`` of the answer (see :mod:`~rakka_inference.testkit.mock_choices`)."""
        seed = f"{self._count}:" if index == 0 else f"{self._count}:{index}:"
        calls = [
            (f"call_{mock_id('call', f'{seed}{i}', 24)}", c.name, call_arguments(c))
            for i, c in enumerate(chat.calls)
        ]
        if calls:
            finish = "stop" if chat.named else "tool_calls"  # the real API's quirk
            return MockChoice("", calls, finish)
        text = chat.reply.answer_text(prompt_text(chat.messages))
        structured = (body.get("response_format") or {}).get("type") in _STRUCTURED
        text, finish = choice_text(text, index, structured=structured), "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and count_tokens([text]) > limit:
            text, finish = " ".join(text.split()[:limit]), "length"
        return MockChoice(text, [], finish, top)

    @staticmethod
    def _unary_choice(index: int, choice: MockChoice) -> dict[str, Any]:
        calls = choice.calls
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls else choice.text,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ]
        logprobs = None
        if choice.top is not None:
            records = [] if calls else openai_logprobs(tokens(choice.text), 0, choice.top)
            logprobs = {"content": records, "refusal": None}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": choice.finish,
        }

    # ------------------------------------------------------------------ embeddings, models

    def _embeddings(self, route: Route, body: dict[str, Any]) -> Answer:
        model = request_model(route, body)
        inputs = embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or dimensions < 1:
            raise InvalidRequest(
                f"Invalid 'dimensions': {dimensions!r}. Expected a positive integer.",
                "dimensions",
                "invalid_value",
            )
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = embedding_vector(text, dimensions)
            packed = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            value: Any = packed if as_base64 else vector
            data.append({"object": "embedding", "index": index, "embedding": value})
        tokens = count_tokens(inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        document = {"object": "list", "data": data, "model": model, "usage": usage}
        return Answer(
            response_headers(self._count, azure=route.azure, tokens=tokens), document=document
        )

    def _models(self, route: Route) -> Answer:
        listed = [
            {"id": name, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for name in self.models
        ]
        headers = response_headers(self._count, azure=route.azure)
        if route.operation == "models":
            return Answer(headers, document={"object": "list", "data": listed})
        for model in listed:
            if model["id"] == route.name:
                return Answer(headers, document=model)
        message = f"The model '{route.name}' does not exist"
        raise InvalidRequest(message, "model", "model_not_found", status=404)
