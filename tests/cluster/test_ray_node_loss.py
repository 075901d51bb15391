"""Node loss on a real four-node Ray cluster: the node that holds the singletons is killed
(its raylet and every worker on it) while every gateway is under load.

The other gateways serve throughout, no request to them fails; the deployment manager and
the limit authority come back on a live node within ten seconds (the figure is printed);
the lost node's gateway leaves the peer tables; a strict key still admits through the
restarted authority, from the record it kept in Ray's KV store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from ray_support import (
    LocalCluster,
    admin,
    bring_up,
    chat,
    cluster_config,
    ray_cluster,
    take_down,
)

from rakka_inference.testkit.mock_openai import OpenAIMock

pytestmark = pytest.mark.ray

__all__ = ["ray_cluster"]

SINGLETONS_BACK_S = 10.0


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock() as mock:
        yield mock


async def test_losing_the_singletons_node_under_load(
    tmp_path: Path,
    ray_cluster: LocalCluster,
    upstream: OpenAIMock,
    capsys: pytest.CaptureFixture[str],
) -> None:
    strict = f"""
[[deployment]]
name = "strict"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{upstream.openai_base_url}"
api_key = {{ from_env = "RAKKA_RAY_TEST_KEY" }}
[deployment.runtime_config.rate_limits]
requests_per_minute = 1000
strict = true
"""
    topology = await bring_up(
        tmp_path, ray_cluster, cluster_config(upstream.openai_base_url, rpm=100_000, extra=strict)
    )
    try:
        status = await asyncio.to_thread(topology.status)
        home = status["singletons"]["deployment_manager"]
        assert status["singletons"]["limit_authority"] == home
        by_id = {
            node.node_id: (node, port)
            for node, port in zip(ray_cluster.nodes, ray_cluster.ports, strict=True)
        }
        victim, victim_port = by_id[home]
        assert victim is not ray_cluster.cluster.head_node  # the singletons keep off the head
        survivors = [f"http://127.0.0.1:{p}" for p in ray_cluster.ports if p != victim_port]

        statuses: list[int] = []
        stop = asyncio.Event()

        async def keep_loading(url: str) -> None:
            while not stop.is_set():
                statuses.append(await chat(url))
                await asyncio.sleep(0.02)

        loaders = [asyncio.create_task(keep_loading(url)) for url in survivors for _ in range(2)]
        await asyncio.sleep(1.0)
        killed_at = time.monotonic()
        ray_cluster.cluster.remove_node(victim, allow_graceful=False)
        back_s = None
        async with admin(survivors[0]) as client:
            while time.monotonic() - killed_at < 30:
                answer = await client.get("/admin/status")
                if answer.status_code == 200:
                    singletons = answer.json()["singletons"]
                    if singletons["deployment_manager"] not in (None, home) and singletons[
                        "limit_authority"
                    ] not in (None, home):
                        back_s = time.monotonic() - killed_at
                        break
                await asyncio.sleep(0.2)
        await asyncio.sleep(2.0)  # load goes on with the singletons back
        stop.set()
        await asyncio.gather(*loaders)
        with capsys.disabled():
            print(
                f"\nsingletons back on a live node {back_s:.1f} s after the node was killed; "
                f"{len(statuses)} requests to the other gateways meanwhile"
            )
        assert back_s is not None
        assert back_s < SINGLETONS_BACK_S
        assert statuses
        assert set(statuses) == {200}, statuses  # none failed
        # The lost node's gateway is out of the tables; the strict key still admits.
        async with admin(survivors[1]) as client:
            async with asyncio.timeout(10):
                while True:
                    nodes = (await client.get("/admin/status")).json()["nodes"]
                    lost = next(n for n in nodes if n["node"] == home)
                    if not lost["alive"] and lost["gateway"] is None:
                        break
                    await asyncio.sleep(0.2)
            answer = await client.post(
                "/v1/chat/completions",
                json={"model": "strict", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert answer.status_code == 200, answer.text
    finally:
        await take_down(topology)
