"""The gateway's own overhead: the same load sent direct and through ``rakka serve``.

    pip install -e '.[bench]'
    python bench/gateway.py [--quick] [--duration S] [--rounds N] [--gap-ms MS]

Three kinds of process, all on 127.0.0.1:

- the upstream: a bare asyncio HTTP/1.1 server (uvloop when installed) in a child process,
  answering an OpenAI chat completion from prebuilt bytes: a unary JSON body, or a stream of
  20 ``chat.completion.chunk`` events (one every ``--gap-ms``, so each is its own read, as
  from a real model), a usage chunk and ``data: [DONE]``;
- the gateway: ``rakka serve --config <tmp toml>`` with one deployment ``bench`` (runtime
  openai, endpoint the upstream), pinned to ONE core of its own;
- the floor: a bare relay on the gateway's core, also a child process — uvloop protocols
  that copy bytes between the client's connection and an upstream connection of its own,
  with no parsing at all. Whatever a Python gateway does, it does at least this (one read
  and one write per chunk); ``gw / relay`` is the gateway's CPU over the relay's, the
  figure least affected by how fast this machine's wake-ups and system calls are;
- the load generator: this process, a bare asyncio keep-alive client with a fixed number of
  workers (one connection each), pinned to another core. The upstream shares that core, so
  the gateway's core measures the gateway alone.

Each case (unary or stream, 1, 16 or 64 workers) runs direct (client -> upstream), through
the relay and via the gateway (client -> gateway -> upstream) in alternating rounds of the
same run; the added
latency (gateway minus direct) is the figure to compare across machines. The gateway's CPU
per request is its process CPU time (``/proc/<pid>/stat`` utime + stime) over the requests
served; ``load CPU/req`` is the same for the client and the upstream together, a baseline
for what one wakeup, read and write cost on this machine (at one stream at a time, each
chunk is a wakeup of its own on every process). Idle RSS is ``VmRSS`` after start-up,
before any request; start-up is spawn to the first ``GET /healthz`` answered 200.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STREAM_CHUNKS = 20
MODEL = "bench"
CONCURRENCY = (1, 16, 64)

# (name, figure) from the issue: the gateway's targets, and LiteLLM's proxy for reference.
TARGETS = {
    "cpu_unary_ms": 0.5,
    "cpu_stream_ms": 1.5,
    "added_p50_c1_ms": 1.0,
    "idle_rss_mb": 100.0,
    "startup_s": 2.0,
}
LITELLM = {
    "cpu_unary_ms": 6.3,
    "cpu_stream_ms": 20.0,
    "added_p50_c1_ms": 8.5,
    "idle_rss_mb": 311.0,
    "startup_s": 4.6,
}


def _cores() -> tuple[int, int]:
    """(the gateway's core, the load generator's and upstream's core)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return cores[0], cores[1 % len(cores)]


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})


# ------------------------------------------------------------------ the upstream process


def _event(delta: dict[str, object], finish: str | None, usage: bool = False) -> bytes:
    document: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage:
        document["usage"] = {"prompt_tokens": 12, "completion_tokens": 20, "total_tokens": 32}
    data = b"data: " + json.dumps(document, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _answers() -> tuple[bytes, bytes, list[bytes]]:
    """(the unary response, the stream's head, the stream's HTTP chunks, one per write)."""
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello! How can I help?"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
        },
        separators=(",", ":"),
    ).encode()
    unary = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunks = [_event({"role": "assistant", "content": " token0"}, None)]
    chunks += [_event({"content": f" token{i}"}, None) for i in range(1, STREAM_CHUNKS - 1)]
    chunks.append(_event({"content": " end"}, "stop"))
    done = b"data: [DONE]\n\n"
    chunks.append(_event({}, None, usage=True) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
    return unary, head, chunks


class _Upstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive POSTs with Content-Length bodies, answered from prebuilt bytes."""

    def __init__(self, answers: tuple[bytes, bytes, list[bytes]], gap_s: float) -> None:
        self.unary, self.head, self.chunks = answers
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
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            assert self.transport is not None
            if b'"stream":true' in body or b'"stream": true' in body:
                self.transport.write(self.head)
                self._send_chunk(0)
            else:
                self.transport.write(self.unary)

    def _send_chunk(self, index: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.chunks[index])
        if index + 1 < len(self.chunks):
            if self.gap_s > 0:
                asyncio.get_running_loop().call_later(self.gap_s, self._send_chunk, index + 1)
            else:
                self._send_chunk(index + 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def serve_upstream(core: int, gap_ms: float) -> None:
    answers = _answers()
    _serve_forever(core, lambda: _Upstream(answers, gap_ms / 1e3))


def _serve_forever(core: int, protocol: Callable[[], asyncio.Protocol]) -> None:
    """Serve ``protocol`` on a free port, printed for the parent, until SIGTERM."""
    _pin(core)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)  # the parent waits for it
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()

    asyncio.run(main())


# ------------------------------------------------------------------ the floor: a bare relay


class _RelayUp(asyncio.Protocol):
    """The relay's upstream connection: every byte goes to its client as it comes."""

    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()


class _RelayDown(asyncio.Protocol):
    """One client connection of the relay, with an upstream connection of its own."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.up: asyncio.Transport | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.opening = asyncio.ensure_future(self._open())

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        up, _ = await loop.create_connection(
            lambda: _RelayUp(self.transport), "127.0.0.1", self.upstream_port
        )
        self.up = up
        for data in self.early:
            up.write(data)

    def data_received(self, data: bytes) -> None:
        if self.up is None:
            self.early.append(data)
        else:
            self.up.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()


def serve_relay(core: int, upstream_port: int) -> None:
    _serve_forever(core, lambda: _RelayDown(upstream_port))


# ------------------------------------------------------------------ the load generator


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: a request out, then its whole response in.

    Reads Content-Length and chunked bodies (the chunk sizes are parsed, not guessed).
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.body_at = -1
        self.length = -1  # Content-Length, or -1 for a chunked body
        self.status = 0
        self.position = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))
        if not self.lost.done():
            self.lost.set_result(None)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self._complete()
        if end < 0:
            return
        body = bytes(self.buffer[self.body_at : end])
        status = self.status
        del self.buffer[:end]
        self._reset()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def _complete(self) -> int:
        """The offset just past the response, or -1 while it is incomplete."""
        buffer = self.buffer
        if self.body_at < 0:
            head_end = buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return -1
            head = bytes(buffer[:head_end]).lower()
            self.status = int(head[9:12])
            self.body_at = self.position = head_end + 4
            if (at := head.find(b"\r\ncontent-length:")) >= 0:
                self.length = int(head[at + 17 :].split(b"\r\n", 1)[0])
        if self.length >= 0:
            end = self.body_at + self.length
            return end if len(buffer) >= end else -1
        while True:
            line_end = buffer.find(b"\r\n", self.position)
            if line_end < 0:
                return -1
            size = int(bytes(buffer[self.position : line_end]).split(b";", 1)[0], 16)
            end = line_end + 2 + size + 2
            if len(buffer) < end:
                return -1
            self.position = end
            if size == 0:  # no trailers from either server
                return end


def _request(port: int, stream: bool) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello in five words or fewer."}],
            "stream": stream,
            "max_tokens": 64,
        },
        separators=(",", ":"),
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Authorization: Bearer sk-bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (port, len(body), body)
    )


def _full_stream(body: bytes, chunks: int) -> bool:
    """At least ``chunks`` content events, then ``[DONE]`` (a usage event may come too)."""
    return body.count(b'"content":') >= chunks and b"data: [DONE]" in body[-40:]


def _proc_cpu_s(pid: int) -> float:
    """The CPU time of a whole process (all its threads, user and kernel), in seconds.

    From each thread's ``schedstat`` (nanoseconds) where the kernel has it; otherwise
    utime + stime from ``stat``, in clock ticks (10 ms: too coarse for a short run at one
    stream at a time, which uses a few tens of ms in all).
    """
    try:
        total_ns = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as schedstat:
                total_ns += int(schedstat.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Run:
    latency_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    gateway_cpu_s: float = 0.0
    load_core_cpu_s: float = 0.0  # this process and the upstream

    @property
    def requests(self) -> int:
        return len(self.latency_ms)


async def _load(
    port: int,
    data: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warm_s: float,
    pids: dict[str, int],
    check: int,
) -> Run:
    """``concurrency`` workers, one connection each, for ``duration_s`` after a warm-up."""
    loop = asyncio.get_running_loop()
    connections: list[_Connection] = []
    for _ in range(concurrency):
        _, protocol = await loop.create_connection(_Connection, "127.0.0.1", port)
        connections.append(protocol)
    clock = time.perf_counter
    run = Run()

    async def worker(connection: _Connection, until: float, record: bool) -> None:
        while clock() < until:
            start = clock()
            status, body = await connection.request(data)
            elapsed = clock() - start
            if status != 200 or (check and not _full_stream(body, check)):
                raise RuntimeError(f"bad answer {status}: {body[:300]!r}")
            if record:
                run.latency_ms.append(elapsed * 1e3)

    await asyncio.gather(*(worker(c, clock() + warm_s, False) for c in connections))
    gateway_cpu = _proc_cpu_s(pids["gateway"]) if "gateway" in pids else 0.0
    load_cpu = _proc_cpu_s(os.getpid()) + _proc_cpu_s(pids["upstream"])
    start = clock()
    await asyncio.gather(*(worker(c, start + duration_s, True) for c in connections))
    run.wall_s = clock() - start
    if "gateway" in pids:
        run.gateway_cpu_s = _proc_cpu_s(pids["gateway"]) - gateway_cpu
    run.load_core_cpu_s = _proc_cpu_s(os.getpid()) + _proc_cpu_s(pids["upstream"]) - load_cpu
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
    await asyncio.gather(*(c.lost for c in connections))
    return run


def _merge(runs: list[Run]) -> Run:
    merged = Run()
    for run in runs:
        merged.latency_ms += run.latency_ms
        merged.wall_s += run.wall_s
        merged.gateway_cpu_s += run.gateway_cpu_s
        merged.load_core_cpu_s += run.load_core_cpu_s
    return merged


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ------------------------------------------------------------------ processes


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _config(upstream_port: int, gateway_port: int) -> str:
    return f"""\
[cluster]
name = "bench"
bind = "127.0.0.1:{gateway_port}"

[[deployment]]
name = "{MODEL}"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "http://127.0.0.1:{upstream_port}/v1"
api_key = "sk-bench-upstream"
[deployment.runtime_config.retry]
max_retries = 0
[deployment.serving]
max_concurrent = 256
queue_capacity = 4096
"""


def _gateway_command(config: Path, port: int, core: int) -> list[str]:
    rakka = Path(sys.executable).with_name("rakka")
    command = (
        [str(rakka)]
        if rakka.exists()
        else [sys.executable, "-m", "rakka_inference.apps.cli"]  # same code, no console script
    )
    command += ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(core), *command] if taskset else command


def _healthz(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return probe.recv(64).split(b" ", 2)[1:2] == [b"200"]
    except OSError:
        return False


def _start_upstream(core: int, gap_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    """The upstream process, pinned to ``core``, and its port."""
    return _start_child(["--upstream", "--core", str(core), "--gap-ms", str(gap_ms)])


def _start_child(flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """This script as a child process (the upstream or the relay), and its port."""
    process = subprocess.Popen([sys.executable, __file__, *flags], stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip().isdigit():
        _stop(process)
        raise RuntimeError(f"the child {flags[0]} did not start")
    return process, int(line)


def _start_gateway(
    config: Path, port: int, core: int, log: Path
) -> tuple[subprocess.Popen[bytes], float]:
    """The gateway process, pinned to ``core``, and its start-up time in seconds."""
    with log.open("wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(
            _gateway_command(config, port, core), stdout=sink, stderr=subprocess.STDOUT
        )
    if not shutil.which("taskset") and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {core})  # threads started later inherit it
    while not _healthz(port):
        if process.poll() is not None or time.perf_counter() - start > 30:
            _stop(process)
            raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    return process, time.perf_counter() - start


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ------------------------------------------------------------------ the run


@dataclass
class Case:
    kind: str  # "unary" or "stream"
    concurrency: int
    direct: Run
    relay: Run
    gateway: Run


@dataclass
class Ports:
    upstream: int
    gateway: int
    relay: int
    pids: dict[str, int]  # "upstream", "gateway" and "relay"


async def _cases(args: argparse.Namespace, ports: Ports) -> list[Case]:
    """Every case: direct, relayed and via the gateway in alternating rounds, printed as it
    ends. A run measures the CPU of the process under ``pids["gateway"]``."""
    upstream = ports.pids["upstream"]
    direct_pids = {"upstream": upstream}
    relay_pids = {"upstream": upstream, "gateway": ports.pids["relay"]}
    gateway_pids = {"upstream": upstream, "gateway": ports.pids["gateway"]}
    cases: list[Case] = []
    for kind in ("unary", "stream"):
        stream = kind == "stream"
        check = STREAM_CHUNKS if stream else 0
        for concurrency in CONCURRENCY:
            direct: list[Run] = []
            relayed: list[Run] = []
            via: list[Run] = []
            for _ in range(args.rounds):
                for port, pids, runs in (
                    (ports.upstream, direct_pids, direct),
                    (ports.relay, relay_pids, relayed),
                    (ports.gateway, gateway_pids, via),
                ):
                    runs.append(
                        await _load(
                            port,
                            _request(port, stream),
                            concurrency=concurrency,
                            duration_s=args.duration,
                            warm_s=args.warm,
                            pids=pids,
                            check=check,
                        )
                    )
            case = Case(kind, concurrency, _merge(direct), _merge(relayed), _merge(via))
            cases.append(case)
            _print_case(case, header=len(cases) == 1)
    return cases


def _bench(args: argparse.Namespace, gateway_core: int, load_core: int) -> None:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    upstream: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory(prefix="rakka-bench-") as tmp:
        try:
            upstream, upstream_port = _start_upstream(load_core, args.gap_ms)
            relay, relay_port = _start_child(
                ["--relay", "--core", str(gateway_core), "--upstream-port", str(upstream_port)]
            )
            gateway_port = _free_port()
            config = Path(tmp) / "rakka.toml"
            config.write_text(_config(upstream_port, gateway_port))
            gateway, startup_s = _start_gateway(
                config, gateway_port, gateway_core, Path(tmp) / "gateway.log"
            )
            time.sleep(0.3)  # let start-up work settle before reading RSS
            idle_rss = _rss_mb(gateway.pid)
            idle_cpu = _proc_cpu_s(gateway.pid)
            time.sleep(1.0)
            idle_cpu_ms_per_s = (_proc_cpu_s(gateway.pid) - idle_cpu) * 1e3
            print(
                f"cores: gateway on {gateway_core}; load generator and upstream on {load_core}"
                f" | stream: {STREAM_CHUNKS} chunks, one every {args.gap_ms:g} ms"
                f" | {args.rounds} round(s) x {args.duration:g} s per side and case",
                flush=True,
            )
            pids = {"upstream": upstream.pid, "gateway": gateway.pid, "relay": relay.pid}
            ports = Ports(upstream_port, gateway_port, relay_port, pids)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                cases = runner.run(_cases(args, ports))
            _print_summary(cases, startup_s, idle_rss, _rss_mb(gateway.pid))
            print(f" gateway CPU while idle: {idle_cpu_ms_per_s:.2f} ms/s)")
        finally:
            _stop(gateway)
            _stop(relay)
            _stop(upstream)


def _print_case(case: Case, *, header: bool) -> None:
    if header:
        print(
            f"\n{'case':8} {'conc':>4} {'path':8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
            f" {'+p50 ms':>8} {'+p99 ms':>8} {'CPU/req':>11} {'gw core':>8} {'load core':>9}"
            f" {'load CPU/req':>12} {'gw / relay':>10}"
        )
    for name, run in (("direct", case.direct), ("relay", case.relay), ("gateway", case.gateway)):
        p50, p99 = _p(run.latency_ms, 0.5), _p(run.latency_ms, 0.99)
        line = (
            f"{case.kind:8} {case.concurrency:4} {name:8} {run.requests / run.wall_s:8.0f}"
            f" {p50:8.3f} {p99:8.3f}"
        )
        if name != "direct":
            d50, d99 = _p(case.direct.latency_ms, 0.5), _p(case.direct.latency_ms, 0.99)
            cpu = run.gateway_cpu_s / run.requests * 1e3
            line += (
                f" {p50 - d50:+8.3f} {p99 - d99:+8.3f} {cpu:8.3f} ms"
                f" {run.gateway_cpu_s / run.wall_s:7.0%}"
            )
        else:
            line += f" {'':8} {'':8} {'':11} {'':8}"
        line += f" {run.load_core_cpu_s / run.wall_s:8.0%}"
        line += f" {run.load_core_cpu_s / run.requests * 1e3:9.3f} ms"
        if name == "gateway":
            line += f" {_per_request(run) / _per_request(case.relay):9.2f}x"
        print(line, flush=True)


def _per_request(run: Run) -> float:
    """The measured process's CPU per request, in seconds."""
    return run.gateway_cpu_s / max(1, run.requests)


def _print_summary(cases: list[Case], startup_s: float, idle_rss: float, loaded_rss: float) -> None:
    def cpu(kind: str) -> dict[int, float]:
        return {c.concurrency: _per_request(c.gateway) * 1e3 for c in cases if c.kind == kind}

    def floor(kind: str) -> str:
        return "  ".join(
            f"c{c.concurrency}={_per_request(c.relay) * 1e3:.3f}"
            f" ({_per_request(c.gateway) / _per_request(c.relay):.1f}x)"
            for c in cases
            if c.kind == kind
        )

    c1 = next(c for c in cases if c.kind == "unary" and c.concurrency == 1)
    added = _p(c1.gateway.latency_ms, 0.5) - _p(c1.direct.latency_ms, 0.5)
    c1s = next(c for c in cases if c.kind == "stream" and c.concurrency == 1)
    added_stream = _p(c1s.gateway.latency_ms, 0.5) - _p(c1s.direct.latency_ms, 0.5)
    rows = [
        ("gateway CPU per non-streaming request", "cpu_unary_ms", cpu("unary"), "ms"),
        (f"gateway CPU per {STREAM_CHUNKS}-chunk stream", "cpu_stream_ms", cpu("stream"), "ms"),
        ("added p50 at concurrency 1 (unary)", "added_p50_c1_ms", {1: added}, "ms"),
        ("idle RSS", "idle_rss_mb", {0: idle_rss}, "MB"),
        ("start-up (spawn to /healthz 200)", "startup_s", {0: startup_s}, "s"),
    ]
    print(f"\n{'figure':40} {'measured':28} {'target':>9} {'met':>4} {'LiteLLM proxy (ref)':>20}")
    for title, key, values, unit in rows:
        shown = "  ".join(
            f"c{conc}={value:.3f}" if conc else f"{value:.3f}" for conc, value in values.items()
        )
        met = "yes" if max(values.values()) <= TARGETS[key] else "NO"
        print(
            f"{title:40} {shown + ' ' + unit:28} {'<= ' + format(TARGETS[key], 'g'):>9}"
            f" {met:>4} {format(LITELLM[key], 'g') + ' ' + unit:>20}"
        )
    print(f"(added p50 at concurrency 1, {STREAM_CHUNKS}-chunk stream: {added_stream:+.3f} ms;")
    print(" bare relay CPU per request, and the gateway's as a multiple of it:")
    print(f"   unary  {floor('unary')} ms")
    print(f"   stream {floor('stream')} ms")
    print(f" gateway RSS after the load: {loaded_rss:.1f} MB;")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round per case")
    parser.add_argument("--duration", type=float, default=1.5, help="seconds per side and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway rounds")
    parser.add_argument("--warm", type=float, default=0.25, help="warm-up seconds before each")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="upstream gap between chunks")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--core", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream(args.core, args.gap_ms)
        return 0
    if args.relay:
        serve_relay(args.core, args.upstream_port)
        return 0
    if args.quick:
        args.duration, args.rounds, args.warm = 0.5, 1, 0.1
    gateway_core, load_core = _cores()
    _pin(load_core)
    _bench(args, gateway_core, load_core)
    return 0


if __name__ == "__main__":
    sys.exit(main())
