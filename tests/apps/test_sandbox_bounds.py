"""The sandbox and the scripted local runner build nothing without bound for a caller:
an embeddings request whose vectors would hold more than MAX_EMBEDDING_VALUES numbers
(inputs x dimensions, each bounded alone at the gateway) is refused before any is made."""

from __future__ import annotations

import httpx
import pytest

from rakka_inference.apps.sandbox import SANDBOX_KEY, Sandbox, sandbox_config
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import MAX_EMBEDDING_DIMENSIONS, EmbeddingRequest
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.mock_runner import MAX_EMBEDDING_VALUES, MockRunner

TOO_MANY_INPUTS = MAX_EMBEDDING_VALUES // MAX_EMBEDDING_DIMENSIONS + 1


async def test_the_mock_runner_refuses_an_embedding_too_large_to_build() -> None:
    runner = MockRunner()
    await runner.load_weights()
    request = EmbeddingRequest(
        model="m", inputs=("x",) * TOO_MANY_INPUTS, dimensions=MAX_EMBEDDING_DIMENSIONS
    )
    with pytest.raises(BadRequest, match=str(MAX_EMBEDDING_VALUES)) as refused:
        await runner.embed(request)
    assert refused.value.param == "dimensions"
    fits = EmbeddingRequest(model="m", inputs=("x",), dimensions=MAX_EMBEDDING_DIMENSIONS)
    [vector] = (await runner.embed(fits)).vectors
    assert len(vector) == MAX_EMBEDDING_DIMENSIONS


async def test_the_sandbox_refuses_an_embedding_too_large_to_build() -> None:
    sandbox = Sandbox()
    await sandbox.start()
    try:
        async with httpx.AsyncClient(base_url=sandbox.openai.openai_base_url) as client:
            headers = {"authorization": f"Bearer {SANDBOX_KEY}"}
            body = {
                "model": "text-embedding-3-small",
                "input": ["x"] * TOO_MANY_INPUTS,
                "dimensions": MAX_EMBEDDING_DIMENSIONS,
            }
            refused = await client.post("/embeddings", headers=headers, json=body)
            assert refused.status_code == 400, refused.text
            error = refused.json()["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", "dimensions")
            body["input"] = ["x", "y"]
            body["dimensions"] = 16
            fits = await client.post("/embeddings", headers=headers, json=body)
            assert fits.status_code == 200, fits.text
            assert [len(row["embedding"]) for row in fits.json()["data"]] == [16, 16]
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            many = await client.post(
                "/chat/completions", headers=headers, json={**chat, "n": 1_000_000}
            )
            assert many.status_code == 400, many.text  # n is bounded as OpenAI bounds it
            assert many.json()["error"]["param"] == "n"
            most = await client.post("/chat/completions", headers=headers, json={**chat, "n": 128})
            assert len(most.json()["choices"]) == 128
    finally:
        await sandbox.stop()


async def test_through_the_gateway_a_huge_embedding_is_a_400() -> None:
    sandbox = Sandbox()
    await sandbox.start()
    topology = Topology(sandbox_config(sandbox, bind="127.0.0.1:0", environ={}))
    await topology.start()
    try:
        transport = httpx.ASGITransport(app=topology.gateway)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {
                "model": "sandbox-embed",
                "input": ["x"] * TOO_MANY_INPUTS,
                "dimensions": MAX_EMBEDDING_DIMENSIONS,
            }
            refused = await client.post("/v1/embeddings", json=body)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["type"] == "invalid_request_error"
            fits = await client.post("/v1/embeddings", json={**body, "input": ["x"]})
            assert fits.status_code == 200, fits.text
    finally:
        await topology.stop(timeout=5)
        await sandbox.stop()
