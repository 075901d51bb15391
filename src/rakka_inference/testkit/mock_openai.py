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
calls left unanswered), then the answer, with a transport fault applied to it. Answers
scripted on :attr:`OpenAIMock.server` directly take precedence over all of this.

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
the prompt is every message's text (and tool-call arguments), the completion the answer.

A stream is one SSE event per HTTP chunk, and faults count these events:
``[Azure: prompt_filter_results]``, the role delta (carrying the first call's header when
calling tools), one event per content piece (per call header and argument fragment),
the finish, ``[the usage chunk, when stream_options.include_usage]``, ``data: [DONE]``.
Content pieces and argument fragments each come ``reply.chunk_delay_s`` after the previous.

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
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs

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

__all__ = ["DEFAULT_MODELS", "OpenAIMock", "embedding_vector", "mask_key"]

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
"""What ``GET /v1/models`` lists by default."""
CONTEXT_WINDOW = 128_000
LIMIT_REQUESTS = 10_000
LIMIT_TOKENS = 30_000_000
EMBEDDING_DIMENSIONS = 8

_FINGERPRINT = "fp_mock0openai"
_MALFORMED = b'{"choices": ['
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
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
_AZURE_PATH = re.compile(r"/openai/deployments/([^/]+)/(chat/completions|embeddings)")
_MODEL_PATH = re.compile(r"/v1/models/([^/]+)")
_SAFE = {"filtered": False, "severity": "safe"}
_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": _FILTER_RESULTS}]
_AZURE_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API "
    "endpoint for your resource."
)
_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password "
    "field (with blank username) if you're accessing the API from your browser and are "
    "prompted for a username and password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
    "sent was not valid JSON. If you have trouble figuring out how to fix this, please "
    "contact us through our help center at help.openai.com.)"
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


class _Invalid(Exception):
    """The body breaks a rule the real API enforces: answered with its 400."""

    def __init__(
        self, message: str, param: str | None = None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class _Route:
    azure: bool
    operation: str
    """``chat``, ``embeddings``, ``models`` or ``model``."""
    name: str | None = None
    """The Azure deployment, or the model ``GET /v1/models/{model}`` asks for."""
    api_version: str | None = None
    """Azure: the ``api-version`` query parameter."""


@dataclass(slots=True)
class _Answer:
    """A success before faults are applied: a unary document, or a stream's events."""

    headers: list[tuple[str, str]]
    document: Any = None
    events: list[Chunk] | None = None


@dataclass(slots=True)
class _Chat:
    """What one chat request asks for, read from its body."""

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    reply: ReplyScript
    """The reply script as it was when the request came in."""
    calls: list[ScriptedToolCall]
    named: bool
    """The calls were forced by a named ``tool_choice``."""


class OpenAIMock:
    """OpenAI and Azure OpenAI on a real loopback HTTP server (see the module docstring).

    ``faults`` and ``reply`` may be changed while it runs; ``requests`` lists every request
    the server read, in order. ``clock`` gives the ``created`` timestamps.
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        reply: ReplyScript | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.faults = faults if faults is not None else FaultPlan()
        self.reply = reply if reply is not None else ReplyScript()
        self.models = tuple(models)
        self._clock = clock
        self._count = 0
        self.server = ScriptedHttpServer(host=host, port=port, default=self.respond)

    async def start(self) -> None:
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``http://host:port``: Azure's ``azure_endpoint``."""
        return self.server.url

    @property
    def openai_base_url(self) -> str:
        """``url + "/v1"``: the OpenAI SDK's ``base_url``."""
        return f"{self.server.url}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.server.requests

    # ------------------------------------------------------------------ answering

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        """The answer to one request, faults included (the server's responder)."""
        self._count += 1
        route = _route(request)
        if route is None or (route.azure and not route.api_version):
            return self._not_found(request)
        key = _credential(request, azure=route.azure)
        if not self.faults.accepts(key):
            return self._unauthorized(route, key)
        try:
            fault = self.faults.take(key, request.headers.get(FAULT_HEADER))
        except ValueError as exc:
            message = f"{FAULT_HEADER}: {exc}"
            return self._error(400, message, azure=route.azure, param=FAULT_HEADER)
        body = _json_object(request.body) if request.method == "POST" else {}
        if fault is not None and fault.kind in _REFUSALS:
            return self._refusal(fault, route, key, body or {})
        try:
            if body is None:
                raise _Invalid(_NOT_JSON)
            if route.operation == "chat":
                answer = self._chat(route, body)
            elif route.operation == "embeddings":
                answer = self._embeddings(route, body)
            else:
                answer = self._models(route)
        except _Invalid as invalid:
            return self._error(
                invalid.status,
                invalid.message,
                azure=route.azure,
                param=invalid.param,
                code=invalid.code,
            )
        return _deliver(answer, fault)

    def _headers(self, *, azure: bool = False, tokens: int = 0) -> list[tuple[str, str]]:
        request_id = _token("req", self._count, 32)
        headers = [("x-request-id", f"req_{request_id}"), ("openai-processing-ms", "1")]
        if azure:
            headers += [
                ("apim-request-id", request_id),
                ("x-ratelimit-remaining-requests", str(LIMIT_REQUESTS - 1)),
                ("x-ratelimit-remaining-tokens", str(LIMIT_TOKENS - tokens)),
            ]
            return headers
        return [
            *headers,
            ("openai-version", "2020-10-01"),
            *_rate_headers(LIMIT_REQUESTS - 1, LIMIT_TOKENS - tokens, 0.006),
        ]

    def _error(
        self,
        status: int,
        message: str,
        *,
        azure: bool = False,
        kind: str | None = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> ScriptedResponse:
        detail = {"message": message, "type": kind, "param": param, "code": code}
        given = {name for name, _ in headers}
        common = [(n, v) for n, v in self._headers(azure=azure) if n not in given]
        return ScriptedResponse.json({"error": detail}, status=status, headers=[*common, *headers])

    def _not_found(self, request: RecordedRequest) -> ScriptedResponse:
        if request.path.startswith("/openai/"):
            return _azure_error(404, "404", "Resource not found")
        return self._error(404, f"Invalid URL ({request.method} {request.path})")

    def _unauthorized(self, route: _Route, key: str | None) -> ScriptedResponse:
        if route.azure:
            return _azure_error(401, "401", _AZURE_401)
        if not key:
            return self._error(401, _NO_KEY)
        message = (
            f"Incorrect API key provided: {mask_key(key)}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return self._error(401, message, code="invalid_api_key")

    def _refusal(
        self, fault: Fault, route: _Route, key: str | None, body: dict[str, Any]
    ) -> ScriptedResponse:
        model = str(body.get("model") or route.name or "gpt-4o")
        kind = fault.kind
        if kind is FaultKind.UNAUTHORIZED:
            return self._unauthorized(route, key)
        if kind is FaultKind.RATE_LIMIT:
            return self._rate_limited(route, model, fault.retry_after_s or 0.0)
        if kind is FaultKind.SERVER_ERROR:
            message = "The server had an error while processing your request. Sorry about that!"
            return self._error(fault.status or 503, message, azure=route.azure, kind="server_error")
        if kind is FaultKind.OVERLOADED:
            message = (
                "That model is currently overloaded with other requests. You can retry your "
                "request, or contact us through our help center at help.openai.com if the "
                "error persists."
            )
            return self._error(fault.status or 503, message, azure=route.azure, kind="server_error")
        if kind is FaultKind.CONTEXT_LENGTH:
            try:
                prompt = count_tokens(_message_texts(_messages(body)))
            except _Invalid:
                prompt = 1
            message = (
                f"This model's maximum context length is {CONTEXT_WINDOW} tokens. However, "
                f"your messages resulted in {CONTEXT_WINDOW + prompt} tokens. Please reduce "
                "the length of the messages."
            )
            return self._error(
                400,
                message,
                azure=route.azure,
                param="messages",
                code="context_length_exceeded",
            )
        if route.azure:
            message = (
                "The response was filtered due to the prompt triggering Azure OpenAI's content "
                "management policy. Please modify your prompt and retry. To learn more about "
                "our content filtering policies please read our documentation: "
                "https://go.microsoft.com/fwlink/?linkid=2198766"
            )
            results = {**_FILTER_RESULTS, "violence": {"filtered": True, "severity": "medium"}}
            detail = {
                "message": message,
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": results,
                },
            }
            return ScriptedResponse.json(
                {"error": detail}, status=400, headers=self._headers(azure=True)
            )
        message = (
            "Your request was rejected as a result of our safety system. Your prompt may "
            "contain text that is not allowed by our safety system."
        )
        return self._error(400, message, param="prompt", code="content_filter")

    def _rate_limited(self, route: _Route, model: str, wait: float) -> ScriptedResponse:
        """The dialect's 429, asking for ``wait`` seconds."""
        retry = [("retry-after", str(math.ceil(wait))), ("retry-after-ms", f"{wait * 1000:g}")]
        if route.azure:
            message = (
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API "
                f"version {route.api_version} have exceeded call rate limit of your current "
                f"OpenAI S0 pricing tier. Please retry after {math.ceil(wait)} second. Please "
                "go here: https://aka.ms/oai/quotaincrease if you would like to further "
                "increase the default rate limit."
            )
            headers = [*retry, ("x-ratelimit-remaining-requests", "0")]
            return _azure_error(429, "429", message, headers)
        message = (
            f"Rate limit reached for {model} in organization org-mock on requests per min "
            f"(RPM): Limit {LIMIT_REQUESTS}, Used {LIMIT_REQUESTS}, Requested 1. Please try "
            f"again in {_go_duration(wait)}. Visit https://platform.openai.com/account/"
            "rate-limits to learn more."
        )
        headers = [*retry, *_rate_headers(0, LIMIT_TOKENS, wait)]
        return self._error(
            429, message, kind="requests", code="rate_limit_exceeded", headers=headers
        )

    # ------------------------------------------------------------------ chat

    def _chat(self, route: _Route, body: dict[str, Any]) -> _Answer:
        chat = _read_chat(route, body, self.reply)
        prompt_tokens = count_tokens(_message_texts(chat.messages))
        calls = [
            (f"call_{_token('call', f'{self._count}:{i}', 24)}", c.name, _arguments(c))
            for i, c in enumerate(chat.calls)
        ]
        text = ""
        if calls:
            finish = "stop" if chat.named else "tool_calls"  # the real API's quirk
            completion = count_tokens(f"{name} {args}" for _, name, args in calls)
        else:
            text, finish = chat.reply.answer_text(_prompt(chat.messages)), "stop"
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and count_tokens([text]) > limit:
                text, finish = " ".join(text.split()[:limit]), "length"
            completion = count_tokens([text])
        usage = _usage(prompt_tokens, completion)
        head = {
            "id": f"chatcmpl-{_token('chat', self._count, 29)}",
            "object": "chat.completion",
            "created": int(self._clock()),
            "model": chat.model,
        }
        headers = self._headers(azure=route.azure, tokens=prompt_tokens)
        if chat.stream:
            return _Answer(
                headers,
                events=_stream(
                    chat, route, head, text=text, calls=calls, finish=finish, usage=usage
                ),
            )
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if calls else text,
            "refusal": None,
            "annotations": [],
        }
        if calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        document: dict[str, Any] = {**head, "choices": [choice], "usage": usage}
        if route.azure:
            choice["content_filter_results"] = _FILTER_RESULTS
            document["prompt_filter_results"] = _PROMPT_FILTER
        else:
            document |= {"service_tier": "default", "system_fingerprint": _FINGERPRINT}
        return _Answer(headers, document=document)

    # ------------------------------------------------------------------ embeddings, models

    def _embeddings(self, route: _Route, body: dict[str, Any]) -> _Answer:
        model = _model(route, body)
        inputs = _embedding_inputs(body.get("input"))
        dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
        if not isinstance(dimensions, int) or dimensions < 1:
            raise _Invalid(
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
        return _Answer(self._headers(azure=route.azure, tokens=tokens), document=document)

    def _models(self, route: _Route) -> _Answer:
        listed = [
            {"id": name, "object": "model", "created": 1_715_367_049, "owned_by": "system"}
            for name in self.models
        ]
        headers = self._headers(azure=route.azure)
        if route.operation == "models":
            return _Answer(headers, document={"object": "list", "data": listed})
        for model in listed:
            if model["id"] == route.name:
                return _Answer(headers, document=model)
        message = f"The model '{route.name}' does not exist"
        raise _Invalid(message, "model", "model_not_found", status=404)


# ---------------------------------------------------------------------- wire helpers


def _route(request: RecordedRequest) -> _Route | None:
    method, path = request.method, request.path
    if method == "POST":
        if path == "/v1/chat/completions":
            return _Route(azure=False, operation="chat")
        if path == "/v1/embeddings":
            return _Route(azure=False, operation="embeddings")
        if match := _AZURE_PATH.fullmatch(path):
            operation = "chat" if match[2] == "chat/completions" else "embeddings"
            return _Route(True, operation, match[1], _api_version(request))
    elif method == "GET":
        if path == "/v1/models":
            return _Route(azure=False, operation="models")
        if path == "/openai/models":
            return _Route(True, "models", api_version=_api_version(request))
        if match := _MODEL_PATH.fullmatch(path):
            return _Route(azure=False, operation="model", name=match[1])
    return None


def _api_version(request: RecordedRequest) -> str | None:
    return next(iter(parse_qs(request.query).get("api-version", ())), None)


def _credential(request: RecordedRequest, *, azure: bool) -> str | None:
    if azure and request.headers.get("api-key"):
        return request.headers["api-key"]
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _deliver(answer: _Answer, fault: Fault | None) -> ScriptedResponse:
    """``answer`` on the wire, with ``fault`` (one of the transport kinds, or none)."""
    options: Faults = {}
    kind = fault.kind if fault is not None else None
    events = answer.events
    after = 0 if events is None or fault is None else min(fault.after_chunks, len(events))
    if fault is not None and kind is FaultKind.SLOW_FIRST_BYTE:
        options["first_byte_delay"] = fault.delay_s
    elif kind is FaultKind.STALL:
        options["stall_after_chunks"] = after
    elif kind is FaultKind.RESET:
        options["reset_after_chunks"] = after
    if events is None:
        body = _MALFORMED if kind is FaultKind.MALFORMED_CHUNK else orjson.dumps(answer.document)
        headers = [("Content-Type", "application/json"), *answer.headers]
        return ScriptedResponse(200, headers, [body], **options)
    if kind is FaultKind.MALFORMED_CHUNK:
        index = min(after, len(events) - 1)
        events[index] = Chunk(b"data: " + _MALFORMED + b"\n\n", events[index].delay)
    return ScriptedResponse.stream(
        events, content_type="text/event-stream; charset=utf-8", headers=answer.headers, **options
    )


def _stream(
    chat: _Chat,
    route: _Route,
    head: dict[str, Any],
    *,
    text: str,
    calls: list[tuple[str, str, str]],
    finish: str,
    usage: dict[str, Any],
) -> list[Chunk]:
    """A chat answer's SSE events, in the order the module docstring gives."""
    events: list[Chunk] = []
    head = {**head, "object": "chat.completion.chunk"}
    if route.azure:
        empty = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
        events.append(_event({**empty, "prompt_filter_results": _PROMPT_FILTER}))
    else:
        head |= {"service_tier": "default", "system_fingerprint": _FINGERPRINT}
    delay = chat.reply.chunk_delay_s

    def add(delta: dict[str, Any], finish_reason: str | None = None, wait: float = 0.0) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if route.azure:
            choice["content_filter_results"] = _FILTER_RESULTS if delta.get("content") else {}
        document = {**head, "choices": [choice]}
        if chat.include_usage:
            document["usage"] = None  # the real API sends the key on every chunk
        events.append(_event(document, wait))

    for index, (call_id, name, arguments) in enumerate(calls):
        call = {"index": index, "id": call_id, "type": "function"}
        call["function"] = {"name": name, "arguments": ""}
        opening = {"role": "assistant", "content": None, "refusal": None} if index == 0 else {}
        add({**opening, "tool_calls": [call]})
        for piece in chat.reply.pieces(arguments):
            add({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None, delay)
    if not calls:
        add({"role": "assistant", "content": "", "refusal": None})
        for piece in chat.reply.pieces(text):
            add({"content": piece}, None, delay)
    add({}, finish)
    if chat.include_usage:
        events.append(_event({**head, "choices": [], "usage": usage}))
    events.append(Chunk(b"data: [DONE]\n\n"))
    return events


def _read_chat(route: _Route, body: dict[str, Any], reply: ReplyScript) -> _Chat:
    model = _model(route, body)
    messages = _messages(body)
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _Invalid(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            "stream_options",
        )
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    calls, named = _planned_calls(body, messages, reply)
    return _Chat(model, messages, stream, include_usage, reply, calls, named)


def _model(route: _Route, body: dict[str, Any]) -> str:
    model = body.get("model")
    if isinstance(model, str) and model:
        return model
    if route.name is not None:
        return route.name  # Azure: the deployment names the model
    raise _Invalid("you must provide a model parameter")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's messages, checked as the real API checks them."""
    messages = body.get("messages")
    if messages is None:
        raise _Invalid(
            "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
        )
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _Invalid(
            "Invalid type for 'messages': expected an array of objects.", "messages", "invalid_type"
        )
    if not messages:
        raise _Invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but "
            "got an empty array instead.",
            "messages",
            "empty_array",
        )
    open_calls: dict[str, int] | None = None  # calls of the assistant message just before
    for index, message in enumerate(messages):
        role = message.get("role")
        if role not in _ROLES:
            raise _Invalid(
                f"Invalid value: {role!r}. Supported values are: 'system', 'assistant', "
                "'user', 'function', 'tool', and 'developer'.",
                f"messages[{index}].role",
                "invalid_value",
            )
        if role == "tool":
            call_id = message.get("tool_call_id")
            if open_calls is None:
                raise _Invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{index}].role",
                )
            if call_id not in open_calls:
                raise _Invalid(
                    f"Invalid parameter: 'tool_call_id' of '{call_id}' not found in "
                    "'tool_calls' of previous message.",
                    f"messages.[{index}].tool_call_id",
                )
            del open_calls[call_id]
            continue
        _require_answered(open_calls)
        calls = message.get("tool_calls") if role == "assistant" else None
        open_calls = {str(c.get("id")): index for c in calls} if calls else None
    _require_answered(open_calls)
    return messages


def _require_answered(open_calls: dict[str, int] | None) -> None:
    if open_calls:
        index = next(iter(open_calls.values()))
        raise _Invalid(
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(open_calls)}",
            f"messages.[{index}].role",
        )


def _planned_calls(
    body: dict[str, Any], messages: list[dict[str, Any]], reply: ReplyScript
) -> tuple[list[ScriptedToolCall], bool]:
    """The tool calls to answer with, and whether a named ``tool_choice`` forced them."""
    tools = body.get("tools") or ()
    names = [
        str(tool["function"].get("name"))
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    choice = body.get("tool_choice", "auto")
    if not names or choice == "none":
        return [], False
    named: str | None = None
    if isinstance(choice, dict):
        named = str((choice.get("function") or {}).get("name"))
    forced = named is not None or choice == "required"
    if not forced and messages[-1].get("role") == "tool":
        return [], False  # the results are in: the model answers them in words
    calls = [call for call in reply.tool_calls if named is None or call.name == named]
    if not calls and forced:
        calls = [ScriptedToolCall(named or names[0])]
    if body.get("parallel_tool_calls") is False:
        calls = calls[:1]
    return calls, named is not None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _message_texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    for message in messages:
        yield _text(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                yield str((call.get("function") or {}).get("arguments") or "")


def _prompt(messages: list[dict[str, Any]]) -> str:
    """What the model answers: the trailing tool results, else the last user message."""
    results: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        results.insert(0, _text(message.get("content")))
    if results:
        return " ".join(results)
    users = [m for m in messages if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _arguments(call: ScriptedToolCall) -> str:
    return orjson.dumps(dict(call.arguments)).decode()


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _embedding_inputs(value: Any) -> list[str]:
    if value is None:
        raise _Invalid(
            "Missing required parameter: 'input'.", "input", "missing_required_parameter"
        )
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(isinstance(item, int) for item in value):
            return [" ".join(map(str, value))]  # one input given as token ids
        if all(isinstance(item, list) for item in value):
            return [" ".join(map(str, item)) for item in value]
    raise _Invalid("'input' : input must be a string or an array of strings", "input")


def _json_object(body: bytes) -> dict[str, Any] | None:
    """The body's JSON object; None when it is not one."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


def _event(document: Any, delay: float = 0.0) -> Chunk:
    return Chunk(b"data: " + orjson.dumps(document) + b"\n\n", delay)


def _token(kind: str, seed: object, length: int) -> str:
    """A deterministic id part: the Nth request of a mock always gets the same ids."""
    return hashlib.blake2b(f"{kind}:{seed}".encode(), digest_size=16).hexdigest()[:length]


def _rate_headers(requests: int, tokens: int, reset_s: float) -> list[tuple[str, str]]:
    return [
        ("x-ratelimit-limit-requests", str(LIMIT_REQUESTS)),
        ("x-ratelimit-limit-tokens", str(LIMIT_TOKENS)),
        ("x-ratelimit-remaining-requests", str(requests)),
        ("x-ratelimit-remaining-tokens", str(tokens)),
        ("x-ratelimit-reset-requests", _go_duration(reset_s)),
        ("x-ratelimit-reset-tokens", _go_duration(min(reset_s, 0.006))),
    ]


def _go_duration(seconds: float) -> str:
    """OpenAI's reset durations: ``"20ms"``, ``"1.5s"``, ``"6m0s"``."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:g}s" if minutes else f"{rest:g}s"


def _azure_error(
    status: int, code: str, message: str, headers: Sequence[tuple[str, str]] = ()
) -> ScriptedResponse:
    return ScriptedResponse.json(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
