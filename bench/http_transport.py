"""HTTP transports head to head: httpx against aiohttp, ours against the bare libraries.

    pip install -e '.[bench,http2]'
    python bench/http_transport.py [--loop asyncio|uvloop|both] [--unary N] [--streams N]

The server is a bare asyncio protocol in a child process pinned to another core (uvloop
when installed), answering from prebuilt bytes, so it is not the bottleneck: it prints its
own CPU per request at the end. The client runs pinned to one core. Each figure is taken in
the same run as its baselines, in alternating rounds, because absolute times on shared
machines are noisy: the ratios are the figures to compare across machines.

Workloads (one request at a time unless said):

- ``unary``: POST a ~200-byte chat request, read a ~300-byte JSON answer.
- ``unary x32``: the same, 32 requests in flight (throughput).
- ``stream``: POST, then a 20-chunk SSE answer, one chunk every ``--gap-us`` (the server
  spins between writes, so each chunk is its own TCP segment and, normally, its own read).

Per request: client CPU (``time.process_time`` in this process), latency p50 (to the
last byte; for streams also to the first chunk), and for streams the body reads the client
saw. Variants: each library bare (``httpx`` / ``aiohttp``: the libraries' own streaming
APIs), our transport on it (``ours/httpx``, ``ours/aiohttp``), and ours with a
``total_timeout_ms`` set (``+total``), which adds one ``asyncio.timeout_at`` per body read;
that cost is also timed on its own, since the difference of two stream runs is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

STREAM_CHUNKS = 20


# ------------------------------------------------------------------ the server process


def _pin(core_index: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cores[core_index % len(cores)]})


def _answers() -> tuple[bytes, bytes, list[bytes]]:
    unary_body = json.dumps(
        {
            "id": "chatcmpl-9x2c",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-2024-08-06",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help?"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        }
    ).encode()
    unary = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(unary_body),
        unary_body,
    )
    stream_head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunks = []
    for i in range(STREAM_CHUNKS - 1):
        event = {
            "id": "chatcmpl-9x2c",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {"content": f" token{i}"}, "finish_reason": None}],
        }
        data = b"data: " + json.dumps(event).encode() + b"\n\n"
        chunks.append(b"%x\r\n%s\r\n" % (len(data), data))
    done = b"data: [DONE]\n\n"
    chunks.append(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return unary, stream_head, chunks


class _Server(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET/POST with Content-Length bodies, answers from prebuilt bytes."""

    served = 0
    spin_s = 0.0
    cpu_at_first = 0.0

    def __init__(self, answers: tuple[bytes, bytes, list[bytes]], gap_s: float) -> None:
        self.unary, self.stream_head, self.chunks = answers
        self.gap_s = gap_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            head = self.buffer[:end].lower()
            length = 0
            if (at := head.find(b"content-length:")) >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            if not _Server.served:
                _Server.cpu_at_first = time.process_time()
            _Server.served += 1
            assert self.transport is not None
            if b" /stream" in head[:40]:
                self.transport.write(self.stream_head)
                for chunk in self.chunks:
                    start = time.perf_counter()
                    while time.perf_counter() < start + self.gap_s:
                        pass  # spin: each chunk leaves as its own segment, on time
                    _Server.spin_s += time.perf_counter() - start
                    self.transport.write(chunk)
            else:
                self.transport.write(self.unary)


def serve(gap_us: float) -> None:
    _pin(1)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        answers = _answers()
        server = await loop.create_server(
            lambda: _Server(answers, gap_us / 1e6), "127.0.0.1", 0, backlog=1024
        )
        print(server.sockets[0].getsockname()[1], flush=True)  # the parent waits for it
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()
        cpu = time.process_time()
        busy = cpu - _Server.cpu_at_first - _Server.spin_s
        print(json.dumps({"served": _Server.served, "busy_s": busy}), flush=True)

    asyncio.run(main())


# ------------------------------------------------------------------ the client side


@dataclass
class Sample:
    cpu_us: list[float] = field(default_factory=list)  # per round: CPU per request
    latency_us: list[float] = field(default_factory=list)
    first_chunk_us: list[float] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)


Call = Callable[[], Awaitable[int]]
"""One request; returns the body reads it took (time to first chunk is recorded inside)."""

Variant = Callable[[], tuple[Call, Callable[[], Awaitable[None]]]]
"""Builds a client: its ``Call`` and its ``aclose``."""


def _variants(url: str, kind: str, first: list[float]) -> dict[str, Variant]:
    """name -> client factory for this workload."""
    import aiohttp
    import httpx

    from rakka_inference.core.policies import Timeouts
    from rakka_inference.remote.transports.aiohttp import AiohttpTransport
    from rakka_inference.remote.transports.httpx import HttpxTransport
    from rakka_inference.wire.http import HttpRequest, HttpTransport

    stream = kind == "stream"
    path = "/stream" if stream else "/v1/chat/completions"
    body = json.dumps(
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "Say hello in five words or fewer."}],
            "stream": stream,
            "max_tokens": 64,
        }
    ).encode()
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    request = HttpRequest("POST", url + path, headers=headers, body=body)
    plain = Timeouts()
    total = Timeouts(total_timeout_ms=60_000)
    clock = time.perf_counter

    def bare_httpx() -> tuple[Call, Callable[[], Awaitable[None]]]:
        client = httpx.AsyncClient(timeout=30.0, trust_env=False)

        async def call() -> int:
            start = clock()
            reads = 0
            async with client.stream("POST", url + path, content=body, headers=headers) as r:
                async for _ in r.aiter_bytes():
                    if not reads:
                        first.append(clock() - start)
                    reads += 1
            return reads

        return call, client.aclose

    def bare_aiohttp() -> tuple[Call, Callable[[], Awaitable[None]]]:
        session = aiohttp.ClientSession()

        async def call() -> int:
            start = clock()
            reads = 0
            async with session.post(url + path, data=body, headers=headers) as r:
                async for _ in r.content.iter_any():
                    if not reads:
                        first.append(clock() - start)
                    reads += 1
            return reads

        return call, session.close

    def ours(make: Callable[[], HttpTransport], timeouts: Timeouts) -> Variant:
        def build() -> tuple[Call, Callable[[], Awaitable[None]]]:
            transport = make()

            async def call() -> int:
                start = clock()
                response = await transport.send(request, timeouts, stream=stream)
                try:
                    if not stream:
                        await response.read()
                        first.append(clock() - start)
                        return 1
                    reads = 0
                    async for _ in response.iter_bytes():
                        if not reads:
                            first.append(clock() - start)
                        reads += 1
                    return reads
                finally:
                    await response.aclose()

            return call, transport.aclose

        return build

    return {
        "httpx": bare_httpx,
        "ours/httpx": ours(HttpxTransport, plain),
        "ours/httpx+total": ours(HttpxTransport, total),
        "aiohttp": bare_aiohttp,
        "ours/aiohttp": ours(AiohttpTransport, plain),
        "ours/aiohttp+total": ours(AiohttpTransport, total),
    }


async def _round(call: Call, n: int, concurrency: int, sample: Sample) -> None:
    clock = time.perf_counter
    cpu0 = time.process_time()
    if concurrency == 1:
        for _ in range(n):
            start = clock()
            sample.reads.append(await call())
            sample.latency_us.append((clock() - start) * 1e6)
    else:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = clock()
                sample.reads.append(await call())
                sample.latency_us.append((clock() - start) * 1e6)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.cpu_us.append((time.process_time() - cpu0) / n * 1e6)


async def run_workload(
    url: str, kind: str, n: int, concurrency: int, rounds: int
) -> dict[str, Sample]:
    first: list[float] = []
    variants = _variants(url, kind, first)
    samples = {name: Sample() for name in variants}
    clients = {}
    for name, build in variants.items():
        call, aclose = build()
        clients[name] = (call, aclose)
        for _ in range(max(50, n // 10)):  # warm the pool and the code paths
            await call()
    for _ in range(rounds):
        for name, (call, _) in clients.items():
            first.clear()
            await _round(call, n, concurrency, samples[name])
            samples[name].first_chunk_us.extend(x * 1e6 for x in first)
    for _, aclose in clients.values():
        await aclose()
    return samples


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(kind: str, samples: dict[str, Sample]) -> None:
    stream = kind == "stream"
    extra = f" {'1st p50':>8} {'reads':>5}" if stream else ""
    print(f"\n{kind}")
    print(f"{'variant':20} {'CPU/req':>9} {'p50':>9} {'p99':>9}{extra}")
    for name, s in samples.items():
        cpu = statistics.median(s.cpu_us)
        line = (
            f"{name:20} {cpu:7.1f}us {_p(s.latency_us, 0.5):7.0f}us {_p(s.latency_us, 0.99):7.0f}us"
        )
        if stream:
            line += f" {_p(s.first_chunk_us, 0.5):6.0f}us {statistics.mean(s.reads):5.1f}"
        print(line)

    def ratio(a: str, b: str) -> str:
        ca, cb = statistics.median(samples[a].cpu_us), statistics.median(samples[b].cpu_us)
        la, lb = _p(samples[a].latency_us, 0.5), _p(samples[b].latency_us, 0.5)
        return f"CPU {ca / cb:4.2f}x, p50 {la / lb:4.2f}x"

    print(f"  ours/aiohttp vs ours/httpx:  {ratio('ours/aiohttp', 'ours/httpx')}")
    print(f"  ours/httpx   vs httpx:       {ratio('ours/httpx', 'httpx')}")
    print(f"  ours/aiohttp vs aiohttp:     {ratio('ours/aiohttp', 'aiohttp')}")
    if stream:
        for lib in ("httpx", "aiohttp"):
            base, timed = samples[f"ours/{lib}"], samples[f"ours/{lib}+total"]
            per_read = (
                statistics.median(timed.cpu_us) - statistics.median(base.cpu_us)
            ) / statistics.mean(timed.reads)
            print(f"  total limit on ours/{lib}: {per_read:+.1f}us CPU per body read")


async def deadline_cost(n: int = 200_000) -> float:
    """CPU of one ``asyncio.timeout_at`` around a body read: what ``+total`` adds per read."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    done.set_result(None)
    deadline = loop.time() + 60.0
    start = time.process_time()
    for _ in range(n):
        await done
    bare = time.process_time() - start
    start = time.process_time()
    for _ in range(n):
        async with asyncio.timeout_at(deadline):
            await done
    return (time.process_time() - start - bare) / n * 1e6


def _run_client(args: argparse.Namespace, url: str, loop_name: str) -> None:
    async def main() -> None:
        cost = await deadline_cost()
        print(f"asyncio.timeout_at around one read (the +total cost): {cost:.2f}us CPU")
        for kind, n, concurrency in (
            ("unary", args.unary, 1),
            ("unary x32", args.unary * 2, 32),
            ("stream", args.streams, 1),
        ):
            samples = await run_workload(
                url, "stream" if kind == "stream" else "unary", n, concurrency, args.rounds
            )
            report(kind, samples)

    print(f"\n=== client loop: {loop_name}")
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--unary", type=int, default=1000, help="requests per round")
    parser.add_argument("--streams", type=int, default=100, help="streams per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gap-us", type=float, default=1000.0, help="server gap between chunks")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.gap_us)
        return 0

    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--gap-us", str(args.gap_us)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        _pin(0)
        import aiohttp
        import httpx

        try:
            import sniffio  # noqa: F401 - httpcore retries this import per request without it

            sniffio_state = "installed"
        except ImportError:
            sniffio_state = "absent"
        print(
            f"python {sys.version.split()[0]}, httpx {httpx.__version__} (sniffio "
            f"{sniffio_state}), aiohttp {aiohttp.__version__}; client pinned to one core, "
            f"server process on another; {args.rounds} rounds, CPU = median of rounds"
        )
        loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
        started = time.process_time()
        for name in loops:
            _run_client(args, f"http://127.0.0.1:{port}", name)
        client_cpu = time.process_time() - started
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=10)
    stats = json.loads(out.strip().splitlines()[-1])
    served = stats["served"]
    print(
        f"\nserver: {served} requests, {stats['busy_s'] / served * 1e6:.1f}us CPU per request "
        f"outside its spinning; client: {client_cpu / served * 1e6:.1f}us per request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
