"""End to end over real HTTP: a circuit guards one upstream model, not a whole endpoint.

Two deployments on one OpenAI mock endpoint, each calling its own model; the mock answers
500 for one model only. The official openai SDK (its own retries off) → uvicorn → the
gateway → the remote engines: the failing deployment's circuit opens and its clients get a
503 naming the deployment and the provider — never the mock's URL, host or port — while
the other deployment, on the same endpoint, keeps serving. Two deployments on one model
with different circuit settings are refused at apply, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import httpx
import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.core.policies import CircuitBreakerConfig, Jitter, RetryPolicy
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.remote.breaker import BreakerState
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, ReplyScript
from rakka_inference.testkit.http_script import RecordedRequest
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM_KEY = "sk-upstream-circuit-0001"
ADMIN_KEY = "rk-admin-circuit-0001"
MESSAGES = [{"role": "user", "content": "hi"}]


class ModelOutage(OpenAIMock):
    """The OpenAI mock with one model down: every call for it answers 500."""

    failing = "gpt-4o"

    def take_fault(self, key: str | None, request: RecordedRequest) -> Fault | None:
        if json.loads(request.body or b"{}").get("model") == self.failing:
            return Fault.server_error(500)
        return super().take_fault(key, request)


@dataclass
class Live:
    mock: ModelOutage
    topology: Topology
    client: openai.AsyncOpenAI
    base: str


def _deployment(mock: OpenAIMock, name: str, model: str) -> Deployment:
    config = OpenAIConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(UPSTREAM_KEY, warn=False),
        retry=RetryPolicy(max_retries=1, initial_backoff_ms=1, jitter=Jitter.NONE),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=2, open_duration_ms=60_000),
    )
    return Deployment(name=name, model=model, runtime=RuntimeKind.OPENAI, runtime_config=config)


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    async with ModelOutage(reply=ReplyScript(text="still serving")) as mock:
        config = Config(
            cluster=ClusterConfig(admin_api_key=SecretRef.inline(ADMIN_KEY, warn=False)),
            deployments=(
                _deployment(mock, "gpt4o-a", "gpt-4o"),
                _deployment(mock, "mini-b", "gpt-4o-mini"),
            ),
        )
        topology = Topology(config)
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(mock, topology, client, base)
            finally:
                await client.close()


async def test_one_model_s_circuit_opens_and_the_other_keeps_serving(live: Live) -> None:
    chat = live.client.chat.completions
    # Two 500s (the try and its one retry) reach the threshold of gpt-4o's circuit.
    with pytest.raises(openai.APIStatusError) as failed:
        await chat.create(model="gpt4o-a", messages=MESSAGES)  # type: ignore[arg-type]
    assert failed.value.status_code == 502
    calls = len(live.mock.requests)
    with pytest.raises(openai.APIStatusError) as refused:
        await chat.create(model="gpt4o-a", messages=MESSAGES)  # type: ignore[arg-type]
    assert len(live.mock.requests) == calls  # fails fast: the provider is not called
    error = refused.value
    assert error.status_code == 503
    assert error.code == "circuit_open"
    assert isinstance(error.body, dict)
    message = error.body["message"]
    assert message.startswith("deployment 'gpt4o-a' (openai): circuit open, retry in ")
    assert message.endswith("s (opened after 2 consecutive 500 responses)")
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert f"retry in {retry_after}s" in message
    host, port = live.mock.url.removeprefix("http://").split(":")
    for leak in ("http", host, port, "localhost", "/v1"):
        assert leak not in message
    # The other model at the same endpoint is another circuit: still closed, still served.
    for _ in range(3):
        answer = await chat.create(model="mini-b", messages=MESSAGES)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "still serving"
    states = {s.key.model: s.state for s in live.topology.services.breakers.snapshots()}
    assert states == {"gpt-4o": BreakerState.OPEN, "gpt-4o-mini": BreakerState.CLOSED}


async def test_the_admin_api_and_metrics_tell_the_circuits_apart(live: Live) -> None:
    chat = live.client.chat.completions
    with pytest.raises(openai.APIStatusError):
        await chat.create(model="gpt4o-a", messages=MESSAGES)  # type: ignore[arg-type]
    await chat.create(model="mini-b", messages=MESSAGES)  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=live.base) as http:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        circuits = (await http.get("/admin/circuits", headers=admin)).json()["data"]
        metrics = (await http.get("/metrics")).text
    rows = {(c["provider"], c["model"]): c["state"] for c in circuits}
    assert rows == {("openai", "gpt-4o"): "open", ("openai", "gpt-4o-mini"): "closed"}
    assert all(c["endpoint"].startswith(live.mock.openai_base_url) for c in circuits)
    states = {
        line.split('deployment="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("inference_circuit_state{")
    }
    assert states == {"gpt4o-a": 2.0, "mini-b": 0.0}


def _with_breaker(deployment: Deployment, breaker: CircuitBreakerConfig) -> Deployment:
    config = deployment.runtime_config
    assert isinstance(config, OpenAIConfig)
    return replace(deployment, runtime_config=replace(config, circuit_breaker=breaker))


async def test_one_upstream_with_two_circuit_settings_is_refused_at_apply() -> None:
    async with OpenAIMock() as mock:
        a = _deployment(mock, "gpt4o-a", "gpt-4o")
        b = _with_breaker(_deployment(mock, "gpt4o-b", "gpt-4o"), CircuitBreakerConfig())
        topology = Topology(Config(cluster=ClusterConfig(), deployments=(a,)))
        await topology.start()
        try:
            with pytest.raises(ConfigError) as refused:
                await topology.apply(Config(cluster=ClusterConfig(), deployments=(a, b)))
            [issue] = refused.value.issues
            assert issue.path == "deployment 'gpt4o-b'.runtime_config.circuit_breaker"
            assert "differs from deployment 'gpt4o-a'" in issue.message
            assert set(topology.manager.deployments) == {"gpt4o-a"}  # nothing changed
            [breaker] = topology.services.breakers
            assert breaker.config.failure_threshold == 2
            # Both with the same new settings: a reload like any other.
            wider = CircuitBreakerConfig(failure_threshold=7)
            both = (_with_breaker(a, wider), _with_breaker(b, wider))
            await topology.apply(Config(cluster=ClusterConfig(), deployments=both))
            assert list(topology.services.breakers) == [breaker]
            assert breaker.config == wider
        finally:
            await topology.stop()
