"""EngineServerRunner: a vLLM, SGLang or llama.cpp server as a replica's model context.

The runner of the ``vllm``, ``sglang`` and ``llamacpp`` runtimes. Loading the "weights"
starts the engine's own OpenAI-compatible server as a child process
(:mod:`rakka_inference.local.engine_process`, the command line from
:mod:`rakka_inference.local.engine_command`) on a loopback port and on the GPUs placement
gave the replica, and waits for its ``/health`` to answer 200. Requests then go to it over
loopback in the OpenAI wire format (the OpenAI adapter builds and parses them), streamed.

**The process is the context.** The ContextActor supervises it through :meth:`watch`,
which raises :class:`ContextPoisoned` when

- the process exits (a crash, an out-of-memory kill), at once;
- ``health_failures`` health checks in a row fail or take longer than
  ``health_timeout_ms`` (a hung engine);

and the kernel restarts the context — stops this process, starts a new one — at most 3
times in 60 s, like any poisoned context. A request running when the process dies fails
with ContextPoisoned too (retryable: it goes to another replica, or to the deployment's
fallbacks, when nothing reached the client yet). Stopping the context (a drain, a
restart, a scale-down) stops the process: SIGTERM, then SIGKILL after ``stop_grace_ms``.

=====================================  ==================  ===============================
what happened                          raised              effect
=====================================  ==================  ===============================
the program cannot be run              Unrecoverable       the replica stops (checked
                                                           before apply; only a program
                                                           removed since gets here)
the engine exits while starting, or    ContextPoisoned     restarted, 3 per 60 s
is not healthy within
``startup_timeout_ms``
the engine answers 4xx                 BadRequest & co.    that request only (the
                                                           engine's message, cleaned)
the engine answers 5xx, times out,     ServerError,        that request only; retried
cannot be reached while running        Timeout,            elsewhere when retryable
                                       NetworkError
=====================================  ==================  ===============================

**Load for routing comes from the engine.** Every ``metrics_interval_ms`` the runner reads
its ``/metrics`` (:mod:`rakka_inference.local.engine_metrics`): requests running and
waiting inside the engine and its KV-cache use, as :attr:`engine_load`. The replica's
routing score adds them to its own count (:class:`~rakka_inference.local.engine.
LocalEngineCore`), so the router prefers the replica with room in its KV cache.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import NoReturn

import orjson

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    ContextPoisoned,
    InferenceError,
    NetworkError,
    Unrecoverable,
    UpstreamError,
)
from rakka_inference.core.messages import ChatRequest
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.pricing import cost_usd, resolve_price
from rakka_inference.core.runner import SessionRebuildCause, Transport
from rakka_inference.core.runtimes import EngineServerConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.local.engine_command import (
    ENGINE_HOST,
    engine_arguments,
    engine_environment,
)
from rakka_inference.local.engine_metrics import EngineLoad, parse_engine_metrics
from rakka_inference.local.engine_process import MAX_METRICS_BYTES, EngineProcess, free_port
from rakka_inference.providers.base import answer_chunks
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.wire.classify import classify_http_error, upstream_log_text
from rakka_inference.wire.http import HttpRequest, HttpTransport

__all__ = ["EngineServerRunner", "TransportOpener"]

log = logging.getLogger("rakka_inference.local.engine_server")

TransportOpener = Callable[[int], HttpTransport]
"""Opens a pooled HTTP client with room for this many connections (the serving process
provides it: the transports live with the remote stack)."""

_HEADERS = {"content-type": "application/json"}


class EngineServerRunner:
    """A ModelRunner whose context is an engine server process. See the module docstring."""

    def __init__(
        self,
        deployment: Deployment,
        open_transport: TransportOpener,
        *,
        name: str | None = None,
        gpus: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = deployment.runtime_config
        if not isinstance(config, EngineServerConfig):
            raise TypeError(f"deployment {deployment.name!r} is not configured for an engine")
        self._deployment = deployment
        self._config = config
        self._open_transport = open_transport
        self._name = name or deployment.name
        self._gpus = tuple(gpus)
        self._clock = clock
        self._price = resolve_price(deployment.upstream_model, deployment.pricing, local=True)
        self._transport = Transport.local_gpu() if self._gpus else Transport.local_cpu()
        self._process: EngineProcess | None = None
        self._adapter: OpenAIAdapter | None = None
        self._chat: HttpTransport | None = None
        self._probe: HttpTransport | None = None
        self._load: EngineLoad | None = None
        self._load_at: float | None = None
        self._closed = False

    # ------------------------------------------------------------------ properties

    @property
    def runtime_kind(self) -> RuntimeKind:
        return self._deployment.runtime

    @property
    def transport_kind(self) -> Transport:
        """A GPU when placement gave the replica one, else the CPU."""
        return self._transport

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits()  # a local engine: its own scheduler and our slots limit it

    def estimate_cost(self, usage: Usage) -> float | None:
        return None if self._price is None else cost_usd(usage, self._price)

    @property
    def process(self) -> EngineProcess | None:
        """The running engine process (None before :meth:`load_weights`)."""
        return self._process

    @property
    def engine_load(self) -> EngineLoad | None:
        """What the engine last reported of its load (None until it has, or when its
        report is older than three intervals)."""
        at = self._load_at
        interval_s = self._config.metrics_interval_ms / 1000
        if at is None or self._clock() - at > 3 * max(interval_s, 1.0):
            return None
        return self._load

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: the engine is being stopped, or is."""
        return self._closed

    @property
    def batch_size(self) -> int:
        """Requests the engine is running, as it last reported (0 when unknown)."""
        load = self.engine_load
        return 0 if load is None or load.running is None else int(load.running)

    def describe(self) -> str:
        process = self._process
        where = "not started" if process is None else f"pid {process.pid} at {process.base_url}"
        return f"{self._deployment.runtime.value} engine of {self._name!r}: {where}"

    def __repr__(self) -> str:
        return f"<EngineServerRunner {self.describe()}>"

    # ------------------------------------------------------------------ lifecycle

    async def load_weights(self) -> None:
        """Start the engine and wait until it is healthy. Raises ContextPoisoned when it
        exits or is not healthy in time (the process is stopped first)."""
        config = self._config
        port = config.port or free_port(ENGINE_HOST)
        base_url = f"http://{ENGINE_HOST}:{port}"
        process = EngineProcess(
            self._name,
            engine_arguments(self._deployment, port, self._gpus),
            engine_environment(self._deployment, self._gpus),
            base_url,
            secrets=tuple(config.env.values()),
        )
        self._probe = self._open_transport(2)
        try:
            await process.start()
        except OSError as error:
            await self._close_transports()
            raise Unrecoverable(
                f"engine {self._name}: cannot run {process.argv[0]!r}: {error.strerror or error}"
            ) from error
        self._process = process
        try:
            await self._wait_ready(process)
        except BaseException:
            await self.close()
            raise
        self._adapter = OpenAIAdapter(
            OpenAIConfig(endpoint=f"{base_url}/v1", timeouts=config.timeouts),
            self._deployment.upstream_model,
            provider=self._deployment.runtime.value,
            accepts_top_k=True,  # vLLM, SGLang and llama.cpp all sample with top_k
        )
        self._chat = self._open_transport(max(1, self._deployment.serving.max_concurrent))
        log.info("engine %s: ready (%s)", self._name, self.describe())

    async def _wait_ready(self, process: EngineProcess) -> None:
        config = self._config
        deadline = self._clock() + config.startup_timeout_ms / 1000
        probe = self._probe
        assert probe is not None
        exited = asyncio.ensure_future(process.wait())
        pause = 0.05
        try:
            while True:
                if exited.done():
                    raise ContextPoisoned(
                        f"engine {self._name} {process.describe_exit()} while starting"
                    )
                left = deadline - self._clock()
                if left <= 0:
                    raise ContextPoisoned(
                        f"engine {self._name} was not healthy within "
                        f"{config.startup_timeout_ms / 1000:g}s of starting"
                    )
                timeout_s = min(config.health_timeout_ms / 1000, left)
                if await process.healthy(probe, timeout_s):
                    return
                await asyncio.wait({exited}, timeout=min(pause, max(0.0, left)))
                pause = min(pause * 2, 1.0)
        finally:
            exited.cancel()

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Nothing to rebuild in place: a poisoned engine is replaced by the context's
        restart (a new process), a changed config by a new replica."""

    async def watch(self) -> None:
        """Supervise the running engine; raise ContextPoisoned when it is lost. Returns
        only if it was closed. See the module docstring."""
        process = self._process
        probe = self._probe
        if process is None or probe is None:
            return
        config = self._config
        health_every = config.health_interval_ms / 1000
        metrics_every = config.metrics_interval_ms / 1000 if config.metrics_interval_ms else None
        exited = asyncio.ensure_future(process.wait())
        failures = 0
        next_health = self._clock() + health_every
        me = asyncio.current_task()
        try:
            while not self._closed:
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError  # a cancellation a library swallowed
                step = health_every if metrics_every is None else min(health_every, metrics_every)
                await asyncio.wait({exited}, timeout=step)
                if exited.done():
                    if self.closed:
                        return
                    raise ContextPoisoned(f"engine {self._name} {process.describe_exit()}")
                if metrics_every is not None:
                    await self._read_load(process, probe)
                if self._clock() < next_health:
                    continue
                next_health = self._clock() + health_every
                if await process.healthy(probe, config.health_timeout_ms / 1000):
                    failures = 0
                    continue
                failures += 1
                log.warning(
                    "engine %s: health check failed (%d of %d in a row)",
                    self._name,
                    failures,
                    config.health_failures,
                )
                if failures >= config.health_failures:
                    raise ContextPoisoned(
                        f"engine {self._name} failed {failures} health checks in a row "
                        f"(none answered 200 within {config.health_timeout_ms / 1000:g}s)"
                    )
        finally:
            exited.cancel()

    async def _read_load(self, process: EngineProcess, probe: HttpTransport) -> None:
        timeout_s = self._config.health_timeout_ms / 1000
        try:
            status, body = await process.get(probe, "/metrics", timeout_s, MAX_METRICS_BYTES)
        except (InferenceError, TimeoutError, OSError):
            return  # the health check is what judges the engine; the load just ages
        if status != 200:
            return
        self._load = parse_engine_metrics(body.decode("utf-8", "replace"), self._deployment.runtime)
        self._load_at = self._clock()

    async def close(self) -> None:
        """Stop the engine (SIGTERM, SIGKILL after ``stop_grace_ms``) and the clients."""
        self._closed = True
        process = self._process
        if process is not None:
            await process.stop(self._config.stop_grace_ms / 1000)
        await self._close_transports()

    async def _close_transports(self) -> None:
        for transport in (self._chat, self._probe):
            if transport is not None:
                await transport.aclose()
        self._chat = self._probe = None

    # ------------------------------------------------------------------ requests

    async def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        """Send ``request`` to the engine and stream its answer. Cancelling closes the
        connection, which aborts the request in the engine."""
        adapter, chat, process = self._adapter, self._chat, self._process
        if adapter is None or chat is None or process is None or not process.running:
            raise ContextPoisoned(f"engine {self._name} is not running")
        body = orjson.dumps(adapter.request_body(request))
        http_request = HttpRequest(
            "POST", f"{process.base_url}/v1/chat/completions", _HEADERS, body
        )
        try:
            response = await chat.send(http_request, self._config.timeouts, stream=request.stream)
            try:
                if response.status >= 400:
                    self._raise_http_error(response.status, response.headers, await response.read())
                async with aclosing(
                    answer_chunks(adapter, response, stream=request.stream)
                ) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                await response.aclose()
        except UpstreamError as error:
            await self._raise_if_lost(process, error)
            raise

    async def _raise_if_lost(self, process: EngineProcess, error: UpstreamError) -> None:
        """A request failed on the wire: if the engine died under it, that is what failed."""
        if isinstance(error, NetworkError) or (error.upstream_status or 0) >= 500:
            # The process may be a moment from being reaped: give it that moment.
            exited = asyncio.ensure_future(process.wait())
            await asyncio.wait({exited}, timeout=0.2)
            if not exited.done():
                exited.cancel()
                return
            raise ContextPoisoned(
                f"engine {self._name} {process.describe_exit()} during the request"
            ) from error

    def _raise_http_error(self, status: int, headers: Mapping[str, str], body: bytes) -> NoReturn:
        adapter = self._adapter
        assert adapter is not None
        error = adapter.refine_error(
            classify_http_error(status, headers, body, provider=adapter.provider, now=time.time()),
            body,
        )
        log.log(
            logging.INFO if error.retryable else logging.WARNING,
            "engine %s answered HTTP %d (%s): %s",
            self._name,
            status,
            type(error).__name__,
            upstream_log_text(body) or "no message",
        )
        raise error
