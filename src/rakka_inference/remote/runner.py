"""RemoteRunner: one provider call, as a :class:`~rakka_inference.core.runner.ModelRunner`.

A runner makes exactly one attempt: build the request with the adapter, send it with the
session snapshot's transport, then decode the answer into chunks — the SSE stream through
:class:`~rakka_inference.wire.sse.SseDecoder` and the adapter's stream parser, or the
unary body through the adapter. A status >= 400 is classified (generic HTTP rules, then the
adapter's refinement) and raised as a typed error. The error's message quotes the upstream
only as :func:`~rakka_inference.wire.classify.sanitize_upstream_message` cleans it (no key
material, URLs or hostnames: clients read it); the upstream's whole message, key material
masked, goes to this module's log.

Retries, rate limits and the circuit breaker are the engine's business, not the runner's:
the engine calls :meth:`RemoteRunner.attempt` with the snapshot it leased, so a 401 can
name the generation that failed and concurrent 401s rebuild the session once.

Cancellation (the client went away) closes the HTTP response, and with it the connection:
the provider sees the request end.

With tracing on, the response's status goes on the current span: the engine's
``rakka.upstream`` span for this attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from typing import NoReturn

from rakka_inference.core import tracing
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import cost_usd
from rakka_inference.core.runner import SessionRebuildCause, Transport
from rakka_inference.core.runtimes import RemoteRuntimeConfig, RuntimeKind
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import (
    EmbeddingAdapter,
    ProviderAdapter,
    TokenCounter,
    answer_chunks,
)
from rakka_inference.remote.session import RemoteSession, SessionSnapshot
from rakka_inference.wire.classify import classify_http_error, upstream_log_text

__all__ = ["RemoteRunner"]

_HTTP_STATUS = "http.response.status_code"

log = logging.getLogger("rakka_inference.remote.runner")


class RemoteRunner:
    """A ModelRunner that calls a provider through an adapter and a session."""

    def __init__(
        self,
        adapter: ProviderAdapter,
        session: RemoteSession,
        config: RemoteRuntimeConfig,
        runtime: RuntimeKind,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.adapter = adapter
        self.session = session
        self.config = config
        self._runtime = runtime
        self._wall_clock = wall_clock

    # ------------------------------------------------------------------ ModelRunner

    @property
    def runtime_kind(self) -> RuntimeKind:
        return self._runtime

    @property
    def transport_kind(self) -> Transport:
        return Transport.remote(self.adapter.provider)

    @property
    def rate_limits(self) -> RateLimits:
        return self.config.rate_limits

    def estimate_cost(self, usage: Usage) -> float | None:
        price = self.adapter.price()
        return None if price is None else cost_usd(usage, price)

    async def load_weights(self) -> None:
        """Nothing to load remotely: resolve the credential and open the client."""
        await self.session.start()

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        await self.session.rebuild(cause)

    async def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        """One attempt on the current session snapshot."""
        snapshot = self.session.current
        with snapshot.lease():
            async for chunk in self.attempt(request, snapshot):
                yield chunk

    # ------------------------------------------------------------------ one attempt

    async def embed(self, request: EmbeddingRequest, snapshot: SessionSnapshot) -> EmbeddingResult:
        """Send an embeddings request once with ``snapshot``; the adapter must serve them."""
        adapter = self.adapter
        if not isinstance(adapter, EmbeddingAdapter):
            raise BadRequest(f"{adapter.provider} serves no embeddings", param="model")
        credential = await snapshot.credential()
        http_request = adapter.build_embedding_request(request, credential)
        response = await snapshot.transport.send(http_request, self.config.timeouts, stream=False)
        tracing.current().set(_HTTP_STATUS, response.status)
        try:
            body = await response.read()
            if response.status >= 400:
                self._raise_http_error(response.status, response.headers, body, credential)
            return adapter.parse_embedding_response(body, request)
        finally:
            await response.aclose()

    async def count_tokens(self, request: ChatRequest, counter: TokenCounter) -> int:
        """The input tokens of ``request``'s prompt, as the provider counts them: one call
        on the current session, through ``counter`` (this runner's adapter, when it is a
        :class:`TokenCounter`)."""
        adapter = counter
        snapshot = self.session.current
        with snapshot.lease():
            credential = await snapshot.credential()
            http_request = adapter.build_count_request(request, credential)
            response = await snapshot.transport.send(
                http_request, self.config.timeouts, stream=False
            )
            try:
                body = await response.read()
                if response.status >= 400:
                    self._raise_http_error(response.status, response.headers, body, credential)
                return adapter.parse_count_response(body)
            finally:
                await response.aclose()

    async def attempt(
        self, request: ChatRequest, snapshot: SessionSnapshot
    ) -> AsyncIterator[TokenChunk]:
        """Send ``request`` once with ``snapshot`` and yield the answer's chunks."""
        adapter = self.adapter
        credential = await snapshot.credential()
        http_request = adapter.build_request(request, credential)
        response = await snapshot.transport.send(
            http_request, self.config.timeouts, stream=request.stream
        )
        tracing.current().set(_HTTP_STATUS, response.status)
        try:
            if response.status >= 400:
                body = await response.read()
                self._raise_http_error(response.status, response.headers, body, credential)
            chunks_of = answer_chunks(
                adapter, response, stream=request.stream, choices=request.sampling.n
            )
            async with aclosing(chunks_of) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            await response.aclose()

    def _raise_http_error(
        self, status: int, headers: Mapping[str, str], body: bytes, credential: Secret
    ) -> NoReturn:
        provider = self.adapter.provider
        secrets = (credential.expose(),)
        error = self.adapter.refine_error(
            classify_http_error(
                status, headers, body, provider=provider, now=self._wall_clock(), secrets=secrets
            ),
            body,
        )
        # The client's message is cleaned of URLs and hostnames; the operator needs them.
        log.log(
            logging.INFO if error.retryable else logging.WARNING,
            "%s answered HTTP %d (%s): %s",
            provider,
            status,
            type(error).__name__,
            upstream_log_text(body, secrets) or "no message",
        )
        raise error
