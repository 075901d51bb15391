"""The topology on a real four-node Ray cluster (``ray.cluster_utils.Cluster``), in front of
the testkit's mock OpenAI, which counts what it receives.

A gateway on every node; the rate limits shared between them (approximate: at most N over
the limit in a window; strict: exactly the limit); a provider's Retry-After and an open
circuit seen by one gateway followed by all; one admin view and one ``/metrics`` for the
cluster; a config applied through one gateway live on all, a broken one refused whole.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from ray_support import (
    ADMIN,
    NODES,
    LocalCluster,
    admin,
    bring_up,
    chat,
    cluster_config,
    load,
    ray_cluster,
    take_down,
)
from serving_support import admin as admin_client
from serving_support import chat_calls, report, start_rakka

from rakka_inference.testkit.faults import Fault
from rakka_inference.testkit.mock_openai import OpenAIMock

pytestmark = pytest.mark.ray

__all__ = ["ray_cluster"]  # the module's cluster, shared by its tests


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock() as mock:
        yield mock


async def test_every_node_serves_and_the_approximate_limit_holds_across_them(
    tmp_path: Path, ray_cluster: LocalCluster, upstream: OpenAIMock
) -> None:
    rpm = 24
    topology = await bring_up(
        tmp_path, ray_cluster, cluster_config(upstream.openai_base_url, rpm=rpm)
    )
    try:
        urls = ray_cluster.urls()
        assert await asyncio.gather(*(chat(u) for u in urls)) == [200] * NODES
        # Each gateway at three times the limit, over a few sync epochs (all in one window).
        statuses = await load(urls, rounds=6, per_gateway=rpm * 3 // 6, pause=0.6)
        sent = chat_calls(upstream)
        report(
            f"approximate, {NODES} nodes, limit {rpm}/min, offered {len(statuses) + NODES}:"
            f" the upstream got {sent} (bound {rpm + NODES})"
        )
        assert sent <= rpm + NODES, (sent, statuses)  # the stated bound: N over the limit
        assert sent >= rpm // 2, (sent, statuses)
        assert set(statuses) <= {200, 429}
        async with admin(urls[2]) as client:
            limits = (await client.get("/admin/ratelimits")).json()["data"]
            status = (await client.get("/admin/status")).json()
        assert len({row["node"] for row in limits}) == NODES
        assert all(row["mode"] == "approximate" for row in limits)
        assert len(status["nodes"]) == NODES
        assert all(node["gateway"] for node in status["nodes"])
        assert status["singletons"]["deployment_manager"] in {n["node"] for n in status["nodes"]}
    finally:
        await take_down(topology)


async def test_the_strict_limit_is_exact_across_nodes(
    tmp_path: Path, ray_cluster: LocalCluster, upstream: OpenAIMock
) -> None:
    rpm = 20
    topology = await bring_up(
        tmp_path, ray_cluster, cluster_config(upstream.openai_base_url, rpm=rpm, strict=True)
    )
    try:
        statuses = await load(ray_cluster.urls(), rounds=4, per_gateway=rpm * 3 // 4, pause=0.5)
        report(
            f"strict, {NODES} nodes, limit {rpm}/min, offered {len(statuses)}:"
            f" the upstream got {chat_calls(upstream)}"
        )
        assert chat_calls(upstream) == rpm
        assert statuses.count(200) == rpm
        assert set(statuses) <= {200, 429}
    finally:
        await take_down(topology)


async def test_a_retry_after_and_an_open_circuit_reach_every_node(
    tmp_path: Path, ray_cluster: LocalCluster, upstream: OpenAIMock
) -> None:
    topology = await bring_up(
        tmp_path, ray_cluster, cluster_config(upstream.openai_base_url, rpm=100_000)
    )
    urls = ray_cluster.urls()
    loop = asyncio.get_running_loop()
    try:
        # A 429 with Retry-After: 5 at one gateway blocks the key on all of them.
        upstream.faults.next(Fault.rate_limit(5.0))
        assert await chat(urls[0]) == 429
        limited_at = loop.time()
        await asyncio.sleep(1.2)  # one sync interval and a margin
        before = chat_calls(upstream)
        statuses = await load(urls, rounds=2, per_gateway=2, pause=0.3)
        assert loop.time() - limited_at < 4.5
        assert chat_calls(upstream) == before
        assert set(statuses) == {429}
        await asyncio.sleep(max(0.0, limited_at + 5.5 - loop.time()))
        assert await load(urls, rounds=1, per_gateway=1, pause=0) == [200] * NODES
        # 503s at one gateway open its circuit, and every gateway's follows.
        upstream.faults.next(Fault.server_error(503), Fault.server_error(503))
        assert [await chat(urls[1]), await chat(urls[1])] == [502, 502]  # upstream 5xx
        await asyncio.sleep(0.5)
        async with admin(urls[3]) as client:
            circuits = (await client.get("/admin/circuits")).json()["data"]
            assert {c["node"] for c in circuits if c["state"] == "open"} == {
                c["node"] for c in circuits
            }
            assert len(circuits) == NODES
            before = chat_calls(upstream)
            assert set(await load(urls, rounds=1, per_gateway=2, pause=0)) == {503}
            assert chat_calls(upstream) == before
            # Recovery closes it everywhere.
            closed = await client.post("/admin/deployments/chat/circuit", json={"state": "closed"})
            assert closed.status_code == 200
            circuits = (await client.get("/admin/circuits")).json()["data"]
        assert {c["state"] for c in circuits} == {"closed"}
    finally:
        await take_down(topology)


async def test_metrics_answer_for_the_cluster_and_a_reload_applies_everywhere_or_nowhere(
    tmp_path: Path, ray_cluster: LocalCluster, upstream: OpenAIMock
) -> None:
    text = cluster_config(upstream.openai_base_url, rpm=100_000)
    topology = await bring_up(tmp_path, ray_cluster, text)
    urls = ray_cluster.urls()
    try:
        await load(urls, rounds=1, per_gateway=2, pause=0)
        async with admin(urls[0]) as client:
            metrics = (await client.get("/metrics")).text
            nodes = set(re.findall(r'inference_requests_total\{node="(\w+)"', metrics))
            assert len(nodes) == NODES
            second = (
                text
                + f"""
[[deployment]]
name = "second"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{upstream.openai_base_url}"
api_key = {{ from_env = "RAKKA_RAY_TEST_KEY" }}
"""
            )
            applied = await client.post("/admin/deployments", content=second.encode())
            assert applied.status_code == 200, applied.text
            for url in urls:  # live on every gateway
                async with admin(url) as each:
                    names = [
                        d["name"] for d in (await each.get("/admin/deployments")).json()["data"]
                    ]
                    assert names == ["chat", "second"]
            broken = second.replace('name = "second"', 'name = ""')
            refused = await client.post("/admin/deployments", content=broken.encode())
            assert refused.status_code == 400
            unset = second.replace("RAKKA_RAY_TEST_KEY", "RAKKA_RAY_TEST_UNSET")
            refused = await client.post("/admin/deployments", content=unset.encode())
            assert refused.status_code == 400, refused.text
            deployments = (await client.get("/admin/deployments")).json()["data"]
            assert [d["name"] for d in deployments] == ["chat", "second"]
            assert len(deployments[1]["nodes"]) == NODES
    finally:
        await take_down(topology)


async def test_rakka_serve_brings_the_cluster_up_reloads_on_sighup_and_stops_on_sigterm(
    tmp_path: Path, ray_cluster: LocalCluster, upstream: OpenAIMock
) -> None:
    config = tmp_path / "cluster.toml"
    text = cluster_config(upstream.openai_base_url, rpm=100_000).replace(
        'backend = "ray"', f'backend = "ray"\nray_address = "{ray_cluster.address}"'
    )
    config.write_text(text)
    child = await start_rakka("serve", "--config", str(config), "--grace", "2")
    process = child.process
    try:
        await child.line(rf"cluster .* serving on {NODES} node\(s\)")
        urls = ray_cluster.urls()
        assert await asyncio.gather(*(chat(u) for u in urls)) == [200] * NODES
        status = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from rakka_inference.apps.cli import main; raise SystemExit(main())",
            "status",
            "--url",
            urls[1],
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "RAKKA_ADMIN_KEY": ADMIN},
        )
        shown = (await status.communicate())[0].decode()
        assert status.returncode == 0, shown
        assert "NODE          STATE  GATEWAY" in shown
        assert "deployment manager" in shown
        assert shown.count(" up ") == NODES
        # The reload renames the deployment and closes the gateways to clients without the
        # key in a file: every gateway reads it again.
        keys = tmp_path / "client.key"
        keys.write_text("rk-ray-client-0001\n")
        closed = text.replace(
            "[cluster]\n", f'[cluster]\nclient_api_keys = [{{ from_file = "{keys}" }}]\n', 1
        )
        config.write_text(closed.replace('name = "chat"', 'name = "renamed"'))
        process.send_signal(signal.SIGHUP)
        await child.line(r"reloaded on every gateway")
        async with admin(urls[3]) as client:
            names = [d["name"] for d in (await client.get("/admin/deployments")).json()["data"]]
        assert names == ["renamed"]
        assert await asyncio.gather(*(chat(u, "renamed") for u in urls)) == [401] * NODES
        for url in urls:
            async with admin_client(url, "rk-ray-client-0001") as client:
                answer = await client.post(
                    "/v1/chat/completions",
                    json={"model": "renamed", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert answer.status_code == 200, answer.text
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        for url in urls:  # every gateway is gone
            with pytest.raises(httpx.ConnectError):
                await chat(url)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_without_ray_installed_a_ray_config_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('[cluster]\nbackend = "ray"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; sys.modules['ray'] = None\n"
        "from rakka_inference.apps.cli import main; raise SystemExit(main())",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 1
    assert err.decode().strip() == (
        "rakka: backend = 'ray' needs Ray: pip install 'rakka-inference[ray]'"
    )
