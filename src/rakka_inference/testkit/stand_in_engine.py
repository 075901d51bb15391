"""A stand-in for an engine server (vLLM, SGLang, llama.cpp's ``llama-server``): a program
that takes the engine's own command line and speaks its HTTP surface on loopback, with
faults a test can inject. CI runs local deployments on it where there is no GPU.

Command line
============
``python -m rakka_inference.testkit.stand_in_engine FLAVOR ARGS...``, FLAVOR one of
``vllm``, ``sglang``, ``llamacpp`` and ARGS what the real engine gets:

- vllm: ``serve MODEL --host H --port P [--served-model-name NAME]
  [--tensor-parallel-size N] [--gpu-memory-utilization F] [--max-model-len L] [--dtype D]``
- sglang: ``--model-path MODEL --host H --port P [--served-model-name NAME]
  [--enable-metrics] [--tp-size N] [--mem-fraction-static F] [--context-length L] [--dtype D]``
- llamacpp: ``--model PATH --host H --port P [--alias NAME] [--metrics] [--parallel N]
  [--ctx-size L] [--n-gpu-layers N]`` (or ``-m -a -np -c -ngl``)

Other flags, with or without a value, are accepted and recorded. NAME defaults to the
model, H to ``127.0.0.1``. Without a model or a port it exits 2, as a real CLI.

HTTP
====
``GET /health``: 200 once ready. ``GET /v1/models``: NAME, ``owned_by`` FLAVOR,
``max_model_len`` L (else 4096). ``GET /metrics`` (for SGLang and llama.cpp only with their
metrics flag, else 404): Prometheus text under the engine's own names (``_FLAVORS``) —
requests running (chat requests in progress), waiting (0), KV-cache usage (0.1 per running
request, at most 1), the prompt and generated token counters.

``POST /v1/chat/completions``, OpenAI's format, unary or streamed (SSE, and the usage chunk
with ``stream_options.include_usage``): the reply is ``"stand-in FLAVOR reply:"``, then one
token ``" word"`` per word of the last user message. ``max_tokens`` (or
``max_completion_tokens``) cuts it (finish ``length``); a token holding a ``stop`` string
ends it just before that string (finish ``stop``). Usage: the prompt is every message's
words plus one per message; the completion, the tokens sent. Another ``model`` than NAME
gets OpenAI's 404 ``model_not_found``; a body that is not a JSON object, a 400.

It logs plain lines (``INFO stand-in vllm: ...``), one per request. On SIGTERM or SIGINT
it stops listening, lets requests in flight finish (at most ``GRACE_S``) and exits 0.

Faults and records
==================
With ``RAKKA_STAND_IN_DIR`` set, each start appends a JSON line to ``$DIR/starts.jsonl``
(see :func:`~rakka_inference.testkit.stand_in_faults.record_start`), and
``$DIR/faults.json`` is read at start and again at each request and signal. Its keys, all
optional (:class:`~rakka_inference.testkit.stand_in_faults.StandInFaults`):

=======================  ==================================================================
``start_delay_ms``       loading time: vllm and sglang do not listen until it is over,
                         llamacpp listens and answers 503 "Loading model" meanwhile
``exit_on_start``        after the loading time, log ``ERROR ...`` and exit with this
                         status; with ``exit_on_start_times`` N, on the first N starts only
``hang_health``          ``/health`` does not answer (until the program stops)
``health_status``        ``/health`` answers this status
``crash_after_chunks``   a stream sends N content chunks, then the process dies
                         (``os._exit(70)``); a unary request dies before answering
``chunk_delay_ms``       a pause before each streamed token, and before a unary answer
``chat_error``           ``{"status", "message", "type", "code", "param"}``: every chat
                         request is answered with this OpenAI error
``metrics``              ``{"running", "waiting", "kv_cache_usage"}``, reported instead
``ignore_sigterm``       SIGTERM is logged and ignored (SIGINT still stops it)
``per_port``             ``{"PORT": {faults}}``: for the engine on that port, these
                         instead of the keys above of the same name
=======================  ==================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.testkit.stand_in_faults import (
    DIR_ENV,
    InvalidChatRequest,
    Reply,
    StandInFaults,
    plan_reply,
    read_faults,
    record_start,
)

__all__ = ["GRACE_S", "EngineArgs", "StandInEngine", "main", "parse_engine_args"]

GRACE_S = 5.0
"""How long requests in flight may run on after SIGTERM."""
CRASH_STATUS = 70
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True, slots=True)
class _Flavor:
    """What differs between the engines: their flags and their metrics."""

    arguments: Callable[[argparse.ArgumentParser], None]
    metrics: tuple[str, str, str, str, str]
    """The names of: requests running, waiting, KV-cache usage, prompt and generated tokens."""
    labelled: bool
    """Whether samples carry ``model_name`` (llama.cpp's carry no labels)."""
    listens_while_loading: bool


def _vllm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--served-model-name", dest="served_name")
    parser.add_argument("--tensor-parallel-size", type=int)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--dtype")
    parser.set_defaults(metrics=True)  # always on


def _sglang(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", dest="model", required=True)
    parser.add_argument("--served-model-name", dest="served_name")
    parser.add_argument("--enable-metrics", dest="metrics", action="store_true")
    parser.add_argument("--tp-size", type=int)
    parser.add_argument("--mem-fraction-static", type=float)
    parser.add_argument("--context-length", dest="max_model_len", type=int)
    parser.add_argument("--dtype")


def _llamacpp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("-a", "--alias", dest="served_name")
    parser.add_argument("--metrics", action="store_true")
    parser.add_argument("-np", "--parallel", type=int)
    parser.add_argument("-c", "--ctx-size", dest="max_model_len", type=int)
    parser.add_argument("-ngl", "--n-gpu-layers", type=int)


_FLAVORS: Mapping[RuntimeKind, _Flavor] = {
    RuntimeKind.VLLM: _Flavor(
        _vllm,
        (
            "vllm:num_requests_running",
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total",
        ),
        labelled=True,
        listens_while_loading=False,
    ),
    RuntimeKind.SGLANG: _Flavor(
        _sglang,
        (
            "sglang:num_running_reqs",
            "sglang:num_queue_reqs",
            "sglang:token_usage",
            "sglang:prompt_tokens_total",
            "sglang:generation_tokens_total",
        ),
        labelled=True,
        listens_while_loading=False,
    ),
    RuntimeKind.LLAMACPP: _Flavor(
        _llamacpp,
        (
            "llamacpp:requests_processing",
            "llamacpp:requests_deferred",
            "llamacpp:kv_cache_usage_ratio",
            "llamacpp:prompt_tokens_total",
            "llamacpp:tokens_predicted_total",
        ),
        labelled=False,
        listens_while_loading=True,
    ),
}
_HELP = (
    "Requests running.",
    "Requests waiting.",
    "KV-cache usage, 0..1.",
    "Prompt tokens.",
    "Generated tokens.",
)


@dataclass(frozen=True, slots=True)
class EngineArgs:
    """The engine's command line, as the stand-in read it."""

    flavor: RuntimeKind
    model: str
    served_name: str
    host: str
    port: int
    max_model_len: int
    metrics: bool
    options: Mapping[str, Any]
    """Every known option by its argparse dest (``model``, ``served_name``,
    ``max_model_len`` and ``metrics`` under these names for every flavor)."""
    unknown: tuple[str, ...]


def parse_engine_args(flavor: RuntimeKind, argv: Sequence[str]) -> EngineArgs:
    """Read the engine's own arguments; exits 2 (argparse) when the model or port is missing."""
    parser = argparse.ArgumentParser(prog=f"stand-in {flavor.value}", allow_abbrev=False)
    parser.set_defaults(served_name=None, max_model_len=None)
    _FLAVORS[flavor].arguments(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    known, unknown = parser.parse_known_args(argv)
    return EngineArgs(
        flavor=flavor,
        model=known.model,
        served_name=known.served_name or known.model,
        host=known.host,
        port=known.port,
        max_model_len=known.max_model_len or DEFAULT_MAX_MODEL_LEN,
        metrics=known.metrics,
        options=vars(known),
        unknown=tuple(unknown),
    )


class StandInEngine:
    """The server: run it with :meth:`run` (which returns the exit status)."""

    def __init__(self, args: EngineArgs, directory: str | None, start_number: int = 1) -> None:
        self.args = args
        self.directory = directory
        self.start_number = start_number
        self.running = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.ready = False
        self._spec = _FLAVORS[args.flavor]
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Load (the faults' delay), serve until SIGTERM or SIGINT, drain; the exit status."""
        args = self.args
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig, stop)
        app = web.Application(middlewares=[self._gate])
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        try:
            self.log("INFO", f"loading {args.model}")
            if self._spec.listens_while_loading and not await self._listen(site):
                return 1
            faults = self.faults()
            if await _wait(stop, faults.start_delay_ms / 1000):
                return 0
            status = faults.exits_on_start(self.start_number)
            if status is not None:
                self.log("ERROR", f"failed to start (fault exit_on_start: status {status})")
                return status
            if not self._spec.listens_while_loading and not await self._listen(site):
                return 1
            self.ready = True
            self.log("INFO", f"serving {args.served_name} on {args.host}:{args.port}")
            await stop.wait()
            return 0
        finally:
            self.log("INFO", "shutting down")
            self._stopping.set()
            await runner.cleanup()

    async def _listen(self, site: web.TCPSite) -> bool:
        try:
            await site.start()
        except OSError as exc:
            self.log("ERROR", f"cannot listen on {self.args.host}:{self.args.port}: {exc}")
            return False
        return True

    def _on_signal(self, sig: signal.Signals, stop: asyncio.Event) -> None:
        if sig is signal.SIGTERM and self.faults().ignore_sigterm:
            self.log("WARNING", "SIGTERM ignored (fault ignore_sigterm)")
            return
        stop.set()
        self.log("INFO", f"{sig.name} received")

    def faults(self) -> StandInFaults:
        """The faults file as it is now."""
        return read_faults(self.directory, self.args.port)

    def log(self, level: str, message: str) -> None:
        stream = sys.stdout if level == "INFO" else sys.stderr
        # The gateway that reads these lines may be gone (killed, so this one was told to
        # stop): a closed pipe must not keep the engine from stopping.
        with contextlib.suppress(OSError, ValueError):
            print(f"{level} stand-in {self.args.flavor.value}: {message}", file=stream, flush=True)

    # ------------------------------------------------------------------ routes

    @web.middleware
    async def _gate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Logs each request; while loading (llama.cpp listens then), only /health answers."""
        try:
            if self.ready or request.path == "/health":
                response = await handler(request)
            else:
                response = _loading()
        except web.HTTPException as exc:  # a 404, say
            self.log("INFO", f"{request.method} {request.path} {exc.status}")
            raise
        self.log("INFO", f"{request.method} {request.path} {response.status}")
        return response

    async def _health(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults()
        if faults.hang_health:
            await self._stopping.wait()
            return web.Response(status=503)
        if faults.health_status is not None:
            return web.Response(status=faults.health_status)
        if not self.ready:
            return _loading()
        if self.args.flavor is RuntimeKind.LLAMACPP:
            return web.json_response({"status": "ok"})
        return web.Response()

    async def _models(self, request: web.Request) -> web.StreamResponse:
        model = {
            "id": self.args.served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": self.args.flavor.value,
            "max_model_len": self.args.max_model_len,
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        if not self.args.metrics:
            raise web.HTTPNotFound(text="metrics are off: start the engine with its metrics flag")
        override = self.faults().metrics
        values = (
            _first(override.running, self.running),
            _first(override.waiting, 0),
            _first(override.kv_cache_usage, min(1.0, 0.1 * self.running)),
            float(self.prompt_tokens),
            float(self.generated_tokens),
        )
        name = self.args.served_name.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")
        labels = f'{{model_name="{name}"}}' if self._spec.labelled else ""
        lines = []
        for metric, help_text, value in zip(self._spec.metrics, _HELP, values, strict=True):
            kind = "counter" if metric.endswith("_total") else "gauge"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            lines.append(f"{metric}{labels} {value!r}")
        return web.Response(
            text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8"
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        faults = self.faults()
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        model = body.get("model", self.args.served_name)
        if model != self.args.served_name:
            return _error(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        try:
            reply = plan_reply(self.args.flavor.value, body)
        except InvalidChatRequest as exc:
            return _error(400, str(exc), param=exc.param)
        if faults.chat_error is not None:
            return web.json_response(faults.chat_error.body(), status=faults.chat_error.status)
        self.running += 1
        self.prompt_tokens += reply.prompt_tokens
        try:
            if body.get("stream") is True:
                return await self._stream(request, body, reply, faults)
            await asyncio.sleep(faults.chunk_delay_ms / 1000)
            if faults.crash_after_chunks is not None:  # pragma: no cover - (see _crash)
                self._crash()
            self.generated_tokens += len(reply.tokens)
            return web.json_response(self._completion(reply))
        finally:
            self.running -= 1

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, faults: StandInFaults
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        ident, created = f"chatcmpl-{next(self._ids)}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event(self._base(ident, created, "chat.completion.chunk", [choice]))

        try:
            await response.write(chunk({"role": "assistant", "content": ""}))
            for token in reply.tokens[: faults.crash_after_chunks]:  # [:None]: all of them
                await asyncio.sleep(faults.chunk_delay_ms / 1000)
                await response.write(chunk({"content": token}))
                self.generated_tokens += 1
            if faults.crash_after_chunks is not None:  # pragma: no cover - (see _crash)
                self._crash()
            await response.write(chunk({}, reply.finish_reason))
            options = body.get("stream_options")
            if isinstance(options, dict) and options.get("include_usage") is True:
                usage = self._base(ident, created, "chat.completion.chunk", [])
                await response.write(_event({**usage, "usage": reply.usage()}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            self.log("INFO", "the client went away mid-stream")
        return response

    def _completion(self, reply: Reply) -> dict[str, Any]:
        message = {"role": "assistant", "content": "".join(reply.tokens)}
        finish = reply.finish_reason
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
        ident = f"chatcmpl-{next(self._ids)}"
        completion = self._base(ident, int(time.time()), "chat.completion", [choice])
        return {**completion, "usage": reply.usage()}

    def _base(self, ident: str, created: int, kind: str, choices: list[Any]) -> dict[str, Any]:
        model = self.args.served_name
        return {"id": ident, "object": kind, "created": created, "model": model, "choices": choices}

    def _crash(self) -> NoReturn:  # pragma: no cover - the process ends before coverage saves
        self.log("ERROR", "crashing (fault crash_after_chunks)")
        os._exit(CRASH_STATUS)


def _first(override: float | None, value: float) -> float:
    return float(value) if override is None else override


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return web.json_response({"error": error}, status=status)


def _loading() -> web.Response:
    error = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
    return web.json_response({"error": error}, status=503)


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds``, cut short by ``stop``; whether ``stop`` was set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def main(argv: Sequence[str] | None = None) -> int:
    """``FLAVOR ARGS...``: run the stand-in until it is stopped; the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    flavors = [kind.value for kind in _FLAVORS]
    if not args or args[0] not in flavors:
        print(f"usage: stand_in_engine {{{','.join(flavors)}}} ARGS...", file=sys.stderr)
        return 2
    parsed = parse_engine_args(RuntimeKind(args[0]), args[1:])
    directory = os.environ.get(DIR_ENV) or None
    start_number = 1
    if directory is not None:
        start_number = record_start(
            directory,
            flavor=args[0],
            argv=args[1:],
            options=parsed.options,
            unknown=parsed.unknown,
            environ=os.environ,
        )
    return asyncio.run(StandInEngine(parsed, directory, start_number).run())


if __name__ == "__main__":
    sys.exit(main())
