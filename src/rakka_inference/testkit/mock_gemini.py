"""A Gemini API double that speaks the real wire format over loopback HTTP, faults included.

Routes (anything else is the API's 404 ``NOT_FOUND``)::

    POST /{v1,v1beta,v1alpha}/models/{model}:{method}                       AI Studio
    POST /{v1,v1beta1}/projects/{p}/locations/{r}/publishers/google/models/{model}:{method}
                                                                            Vertex AI
    POST /token                                                             OAuth2 (Vertex)

with ``method`` one of ``generateContent``, ``streamGenerateContent`` (``?alt=sse``: one
``data: {GenerateContentResponse}`` event per chunk, CRLF-framed as Google frames them;
without it, the streamed JSON array the API sends by default) and ``countTokens``; or, for
embeddings, ``batchEmbedContents`` (AI Studio) and ``predict`` (Vertex), whose checks,
answers and faults are set out in :mod:`rakka_inference.testkit.gemini_embed_wire`.

Credentials, checked before anything else, against :attr:`FaultPlan.valid_keys`:

- AI Studio: the key from ``x-goog-api-key`` (or ``?key=``, which the real API also takes
  and our adapter never sends). None: 403 ``PERMISSION_DENIED``; a wrong one: the real 400
  ``INVALID_ARGUMENT`` with an ``ErrorInfo`` of reason ``API_KEY_INVALID``.
- Vertex: ``Authorization: Bearer {token}``. None or a wrong one: 401 ``UNAUTHENTICATED``
  (with ``WWW-Authenticate``), reasons ``CREDENTIALS_MISSING`` / ``ACCESS_TOKEN_TYPE_UNSUPPORTED``.
- ``POST /token`` takes the RFC 7523 form a service account sends (``grant_type`` the JWT
  bearer grant, ``assertion`` a JWT; the signature is not checked) and issues
  ``ya29.mock-N`` for ``token_lifetime_s``. With ``valid_keys`` set, each issued token is
  added to it, so a test can revoke every token (``faults.valid_keys = set()``) and watch
  a refresh fetch a fresh, valid one. Faults never apply to this route.

The answer (deterministic; see :class:`ReplyScript`): the request's function declarations
are called with the script's ``tool_calls`` that they declare (several: parallel calls, one
content), unless the last turn answers earlier calls with ``functionResponse`` parts, in
which case the model speaks; ``toolConfig`` mode ``NONE`` never calls and ``ANY`` always
does (the script's allowed calls, else the first allowed function with ``{}``). Otherwise
the answer is ``reply.answer_text`` of the last user turn's text, or, for a turn of
function responses, of ``"{name} returned {json}"`` per response joined by ``"; "``;
``maxOutputTokens`` cuts it to that many words, with ``finishReason: MAX_TOKENS``. A stream
sends the text as ``reply.pieces`` events, ``reply.chunk_delay_s`` apart, function calls in
one event, and ``finishReason`` only on the last event.

Usage, as ``count_tokens`` counts: ``promptTokenCount`` is every text of
``systemInstruction`` and ``contents`` (with each ``functionCall`` / ``functionResponse``
as its name and JSON); ``candidatesTokenCount`` the answer's words (a call: its name and
JSON arguments), left out while zero; ``thoughtsTokenCount`` the words of ``thoughts``
when set (the model "thinks" whether or not the request asks to see the thoughts, as
Gemini 2.5 does; ``thinkingConfig.includeThoughts`` adds a ``thought: true`` part, its own
first event in a stream); ``cachedContentTokenCount`` is ``cached_tokens`` (at most the
prompt) when non-zero; ``totalTokenCount`` is prompt + candidates + thoughts. Every stream
event carries the running totals, as Gemini's do. A prompt over ``max_input_tokens`` gets
the API's 400, as the ``context_length`` fault does.

Requests the real API refuses are refused alike (400 ``INVALID_ARGUMENT``): a body that is
not a JSON object, an unknown top-level field, no ``contents``, a content without
``parts``, a role other than ``user`` or ``model``.

Faults apply to ``generateContent`` and ``streamGenerateContent`` (not ``countTokens``),
after the credential and request checks, so a refused request never uses one up. In
Gemini's format:

=================  ====================================================================
rate_limit         429 ``RESOURCE_EXHAUSTED``: ``QuotaFailure``, ``Help`` and ``RetryInfo``
                   ``retryDelay`` (``"0.5s"``) details, and a ``Retry-After`` header in
                   (fractional) seconds, which the real API does not send
server_error       ``status`` (503): 500 ``INTERNAL``, 502/503 ``UNAVAILABLE``, 504
                   ``DEADLINE_EXCEEDED``, 501 ``UNIMPLEMENTED``, other ``UNKNOWN``
overloaded         503 ``UNAVAILABLE`` "The model is overloaded. Please try again later."
content_filter     200 whose one candidate has ``finishReason: SAFETY``, no content and a
                   blocked ``safetyRatings`` entry — the answer stopped by the output
                   filter (chosen over ``promptFeedback.blockReason``: both are 200s, and
                   this one exercises the stream path too); one event in a stream
context_length     400 ``INVALID_ARGUMENT`` "The input token count (N) exceeds the maximum
                   number of tokens allowed (M)." with M = ``max_input_tokens``
unauthorized       what a wrong credential gets (above), for one request
slow_first_byte    the normal answer, its status line ``delay_s`` late
stall, reset       a stream: ``after_chunks`` events (at most all), then silence / a TCP
                   reset; a unary answer is one chunk, so there they strike after the head
malformed_chunk    event number ``after_chunks`` (0-based: that many good events come
                   first; at most the last) has its JSON cut in half; a unary body likewise
=================  ====================================================================

Errors of a ``streamGenerateContent`` call without ``alt=sse`` are a one-element JSON
array, as the API sends them. :meth:`GeminiMock.start` / :meth:`GeminiMock.stop` run it
outside pytest too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson

from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultKind,
    FaultPlan,
    ReplyScript,
    count_tokens,
)
from rakka_inference.testkit.gemini_embed_wire import (
    EMBEDDING_METHODS,
    EmbeddingRefused,
    embedding_answer,
)
from rakka_inference.testkit.http_server import (
    Chunk,
    Faults,
    RecordedRequest,
    ScriptedHttpServer,
    ScriptedResponse,
)
from rakka_inference.testkit.mock_base import MockProviderServer

__all__ = ["DEFAULT_MAX_INPUT_TOKENS", "JWT_BEARER_GRANT", "GeminiMock"]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""The ``grant_type`` ``POST /token`` takes: a service account's signed JWT (RFC 7523)."""
DEFAULT_MAX_INPUT_TOKENS = 1_048_576
"""The context window of Gemini 2.5 models, the default ``max_input_tokens``."""

_AI_STUDIO = re.compile(r"/(?:v1|v1beta|v1alpha)/models/(?P<model>[^/:]+):(?P<method>\w+)")
_VERTEX = re.compile(
    r"/(?:v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/google"
    r"/models/(?P<model>[^/:]+):(?P<method>\w+)"
)
_METHODS = frozenset(
    {"generateContent", "streamGenerateContent", "countTokens", *EMBEDDING_METHODS}
)
_FIELDS = frozenset(
    {
        "contents",
        "systemInstruction",
        "tools",
        "toolConfig",
        "safetySettings",
        "generationConfig",
        "cachedContent",
        "labels",
        "model",
    }
)
_JSON = (("Content-Type", "application/json; charset=UTF-8"),)
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_STATUS_NAMES: Mapping[int, str] = {
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_STATUS_MESSAGES: Mapping[str, str] = {
    "INTERNAL": "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    "UNAVAILABLE": "The service is currently unavailable.",
    "DEADLINE_EXCEEDED": "The request timed out. Please try again.",
    "UNIMPLEMENTED": "Operation is not implemented, or supported, or enabled.",
    "UNKNOWN": "An unknown error occurred.",
}
_SEE_AUTH = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
_HARM_CATEGORIES = (
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
)
_BLOCKED_CATEGORY = "HARM_CATEGORY_DANGEROUS_CONTENT"


@dataclass(frozen=True, slots=True)
class _Call:
    """One model call, as its URL and headers say."""

    vertex: bool
    model: str
    method: str
    sse: bool
    key: str | None


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the model says to one request, before it is framed."""

    thought: str | None
    text: str
    calls: tuple[dict[str, Any], ...]
    finish: str
    prompt_tokens: int
    output_tokens: int
    thought_tokens: int


class _Refused(Exception):
    """A request the API refuses; ``response`` is its answer."""

    def __init__(self, response: ScriptedResponse) -> None:
        super().__init__(response.status)
        self.response = response


class GeminiMock(MockProviderServer):
    """The Gemini API (AI Studio and Vertex URL styles) on ``host``:``port`` (0: any free).

    ``faults`` and ``reply`` may be changed while it runs; :attr:`requests` lists every
    request, in order; :attr:`issued_tokens` every access token ``POST /token`` gave out.
    """

    def __init__(
        self,
        *,
        faults: FaultPlan | None = None,
        reply: ReplyScript | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        thoughts: str | None = None,
        cached_tokens: int = 0,
        token_lifetime_s: int = 3600,
    ) -> None:
        self.faults = faults if faults is not None else FaultPlan()
        self.reply = reply if reply is not None else ReplyScript()
        self.max_input_tokens = max_input_tokens
        self.thoughts = thoughts
        self.cached_tokens = cached_tokens
        self.token_lifetime_s = token_lifetime_s
        self.issued_tokens: list[str] = []
        self.server = ScriptedHttpServer(host=host, port=port, default=self._respond)
        self._answers = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def token_url(self) -> str:
        """The ``token_uri`` for a service-account key aimed at this mock."""
        return f"{self.url}/token"

    # ------------------------------------------------------------------ dispatch

    def _respond(self, request: RecordedRequest) -> ScriptedResponse:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        call = _route(request)
        if call is None:
            return _error(404, "NOT_FOUND", f"Requested entity was not found: {request.path}")
        try:
            self._authenticate(call)
            if call.method in EMBEDDING_METHODS:
                return self._embed(request, call)
            body = _body(request, call)
            if call.method == "countTokens":
                return _json(_count_tokens(body))
            fault = self._take_fault(request, call)
            prompt = count_tokens(_prompt_texts(body))
            if fault is not None and fault.kind is FaultKind.CONTEXT_LENGTH:
                prompt = max(prompt, self.max_input_tokens + 1)
            if prompt > self.max_input_tokens:
                raise _Refused(self._too_long(prompt, call))
            replaced = None if fault is None else self._fault_response(fault, call, prompt)
            if replaced is not None:
                return replaced
            return self._render(call, self._answer(body, prompt), fault)
        except _Refused as refused:
            return refused.response

    def _embed(self, request: RecordedRequest, call: _Call) -> ScriptedResponse:
        """An embeddings call: its checks and answer, then a fault, as for the others."""
        try:
            document = embedding_answer(
                request.body, method=call.method, vertex=call.vertex, model=call.model
            )
        except EmbeddingRefused as refused:
            return _error(refused.code, refused.status, refused.message)
        fault = self._take_fault(request, call)
        if fault is not None and fault.kind is FaultKind.CONTEXT_LENGTH:
            return self._too_long(self.max_input_tokens + 1, call)
        if fault is not None and fault.kind is not FaultKind.CONTENT_FILTER:
            replaced = self._fault_response(fault, call, 0)
            if replaced is not None:
                return replaced
        return self._framed(call, [orjson.dumps(document)], fault)

    def _authenticate(self, call: _Call) -> None:
        if self.faults.accepts(call.key):
            return
        if call.vertex or call.key:
            raise _Refused(_bad_credential(call, missing=not call.key))
        raise _Refused(
            _error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
                stream=_array_stream(call),
            )
        )

    def _take_fault(self, request: RecordedRequest, call: _Call) -> Fault | None:
        header = request.headers.get(FAULT_HEADER)
        try:
            return self.faults.take(call.key, header)
        except ValueError as exc:
            message = f"bad {FAULT_HEADER} header: {exc}"
            raise _Refused(
                _error(400, "INVALID_ARGUMENT", message, stream=_array_stream(call))
            ) from None

    def _token(self, request: RecordedRequest) -> ScriptedResponse:
        form = parse_qs(request.body.decode("latin-1"))
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != JWT_BEARER_GRANT:
            return ScriptedResponse.json(
                {"error": "unsupported_grant_type", "error_description": f"Invalid grant: {grant}"},
                status=400,
            )
        if assertion.count(".") != 2:
            return ScriptedResponse.json(
                {"error": "invalid_grant", "error_description": "Invalid JWT."}, status=400
            )
        token = f"ya29.mock-{len(self.issued_tokens) + 1}"
        self.issued_tokens.append(token)
        if self.faults.valid_keys is not None:
            self.faults.valid_keys.add(token)
        return ScriptedResponse.json(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    # ------------------------------------------------------------------ faults

    def _fault_response(self, fault: Fault, call: _Call, prompt: int) -> ScriptedResponse | None:
        """The answer a fault replaces the normal one with; None: the fault shapes that one."""
        stream = _array_stream(call)
        if fault.kind is FaultKind.RATE_LIMIT:
            return _rate_limited(call, fault.retry_after_s or 1.0)
        if fault.kind is FaultKind.SERVER_ERROR:
            status = fault.status or 503
            name = _STATUS_NAMES.get(status, "UNKNOWN")
            return _error(status, name, _STATUS_MESSAGES[name], stream=stream)
        if fault.kind is FaultKind.OVERLOADED:
            message = "The model is overloaded. Please try again later."
            return _error(503, "UNAVAILABLE", message, stream=stream)
        if fault.kind is FaultKind.UNAUTHORIZED:
            return _bad_credential(call, missing=False)
        if fault.kind is FaultKind.CONTENT_FILTER:
            return self._filtered(call, prompt)
        return None

    def _too_long(self, prompt: int, call: _Call) -> ScriptedResponse:
        message = (
            f"The input token count ({prompt}) exceeds the maximum number of tokens allowed "
            f"({self.max_input_tokens})."
        )
        return _error(400, "INVALID_ARGUMENT", message, stream=_array_stream(call))

    def _filtered(self, call: _Call, prompt: int) -> ScriptedResponse:
        ratings: list[dict[str, Any]] = [
            {"category": category, "probability": "NEGLIGIBLE"} for category in _HARM_CATEGORIES
        ]
        ratings[_HARM_CATEGORIES.index(_BLOCKED_CATEGORY)] = {
            "category": _BLOCKED_CATEGORY,
            "probability": "HIGH",
            "blocked": True,
        }
        candidate = {"finishReason": "SAFETY", "index": 0, "safetyRatings": ratings}
        usage = self._usage(prompt, 0, 0)
        document = _document(call, self._response_id(), [candidate], usage)
        return self._framed(call, [orjson.dumps(document)], None)

    # ------------------------------------------------------------------ answers

    def _answer(self, body: Mapping[str, Any], prompt: int) -> _Answer:
        generation = _mapping(_field(body, "generationConfig"))
        thinking = _mapping(_field(generation, "thinkingConfig"))
        thought_tokens = count_tokens([self.thoughts]) if self.thoughts is not None else 0
        shown = self.thoughts if _field(thinking, "includeThoughts") is True else None
        calls = self._calls(body)
        if calls:
            tokens = count_tokens(
                [f"{c['name']} {orjson.dumps(c['args']).decode()}" for c in calls]
            )
            return _Answer(shown, "", calls, "STOP", prompt, tokens, thought_tokens)
        text = self.reply.answer_text(_last_turn_text(_contents(body)))
        finish = "STOP"
        limit = _field(generation, "maxOutputTokens")
        if isinstance(limit, int) and _words(text) > limit:
            text, finish = _first_words(text, limit), "MAX_TOKENS"
        return _Answer(shown, text, (), finish, prompt, _words(text), thought_tokens)

    def _calls(self, body: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
        declared = [
            str(_field(function, "name"))
            for tool in _list(_field(body, "tools"))
            for function in _list(_field(_mapping(tool), "functionDeclarations"))
            if isinstance(function, dict)
        ]
        config = _mapping(_field(_mapping(_field(body, "toolConfig")), "functionCallingConfig"))
        mode = str(_field(config, "mode") or "AUTO")
        if not declared or mode == "NONE":
            return ()
        allowed = [str(name) for name in _list(_field(config, "allowedFunctionNames"))] or declared
        calls = tuple(
            {"name": call.name, "args": dict(call.arguments)}
            for call in self.reply.tool_calls
            if call.name in allowed
        )
        if mode == "ANY":
            return calls or ({"name": allowed[0], "args": {}},)
        contents = _contents(body)
        answered = bool(contents) and any(
            _field(_mapping(part), "functionResponse") is not None
            for part in _list(_mapping(contents[-1]).get("parts"))
        )
        return () if answered else calls

    def _render(self, call: _Call, answer: _Answer, fault: Fault | None) -> ScriptedResponse:
        events: list[list[dict[str, Any]]] = []
        if answer.thought is not None:
            events.append([{"text": answer.thought, "thought": True}])
        if answer.calls:
            events.append([{"functionCall": dict(function)} for function in answer.calls])
        elif call.method == "streamGenerateContent":
            events.extend([{"text": piece}] for piece in self.reply.pieces(answer.text))
        else:
            events.append([{"text": answer.text}])
        if call.method == "generateContent":  # one content with every part
            events = [[part for parts in events for part in parts]]
        documents: list[bytes] = []
        response_id = self._response_id()
        spoken = ""
        for number, parts in enumerate(events, 1):
            last = number == len(events)
            spoken += "".join(p.get("text", "") for p in parts if not p.get("thought"))
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if last:
                candidate["finishReason"] = answer.finish
            output = answer.output_tokens if last else _words(spoken)
            usage = self._usage(answer.prompt_tokens, output, answer.thought_tokens)
            documents.append(orjson.dumps(_document(call, response_id, [candidate], usage)))
        return self._framed(call, documents, fault)

    def _response_id(self) -> str:
        self._answers += 1
        return f"mock-{self._answers}"

    def _usage(self, prompt: int, output: int, thoughts: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if output:
            usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = prompt + output + thoughts
        cached = min(self.cached_tokens, prompt)
        if cached:
            usage["cachedContentTokenCount"] = cached
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return usage

    def _framed(self, call: _Call, documents: list[bytes], fault: Fault | None) -> ScriptedResponse:
        """``documents`` as the call's framing, with the stream-shaping ``fault`` applied."""
        kind = fault.kind if fault is not None else None
        streaming = call.method == "streamGenerateContent"
        if fault is not None and kind is FaultKind.MALFORMED_CHUNK:
            index = min(fault.after_chunks, len(documents) - 1)
            documents[index] = documents[index][: len(documents[index]) // 2]
        options: Faults = {}
        if fault is not None and kind is FaultKind.SLOW_FIRST_BYTE:
            options["first_byte_delay"] = fault.delay_s
        elif fault is not None and kind is FaultKind.STALL:
            options["stall_after_chunks"] = _strike(fault, documents, streaming)
        elif fault is not None and kind is FaultKind.RESET:
            options["reset_after_chunks"] = _strike(fault, documents, streaming)
        if not streaming:
            return ScriptedResponse(200, _JSON, documents, **options)
        if call.sse:
            frames = [b"data: " + document + b"\r\n\r\n" for document in documents]
            content_type = "text/event-stream"
        else:
            frames = [(b"," if n else b"[") + document for n, document in enumerate(documents)]
            frames[-1] += b"]"
            content_type = _JSON[0][1]
        delay = self.reply.chunk_delay_s
        chunks = [Chunk(frame, delay if n else 0.0) for n, frame in enumerate(frames)]
        return ScriptedResponse.stream(chunks, content_type=content_type, **options)


# ---------------------------------------------------------------------- requests


def _route(request: RecordedRequest) -> _Call | None:
    if request.method != "POST":
        return None
    vertex = _VERTEX.fullmatch(request.path)
    match = vertex or _AI_STUDIO.fullmatch(request.path)
    if match is None or match["method"] not in _METHODS:
        return None
    query = parse_qs(request.query)
    if vertex is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = token.strip() if scheme.lower() == "bearer" else None
    else:
        key = request.headers.get("x-goog-api-key") or query.get("key", [None])[0]
    return _Call(
        vertex=vertex is not None,
        model=unquote(match["model"]),
        method=match["method"],
        sse=query.get("alt", [""])[0] == "sse",
        key=key or None,
    )


def _body(request: RecordedRequest, call: _Call) -> dict[str, Any]:
    def invalid(message: str) -> _Refused:
        return _Refused(_error(400, "INVALID_ARGUMENT", message, stream=_array_stream(call)))

    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise invalid("Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(body, dict):
        raise invalid("Invalid JSON payload received. Expected an object.")
    if call.method == "countTokens":
        return body
    for name in body:
        if _camel(name) not in _FIELDS:
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
            )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise invalid("* GenerateContentRequest.contents: contents is not specified\n")
    for index, content in enumerate(contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not parts:
            raise invalid(
                f"* GenerateContentRequest.contents[{index}].parts: "
                "contents.parts must not be empty.\n"
            )
        if content.get("role", "user") not in ("user", "model"):
            raise invalid("Please use a valid role: user, model.")
    return body


def _contents(body: Mapping[str, Any]) -> list[Any]:
    return _list(body.get("contents"))


def _part_texts(parts: Sequence[Any]) -> list[str]:
    """Each part as text: its text, or a function call or response as name and JSON."""
    texts: list[str] = []
    for part in parts:
        item = _mapping(part)
        if isinstance(item.get("text"), str):
            texts.append(item["text"])
        for key, payload in (("functionCall", "args"), ("functionResponse", "response")):
            value = _mapping(_field(item, key))
            if value:
                texts.append(f"{value.get('name')} {orjson.dumps(value.get(payload)).decode()}")
    return texts


def _prompt_texts(body: Mapping[str, Any]) -> list[str]:
    system = _mapping(_field(body, "systemInstruction"))
    texts = _part_texts(_list(system.get("parts")))
    for content in _contents(body):
        texts.extend(_part_texts(_list(_mapping(content).get("parts"))))
    return texts


def _last_turn_text(contents: Sequence[Any]) -> str:
    """What the echo answers: the last user turn's text, or its function responses."""
    for content in reversed(contents):
        turn = _mapping(content)
        if turn.get("role", "user") != "user":
            continue
        parts = [_mapping(part) for part in _list(turn.get("parts"))]
        responses = [_mapping(_field(p, "functionResponse")) for p in parts]
        rendered = [
            f"{r.get('name')} returned {orjson.dumps(r.get('response')).decode()}"
            for r in responses
            if r
        ]
        if rendered:
            return "; ".join(rendered)
        return "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
    return ""


def _document(
    call: _Call, response_id: str, candidates: list[dict[str, Any]], usage: dict[str, Any]
) -> dict[str, Any]:
    """One GenerateContentResponse (a whole answer, or one stream event of it)."""
    return {
        "candidates": candidates,
        "usageMetadata": usage,
        "modelVersion": call.model,
        "responseId": response_id,
    }


def _count_tokens(body: Mapping[str, Any]) -> dict[str, Any]:
    inner = _mapping(_field(body, "generateContentRequest"))
    total = count_tokens(_prompt_texts(inner or body))
    return {
        "totalTokens": total,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": total}],
    }


# ---------------------------------------------------------------------- errors


def _json(
    document: Any, *, status: int = 200, headers: Sequence[tuple[str, str]] = ()
) -> ScriptedResponse:
    """A JSON answer with Google's ``Content-Type``."""
    return ScriptedResponse(status, (*_JSON, *headers), [orjson.dumps(document)])


def _array_stream(call: _Call) -> bool:
    """Whether errors go out as a JSON array: a stream without ``alt=sse``."""
    return call.method == "streamGenerateContent" and not call.sse


def _error(
    code: int,
    status: str,
    message: str,
    *,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Sequence[tuple[str, str]] = (),
    stream: bool = False,
) -> ScriptedResponse:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = [dict(detail) for detail in details]
    document: Any = [{"error": error}] if stream else {"error": error}
    return _json(document, status=code, headers=headers)


def _bad_credential(call: _Call, *, missing: bool) -> ScriptedResponse:
    stream = _array_stream(call)
    if not call.vertex:
        message = "API key not valid. Please pass a valid API key."
        details: list[dict[str, Any]] = [
            {
                "@type": _ERROR_INFO,
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
        return _error(400, "INVALID_ARGUMENT", message, details=details, stream=stream)
    if missing:
        message = f"Request is missing required authentication credential. {_SEE_AUTH}"
        reason = "CREDENTIALS_MISSING"
    else:
        message = f"Request had invalid authentication credentials. {_SEE_AUTH}"
        reason = "ACCESS_TOKEN_TYPE_UNSUPPORTED"
    info = {
        "@type": _ERROR_INFO,
        "reason": reason,
        "metadata": {
            "service": "aiplatform.googleapis.com",
            "method": f"google.cloud.aiplatform.v1.PredictionService.{_pascal(call.method)}",
        },
    }
    challenge = 'Bearer realm="https://accounts.google.com/", error="invalid_token"'
    return _error(
        401,
        "UNAUTHENTICATED",
        message,
        details=[info],
        headers=[("WWW-Authenticate", challenge)],
        stream=stream,
    )


def _rate_limited(call: _Call, retry_after_s: float) -> ScriptedResponse:
    delay = f"{retry_after_s:.9f}".rstrip("0").rstrip(".")  # "0.5", "120": no exponent
    service = "aiplatform" if call.vertex else "generativelanguage"
    details: list[dict[str, Any]] = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"{service}.googleapis.com/generate_content_requests",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": call.model},
                    "quotaValue": "15",
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{delay}s"},
    ]
    message = (
        "You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, head to: https://ai.google.dev/gemini-api/docs/"
        "rate-limits."
    )
    return _error(
        429,
        "RESOURCE_EXHAUSTED",
        message,
        details=details,
        headers=[("Retry-After", delay)],
        stream=_array_stream(call),
    )


# ---------------------------------------------------------------------- small helpers


def _field(holder: Mapping[str, Any], camel: str) -> Any:
    """``holder[camel]``, or its snake_case spelling, which proto JSON also accepts."""
    if camel in holder:
        return holder[camel]
    return holder.get(re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


def _pascal(name: str) -> str:
    return name[:1].upper() + name[1:]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _strike(fault: Fault, documents: Sequence[bytes], streaming: bool) -> int:
    """After how many chunks a stall or reset strikes: a unary body is one, so after none."""
    return min(fault.after_chunks, len(documents)) if streaming else 0


def _words(text: str) -> int:
    """Output tokens of ``text``: ``count_tokens`` without its floor of 1, so "" is 0."""
    return count_tokens([text]) if text.split() else 0


def _first_words(text: str, limit: int) -> str:
    """``text`` up to the end of its ``limit``-th word."""
    if limit <= 0:
        return ""
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    return text[: ends[limit - 1]]
