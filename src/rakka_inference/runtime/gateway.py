"""ApiGateway: the OpenAI- and Anthropic-compatible HTTP surface, as a bare ASGI application.

Routes:

- ``POST /v1/chat/completions`` — streaming (SSE ``chat.completion.chunk`` events, an
  optional final usage chunk, ``data: [DONE]``) and not;
- ``POST /v1/messages`` — Anthropic's Messages format in and out, streaming (Anthropic's
  event stream, usage always) and not, against any deployment
  (:mod:`~rakka_inference.runtime.anthropic_api`); its errors are Anthropic error bodies;
- ``POST /v1/embeddings`` — routed like chat, to deployments whose provider serves
  embeddings (others answer 400 naming ``model``);
- ``GET /v1/models`` — deployments and their aliases;
- ``GET /healthz`` — the process is up; ``GET /readyz`` — 200 only while every deployment
  has a replica serving.

Every error is an OpenAI-style JSON body (Anthropic-style on ``/v1/messages``) with the
status of its class (400 naming the param, 401, 404, 413, 429 and 503 with
``Retry-After``, 502, 504). Each response carries ``x-request-id``.

Limits: the body size (413 before it is read past the limit) and the number of requests in
flight (429 ``backpressure`` beyond it). Client keys, when configured, are checked in
constant time; a request without a valid ``Authorization: Bearer`` key gets 401
(``/v1/messages`` also takes the key from ``x-api-key``, as Anthropic's API does).

A streaming response watches for the client going away (``http.disconnect``): the
request's task is then cancelled, which closes the engine stream, cancels the upstream call
and releases every permit. If the upstream fails after the first byte, the client gets the
partial content once, then an error event, then ``[DONE]`` (Anthropic's stream ends at
its ``error`` event).

The module is written on raw ASGI, with no framework, because the gateway's own overhead is
the product: one dict lookup routes a request, and bodies are bytes end to end.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    MutableMapping,
)
from typing import Any, Protocol

import orjson

from rakka_inference.api.anthropic_request import parse_messages_request
from rakka_inference.api.anthropic_response import (
    MessageStreamRenderer,
    anthropic_error_json,
    message_json,
)
from rakka_inference.api.openai_request import parse_chat_request, parse_embedding_request
from rakka_inference.api.openai_response import (
    ChunkRenderer,
    completion_json,
    embeddings_json,
    error_json,
)
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    Backpressure,
    ClientUnauthorized,
    InferenceError,
    InternalError,
    PayloadTooLarge,
    RequestCancelled,
    RouteNotFound,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, new_request_id
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe.metrics import CONTENT_TYPE, InferenceMetrics
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.request import FallbackPolicy, RequestActor

__all__ = ["AdminHandler", "ApiGateway", "bearer_matches", "header_key_matches"]

log = logging.getLogger("rakka_inference.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AdminHandler(Protocol):
    """The ``/admin/`` routes (:class:`~rakka_inference.runtime.admin.AdminApi`)."""

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]: ...


class _StreamRenderer(Protocol):
    """One streamed answer in a wire format (OpenAI's ChunkRenderer, Anthropic's)."""

    def first(self) -> bytes: ...

    def render(self, chunk: TokenChunk) -> bytes: ...

    def final(self) -> bytes: ...

    def error(self, error: InferenceError) -> bytes: ...


_ErrorRenderer = Callable[[InferenceError], tuple[int, dict[str, str], bytes]]


DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 600.0
"""Every request has a deadline: waiting for a permit, and retry backoffs, stop there."""
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_MESSAGES_PATH = "/v1/messages"
_ERROR_RENDERERS: dict[str, _ErrorRenderer] = {_MESSAGES_PATH: anthropic_error_json}
"""Routes whose errors are not OpenAI-style; looked up only when an error is answered."""


class ApiGateway:
    """The ASGI application in front of the coordinator."""

    def __init__(
        self,
        coordinator: DpCoordinator,
        policies: Mapping[str, FallbackPolicy],
        *,
        client_keys: Iterable[Secret] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_concurrent: int = 10_000,
        request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        on_record: Callable[[RequestRecord], None] | None = None,
        on_startup: Callable[[], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        metrics: InferenceMetrics | None = None,
        providers: Mapping[str, str] | None = None,
        admin: AdminHandler | None = None,
    ) -> None:
        self.admin = admin
        self.metrics = metrics
        self._providers: Mapping[str, str] = providers if providers is not None else {}
        self._on_startup = on_startup
        self._on_shutdown = on_shutdown
        self.coordinator = coordinator
        self.policies = policies
        self._keys = [key.expose().encode() for key in client_keys]
        self.max_body_bytes = max_body_bytes
        self.max_concurrent = max_concurrent
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._on_record = on_record
        self.in_flight = 0
        self._routes: dict[tuple[str, str], Callable[[Scope, Receive, Send, str], Awaitable[None]]]
        self._routes = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/embeddings"): self._embeddings,
            ("POST", _MESSAGES_PATH): self._messages,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
        }
        if metrics is not None:
            self._routes["GET", "/metrics"] = self._metrics

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request_id = _header(scope, b"x-request-id") or new_request_id()
        handler = self._routes.get((scope["method"], scope["path"]))
        try:
            if handler is None:
                if self.admin is not None and scope["path"].startswith("/admin/"):
                    status, body = await self.admin.handle(scope, receive)
                    await _send_json(send, status, body, request_id)
                    return
                raise RouteNotFound(f"Invalid URL ({scope['method']} {scope['path']})")
            if scope["path"] not in _OPEN_PATHS:  # probes answer without a key
                self._authorize(scope)
            await handler(scope, receive, send, request_id)
        except RequestCancelled:
            return  # the client is gone: there is nobody to answer
        except InferenceError as error:
            render = _ERROR_RENDERERS.get(scope["path"], error_json)
            await _send_error(send, error, request_id, render)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self._on_startup is not None:
                        await self._on_startup()
                except Exception as error:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(error)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # The server has stopped accepting and let in-flight requests finish.
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authorize(self, scope: Scope) -> None:
        if not self._keys or bearer_matches(scope, self._keys):
            return
        if scope["path"] == _MESSAGES_PATH:
            if header_key_matches(scope, b"x-api-key", self._keys):
                return
            raise ClientUnauthorized(
                "a valid API key is required: x-api-key: <key> or Authorization: Bearer <key>"
            )
        raise ClientUnauthorized("a valid API key is required: Authorization: Bearer <key>")

    # ------------------------------------------------------------------ routes

    async def _chat(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        body = await self._read_body(scope, receive)
        request = parse_chat_request(body, request_id=request_id)
        actor = self._actor(request, scope)
        started = self._clock()
        await self._watched(self._answer(actor, request, send, request_id), receive)
        self._observe_overhead(actor, started)

    async def _messages(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        body = await self._read_body(scope, receive)
        request = parse_messages_request(body, request_id=request_id)
        actor = self._actor(request, scope)
        started = self._clock()

        async def answer() -> None:
            if request.stream:
                renderer = MessageStreamRenderer(request_id, request.model)
                await self._send_stream(renderer, actor, send, request_id)
                return
            result = await actor.completion()
            payload = message_json(result, request_id=request_id, model=request.model)
            await _send_json(send, 200, payload, request_id)

        await self._watched(answer(), receive)
        self._observe_overhead(actor, started)

    async def _embeddings(
        self, scope: Scope, receive: Receive, send: Send, request_id: str
    ) -> None:
        body = await self._read_body(scope, receive)
        call = parse_embedding_request(body, request_id=request_id)
        actor = self._actor(call.request, scope)
        started = self._clock()

        async def answer() -> None:
            result = await actor.embedding()
            payload = embeddings_json(
                result, model=call.request.model, encoding_format=call.encoding_format
            )
            await _send_json(send, 200, payload, request_id)

        await self._watched(answer(), receive)
        self._observe_overhead(actor, started)

    def _observe_overhead(self, actor: RequestActor, started: float) -> None:
        if self.metrics is not None and actor.record.engine_s:
            overhead = self._clock() - started - actor.record.engine_s
            self.metrics.observe_gateway_overhead(max(0.0, overhead))

    def _actor(self, request: ChatRequest | EmbeddingRequest, scope: Scope) -> RequestActor:
        if self.in_flight >= self.max_concurrent:
            raise Backpressure(f"the gateway is at its limit of {self.max_concurrent} requests")
        deadline = (
            None if self.request_timeout_s is None else self._clock() + self.request_timeout_s
        )
        return RequestActor(
            request,
            self.coordinator,
            self.policies,
            deadline=deadline,
            clock=self._clock,
            on_done=self._on_record,
            trace_parent=_trace_headers(scope) if tracing.enabled() else None,
        )

    async def _watched(self, answer: Coroutine[Any, Any, None], receive: Receive) -> None:
        # The answer runs beside a watch on the connection: a client that goes away, at
        # any point (queued, before the first byte, mid-stream), cancels it — which closes
        # the engine stream, cancels the upstream call and frees every permit.
        self.in_flight += 1
        work = asyncio.ensure_future(answer)
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
            watcher.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
            self.in_flight -= 1
        if work.cancelled():
            raise RequestCancelled("the client went away")
        error = work.exception()
        if error is not None:
            raise error

    async def _answer(
        self, actor: RequestActor, request: ChatRequest, send: Send, request_id: str
    ) -> None:
        if request.stream:
            await self._stream(actor, request, send, request_id)
            return
        result = await actor.completion()
        body = completion_json(
            result, request_id=request_id, model=request.model, created=int(time.time())
        )
        await _send_json(send, 200, body, request_id)

    async def _stream(
        self, actor: RequestActor, request: ChatRequest, send: Send, request_id: str
    ) -> None:
        renderer = ChunkRenderer(
            request_id=request_id,
            model=request.model,
            created=int(time.time()),
            include_usage=request.include_usage,
        )
        await self._send_stream(renderer, actor, send, request_id)

    async def _send_stream(
        self, renderer: _StreamRenderer, actor: RequestActor, send: Send, request_id: str
    ) -> None:
        chunks = actor.chunks()
        # Nothing is sent until the first visible chunk: a failure before it is a plain
        # JSON error with its own status (after every fallback was tried). Usage-only
        # chunks before it are held back.
        held: list[TokenChunk] = []
        async for chunk in chunks:
            held.append(chunk)
            if chunk.visible:
                break
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        try:
            await self._write_stream(renderer, held, chunks, send, actor.record)
        finally:
            await chunks.aclose()

    async def _write_stream(
        self,
        renderer: _StreamRenderer,
        held: list[TokenChunk],
        chunks: AsyncIterator[TokenChunk],
        send: Send,
        record: RequestRecord,
    ) -> None:
        # The held chunks are rendered before the opening event is built, so an Anthropic
        # message_start can report the prompt usage an upstream sent ahead of the content.
        opening = b"".join(renderer.render(chunk) for chunk in held)
        body = renderer.first() + opening
        await send({"type": "http.response.body", "body": body, "more_body": True})
        metrics, clock = self.metrics, self._clock
        deployment = record.deployment or ""
        provider = self._providers.get(deployment, "")
        last = clock()
        try:
            async for chunk in chunks:
                data = renderer.render(chunk)
                if data:
                    if metrics is not None:
                        now = clock()
                        metrics.observe_inter_token(deployment, provider, now - last)
                        last = now
                    await send({"type": "http.response.body", "body": data, "more_body": True})
            tail = renderer.final()
        except InferenceError as error:
            # After the first byte: the partial answer stands; an error event ends it.
            tail = renderer.error(error)
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _models(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "rakka"}
            for name, aliases in self.coordinator.models()
            for model in (name, *aliases)
        ]
        await _send_json(send, 200, orjson.dumps({"object": "list", "data": data}), request_id)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        assert self.metrics is not None
        body = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _healthz(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        await _send_json(send, 200, b'{"status":"ok"}', request_id)

    async def _readyz(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        table = self.coordinator.table
        waiting = sorted(name for name, replicas in table.replicas.items() if not replicas)
        if not table.replicas or waiting:
            body = orjson.dumps({"status": "not ready", "deployments_without_replicas": waiting})
            await _send_json(send, 503, body, request_id)
            return
        await _send_json(send, 200, b'{"status":"ready"}', request_id)

    # ------------------------------------------------------------------ bodies

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise PayloadTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestCancelled("the client went away while sending its request")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise PayloadTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


# ---------------------------------------------------------------------- helpers


def bearer_matches(scope: Scope, keys: Iterable[bytes]) -> bool:
    """Whether the request's ``Authorization: Bearer`` token is one of ``keys``.

    Every key is compared, always, in constant time: the time taken says nothing about
    which key (or how much of one) matched.
    """
    scheme, _, presented = (_header(scope, b"authorization") or "").partition(" ")
    return _one_of(presented.strip().encode(), keys) and scheme.lower() == "bearer"


def header_key_matches(scope: Scope, header: bytes, keys: Iterable[bytes]) -> bool:
    """Whether the request's ``header`` (such as ``x-api-key``) holds one of ``keys``.

    Compared as :func:`bearer_matches` compares: every key, in constant time.
    """
    return _one_of((_header(scope, header) or "").strip().encode(), keys)


def _one_of(token: bytes, keys: Iterable[bytes]) -> bool:
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(token, key)
    return valid


def _trace_headers(scope: Scope) -> dict[str, str] | None:
    """The request's W3C Trace Context headers, so its trace joins the client's."""
    found = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in tracing.TRACE_HEADERS
    }
    return found or None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_json(send: Send, status: int, body: bytes, request_id: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Send, error: InferenceError, request_id: str, render: _ErrorRenderer = error_json
) -> None:
    try:
        status, headers, body = render(error)
    except Exception:  # pragma: no cover - a bug in rendering must still answer
        log.exception("rendering an error failed")
        status, headers, body = render(InternalError("internal error"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *((k.encode(), v.encode()) for k, v in headers.items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
