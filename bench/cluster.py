"""A node of 1, 2 and 4 workers: requests per second, CPU per request, and the limiter's sync.

    pip install -e '.[bench]'
    python bench/cluster.py [--quick] [--duration S] [--rounds N] [--concurrency C]

The upstream and the load generator are ``bench/gateway.py``'s (a bare asyncio server
answering a prebuilt chat completion, and a keep-alive client of C connections), on one core;
the node (``rakka serve --workers N``: the parent and its N workers, or one process for N = 1)
is pinned to the other core, so its CPU is measured alone. The deployment has a rate limit
(high enough never to refuse), so every request takes a permit from the approximate CRDT
limiter and the workers gossip their spend once per sync interval: that cost is in the
figures. Rounds alternate between the node sizes in one run, and every figure is also given
as a ratio to one worker in the same run.

Per node size: requests/s, the node's CPU per request (all its processes: ``schedstat`` of
every thread of the parent and its children), p50 latency, and the limiter's sync traffic
per second (datagrams and bytes sent by all workers, from the node's own
``inference_node_sync_*`` counters).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gateway import (
    _cores,
    _free_port,
    _healthz,
    _load,
    _p,
    _pin,
    _proc_cpu_s,
    _request,
    _start_upstream,
    _stop,
)

SIZES = (1, 2, 4)


def _config(upstream_port: int) -> str:
    return f"""\
[cluster]
name = "bench"

[[deployment]]
name = "bench"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "http://127.0.0.1:{upstream_port}/v1"
api_key = "sk-bench-upstream"
[deployment.runtime_config.rate_limits]
requests_per_minute = 100000000
[deployment.runtime_config.retry]
max_retries = 0
[deployment.serving]
max_concurrent = 256
queue_capacity = 4096
"""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += _tree(int(child))
    return found


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for one in _tree(pid):
        with contextlib.suppress(OSError):
            total += _proc_cpu_s(one)
    return total


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _sync_counters(text: str) -> tuple[int, int]:
    """(datagrams, bytes) sent by every worker so far."""
    datagrams = sum(
        int(n)
        for n in re.findall(
            r'inference_node_sync_datagrams_total\{[^}]*direction="sent"\} (\d+)', text
        )
    )
    sent_bytes = sum(
        int(n)
        for n in re.findall(r'inference_node_sync_bytes_total\{[^}]*direction="sent"\} (\d+)', text)
    )
    return datagrams, sent_bytes


@dataclass
class Node:
    workers: int
    process: subprocess.Popen[bytes]
    port: int


def _start_node(config: Path, workers: int, core: int, log: Path) -> Node:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "rakka_inference.apps.cli",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    taskset = shutil.which("taskset")
    if taskset and core >= 0:
        command = [taskset, "-c", str(core), *command]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    ready = "node serving" if workers > 1 else "rakka: serving"
    deadline = time.monotonic() + 60
    while ready not in log.read_text(errors="replace") or not _healthz(port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop(process)
            raise RuntimeError(f"the node did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return Node(workers, process, port)


@dataclass
class Figures:
    requests: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    latency_ms: list[float] = field(default_factory=list)
    datagrams: int = 0
    sync_bytes: int = 0


async def _round(node: Node, upstream_pid: int, args: argparse.Namespace, into: Figures) -> None:
    before = _sync_counters(_metrics(node.port)) if node.workers > 1 else (0, 0)
    cpu = _tree_cpu_s(node.process.pid)
    run = await _load(
        node.port,
        _request(node.port, stream=False),
        concurrency=args.concurrency,
        duration_s=args.duration,
        warm_s=args.warm,
        pids={"upstream": upstream_pid},
        check=0,
    )
    into.cpu_s += _tree_cpu_s(node.process.pid) - cpu
    into.requests += run.requests
    into.wall_s += run.wall_s
    into.latency_ms += run.latency_ms
    if node.workers > 1:
        after = _sync_counters(_metrics(node.port))
        into.datagrams += after[0] - before[0]
        into.sync_bytes += after[1] - before[1]


def _bench(args: argparse.Namespace, node_core: int, load_core: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="rakka-bench-cluster-"))
    upstream, upstream_port = _start_upstream(load_core, 1.0)
    nodes: list[Node] = []
    try:
        config = folder / "node.toml"
        config.write_text(_config(upstream_port))  # each node gets its own --port
        for workers in args.sizes:  # one at a time: those started are stopped on failure
            node = _start_node(config, workers, node_core, folder / f"node-{workers}.log")
            nodes.append(node)
        figures = {node.workers: Figures() for node in nodes}
        for _ in range(args.rounds):
            for node in nodes:
                asyncio.run(_round(node, upstream.pid, args, figures[node.workers]))
        _print(figures, args)
    finally:
        for node in nodes:
            _stop(node.process)
        _stop(upstream)
        shutil.rmtree(folder, ignore_errors=True)


def _print(figures: dict[int, Figures], args: argparse.Namespace) -> None:
    base = figures[min(figures)]
    base_rps = base.requests / base.wall_s
    base_cpu = base.cpu_s / base.requests * 1e3
    where = "node unpinned (every core)" if args.unpinned else "node pinned to one core"
    print(
        f"unary chat, {args.concurrency} connections, {args.rounds} round(s) of "
        f"{args.duration:g} s per size; {where}"
    )
    print(
        f"{'workers':>7}  {'req/s':>8}  {'x1':>5}  {'CPU ms/req':>10}  {'x1':>5}  "
        f"{'p50 ms':>7}  {'sync dgram/s':>12}  {'sync B/s':>9}"
    )
    for workers, f in sorted(figures.items()):
        rps = f.requests / f.wall_s
        cpu = f.cpu_s / f.requests * 1e3
        print(
            f"{workers:>7}  {rps:>8.0f}  {rps / base_rps:>5.2f}  {cpu:>10.3f}  "
            f"{cpu / base_cpu:>5.2f}  {_p(f.latency_ms, 0.5):>7.2f}  "
            f"{f.datagrams / f.wall_s:>12.1f}  {f.sync_bytes / f.wall_s:>9.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round per size")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per size and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds")
    parser.add_argument("--warm", type=float, default=0.5, help="warm-up seconds before each")
    parser.add_argument("--concurrency", type=int, default=64, help="client connections")
    parser.add_argument(
        "--sizes", type=lambda v: tuple(int(x) for x in v.split(",")), default=SIZES
    )
    parser.add_argument(
        "--unpinned",
        action="store_true",
        help="let the node use every core (the load generator keeps its own): throughput "
        "scaling rather than CPU per request",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.warm = 1.0, 1, 0.2
    node_core, load_core = _cores()
    _pin(load_core)
    _bench(args, -1 if args.unpinned else node_core, load_core)
    return 0


if __name__ == "__main__":
    sys.exit(main())
