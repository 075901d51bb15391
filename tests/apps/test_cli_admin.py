"""``rakka status``, ``cost-report`` and ``rotate-credentials`` against a real gateway
over loopback HTTP, with the admin key from the environment."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from rakka_inference.apps.cli import main
from rakka_inference.apps.cli_admin import format_status
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import Budget, Serving
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.request import RequestActor
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM = "sk-cli-upstream-0001"
ADMIN = "rk-cli-admin-0002"


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[str, Topology]]:
    async with OpenAIMock(faults=FaultPlan(valid_keys={UPSTREAM})) as mock:
        deployment = Deployment(
            name="chat",
            model="gpt-4o-mini",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(
                endpoint=mock.openai_base_url, api_key=SecretRef.inline(UPSTREAM, warn=False)
            ),
            budget=Budget(max_spend_per_hour=5.0),
        )
        config = Config(
            cluster=ClusterConfig(admin_api_key=SecretRef.inline(ADMIN, warn=False)),
            deployments=(deployment,),
        )
        topology = Topology(config)
        async with serving(topology.gateway) as base:
            yield base, topology


async def run(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


async def test_status_cost_report_and_rotation(
    gateway: tuple[str, Topology],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, topology = gateway
    monkeypatch.setenv("RAKKA_ADMIN_KEY", ADMIN)
    request = ChatRequest(model="chat", messages=(ChatMessage.user("hi"),))
    actor = RequestActor(request, topology.coordinator, topology.policies)
    await actor.completion()

    assert await run("status", "--url", url) == 0
    out = capsys.readouterr().out
    assert "chat" in out
    assert "serving" in out
    assert "of 5" in out  # the hourly budget
    assert UPSTREAM not in out
    assert ADMIN not in out

    assert await run("cost-report", "--url", url, "--window", "1h") == 0
    out = capsys.readouterr().out
    assert "gpt-4o-mini" in out
    assert "spend over the last 3600 s" in out

    assert await run("rotate-credentials", "chat", "--url", url) == 0
    assert "generation 2" in capsys.readouterr().out

    assert await run("status", "--url", url, "--json") == 0
    assert '"deployments"' in capsys.readouterr().out


async def test_refusals_are_reported(
    gateway: tuple[str, Topology],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = gateway
    monkeypatch.delenv("RAKKA_ADMIN_KEY", raising=False)
    assert await run("status", "--url", url) == 1
    assert "set RAKKA_ADMIN_KEY" in capsys.readouterr().err
    monkeypatch.setenv("RAKKA_ADMIN_KEY", "rk-wrong")
    assert await run("status", "--url", url) == 1
    assert "answered 401" in capsys.readouterr().err
    monkeypatch.setenv("RAKKA_ADMIN_KEY", ADMIN)
    assert await run("rotate-credentials", "nope", "--url", url) == 1
    assert "answered 404" in capsys.readouterr().err
    assert await run("cost-report", "--url", url, "--window", "soon") == 2
    assert await run("status", "--url", "http://127.0.0.1:9") == 1
    assert "cannot reach" in capsys.readouterr().err


async def test_rotate_credentials_under_load_drops_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """100 streams in flight over HTTP while the key file changes, the provider starts
    refusing the old key, and ``rakka rotate-credentials`` runs; then 50 new requests.
    Every answer arrives whole, exactly once."""
    old, new = "sk-rotate-old-0003", "sk-rotate-new-0004"
    key_file = tmp_path / "openai.key"
    key_file.write_text(old)
    reply = ReplyScript(text="one two three four five", chunks=5, chunk_delay_s=0.02)
    async with OpenAIMock(faults=FaultPlan(valid_keys={old}), reply=reply) as mock:
        deployment = Deployment(
            name="chat",
            model="gpt-4o-mini",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(
                endpoint=mock.openai_base_url, api_key=SecretRef.from_file(key_file)
            ),
            serving=Serving(max_concurrent=256, queue_capacity=1024),
        )
        config = Config(
            cluster=ClusterConfig(admin_api_key=SecretRef.inline(ADMIN, warn=False)),
            deployments=(deployment,),
        )
        topology = Topology(config)
        async with serving(topology.gateway) as url:
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

            async def ask() -> str:
                stream = await client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream])

            in_flight = [asyncio.ensure_future(ask()) for _ in range(100)]
            while len(mock.server.requests) < 50:  # well under way: some answered, most streaming
                await asyncio.sleep(0.005)
            assert sum(not answer.done() for answer in in_flight) > 0
            key_file.write_text(new)
            mock.faults.rotate_key(old, new)
            monkeypatch.setenv("RAKKA_ADMIN_KEY", ADMIN)
            assert await run("rotate-credentials", "chat", "--url", url) == 0
            assert "generation" in capsys.readouterr().out
            after = [asyncio.ensure_future(ask()) for _ in range(50)]
            answers = await asyncio.gather(*in_flight, *after, return_exceptions=True)
            await client.close()
    assert answers == ["one two three four five"] * 150


def test_status_of_a_node_and_of_a_cluster_names_each_member() -> None:
    row = {
        "provider": "openai",
        "model": "gpt-4o",
        "endpoint": "https://api.openai.com/v1",
        "state": "open",
        "consecutive_failures": 3,
    }
    node = format_status(
        {
            "workers": [{"worker": "w0", "pid": 11, "state": "ready", "restarts": 1}],
            "deployments": [],
            "circuits": [{"worker": "w0", **row}],
            "ratelimits": [],
            "budgets": [],
        }
    )
    assert "WORKER  PID       STATE      RESTARTS" in node
    assert "w0      11        ready             1" in node
    assert "w0: openai gpt-4o https://api.openai.com/v1" in node
    cluster = format_status(
        {
            "singletons": {"deployment_manager": "a" * 56, "limit_authority": "b" * 56},
            "nodes": [
                {"node": "a" * 56, "alive": True, "gateway": "10.0.0.1:8080"},
                {"node": "b" * 56, "alive": False, "gateway": None, "problem": None},
            ],
            "local_replicas": [
                {"replica": "rakka-local-embed-0-0123456789abcdef", "node": "b" * 56},
                {"replica": "rakka-local-llm-0-fedcba9876543210", "node": None, "problem": "x"},
            ],
            "deployments": [],
            "circuits": [{"node": "a" * 56, **row}],
            "ratelimits": [],
            "budgets": [],
        }
    )
    assert "aaaaaaaaaaaa  up     10.0.0.1:8080           deployment manager" in cluster
    assert "bbbbbbbbbbbb  down   -                       limit authority" in cluster
    assert "rakka-local-embed-0-0123456789abcdef            bbbbbbbbbbbb" in cluster
    assert "rakka-local-llm-0-fedcba9876543210              x" in cluster
    assert "aaaaaaaaaaaa: openai" in cluster
