"""The gateway's metrics: exact figures after a scripted mix of requests, the gauges read
from replicas at scrape time (fakes and a real remote engine), bounded labels, and no
secret or client string ever reaching the exposition."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_prometheus import parse, value  # the strict exposition parser

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import (
    Backpressure,
    BudgetExceeded,
    CircuitOpen,
    ContentFiltered,
    RateLimited,
    ServerError,
    Timeout,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import CircuitBreakerConfig, RateLimits, Serving
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.core.usage import Usage
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe.metrics import (
    CIRCUIT_STATE_VALUES,
    CONTENT_TYPE,
    InferenceMetrics,
)
from rakka_inference.observe.prometheus import OVERFLOW, OVERFLOW_METRIC, Registry
from rakka_inference.remote.breaker import BreakerKey, BreakerState, CircuitBreaker
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.remote.ratelimit import (
    LimiterKey,
    Permit,
    RateLimiter,
    SlidingWindowLimiter,
)
from rakka_inference.testkit.clock import FakeClock

# ---------------------------------------------------------------- helpers


def rec(
    deployment: str | None,
    outcome: str = "ok",
    *,
    latency: float = 0.5,
    ttft: float | None = None,
    tokens: tuple[int, int] = (0, 0),
    cost: float | None = None,
    request_id: str = "req-1",
    model: str = "whatever-the-client-said",
) -> RequestRecord:
    return RequestRecord(
        request_id=request_id,
        model=model,
        deployment=deployment,
        replica=None if deployment is None else f"{deployment}-0",
        outcome=outcome,
        latency_s=latency,
        ttft_s=ttft,
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1]),
        cost_usd=cost,
    )


@dataclass
class FakeReplica:
    name: str
    in_flight: int = 0
    queued: int = 0
    capacity: int = 4
    breaker: CircuitBreaker | None = None
    limiter: SlidingWindowLimiter | None = None


# ---------------------------------------------------------------- counted at the end


def test_a_scripted_mix_gives_exact_figures() -> None:
    metrics = InferenceMetrics()
    mix = [
        (rec("gpt", latency=1.2, ttft=0.3, tokens=(100, 50), cost=0.5), "openai"),
        (rec("gpt", latency=0.4, ttft=0.1, tokens=(10, 5), cost=0.25), "openai"),
        (rec("gpt", RateLimited.outcome, latency=0.05), "openai"),
        (rec("gpt", Timeout.outcome, latency=30.0, tokens=(7, 0)), "openai"),
        (rec("gpt", CircuitOpen.outcome, latency=0.001), "openai"),
        (rec("claude", latency=3.0, ttft=0.8, tokens=(200, 300), cost=1.0), "anthropic"),
        (rec("claude", ServerError.outcome, latency=9.0, tokens=(0, 0)), "anthropic"),
        (rec("claude", ContentFiltered.outcome, latency=0.2, ttft=0.2, cost=0.125), "anthropic"),
        (rec("claude", Backpressure.outcome, latency=0.0), "anthropic"),
        (rec("claude", BudgetExceeded.outcome, latency=0.0), "anthropic"),
        (rec("claude", latency=1.0, ttft=0.5, tokens=(1, 2), cost=0.125), "anthropic"),
        (rec(None, "model_not_found", latency=0.0), ""),
    ]
    models = {"gpt": "gpt-4o", "claude": "claude-sonnet-4"}
    for record, provider in mix:
        metrics.record(record, provider, models.get(record.deployment or "", ""))
    f = parse(metrics.render())

    requests = {
        (ls["deployment"], ls["provider"], ls["outcome"]): v
        for _, ls, v in f["inference_requests_total"].samples
    }
    assert requests == {
        ("gpt", "openai", "ok"): 2,
        ("gpt", "openai", "rate_limited"): 1,
        ("gpt", "openai", "timed_out"): 1,
        ("gpt", "openai", "circuit_open"): 1,
        ("claude", "anthropic", "ok"): 2,
        ("claude", "anthropic", "server_error"): 1,
        ("claude", "anthropic", "content_filtered"): 1,
        ("claude", "anthropic", "backpressure"): 1,
        ("claude", "anthropic", "budget_exceeded"): 1,
        ("", "", "model_not_found"): 1,
    }
    gpt = {"deployment": "gpt", "provider": "openai"}
    claude = {"deployment": "claude", "provider": "anthropic"}
    # Tokens and cost are by model as well (the deployment's upstream model).
    gpt_model = {**gpt, "model": "gpt-4o"}
    claude_model = {**claude, "model": "claude-sonnet-4"}
    assert value(f, "inference_tokens_in_total", **gpt_model) == 117
    assert value(f, "inference_tokens_out_total", **gpt_model) == 55
    assert value(f, "inference_tokens_in_total", **claude_model) == 201
    assert value(f, "inference_tokens_out_total", **claude_model) == 302
    assert value(f, "inference_cost_usd_total", **gpt_model) == 0.75
    assert value(f, "inference_cost_usd_total", **claude_model) == 1.25
    assert value(f, "inference_request_duration_seconds_count", **gpt) == 5
    assert value(f, "inference_request_duration_seconds_sum", **gpt) == pytest.approx(31.651)
    assert value(f, "inference_request_duration_seconds_count", **claude) == 6
    assert value(f, "inference_time_to_first_token_seconds_count", **gpt) == 2
    assert value(f, "inference_time_to_first_token_seconds_sum", **gpt) == pytest.approx(0.4)
    assert value(f, "inference_time_to_first_token_seconds_count", **claude) == 3
    # Buckets: gpt latencies 0.001, 0.05, 0.4, 1.2, 30.0.
    le = {"0.05": 2, "0.5": 3, "1.0": 3, "2.0": 4, "15.0": 4, "30.0": 5, "+Inf": 5}
    for bound, count in le.items():
        assert value(f, "inference_request_duration_seconds_bucket", **gpt, le=bound) == count
    # A request that never reached a deployment has no cost series worth a value, but its
    # duration is still counted under deployment="".
    assert value(f, "inference_cost_usd_total", deployment="", provider="", model="") == 0
    assert value(f, "inference_request_duration_seconds_count", deployment="", provider="") == 1


def test_inter_token_and_gateway_overhead() -> None:
    metrics = InferenceMetrics()
    for gap in (0.004, 0.02, 0.02, 0.3):
        metrics.observe_inter_token("gpt", "openai", gap)
    for overhead in (0.00004, 0.00005, 0.0002, 0.003):
        metrics.observe_gateway_overhead(overhead)
    f = parse(metrics.render())
    gpt = {"deployment": "gpt", "provider": "openai"}
    assert value(f, "inference_inter_token_latency_seconds_count", **gpt) == 4
    assert value(f, "inference_inter_token_latency_seconds_bucket", **gpt, le="0.02") == 3
    assert value(f, "inference_gateway_overhead_seconds_bucket", le="5e-05") == 2
    assert value(f, "inference_gateway_overhead_seconds_bucket", le="0.00025") == 3
    assert value(f, "inference_gateway_overhead_seconds_bucket", le="+Inf") == 4
    assert value(f, "inference_gateway_overhead_seconds_sum") == pytest.approx(0.00329)
    assert f["inference_gateway_overhead_seconds"].type == "histogram"


def test_every_family_is_declared_with_its_design_name() -> None:
    f = parse(InferenceMetrics().render())
    assert {name: family.type for name, family in f.items()} == {
        "inference_requests_total": "counter",
        "inference_request_duration_seconds": "histogram",
        "inference_time_to_first_token_seconds": "histogram",
        "inference_inter_token_latency_seconds": "histogram",
        "inference_tokens_in_total": "counter",
        "inference_tokens_out_total": "counter",
        "inference_cost_usd_total": "counter",
        "inference_gateway_overhead_seconds": "histogram",
        "inference_retries_total": "counter",
        "inference_circuit_transitions_total": "counter",
        "inference_budget_exceeded_total": "counter",
        "inference_connections_shed_total": "counter",
        "inference_connections_open": "gauge",
        "inference_circuit_state": "gauge",
        "inference_ratelimit_utilization": "gauge",
        "inference_workers_busy": "gauge",
        "inference_workers_idle": "gauge",
        "inference_queue_depth": "gauge",
        "inference_context_restarts": "gauge",
        "inference_batch_size": "gauge",
        "inference_kv_cache_usage": "gauge",
        "inference_engine_queue_depth": "gauge",
    }
    assert InferenceMetrics.CONTENT_TYPE == CONTENT_TYPE


def test_a_shared_registry_serves_other_metrics_too() -> None:
    registry = Registry()
    registry.gauge("build_info", "The build.", ("version",)).labels("1.0").set(1)
    metrics = InferenceMetrics(registry)
    metrics.record(rec("gpt"), "openai")
    assert metrics.registry is registry
    assert registry.render() == metrics.render()
    assert metrics.render().startswith(b"# HELP build_info")


def test_labels_stay_bounded_whatever_is_recorded() -> None:
    metrics = InferenceMetrics(max_series=3)
    for i in range(10):
        metrics.record(rec(f"dep-{i}", tokens=(1, 1)), "openai")
        metrics.observe_inter_token(f"dep-{i}", "openai", 0.01)
    for i in range(10):
        metrics.record(rec("gpt", f"outcome_{i}"), "openai")
    f = parse(metrics.render())
    assert len(f["inference_tokens_in_total"].samples) == 4  # three, then the overflow
    folded = {"deployment": OVERFLOW, "provider": OVERFLOW}
    assert value(f, "inference_tokens_in_total", **folded, model=OVERFLOW) == 7
    assert value(f, "inference_inter_token_latency_seconds_count", **folded) == 7
    assert len(f["inference_requests_total"].samples) == 4
    overflow = {"deployment": OVERFLOW, "provider": OVERFLOW, "outcome": OVERFLOW}
    assert value(f, "inference_requests_total", **overflow) == 17
    assert value(f, OVERFLOW_METRIC, metric="inference_requests_total") == 17
    assert len(metrics._series) == 3
    assert all(len(series.outcomes) <= 3 for series in metrics._series.values())


def test_many_outcomes_are_all_counted() -> None:
    metrics = InferenceMetrics()
    for i in range(100):
        metrics.record(rec("gpt", f"outcome_{i % 80}"), "openai")
    f = parse(metrics.render())
    assert sum(v for _, _, v in f["inference_requests_total"].samples) == 100
    assert len(f["inference_requests_total"].samples) == 80


# ---------------------------------------------------------------- read at scrape time


def test_replica_gauges_follow_the_replicas() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        BreakerKey("openai", "https://api.openai.com/v1", "gpt-4o"),
        CircuitBreakerConfig(open_duration_ms=1000),
        clock=clock,
    )
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=1000)
    limiter = RateLimiter(clock=clock).limiter_for(LimiterKey("openai", "fp", "gpt-4o"), limits)
    rpm_only = RateLimiter(clock=clock).limiter_for(
        LimiterKey("openai", "fp", "gpt-4o-mini"), RateLimits(requests_per_minute=4)
    )
    for _ in range(3):
        permit = limiter.try_acquire(100)
        assert isinstance(permit, Permit)
        permit.settle(50)
    assert isinstance(rpm_only.try_acquire(10), Permit)
    tpm_only = RateLimiter(clock=clock).limiter_for(
        LimiterKey("openai", "fp", "o3"), RateLimits(tokens_per_minute=200)
    )
    assert isinstance(tpm_only.try_acquire(50), Permit)
    concurrency_only = RateLimiter(clock=clock).limiter_for(
        LimiterKey("openai", "fp", "o4"), RateLimits(concurrent_requests=2)
    )
    gpt0 = FakeReplica("gpt-0", in_flight=3, queued=5, capacity=4, breaker=breaker, limiter=limiter)
    gpt1 = FakeReplica("gpt-1", in_flight=2, capacity=1, limiter=rpm_only)
    gpt2 = FakeReplica("gpt-2", limiter=tpm_only)
    gpt3 = FakeReplica("gpt-3", limiter=concurrency_only)
    local = FakeReplica("llama-0", in_flight=0, capacity=8)
    metrics = InferenceMetrics()
    for replica in (gpt0, gpt1, gpt2, gpt3):
        metrics.watch_replica("gpt", replica)
    metrics.watch_replica("llama", local)

    f = parse(metrics.render())
    g0 = {"deployment": "gpt", "replica": "gpt-0"}
    g1 = {"deployment": "gpt", "replica": "gpt-1"}
    g2 = {"deployment": "gpt", "replica": "gpt-2"}
    ll = {"deployment": "llama", "replica": "llama-0"}
    assert f["inference_circuit_state"].samples == [("inference_circuit_state", g0, 0)]
    assert f["inference_ratelimit_utilization"].samples == [
        ("inference_ratelimit_utilization", {**g0, "dimension": "rpm"}, 0.3),
        ("inference_ratelimit_utilization", {**g0, "dimension": "tpm"}, 0.15),
        ("inference_ratelimit_utilization", {**g1, "dimension": "rpm"}, 0.25),
        ("inference_ratelimit_utilization", {**g2, "dimension": "tpm"}, 0.25),
    ]
    assert value(f, "inference_workers_busy", **g0) == 3
    assert value(f, "inference_workers_idle", **g0) == 1
    assert value(f, "inference_workers_idle", **g1) == 0  # capacity cut below in-flight
    assert value(f, "inference_workers_idle", **ll) == 8
    assert value(f, "inference_queue_depth", **g0) == 5

    breaker.force_open(1.0)
    gpt0.queued = 0
    assert value(parse(metrics.render()), "inference_circuit_state", **g0) == 2
    clock.advance(1.5)
    breaker.admit()  # the open period is over: this call is the half-open probe
    assert breaker.state is BreakerState.HALF_OPEN
    clock.advance(60)  # the rate-limit window empties
    f = parse(metrics.render())
    assert value(f, "inference_circuit_state", **g0) == 1
    assert value(f, "inference_ratelimit_utilization", **g0, dimension="rpm") == 0
    assert value(f, "inference_queue_depth", **g0) == 0

    for gone in (gpt1, gpt2, gpt3):
        metrics.unwatch_replica("gpt", gone)
    metrics.unwatch_replica("llama", "llama-0")
    metrics.unwatch_replica("nowhere", "nothing")
    metrics.watch_replica("gpt", FakeReplica("gpt-0", in_flight=1))  # replaces by name
    f = parse(metrics.render())
    assert f["inference_workers_busy"].samples == [("inference_workers_busy", g0, 1)]
    assert f["inference_circuit_state"].samples == []


def test_every_breaker_state_has_a_gauge_value() -> None:
    assert set(CIRCUIT_STATE_VALUES) == set(BreakerState)
    assert CIRCUIT_STATE_VALUES == {
        BreakerState.CLOSED: 0,
        BreakerState.HALF_OPEN: 1,
        BreakerState.OPEN: 2,
    }


async def real_engine(tmp_path: Path, key: str) -> RemoteEngineCore:
    key_file = tmp_path / "key"
    key_file.write_text(key)
    deployment = Deployment(
        name="gpt",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint="http://127.0.0.1:9/v1",
            api_key=SecretRef.from_file(key_file),
            rate_limits=RateLimits(requests_per_minute=100, tokens_per_minute=10_000),
        ),
        serving=Serving(max_concurrent=3),
    )
    return await build_remote_engine(deployment, RemoteServices())


async def test_a_remote_engine_is_a_replica_as_it_is(tmp_path: Path) -> None:
    engine = await real_engine(tmp_path, "sk-test-0000")
    try:
        metrics = InferenceMetrics()
        metrics.watch_replica("gpt", engine)
        stream = engine.submit(
            ChatRequest(model="gpt-4o", messages=(ChatMessage.user("hi"),))
        )  # not started: it waits in the queue
        f = parse(metrics.render())
        replica = {"deployment": "gpt", "replica": "gpt-0"}
        assert value(f, "inference_queue_depth", **replica) == 1
        assert value(f, "inference_workers_busy", **replica) == 0
        assert value(f, "inference_workers_idle", **replica) == 3
        assert value(f, "inference_circuit_state", **replica) == 0
        assert value(f, "inference_ratelimit_utilization", **replica, dimension="rpm") == 0
        assert value(f, "inference_ratelimit_utilization", **replica, dimension="tpm") == 0
        stream.close()
        await asyncio.sleep(0)
        assert value(parse(metrics.render()), "inference_queue_depth", **replica) == 0
    finally:
        await engine.runner.session.aclose()


# ---------------------------------------------------------------- nothing secret leaks


async def test_no_secret_or_client_string_reaches_the_exposition(tmp_path: Path) -> None:
    api_key = "sk-proj-Zq8x3LkV9nT2bW7rY4mP1cD6fH0jS5aE"
    client_key = "sk-ant-api03-Hh4kJ8mN2pQ6rT0vX3zB7dF1gL5sW9yC"
    secret = Secret(api_key)
    engine = await real_engine(tmp_path, api_key)
    try:
        assert engine.limiter.key.key_fingerprint == secret.fingerprint()
        metrics = InferenceMetrics()
        metrics.watch_replica("gpt", engine)
        leaky = rec(
            "gpt",
            tokens=(3, 4),
            cost=0.5,
            request_id=api_key,
            model=client_key,
        )
        leaky.replica = client_key
        leaky.tried = [client_key]
        metrics.record(leaky, "openai", "gpt-4o")
        metrics.observe_inter_token("gpt", "openai", 0.01)
        payload = metrics.render()
    finally:
        await engine.runner.session.aclose()
    text = payload.decode()
    for needle in (api_key, client_key, secret.fingerprint(), str(secret), "sk-", "api03"):
        assert needle not in text, needle
    labels = {
        v
        for family in parse(payload).values()
        for _, ls, _ in family.samples
        for k, v in ls.items()
        if k not in {"le", "dimension", "outcome"}
    }
    assert labels == {"gpt", "gpt-0", "openai", "gpt-4o"}
