"""ApiGateway: the OpenAI- and Anthropic-compatible HTTP surface, as a bare ASGI application.

Routes:

- ``POST /v1/chat/completions`` — streaming (SSE ``chat.completion.chunk`` events, an
  optional final usage chunk, ``data: [DONE]``) and not;
- ``POST /v1/messages`` — Anthropic's Messages format in and out, streaming (Anthropic's
  event stream, usage always) and not, against any deployment
  (:mod:`~rakka_inference.api.anthropic_request`); its errors are Anthropic error bodies;
- ``POST /v1/responses`` — OpenAI's Responses format in and out, streaming (the
  Responses event stream, usage always) and not, against any deployment
  (:mod:`~rakka_inference.api.openai_responses_request`); nothing is stored, so
  ``store: true`` and ``previous_response_id`` are refused; OpenAI error bodies;
- ``POST /v1/embeddings`` — routed like chat, to deployments whose provider serves
  embeddings (others answer 400 naming ``model``);
- ``POST /v1/messages/count_tokens`` — Anthropic's token counting, against any deployment:
  the provider's own count where it has one (Anthropic, Gemini), else the gateway's
  estimate, said in ``x-rakka-token-count`` (``provider`` or ``estimate``);
- ``GET /v1/models`` — deployments and their aliases; ``GET /v1/models/{id}`` — one of
  them (404 ``model_not_found`` otherwise);
- ``GET /healthz`` — the process is up; ``GET /readyz`` — 200 only while every deployment
  has a replica serving (both answer ``HEAD`` too).

A request's ``x-rakka-max-wait-ms`` header shortens the time it may spend waiting between
retries and on a Retry-After that blocks its rate-limit key (``retry.max_wait_ms``; never
lengthens it). A chat request's ``x-rakka-priority``
header (``background``, ``normal``, ``high``,
``critical``) is its class in the replica's queue. A body sent with ``content-encoding:
gzip`` or ``deflate`` is decompressed within the body limit
(:func:`~rakka_inference.runtime.asgi.receive_body`).

Every error is an OpenAI-style JSON body (Anthropic-style on ``/v1/messages``) with the
status of its class (400 naming the param, 401, 404, 413, 429 and 503 with
``Retry-After``, 502, 504); every 429 has ``Retry-After``, but one that no retry can
cure, which says ``x-should-retry: false`` (:mod:`~rakka_inference.runtime.asgi`). Each
response carries ``x-request-id``: the client's own when it sent a short plain one, else
the gateway's; the answer's id (``chatcmpl-``, ``msg_``, ``resp_``) is always the
gateway's (:func:`~rakka_inference.runtime.asgi.request_ids`).

CORS (``[cluster].cors_origins``, off by default): a page from an allowed origin gets
``Access-Control-Allow-Origin`` on every answer, and its preflight (``OPTIONS``) is
answered for any route without a key; other origins get no CORS headers, so browsers
refuse them.

Limits: the body size (413 before it is read past the limit) and the number of requests in
flight (429 ``backpressure`` beyond it). Client keys, when configured, are checked in
constant time; a request without a valid ``Authorization: Bearer`` key gets 401
(``/v1/messages`` also takes the key from ``x-api-key``, as Anthropic's API does).

A streaming response watches for the client going away (``http.disconnect``): the
request's task is then cancelled, which closes the engine stream, cancels the upstream call
and releases every permit. If the upstream fails after the first byte, the client gets the
partial content once, then an error event, then ``[DONE]`` (Anthropic's stream ends at
its ``error`` event).

Stopping: the server lets requests in flight finish within its grace period; when it runs
out, :meth:`ApiGateway.cut` ends every request still running with
:class:`ShuttingDown`. A stream that has begun keeps its partial answer and ends with its
dialect's error event (OpenAI's ``data: {"error": ...}`` then ``[DONE]``, Anthropic's
``event: error``); a request not yet answered (queued, or waiting on its upstream) gets
the 503 JSON error of its route. Both are told apart from a client that went away.

The module is written on raw ASGI (:mod:`~rakka_inference.runtime.asgi`), with no framework,
because the gateway's own overhead is the product: one dict lookup routes a request, and
bodies are bytes end to end. The inference routes, one per dialect, are in
:mod:`~rakka_inference.runtime.dialects`; a streamed answer is written by
:mod:`~rakka_inference.runtime.streaming`. This module holds what they share: routing,
keys, the limits, the watch on the connection, and the operational routes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from functools import partial
from typing import Any, Protocol

import orjson

from rakka_inference.api.anthropic_request import parse_count_tokens_request
from rakka_inference.api.anthropic_response import anthropic_error_json
from rakka_inference.api.openai_response import error_json
from rakka_inference.core import tracing
from rakka_inference.core.errors import (
    Backpressure,
    BadRequest,
    ClientUnauthorized,
    InferenceError,
    ModelNotFound,
    RequestCancelled,
    RouteNotFound,
    ShuttingDown,
)
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, Priority
from rakka_inference.core.secrets import Secret
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe.metrics import CONTENT_TYPE, InferenceMetrics
from rakka_inference.providers.base import TokenCounter
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.runtime import dialects
from rakka_inference.runtime.asgi import (
    ErrorRenderer,
    Receive,
    RequestIds,
    Scope,
    Send,
    bearer_matches,
    disconnected,
    header,
    header_key_matches,
    receive_body,
    request_ids,
    send_error,
    send_json,
    send_whole,
    trace_headers,
)
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.runtime.cors import allowed_origin, preflight, with_cors
from rakka_inference.runtime.request import (
    MAX_WAIT_HEADER,
    FallbackPolicy,
    RequestActor,
    client_max_wait_s,
)
from rakka_inference.runtime.streaming import StreamRenderer, send_stream

__all__ = ["PRIORITY_HEADER", "AdminHandler", "ApiGateway", "ShuttingDown"]

PRIORITY_HEADER = b"x-rakka-priority"
"""A chat request's queue priority: ``background``, ``normal`` (the default), ``high`` or
``critical``; within a replica's queue a higher class is served first."""

log = logging.getLogger("rakka_inference.gateway")


def _priority(value: str) -> Priority:
    try:
        return Priority[value.strip().upper()]
    except KeyError:
        raise BadRequest(
            "x-rakka-priority must be one of background, normal, high, critical",
            param="x-rakka-priority",
        ) from None


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("the server is shutting down and its grace period ran out", retry_after=1.0)


class AdminHandler(Protocol):
    """The ``/admin/`` routes (:class:`~rakka_inference.runtime.admin.AdminApi`)."""

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]: ...


DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT_S = 600.0
"""Every request has a deadline: waiting for a permit, and retry backoffs, stop there."""
_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_MESSAGES_PATH = "/v1/messages"
_MODEL_PATH = "/v1/models/"
_COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_ANTHROPIC_PATHS = frozenset({_MESSAGES_PATH, _COUNT_TOKENS_PATH})
_ERROR_RENDERERS: dict[str, ErrorRenderer] = dict.fromkeys(_ANTHROPIC_PATHS, anthropic_error_json)
"""Routes whose errors are not OpenAI-style; looked up only when an error is answered."""


class ApiGateway:
    """The ASGI application in front of the coordinator.

    It is the :class:`~rakka_inference.runtime.dialects.Serving` of the inference routes.
    """

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
        cors_origins: Iterable[str] = (),
    ) -> None:
        self.admin = admin
        self._cors = frozenset(cors_origins)
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
        self._working: set[asyncio.Future[None]] = set()
        self._cut = False
        self._routes: dict[
            tuple[str, str], Callable[[Scope, Receive, Send, RequestIds], Awaitable[None]]
        ]
        self._routes = {
            ("POST", "/v1/chat/completions"): partial(dialects.chat, self),
            ("POST", "/v1/embeddings"): partial(dialects.embeddings, self),
            ("POST", _MESSAGES_PATH): partial(dialects.messages, self),
            ("POST", "/v1/responses"): partial(dialects.responses, self),
            ("POST", _COUNT_TOKENS_PATH): self._count_tokens,
            ("GET", "/v1/models"): self._models,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("HEAD", "/healthz"): self._healthz,  # the server sends the head only
            ("HEAD", "/readyz"): self._readyz,
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
        ids = request_ids(scope)
        allowed = allowed_origin(scope, self._cors) if self._cors else None
        if allowed is not None:
            if scope["method"] == "OPTIONS":  # a preflight: answered for any route
                await preflight(send, allowed, ids.header)
                return
            send = with_cors(send, allowed)
        handler = self._routes.get((scope["method"], scope["path"]))
        if handler is None and scope["method"] == "GET" and scope["path"].startswith(_MODEL_PATH):
            handler = self._model
        try:
            if handler is None:
                if self.admin is not None and scope["path"].startswith("/admin/"):
                    status, body = await self.admin.handle(scope, receive)
                    await send_json(send, status, body, ids.header)
                    return
                raise RouteNotFound(f"Invalid URL ({scope['method']} {scope['path']})")
            if scope["path"] not in _OPEN_PATHS:  # probes answer without a key
                self._authorize(scope)
            await handler(scope, receive, send, ids)
        except RequestCancelled:
            return  # the client is gone: there is nobody to answer
        except InferenceError as error:
            render = _ERROR_RENDERERS.get(scope["path"], error_json)
            await send_error(send, error, ids.header, render)

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

    def use_cors(self, origins: Iterable[str]) -> None:
        """Answer browsers from ``origins`` (``"*"``: any) from now on; none: no CORS."""
        self._cors = frozenset(origins)

    def use_client_keys(self, client_keys: Iterable[Secret]) -> None:
        """Accept ``client_keys`` from now on (a reload): the list is built whole first,
        then swapped in by one assignment, so no request ever sees a mix of old and new."""
        keys = [key.expose().encode() for key in client_keys]
        self._keys = keys

    def _authorize(self, scope: Scope) -> None:
        if not self._keys or bearer_matches(scope, self._keys):
            return
        if scope["path"] in _ANTHROPIC_PATHS:
            if header_key_matches(scope, b"x-api-key", self._keys):
                return
            raise ClientUnauthorized(
                "a valid API key is required: x-api-key: <key> or Authorization: Bearer <key>"
            )
        raise ClientUnauthorized("a valid API key is required: Authorization: Bearer <key>")

    # ------------------------------------------------------------------ serving

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, refused (413) past ``max_body_bytes``."""
        return await receive_body(scope, receive, self.max_body_bytes)

    def actor(self, request: ChatRequest | EmbeddingRequest, scope: Scope) -> RequestActor:
        """A request actor for ``request``; :class:`Backpressure` at ``max_concurrent``."""
        if self.in_flight >= self.max_concurrent:
            raise Backpressure(f"the gateway is at its limit of {self.max_concurrent} requests")
        deadline = (
            None if self.request_timeout_s is None else self._clock() + self.request_timeout_s
        )
        priority = header(scope, PRIORITY_HEADER)
        if priority is not None and isinstance(request, ChatRequest):
            request = dataclasses.replace(request, priority=_priority(priority))
        return RequestActor(
            request,
            self.coordinator,
            self.policies,
            deadline=deadline,
            clock=self._clock,
            on_done=self._on_record,
            trace_parent=trace_headers(scope) if tracing.enabled() else None,
            max_wait_s=client_max_wait_s(header(scope, MAX_WAIT_HEADER)),
        )

    async def serve(
        self, actor: RequestActor, answer: Coroutine[Any, Any, None], receive: Receive
    ) -> None:
        """Run ``answer`` while watching the connection; then observe the gateway's overhead."""
        started = self._clock()
        await self._watched(answer, receive)
        if self.metrics is not None and actor.record.engine_s:
            overhead = self._clock() - started - actor.record.engine_s
            self.metrics.observe_gateway_overhead(max(0.0, overhead))

    async def stream(
        self, renderer: StreamRenderer, actor: RequestActor, send: Send, ids: RequestIds
    ) -> None:
        """Stream ``actor``'s answer through ``renderer``, observing inter-token gaps."""
        await send_stream(
            renderer,
            actor,
            send,
            ids.header,
            clock=self._clock,
            metrics=self.metrics,
            providers=self._providers,
            cut_reason=self.cut_reason,
        )

    def cut(self) -> int:
        """The grace period ran out: end every request in flight now (module docstring),
        and refuse any that would start; how many were cut."""
        self._cut = True
        for work in self._working:
            work.cancel()
        return len(self._working)

    def cut_reason(self) -> InferenceError | None:
        """Why a request's work was cancelled, when it was :meth:`cut`; None when the
        cancellation is the client's (or nobody's)."""
        return _shutting_down() if self._cut else None

    async def _watched(self, answer: Coroutine[Any, Any, None], receive: Receive) -> None:
        # The answer runs beside a watch on the connection: a client that goes away, at
        # any point (queued, before the first byte, mid-stream), cancels it — which closes
        # the engine stream, cancels the upstream call and frees every permit.
        if self._cut:
            answer.close()
            raise _shutting_down()
        self.in_flight += 1
        work = asyncio.ensure_future(answer)
        self._working.add(work)
        watcher = asyncio.ensure_future(disconnected(receive))
        client_gone = False
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            client_gone = watcher.done()
        finally:
            if not work.done():
                work.cancel()
            watcher.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
            self._working.discard(work)
            self.in_flight -= 1
        if work.cancelled():
            cut = self.cut_reason()  # read again: the cut came while it ran
            if cut is not None and not client_gone:
                raise cut  # not answered yet: the route's 503
            raise RequestCancelled("the client went away")
        error = work.exception()
        if error is not None:
            raise error

    # ------------------------------------------------------------------ operations

    async def _models(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        created = int(time.time())
        data = [
            {"id": model, "object": "model", "created": created, "owned_by": "rakka"}
            for name, aliases in self.coordinator.models()
            for model in (name, *aliases)
        ]
        await send_json(send, 200, orjson.dumps({"object": "list", "data": data}), ids.header)

    async def _count_tokens(
        self, scope: Scope, receive: Receive, send: Send, ids: RequestIds
    ) -> None:
        """Anthropic's ``count_tokens`` in front of any deployment: counted by the provider
        where it counts (Anthropic, Gemini), else the gateway's own estimate (about one
        token per 4 bytes, the one the rate limiter reserves with); the
        ``x-rakka-token-count`` header says which (``provider`` or ``estimate``)."""
        request = parse_count_tokens_request(
            await self.read_body(scope, receive), request_id=ids.own
        )
        replica = self.coordinator.route(request.model)
        counter: object = replica.runner.adapter if isinstance(replica, RemoteEngineCore) else None
        if isinstance(replica, RemoteEngineCore) and isinstance(counter, TokenCounter):
            tokens, how = await replica.runner.count_tokens(request, counter), "provider"
        else:
            tokens, how = request.estimated_prompt_tokens(), "estimate"
        body = orjson.dumps({"input_tokens": tokens})
        await send_json(send, 200, body, ids.header, {"x-rakka-token-count": how})

    async def _model(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        wanted = scope["path"][len(_MODEL_PATH) :]
        if not any(wanted in (name, *aliases) for name, aliases in self.coordinator.models()):
            raise ModelNotFound(f"The model '{wanted[:256]}' does not exist", param="model")
        model = {"id": wanted, "object": "model", "created": int(time.time()), "owned_by": "rakka"}
        await send_json(send, 200, orjson.dumps(model), ids.header)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        assert self.metrics is not None
        await send_whole(send, 200, self.metrics.render(), ids.header, CONTENT_TYPE.encode())

    async def _healthz(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        await send_json(send, 200, b'{"status":"ok"}', ids.header)

    async def _readyz(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        table = self.coordinator.table
        waiting = sorted(name for name, replicas in table.replicas.items() if not replicas)
        if not table.replicas or waiting:
            body = orjson.dumps({"status": "not ready", "deployments_without_replicas": waiting})
            await send_json(send, 503, body, ids.header)
            return
        await send_json(send, 200, b'{"status":"ready"}', ids.header)
