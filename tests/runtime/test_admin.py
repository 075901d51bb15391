"""The admin API and /metrics through the gateway's ASGI app: keys on every route,
operations, a config applied over HTTP (and one rejected whole), and exact metrics after a
scripted mix of outcomes. No secret appears in any answer."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from rakka_inference.core.config import load_config
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import MAX_CONCURRENT, Jitter, RetryPolicy
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.admin import MAX_FORCE_OPEN_S
from rakka_inference.runtime.manager import MAX_REPLICAS
from rakka_inference.runtime.topology import Topology, with_access_of
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

UPSTREAM = "sk-admin-upstream-secret-0001"
ADMIN = "rk-admin-secret-0002"
ROUTES = [
    ("GET", "/admin/status"),
    ("GET", "/admin/deployments"),
    ("POST", "/admin/deployments"),
    ("DELETE", "/admin/deployments/chat"),
    ("POST", "/admin/deployments/chat/scale"),
    ("POST", "/admin/deployments/chat/rebuild_session"),
    ("POST", "/admin/deployments/chat/drain"),
    ("POST", "/admin/deployments/chat/circuit"),
    ("GET", "/admin/circuits"),
    ("GET", "/admin/ratelimits"),
    ("GET", "/admin/costs"),
    ("POST", "/admin/reload"),
]


def deployment(mock: OpenAIMock) -> Deployment:
    return Deployment(
        name="chat",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url,
            api_key=SecretRef.inline(UPSTREAM, warn=False),
            retry=RetryPolicy(max_retries=0, jitter=Jitter.NONE),
        ),
    )


async def _client(topology: Topology) -> httpx.AsyncClient:
    await topology.start()
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=topology.gateway), base_url="http://gateway"
    )


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={UPSTREAM}), reply=ReplyScript(text="fine thanks")
    ) as server:
        yield server


@pytest.fixture
async def live(mock: OpenAIMock) -> AsyncIterator[tuple[Topology, httpx.AsyncClient]]:
    admin_key = SecretRef.inline(ADMIN, warn=False)
    config = Config(cluster=ClusterConfig(admin_api_key=admin_key), deployments=(deployment(mock),))
    topology = Topology(config)
    client = await _client(topology)
    try:
        yield topology, client
    finally:
        await client.aclose()
        await topology.stop(timeout=5)


def admin(key: str = ADMIN) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def chat(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "chat", "messages": [{"role": "user", "content": "hello"}]},
    )


async def test_every_route_refuses_a_missing_or_wrong_key(
    live: tuple[Topology, httpx.AsyncClient],
) -> None:
    topology, client = live
    for method, path in ROUTES:
        for headers in ({}, admin("rk-wrong"), {"authorization": f"Basic {ADMIN}"}):
            answer = await client.request(method, path, headers=headers)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.json()["error"]["type"] == "authentication_error"
    assert topology.manager.describe()[0].replicas  # nothing happened


async def test_with_no_admin_key_configured_the_api_is_closed(mock: OpenAIMock) -> None:
    topology = Topology(Config(cluster=ClusterConfig(), deployments=(deployment(mock),)))
    client = await _client(topology)
    try:
        for method, path in ROUTES:
            answer = await client.request(method, path, headers=admin())
            assert answer.status_code == 401
            assert "admin API is closed" in answer.json()["error"]["message"]
    finally:
        await client.aclose()
        await topology.stop(timeout=5)


async def test_operations(live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock) -> None:
    _topology, client = live
    assert (await chat(client)).status_code == 200
    status = (await client.get("/admin/status", headers=admin())).json()
    [view] = status["deployments"]
    assert (view["name"], view["state"], view["generation"]) == ("chat", "serving", 1)
    scaled = await client.post(
        "/admin/deployments/chat/scale", headers=admin(), json={"replicas": 2}
    )
    assert len(scaled.json()["replicas"]) == 2
    bad = await client.post(
        "/admin/deployments/chat/scale", headers=admin(), json={"replicas": "x"}
    )
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "replicas")
    rotated = await client.post("/admin/deployments/chat/rebuild_session", headers=admin())
    assert rotated.json()["session_generations"] == [2, 2]
    opened = await client.post(
        "/admin/deployments/chat/circuit", headers=admin(), json={"state": "open"}
    )
    assert opened.json()["circuits"] == 1
    refused = await chat(client)
    assert refused.status_code == 503
    assert "retry-after" in refused.headers
    await client.post("/admin/deployments/chat/circuit", headers=admin(), json={"state": "closed"})
    assert (await chat(client)).status_code == 200
    circuits = (await client.get("/admin/circuits", headers=admin())).json()["data"]
    assert circuits[0]["state"] == "closed"
    costs = (await client.get("/admin/costs?window_s=3600", headers=admin())).json()
    assert costs["data"][0]["deployment"] == "chat"
    assert costs["data"][0]["spent_usd"] > 0
    limits = await client.get("/admin/ratelimits", headers=admin())
    reload = await client.post("/admin/reload", headers=admin())
    assert reload.status_code == 409  # started from a Config, not a file
    everything = b"".join(
        [status_body.content for status_body in (scaled, rotated, opened, limits)]
        + [(await client.get("/admin/status", headers=admin())).content]
    )
    assert UPSTREAM.encode() not in everything
    assert ADMIN.encode() not in everything
    drained = await client.post("/admin/deployments/chat/drain", headers=admin())
    assert drained.status_code == 200
    again = await client.post("/admin/deployments/chat/drain", headers=admin())
    assert (again.status_code, again.json()["error"]["code"]) == (409, "operation_refused")
    removed = await client.delete("/admin/deployments/chat", headers=admin())
    assert removed.json() == {"removed": "chat"}
    assert (await client.get("/admin/nope", headers=admin())).status_code == 404


async def test_apply_a_config_over_http(
    live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology, client = live
    monkeypatch.setenv("RAKKA_ADMIN_TEST_KEY", UPSTREAM)
    toml = f"""
[cluster]
name = "applied"

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
aliases = ["default"]
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_ADMIN_TEST_KEY" }}
"""
    applied = await client.post("/admin/deployments", headers=admin(), content=toml)
    assert applied.status_code == 200, applied.text
    assert applied.json()["applied"]["changed"] == ["chat"]
    answer = await client.post(
        "/v1/chat/completions",
        json={"model": "default", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 200
    broken = toml.replace('runtime = "openai"', 'runtime = "openai"\nreplicas = "two"')
    rejected = await client.post("/admin/deployments", headers=admin(), content=broken)
    assert rejected.status_code == 400
    assert "replicas" in rejected.json()["error"]["message"]
    assert topology.manager.describe()[0].generation == 2  # unchanged by the rejection
    empty = await client.post("/admin/deployments", headers=admin(), content=b"")
    assert empty.status_code == 400


def _sample(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name}{{{wanted}}} not in /metrics"
    return float(match.group(1))


async def test_metrics_count_a_scripted_mix_exactly(
    live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock
) -> None:
    _, client = live
    tokens_in = tokens_out = 0
    for _ in range(3):
        usage = (await chat(client)).json()["usage"]
        tokens_in += usage["prompt_tokens"]
        tokens_out += usage["completion_tokens"]
    mock.faults.next(Fault.content_filter(), Fault.server_error(500))
    assert (await chat(client)).status_code == 400
    assert (await chat(client)).status_code == 502
    text = (await client.get("/metrics")).text
    labels = {"deployment": "chat", "provider": "openai"}
    assert _sample(text, "inference_requests_total", **labels, outcome="ok") == 3
    assert _sample(text, "inference_requests_total", **labels, outcome="content_filtered") == 1
    assert _sample(text, "inference_requests_total", **labels, outcome="server_error") == 1
    priced = {**labels, "model": "gpt-4o-mini"}
    assert _sample(text, "inference_tokens_in_total", **priced) == tokens_in
    assert _sample(text, "inference_tokens_out_total", **priced) == tokens_out
    cost = _sample(text, "inference_cost_usd_total", **priced)
    costs = (await client.get("/admin/costs", headers=admin())).json()["data"]
    assert cost == pytest.approx(costs[0]["spent_usd"])
    assert _sample(text, "inference_workers_busy", deployment="chat", replica="chat-0") == 0
    assert "inference_gateway_overhead_seconds_count" in text
    assert UPSTREAM not in text


async def test_a_hot_swapped_deployment_keeps_its_spend(
    live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock
) -> None:
    topology, client = live
    await chat(client)
    before = topology.builder.budgets.report()[0].spent_usd
    changed = replace(deployment(mock), aliases=("kept",))
    await topology.apply(replace(topology.config, deployments=(changed,)))
    assert topology.builder.budgets.report()[0].spent_usd == before


def _beta_with_an_unset_key(mock: OpenAIMock) -> str:
    """A config that drops ``chat`` for ``beta``, whose key's variable is not set."""
    return f"""
[cluster]
name = "beta"

[[deployment]]
name = "beta"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_ADMIN_TEST_UNSET_VAR" }}
"""


def _refused_whole(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "deployment 'beta'" in error["message"]
    assert "RAKKA_ADMIN_TEST_UNSET_VAR" in error["message"]
    assert "nothing changed" in error["message"]


async def test_a_config_whose_deployment_cannot_start_is_a_400_and_chat_stays(
    live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology, client = live
    monkeypatch.delenv("RAKKA_ADMIN_TEST_UNSET_VAR", raising=False)
    rejected = await client.post(
        "/admin/deployments", headers=admin(), content=_beta_with_an_unset_key(mock)
    )
    _refused_whole(rejected)
    assert (await chat(client)).status_code == 200  # not 404: chat never left
    assert [s.name for s in topology.manager.describe()] == ["chat"]


async def test_a_reload_whose_deployment_cannot_start_is_a_400_and_chat_stays(
    mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAKKA_ADMIN_TEST_UNSET_VAR", raising=False)
    file = tmp_path / "rakka.toml"
    file.write_text(_beta_with_an_unset_key(mock))
    admin_key = SecretRef.inline(ADMIN, warn=False)
    config = Config(cluster=ClusterConfig(admin_api_key=admin_key), deployments=(deployment(mock),))
    topology = Topology(config, reload_source=lambda: load_config(file))
    client = await _client(topology)
    try:
        _refused_whole(await client.post("/admin/reload", headers=admin()))
        assert (await chat(client)).status_code == 200
        assert topology.config is config
    finally:
        await client.aclose()
        await topology.stop(timeout=5)


async def test_an_operation_that_fails_untyped_is_a_json_500(
    live: tuple[Topology, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topology, client = live

    async def no_weights(
        deployment: Deployment, name: str, on_failed: object, **placed: object
    ) -> None:
        raise OSError("no weights on this node")

    monkeypatch.setattr(topology.builder, "build", no_weights)
    with caplog.at_level(logging.ERROR, logger="rakka_inference.admin"):
        failed = await client.post(
            "/admin/deployments/chat/scale", headers=admin(), json={"replicas": 2}
        )
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "server_error"
    assert "OSError" in failed.json()["error"]["message"]
    assert "no weights on this node" in caplog.text  # the cause is in the log
    assert (await chat(client)).status_code == 200
    assert len(topology.manager.describe()[0].replicas) == 1


# ---------------------------------------------------------------------- key rotation


def _keyed_toml(mock: OpenAIMock, client_file: Path, admin_file: Path) -> str:
    return f"""
[cluster]
name = "keyed"
client_api_keys = [{{ from_file = "{client_file}" }}]
admin_api_key = {{ from_file = "{admin_file}" }}

[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_ADMIN_TEST_KEY" }}
"""


async def _chat_as(client: httpx.AsyncClient, key: str) -> int:
    answer = await client.post(
        "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={"model": "chat", "messages": [{"role": "user", "content": "hello"}]},
    )
    return answer.status_code


@pytest.fixture
async def keyed(
    mock: OpenAIMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Topology, httpx.AsyncClient, Path, Path]]:
    """A gateway started from a file whose client and admin keys are read from files."""
    monkeypatch.setenv("RAKKA_ADMIN_TEST_KEY", UPSTREAM)
    client_file, admin_file = tmp_path / "client.key", tmp_path / "admin.key"
    client_file.write_text("rk-client-old-0003\n")
    admin_file.write_text("rk-admin-old-0004\n")
    file = tmp_path / "rakka.toml"
    file.write_text(_keyed_toml(mock, client_file, admin_file))
    topology = Topology(load_config(file), reload_source=lambda: load_config(file))
    client = await _client(topology)
    try:
        yield topology, client, client_file, admin_file
    finally:
        await client.aclose()
        await topology.stop(timeout=5)


async def test_an_admin_reload_reads_rotated_client_and_admin_keys(
    keyed: tuple[Topology, httpx.AsyncClient, Path, Path],
) -> None:
    _topology, client, client_file, admin_file = keyed
    assert await _chat_as(client, "rk-client-old-0003") == 200
    assert await _chat_as(client, "rk-client-new-0005") == 401
    client_file.write_text("rk-client-new-0005\n")
    admin_file.write_text("rk-admin-new-0006\n")
    reloaded = await client.post("/admin/reload", headers=admin("rk-admin-old-0004"))
    assert reloaded.status_code == 200, reloaded.text
    assert await _chat_as(client, "rk-client-old-0003") == 401  # revoked
    assert await _chat_as(client, "rk-client-new-0005") == 200
    assert (
        await client.get("/admin/status", headers=admin("rk-admin-old-0004"))
    ).status_code == 401
    assert (
        await client.get("/admin/status", headers=admin("rk-admin-new-0006"))
    ).status_code == 200


async def test_a_sighup_reload_reads_rotated_keys(
    keyed: tuple[Topology, httpx.AsyncClient, Path, Path],
) -> None:
    topology, client, client_file, _admin_file = keyed
    client_file.write_text("rk-client-new-0005\n")
    await topology.reload()  # what SIGHUP runs
    assert await _chat_as(client, "rk-client-old-0003") == 401
    assert await _chat_as(client, "rk-client-new-0005") == 200


async def test_a_reload_whose_key_cannot_be_read_keeps_the_old_keys(
    keyed: tuple[Topology, httpx.AsyncClient, Path, Path],
) -> None:
    topology, client, client_file, admin_file = keyed
    before = topology.config
    admin_file.write_text("rk-admin-new-0006\n")  # readable, but the client key is not
    client_file.unlink()
    refused = await client.post("/admin/reload", headers=admin("rk-admin-old-0004"))
    assert refused.status_code == 400, refused.text
    assert "client.key" in refused.json()["error"]["message"]
    assert "nothing changed" in refused.json()["error"]["message"]
    assert await _chat_as(client, "rk-client-old-0003") == 200
    assert (
        await client.get("/admin/status", headers=admin("rk-admin-old-0004"))
    ).status_code == 200
    assert (
        await client.get("/admin/status", headers=admin("rk-admin-new-0006"))
    ).status_code == 401
    assert topology.config is before


# ---------------------------------------------------------------------- bounds


@pytest.mark.parametrize("replicas", [0, -1, MAX_REPLICAS + 1, 100_000_000])
async def test_scale_outside_its_bounds_is_a_400_naming_replicas(
    live: tuple[Topology, httpx.AsyncClient], replicas: int
) -> None:
    topology, client = live
    answer = await client.post(
        "/admin/deployments/chat/scale", headers=admin(), json={"replicas": replicas}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "replicas")
    assert str(MAX_REPLICAS) in error["message"]
    assert len(topology.manager.describe()[0].replicas) == 1


async def test_a_posted_config_with_too_many_replicas_is_a_400_and_chat_stays(
    live: tuple[Topology, httpx.AsyncClient], mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology, client = live
    monkeypatch.setenv("RAKKA_ADMIN_TEST_KEY", UPSTREAM)
    toml = f"""
[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
replicas = 100000000
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_ADMIN_TEST_KEY" }}
"""
    answer = await client.post("/admin/deployments", headers=admin(), content=toml)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert "replicas" in message
    assert str(MAX_REPLICAS) in message
    assert (await chat(client)).status_code == 200
    assert len(topology.manager.describe()[0].replicas) == 1


@pytest.mark.parametrize("duration", [0, -1, MAX_FORCE_OPEN_S + 1, 1e300, 10**30, True, "1"])
async def test_a_forced_open_beyond_a_day_is_a_400_naming_duration_s(
    live: tuple[Topology, httpx.AsyncClient], duration: object
) -> None:
    _topology, client = live
    answer = await client.post(
        "/admin/deployments/chat/circuit",
        headers=admin(),
        json={"state": "open", "duration_s": duration},
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "duration_s")
    assert "86400" in error["message"]
    circuits = (await client.get("/admin/circuits", headers=admin())).json()["data"]
    assert [c["state"] for c in circuits] == ["closed"]
    assert (await chat(client)).status_code == 200


async def test_a_day_is_the_longest_a_circuit_is_forced_open(
    live: tuple[Topology, httpx.AsyncClient],
) -> None:
    _topology, client = live
    answer = await client.post(
        "/admin/deployments/chat/circuit",
        headers=admin(),
        json={"state": "open", "duration_s": MAX_FORCE_OPEN_S},
    )
    assert answer.status_code == 200, answer.text
    refused = await chat(client)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) <= MAX_FORCE_OPEN_S


@pytest.mark.parametrize("workers", [0, MAX_CONCURRENT + 1])
async def test_a_posted_config_with_too_many_workers_is_a_400_and_chat_stays(
    live: tuple[Topology, httpx.AsyncClient],
    mock: OpenAIMock,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    # Each worker of a remote replica is a task: a hundred million of them (a posted
    # max_concurrent) grew memory for minutes and took as long to stop.
    topology, client = live
    monkeypatch.setenv("RAKKA_ADMIN_TEST_KEY", UPSTREAM)
    toml = f"""
[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "RAKKA_ADMIN_TEST_KEY" }}
[deployment.serving]
max_concurrent = {workers}
"""
    answer = await client.post("/admin/deployments", headers=admin(), content=toml)
    assert answer.status_code == 400, answer.text
    message = answer.json()["error"]["message"]
    assert f"deployment[0].serving.max_concurrent: must be in 1..{MAX_CONCURRENT}" in message
    assert (await chat(client)).status_code == 200
    [status] = topology.manager.describe()
    assert status.generation == 1


def test_a_restarted_gateway_takes_who_may_call_it_from_the_file_alone(mock: OpenAIMock) -> None:
    posted = Config(cluster=ClusterConfig(name="posted"), deployments=(deployment(mock),))
    file = ClusterConfig(
        name="file",
        client_api_keys=(SecretRef.from_env("RAKKA_TEST_CLIENT"),),
        admin_api_key=SecretRef.from_env("RAKKA_TEST_ADMIN"),
        cors_origins=("https://app.example.com",),
    )
    taken = with_access_of(posted, file)
    assert taken.cluster.client_api_keys == file.client_api_keys
    assert taken.cluster.admin_api_key == file.admin_api_key
    assert taken.cluster.cors_origins == file.cors_origins
    assert taken.cluster.name == "posted"  # the rest of the posted config stands
    assert taken.deployments == posted.deployments
