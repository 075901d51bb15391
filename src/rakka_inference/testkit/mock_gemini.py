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
one event, and ``finishReason`` only on the last event. ``candidateCount`` answers with that
many candidates, and ``responseLogprobs`` adds each text's ``logprobsResult`` (with
``logprobs`` alternatives per token in ``topCandidates``), as
:mod:`~rakka_inference.testkit.mock_choices` sets out; a stream then sends one token per
event. A stream event holds the next piece of every candidate still speaking, each with its
``finishReason`` on its last.

Usage, as ``count_tokens`` counts: ``promptTokenCount`` is every text of
``systemInstruction`` and ``contents`` (with each ``functionCall`` / ``functionResponse``
as its name and JSON); ``candidatesTokenCount`` the answer's words (a call: its name and
JSON arguments; every candidate's), left out while zero; ``thoughtsTokenCount`` the words
of ``thoughts`` (once per candidate) when set (the model "thinks" whether or not the
request asks to see the thoughts, as Gemini 2.5 does; ``thinkingConfig.includeThoughts``
adds a ``thought: true`` part, its own first event in a stream);
``cachedContentTokenCount`` is ``cached_tokens`` (at most the prompt) when non-zero;
``totalTokenCount`` is prompt + candidates + thoughts. Every stream event carries the
running totals, as Gemini's do. A prompt over ``max_input_tokens`` gets the API's 400, as
the ``context_length`` fault does.

Requests the real API refuses are refused alike (400 ``INVALID_ARGUMENT``): a body that is
not a JSON object, an unknown top-level field, no ``contents``, a content without
``parts``, a role other than ``user`` or ``model``, a ``candidateCount`` outside 1..8 or a
``logprobs`` outside 0..20 (Vertex's wording).

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

Layout: this module holds the server and composes its answers;
:mod:`rakka_inference.testkit.gemini_wire` reads and checks requests,
:mod:`rakka_inference.testkit.gemini_render` renders documents, framing and errors, and
:mod:`rakka_inference.testkit.gemini_embed_wire` the embeddings calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Unpack
from urllib.parse import parse_qs

import orjson

from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultKind,
    ReplyScript,
    count_tokens,
)
from rakka_inference.testkit.gemini_embed_wire import (
    EMBEDDING_METHODS,
    EmbeddingRefused,
    embedding_answer,
)
from rakka_inference.testkit.gemini_render import (
    Answer,
    Refused,
    bad_credential,
    blocked_candidate,
    candidate_events,
    count_tokens_answer,
    document,
    error_response,
    framed,
    json_response,
    rate_limited,
    server_error,
    too_long,
    usage_metadata,
)
from rakka_inference.testkit.gemini_wire import (
    GeminiCall,
    InvalidArgument,
    array_stream,
    candidate_count,
    contents_of,
    first_words,
    last_turn_text,
    list_of,
    mapping_of,
    prompt_texts,
    read_body,
    route,
    top_logprobs,
    words,
)
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_base import MockOptions, MockProviderServer
from rakka_inference.testkit.mock_choices import choice_text
from rakka_inference.testkit.proto_json import field

__all__ = ["DEFAULT_MAX_INPUT_TOKENS", "JWT_BEARER_GRANT", "GeminiMock"]

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""The ``grant_type`` ``POST /token`` takes: a service account's signed JWT (RFC 7523)."""
DEFAULT_MAX_INPUT_TOKENS = 1_048_576
"""The context window of Gemini 2.5 models, the default ``max_input_tokens``."""


class GeminiMock(MockProviderServer):
    """The Gemini API (AI Studio and Vertex URL styles) on ``host``:``port`` (0: any free).

    ``faults`` and ``reply`` may be changed while it runs; :attr:`requests` lists every
    request, in order; :attr:`issued_tokens` every access token ``POST /token`` gave out.
    """

    def __init__(
        self,
        *,
        max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS,
        thoughts: str | None = None,
        cached_tokens: int = 0,
        token_lifetime_s: int = 3600,
        **options: Unpack[MockOptions],
    ) -> None:
        super().__init__(**options)
        self.max_input_tokens = max_input_tokens
        self.thoughts = thoughts
        self.cached_tokens = cached_tokens
        self.token_lifetime_s = token_lifetime_s
        self.issued_tokens: list[str] = []
        self._answers = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def token_url(self) -> str:
        """The ``token_uri`` for a service-account key aimed at this mock."""
        return f"{self.url}/token"

    # ------------------------------------------------------------------ dispatch

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        if request.method == "POST" and request.path == "/token":
            return self._token(request)
        call = route(request)
        if call is None:
            return error_response(
                404, "NOT_FOUND", f"Requested entity was not found: {request.path}"
            )
        try:
            self._authenticate(call)
            if call.method in EMBEDDING_METHODS:
                return self._embed(request, call)
            body = read_body(request, call)
            if call.method == "countTokens":
                return json_response(count_tokens_answer(body))
            generation = mapping_of(field(body, "generationConfig"))
            count, top = candidate_count(generation), top_logprobs(generation)
            fault = self._call_fault(request, call)
            prompt = count_tokens(prompt_texts(body))
            if fault is not None and fault.kind is FaultKind.CONTEXT_LENGTH:
                prompt = max(prompt, self.max_input_tokens + 1)
            if prompt > self.max_input_tokens:
                raise Refused(self._too_long(prompt, call))
            replaced = None if fault is None else self._fault_response(fault, call, prompt)
            if replaced is not None:
                return replaced
            answers = [self._answer(body, prompt, index) for index in range(count)]
            return self._render(call, answers, fault, top)
        except InvalidArgument as invalid:
            stream = array_stream(call)
            return error_response(400, "INVALID_ARGUMENT", invalid.message, stream=stream)
        except Refused as refused:
            return refused.response

    def _embed(self, request: RecordedRequest, call: GeminiCall) -> ScriptedResponse:
        """An embeddings call: its checks and answer, then a fault, as for the others."""
        try:
            answer = embedding_answer(
                request.body, method=call.method, vertex=call.vertex, model=call.model
            )
        except EmbeddingRefused as refused:
            return error_response(refused.code, refused.status, refused.message)
        fault = self._call_fault(request, call)
        if fault is not None and fault.kind is FaultKind.CONTEXT_LENGTH:
            return self._too_long(self.max_input_tokens + 1, call)
        if fault is not None and fault.kind is not FaultKind.CONTENT_FILTER:
            replaced = self._fault_response(fault, call, 0)
            if replaced is not None:
                return replaced
        return self._framed(call, [orjson.dumps(answer)], fault)

    def _authenticate(self, call: GeminiCall) -> None:
        if self.faults.accepts(call.key):
            return
        if call.vertex or call.key:
            raise Refused(bad_credential(call, missing=not call.key))
        raise Refused(
            error_response(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
                stream=array_stream(call),
            )
        )

    def _call_fault(self, request: RecordedRequest, call: GeminiCall) -> Fault | None:
        try:
            return self.take_fault(call.key, request)
        except ValueError as exc:
            message = f"bad {FAULT_HEADER} header: {exc}"
            raise Refused(
                error_response(400, "INVALID_ARGUMENT", message, stream=array_stream(call))
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

    def _fault_response(
        self, fault: Fault, call: GeminiCall, prompt: int
    ) -> ScriptedResponse | None:
        """The answer a fault replaces the normal one with; None: the fault shapes that one."""
        stream = array_stream(call)
        if fault.kind is FaultKind.RATE_LIMIT:
            return rate_limited(call, fault.retry_after_s or 1.0)
        if fault.kind is FaultKind.SERVER_ERROR:
            return server_error(fault.status or 503, stream=stream)
        if fault.kind is FaultKind.OVERLOADED:
            message = "The model is overloaded. Please try again later."
            return error_response(503, "UNAVAILABLE", message, stream=stream)
        if fault.kind is FaultKind.UNAUTHORIZED:
            return bad_credential(call, missing=False)
        if fault.kind is FaultKind.CONTENT_FILTER:
            return self._filtered(call, prompt)
        return None

    def _too_long(self, prompt: int, call: GeminiCall) -> ScriptedResponse:
        return too_long(prompt, self.max_input_tokens, call)

    def _filtered(self, call: GeminiCall, prompt: int) -> ScriptedResponse:
        usage = self._usage(prompt, 0, 0)
        answer = document(call, self._response_id(), [blocked_candidate()], usage)
        return self._framed(call, [orjson.dumps(answer)], None)

    # ------------------------------------------------------------------ answers

    def _answer(self, body: Mapping[str, Any], prompt: int, index: int = 0) -> Answer:
        """Candidate ``index``'s answer (see :mod:`~rakka_inference.testkit.mock_choices`)."""
        generation = mapping_of(field(body, "generationConfig"))
        thinking = mapping_of(field(generation, "thinkingConfig"))
        thought_tokens = count_tokens([self.thoughts]) if self.thoughts is not None else 0
        shown = self.thoughts if field(thinking, "includeThoughts") is True else None
        script = self.script_for(body)
        calls = self._calls(body, script)
        if calls:
            tokens = count_tokens(
                [f"{c['name']} {orjson.dumps(c['args']).decode()}" for c in calls]
            )
            return Answer(shown, "", calls, "STOP", prompt, tokens, thought_tokens)
        text = script.answer_text(last_turn_text(contents_of(body)))
        structured = field(generation, "responseMimeType") == "application/json"
        text = choice_text(text, index, structured=structured)
        finish = "STOP"
        limit = field(generation, "maxOutputTokens")
        if isinstance(limit, int) and words(text) > limit:
            text, finish = first_words(text, limit), "MAX_TOKENS"
        return Answer(shown, text, (), finish, prompt, words(text), thought_tokens)

    def _calls(self, body: Mapping[str, Any], script: ReplyScript) -> tuple[dict[str, Any], ...]:
        declared = [
            str(field(function, "name"))
            for tool in list_of(field(body, "tools"))
            for function in list_of(field(mapping_of(tool), "functionDeclarations"))
            if isinstance(function, dict)
        ]
        config = mapping_of(field(mapping_of(field(body, "toolConfig")), "functionCallingConfig"))
        mode = str(field(config, "mode") or "AUTO")
        if not declared or mode == "NONE":
            return ()
        allowed = [str(name) for name in list_of(field(config, "allowedFunctionNames"))] or declared
        calls = tuple(
            {"name": call.name, "args": dict(call.arguments)}
            for call in script.tool_calls
            if call.name in allowed
        )
        if mode == "ANY":
            return calls or ({"name": allowed[0], "args": {}},)
        contents = contents_of(body)
        answered = bool(contents) and any(
            field(mapping_of(part), "functionResponse") is not None
            for part in list_of(mapping_of(contents[-1]).get("parts"))
        )
        return () if answered else calls

    def _render(
        self, call: GeminiCall, answers: list[Answer], fault: Fault | None, top: int | None
    ) -> ScriptedResponse:
        """The candidates' answers as documents: one, or a stream's events, where each event
        holds the next piece of every candidate not yet finished."""
        streaming = call.method == "streamGenerateContent"
        each = [candidate_events(answer, self.reply.pieces, streaming, top) for answer in answers]
        documents: list[bytes] = []
        response_id = self._response_id()
        spoken = [""] * len(answers)
        thoughts = sum(answer.thought_tokens for answer in answers)
        steps = max(map(len, each))
        for step in range(steps):
            candidates: list[dict[str, Any]] = []
            output = 0
            for index, (answer, pieces) in enumerate(zip(answers, each, strict=True)):
                if step < len(pieces):
                    parts, logprobs = pieces[step]
                    spoken[index] += "".join(
                        p.get("text", "") for p in parts if not p.get("thought")
                    )
                    candidate: dict[str, Any] = {
                        "content": {"parts": parts, "role": "model"},
                        "index": index,
                    }
                    if logprobs is not None:
                        candidate["logprobsResult"] = logprobs
                    if step == len(pieces) - 1:
                        candidate["finishReason"] = answer.finish
                    candidates.append(candidate)
                done = step >= len(pieces) - 1
                output += answer.output_tokens if done else words(spoken[index])
            usage = self._usage(answers[0].prompt_tokens, output, thoughts)
            documents.append(orjson.dumps(document(call, response_id, candidates, usage)))
        return self._framed(call, documents, fault)

    def _response_id(self) -> str:
        self._answers += 1
        return f"mock-{self._answers}"

    def _usage(self, prompt: int, output: int, thoughts: int) -> dict[str, Any]:
        return usage_metadata(prompt, output, thoughts, cached=self.cached_tokens)

    def _framed(
        self, call: GeminiCall, documents: list[bytes], fault: Fault | None
    ) -> ScriptedResponse:
        return framed(call, documents, fault, chunk_delay_s=self.reply.chunk_delay_s)
