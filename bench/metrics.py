"""Metrics cost on one core: a counter increment and a whole ``InferenceMetrics.record``.

    python bench/metrics.py [--ops N] [--repeats R]

The baseline, taken in the same run, is the least a labelled counter can cost in Python: a
bare ``dict[(label, values)] += 1`` on a tuple key. The cases:

- ``counter.labels(...).inc()``: the general hot path (one dict lookup, one method call);
- ``child.inc()``: a child kept by the caller;
- ``record()``: one finished request — outcome counter, duration and TTFT histograms,
  tokens in and out, cost — on an existing (deployment, provider) series;
- ``render`` of a scrape with 20 deployments x 8 outcomes and 10 watched replicas.

Absolute times on shared machines are noisy; the ratio to the baseline is the figure to
compare across machines.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from _pinning import pin_to_one_core
from rakka_inference.core.usage import Usage
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.observe.prometheus import Registry

OUTCOMES = ("ok", "rate_limited", "server_error", "timed_out", "circuit_open", "backpressure")


def bench_baseline(n: int) -> float:
    table: dict[tuple[str, ...], int] = {}
    key = ("gpt", "openai", "ok")
    table[key] = 0
    start = time.perf_counter_ns()
    for _ in range(n):
        table[key] += 1
    return (time.perf_counter_ns() - start) / n


def bench_labels_inc(n: int) -> float:
    counter = Registry().counter("c_total", "c", ("deployment", "provider", "outcome"))
    for outcome in OUTCOMES:
        counter.labels("gpt", "openai", outcome)
    labels = counter.labels
    start = time.perf_counter_ns()
    for _ in range(n):
        labels("gpt", "openai", "ok").inc()
    return (time.perf_counter_ns() - start) / n


def bench_child_inc(n: int) -> float:
    child = Registry().counter("c_total", "c", ("deployment",)).labels("gpt")
    start = time.perf_counter_ns()
    for _ in range(n):
        child.inc()
    return (time.perf_counter_ns() - start) / n


def bench_record(n: int) -> float:
    metrics = InferenceMetrics()
    record = RequestRecord(
        request_id="req-1",
        model="gpt-4o",
        deployment="gpt",
        replica="gpt-0",
        outcome="ok",
        latency_s=1.25,
        ttft_s=0.3,
        usage=Usage(input_tokens=120, output_tokens=480),
        cost_usd=0.0051,
    )
    metrics.record(record, "openai")
    start = time.perf_counter_ns()
    for _ in range(n):
        metrics.record(record, "openai")
    return (time.perf_counter_ns() - start) / n


@dataclass
class _Replica:
    name: str
    in_flight: int = 3
    queued: int = 1
    capacity: int = 8
    breaker: None = None
    limiter: None = None


def bench_render(n: int) -> float:
    metrics = InferenceMetrics()
    for d in range(20):
        for outcome in (*OUTCOMES, "content_filtered", "budget_exceeded"):
            record = RequestRecord(
                request_id="r",
                model="m",
                deployment=f"dep-{d}",
                outcome=outcome,
                latency_s=0.8,
                ttft_s=0.2,
                usage=Usage(input_tokens=10, output_tokens=20),
                cost_usd=0.001,
            )
            metrics.record(record, "openai")
        metrics.observe_inter_token(f"dep-{d}", "openai", 0.02)
    for r in range(10):
        metrics.watch_replica(f"dep-{r}", _Replica(f"dep-{r}-0"))
    start = time.perf_counter_ns()
    for _ in range(n):
        metrics.render()
    return (time.perf_counter_ns() - start) / n


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ops", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pinned = pin_to_one_core()
    cases: list[tuple[str, Callable[[int], float], int]] = [
        ("baseline: bare dict += 1", bench_baseline, args.ops),
        ("counter.labels(...).inc()", bench_labels_inc, args.ops),
        ("child.inc()", bench_child_inc, args.ops),
        ("InferenceMetrics.record()", bench_record, args.ops // 5),
        ("render (1.3k lines)", bench_render, max(1, args.ops // 5000)),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(args.repeats):  # interleaved, so load changes hit every case alike
        for name, fn, ops in cases:
            gc.collect()
            samples[name].append(fn(ops))
    print(f"python {sys.version.split()[0]}, {pinned}, {args.ops} ops x {args.repeats} runs")
    print(f"{'':28} {'best':>11} {'median':>11} {'best vs base':>13}")
    base = min(samples[cases[0][0]])
    for name, _, _ in cases:
        best, median = min(samples[name]), statistics.median(samples[name])
        print(f"{name:28} {best:8.1f} ns {median:8.1f} ns {best / base:12.1f}x")
    print("(per operation; best of the interleaved runs; vs base: over a bare dict")
    print(" increment in the same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
