"""The server and the JSON library, chosen by measurement: uvicorn or granian, orjson or msgspec.

    pip install -e '.[bench]' granian msgspec
    python bench/server_choice.py [--quick] [--only server|json]

Server: the same gateway app, ``rakka serve``'s :class:`~rakka_inference.apps.serve.ServeApp`
(one deployment in front of ``bench/gateway.py``'s mock upstream), served by

- ``uvicorn``, with uvloop and httptools: ``rakka serve --config``, i.e. ``serve.py`` as
  shipped; the baseline;
- ``granian``: ``--interface asgi`` (with lifespan), one worker, HTTP/1 only, no websockets,
  ``--loop uvloop`` (uvicorn's loop too, so the servers are what differs), its runtime as it
  picks it for ASGI (multi-threaded, one thread); ``bench/_granian_app.py`` builds the app;
- ``granian-st``: the same with ``--runtime-mode st``, its single-threaded Rust runtime,
  the one meant for a worker on one core.

All run at once, each pinned (``taskset``) to the gateway core of ``bench/gateway.py``; the
load generator and the upstream share the other core. Each case (unary or 20-chunk stream;
1, 16, 64 clients) runs direct and through each server in alternating rounds of the same
run (the servers' order reversed every other round), with ``bench/gateway.py``'s load
generator, which checks every answer (status 200; each stream whole, through ``[DONE]``).
Reported per server: its CPU per request (``/proc/<pid>/stat`` utime + stime of the process
that runs the app, plus, for granian, its supervisor process over the whole round, warm-up
included) and its added p50 (p50 through it minus p50 direct); the ratio to uvicorn is the
figure to compare across machines.

JSON: see ``bench/_json_choice.py``; ns per operation and the ratio msgspec/orjson. With
both halves run, the JSON a request needs (orjson's figures) is set against uvicorn's least
CPU per request, with what the fastest variant per payload would save: the weight of the
choice.

The conclusion is drawn from this run's numbers: per case the lower figure wins, unless the
two are within ``--tie`` of each other (or, for latency, within 0.05 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import _granian_app
import _json_choice
import gateway as gw

BASELINE = "uvicorn"
GRANIAN_VARIANTS = {"granian": [], "granian-st": ["--runtime-mode", "st"]}
LATENCY_FLOOR_MS = 0.05  # closer than this, two added latencies tie


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    app_pid: int  # the process that runs the app
    other_pids: tuple[int, ...]  # granian's supervisor
    startup_s: float
    log: Path
    other_cpu_at_start: float = 0.0

    def rss_mb(self) -> float:
        return sum(gw._rss_mb(pid) for pid in (self.app_pid, *self.other_pids))

    def other_cpu_s(self) -> float:
        return sum(gw._proc_cpu_s(pid) for pid in self.other_pids)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _affinity(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split()[1]
    return "?"


def _start_uvicorn(config: Path, port: int, core: int, log: Path) -> Server:
    process, startup_s = gw._start_gateway(config, port, core, log)
    return Server(BASELINE, process, port, process.pid, (), startup_s, log)


def _start_granian(
    name: str, options: list[str], config: Path, port: int, *, core: int, log: Path
) -> Server:
    granian = Path(sys.executable).with_name("granian")
    target = f"{Path(_granian_app.__file__).resolve()}:app"
    command = [str(granian)] if granian.exists() else [sys.executable, "-m", "granian"]
    command += ["--interface", "asgi", "--factory", "--workers", "1", "--http", "1", "--no-ws"]
    command += ["--loop", "uvloop", "--host", "127.0.0.1", "--port", str(port), *options, target]
    taskset = shutil.which("taskset")
    if taskset:
        command = [taskset, "-c", str(core), *command]
    env = {**os.environ, _granian_app.CONFIG_VARIABLE: str(config)}
    with log.open("wb") as sink:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if not taskset and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(process.pid, {core})  # the worker, forked later, inherits it
    while not gw._healthz(port):
        if process.poll() is not None or time.perf_counter() - start > 30:
            gw._stop(process)
            raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.005)
    startup_s = time.perf_counter() - start
    workers = _children(process.pid)
    if len(workers) != 1:
        gw._stop(process)
        raise RuntimeError(f"expected one {name} worker process, found {workers}")
    return Server(name, process, port, workers[0], (process.pid,), startup_s, log)


# ------------------------------------------------------------------ the load


@dataclass
class ServerCase:
    kind: str  # "unary" or "stream"
    concurrency: int
    direct: gw.Run
    via: dict[str, gw.Run] = field(default_factory=dict)

    def cpu_ms(self, name: str) -> float:
        run = self.via[name]
        return run.gateway_cpu_s / run.requests * 1e3

    def added_ms(self, name: str, q: float = 0.5) -> float:
        return gw._p(self.via[name].latency_ms, q) - gw._p(self.direct.latency_ms, q)


async def _round(
    args: argparse.Namespace, port: int, pids: dict[str, int], kind: str, concurrency: int
) -> gw.Run:
    stream = kind == "stream"
    return await gw._load(
        port,
        gw._request(port, stream),
        concurrency=concurrency,
        duration_s=args.duration,
        warm_s=args.warm,
        pids=pids,
        check=gw.STREAM_CHUNKS if stream else 0,
    )


async def _server_cases(
    args: argparse.Namespace, upstream: tuple[int, int], servers: Sequence[Server]
) -> list[ServerCase]:
    upstream_pid, upstream_port = upstream
    cases: list[ServerCase] = []
    for kind in ("unary", "stream"):
        for concurrency in args.concurrency:
            direct: list[gw.Run] = []
            via: dict[str, list[gw.Run]] = {s.name: [] for s in servers}
            for index in range(args.rounds):
                pids = {"upstream": upstream_pid}
                direct.append(await _round(args, upstream_port, pids, kind, concurrency))
                for server in servers if index % 2 == 0 else list(reversed(servers)):
                    pids = {"upstream": upstream_pid, "gateway": server.app_pid}
                    other = server.other_cpu_s()
                    run = await _round(args, server.port, pids, kind, concurrency)
                    run.gateway_cpu_s += server.other_cpu_s() - other
                    via[server.name].append(run)
            case = ServerCase(kind, concurrency, gw._merge(direct))
            case.via = {name: gw._merge(runs) for name, runs in via.items()}
            cases.append(case)
            _print_server_case(case, header=len(cases) == 1)
    return cases


def _ratio(value: float, base: float) -> float:
    return value / base if base > 0 and value > 0 else float("nan")


def _times(ratio: float) -> str:
    return f"{ratio:5.2f}x" if math.isfinite(ratio) else "   n/a"


def _print_server_case(case: ServerCase, *, header: bool) -> None:
    if header:
        print(
            f"\n{'case':6} {'conc':>4} {'server':10} | {'req/s':>6} | {'CPU ms/req':>10}"
            f" {'vs uv':>6} | {'+p50 ms':>8} {'vs uv':>6} | {'+p99 ms':>8}"
            f" | {'its core':>8} {'load core':>9}"
        )
    run = case.direct
    print(
        f"{case.kind:6} {case.concurrency:4} {'direct':10} | {run.requests / run.wall_s:6.0f}"
        f" | {'':17} | p50 {gw._p(run.latency_ms, 0.5):7.3f}, p99"
        f" {gw._p(run.latency_ms, 0.99):7.3f} ms | {'':8} {run.load_core_cpu_s / run.wall_s:9.0%}",
    )
    for name, run in case.via.items():
        cpu, added = case.cpu_ms(name), case.added_ms(name)
        cpu_ratio = _ratio(cpu, case.cpu_ms(BASELINE))
        added_ratio = _ratio(added, case.added_ms(BASELINE))
        print(
            f"{case.kind:6} {case.concurrency:4} {name:10} | {run.requests / run.wall_s:6.0f}"
            f" | {cpu:10.3f} {_times(cpu_ratio)} | {added:+8.3f} {_times(added_ratio)}"
            f" | {case.added_ms(name, 0.99):+8.3f} | {run.gateway_cpu_s / run.wall_s:8.0%}"
            f" {run.load_core_cpu_s / run.wall_s:9.0%}",
            flush=True,
        )


def _bench_servers(args: argparse.Namespace, gateway_core: int, load_core: int) -> list[ServerCase]:
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    upstream: subprocess.Popen[bytes] | None = None
    servers: list[Server] = []
    extra = shlex.split(args.granian)
    with tempfile.TemporaryDirectory(prefix="rakka-bench-") as tmp:
        try:
            upstream, upstream_port = gw._start_upstream(load_core, args.gap_ms)
            for name in (BASELINE, *GRANIAN_VARIANTS):
                port = gw._free_port()
                config, log = Path(tmp) / f"{name}.toml", Path(tmp) / f"{name}.log"
                config.write_text(gw._config(upstream_port, port))
                if name == BASELINE:
                    servers.append(_start_uvicorn(config, port, gateway_core, log))
                else:
                    options = GRANIAN_VARIANTS[name] + extra
                    granian = _start_granian(
                        name, options, config, port, core=gateway_core, log=log
                    )
                    servers.append(granian)
            time.sleep(0.3)
            print(
                f"cores: servers on {gateway_core}, load generator and upstream on {load_core}"
                f" | stream: {gw.STREAM_CHUNKS} chunks, one every {args.gap_ms:g} ms"
                f" | {args.rounds} round(s) x {args.duration:g} s per side and case"
            )
            for server in servers:
                pids = (server.app_pid, *server.other_pids)
                pinned = ", ".join(f"pid {pid} on cpu {_affinity(pid)}" for pid in pids)
                print(
                    f"{server.name:10} {pinned}; start-up {server.startup_s:.2f} s;"
                    f" idle RSS {' + '.join(f'{gw._rss_mb(pid):.0f}' for pid in pids)} MB"
                )
            for server in servers:
                server.other_cpu_at_start = server.other_cpu_s()
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                cases = runner.run(_server_cases(args, (upstream.pid, upstream_port), servers))
            supervisors = {s.name: s.other_cpu_s() - s.other_cpu_at_start for s in servers}
        finally:
            for server in servers:
                gw._stop(server.process)
            gw._stop(upstream)
        for server in servers[1:]:
            stopped = _granian_app.STOPPED_LINE in server.log.read_text()
            print(
                f"{server.name}: supervisor CPU during the load"
                f" {supervisors[server.name] * 1e3:.0f} ms (counted above);"
                f" exit status {server.process.returncode} after SIGTERM;"
                f" lifespan shutdown {'ran' if stopped else 'DID NOT RUN'}"
            )
    return cases


# ------------------------------------------------------------------ JSON


def _bench_json(args: argparse.Namespace) -> list[tuple[_json_choice.JsonCase, dict[str, float]]]:
    repeat, target_s = (3, 0.02) if args.quick else (7, 0.1)
    print(f"\nJSON: ns per operation, best of {repeat} interleaved runs of ~{target_s:g} s each")
    print(f"{'payload / variant':42} {'ns/op':>9} {'vs orjson':>10}")
    results = []
    for case in _json_choice.cases():
        timings = _json_choice.measure(case, repeat=repeat, target_s=target_s)
        base = timings[case.variants[0].label]
        print(case.title)
        for label, ns in timings.items():
            print(f"  {label:40} {ns:9.0f} {ns / base:9.2f}x")
        results.append((case, timings))
    return results


# ------------------------------------------------------------------ conclusion


def _winner(figures: dict[str, float], tie: float, floor: float = 0.0) -> str:
    """The lowest figure's name, or ``"tie"`` when the first (the baseline) is that close."""
    base_name = next(iter(figures))
    best = min(figures, key=figures.__getitem__)
    base, low = figures[base_name], figures[best]
    if best != base_name and abs(base - low) <= max(floor, tie * abs(base)):
        return "tie"
    return best


def _geomean(values: list[float]) -> float:
    values = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _conclude_servers(cases: list[ServerCase], tie: float) -> str:
    print(f"\nserver, per case (lower wins; within {tie:.0%} or 0.05 ms of uvicorn is a tie):")
    names = list(cases[0].via)
    cpu_wins = dict.fromkeys(names, 0)
    for case in cases:
        cpu = _winner({n: case.cpu_ms(n) for n in names}, tie)
        added = _winner({n: case.added_ms(n) for n in names}, tie, LATENCY_FLOOR_MS)
        cpu_wins[cpu] = cpu_wins.get(cpu, 0) + 1  # "tie" counts too
        print(f"  {case.kind} c{case.concurrency}: CPU/req {cpu}; added p50 {added}")
    means = {
        name: (
            _geomean([_ratio(c.cpu_ms(name), c.cpu_ms(BASELINE)) for c in cases]),
            _geomean([_ratio(c.added_ms(name), c.added_ms(BASELINE)) for c in cases]),
        )
        for name in names[1:]
    }
    best = min(means, key=lambda name: means[name][0])
    overall = _winner({BASELINE: 1.0, best: means[best][0]}, tie)
    shown = "; ".join(
        f"{name}/uvicorn CPU per request {cpu:.2f}x, added p50 {added:.2f}x"
        for name, (cpu, added) in means.items()
    )
    return (
        f"server: {overall} (geometric means over the {len(cases)} cases: {shown};"
        f" lowest CPU in {', '.join(f'{n} {k}' for n, k in cpu_wins.items())})"
    )


def _conclude_json(
    results: list[tuple[_json_choice.JsonCase, dict[str, float]]], tie: float
) -> str:
    parts = []
    for case, timings in results:
        figures = {v.label: timings[v.label] for v in case.variants}
        base = next(iter(figures))
        winner = _winner(figures, tie)
        low = min(figures.values())
        shown = winner if winner == base else f"{winner}, {low / figures[base]:.2f}x"
        parts.append(f"{case.title.split(' (')[0]}: {shown}")
    return "json: " + "; ".join(parts)


def _json_share(
    cases: list[ServerCase], results: list[tuple[_json_choice.JsonCase, dict[str, float]]]
) -> str:
    """JSON's part of uvicorn's CPU per request, at its cheapest measured concurrency."""
    orjson_ns = {case.key: timings[case.variants[0].label] for case, timings in results}
    best_ns = {case.key: min(timings[v.label] for v in case.variants) for case, timings in results}

    def per_request(ns: dict[str, float], kind: str) -> float:
        if kind == "unary":
            return ns["request"] + ns["completion"]
        chunk = ns["upstream_chunk"] + ns["chunk_rendered"]
        return ns["request"] + gw.STREAM_CHUNKS * chunk

    parts = []
    for kind in ("unary", "stream"):
        cpu_us = min(c.cpu_ms(BASELINE) for c in cases if c.kind == kind) * 1e3
        json_us = per_request(orjson_ns, kind) / 1e3
        saved_us = json_us - per_request(best_ns, kind) / 1e3
        parts.append(
            f"{kind} {json_us:.1f} us of {cpu_us:.0f} us ({json_us / cpu_us:.1%}),"
            f" the fastest variant per payload would save {saved_us / cpu_us:.2%}"
        )
    return (
        "JSON's part of uvicorn's least CPU per request (orjson; request decode, then the"
        " completion encode or 20 x (upstream chunk decode + chunk render)): " + "; ".join(parts)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round per case")
    parser.add_argument("--only", choices=("server", "json"), help="run one half")
    parser.add_argument("--duration", type=float, default=1.25, help="seconds per side and round")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per case")
    parser.add_argument("--warm", type=float, default=0.25, help="warm-up seconds before each")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="upstream gap between chunks")
    parser.add_argument("--granian", default="", help="more granian options, e.g. '--backlog 2048'")
    parser.add_argument("--tie", type=float, default=0.05, help="relative difference that ties")
    args = parser.parse_args()
    args.concurrency = gw.CONCURRENCY
    if args.quick:
        args.duration, args.rounds, args.warm = 0.5, 1, 0.1
    gateway_core, load_core = gw._cores()
    gw._pin(load_core)
    conclusions = []
    cases: list[ServerCase] = []
    if args.only != "json":
        cases = _bench_servers(args, gateway_core, load_core)
        conclusions.append(_conclude_servers(cases, args.tie))
    if args.only != "server":
        results = _bench_json(args)
        conclusions.append(_conclude_json(results, args.tie))
        if cases:
            print(f"\n{_json_share(cases, results)}")
    print()
    for line in conclusions:
        print("conclusion:", line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
