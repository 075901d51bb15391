"""One router over local and remote: a local model (the transformers runner on the tiny
Llama) with ``fallbacks = ["remote"]`` falls back to a remote deployment (the testkit's
mock OpenAI) before the first byte when the local engine is saturated, or poisoned beyond
its restarts — seen end to end with the official openai SDK against the real gateway.
The local model runs on ``$RAKKA_TEST_DEVICE`` (``cpu`` when unset; see conftest.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ContextPoisoned
from rakka_inference.core.messages import ChatRequest
from rakka_inference.core.policies import CapacityPolicy, Serving
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind, TransformersConfig
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import TokenChunk
from rakka_inference.local.transformers_runner import TransformersRunner
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

REMOTE = "from the remote model"
DEVICE = os.environ.get("RAKKA_TEST_DEVICE", "cpu")


@pytest.fixture
async def remote() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(reply=ReplyScript(text=REMOTE)) as mock:
        yield mock


def deployments(model: Path, mock: OpenAIMock, serving_: Serving) -> tuple[Deployment, ...]:
    local = Deployment(
        name="local",
        model="tiny-llama",
        runtime=RuntimeKind.TRANSFORMERS,
        runtime_config=TransformersConfig(model_path=str(model), device=DEVICE),
        fallbacks=("remote",),
        serving=serving_,
    )
    fallback = Deployment(
        name="remote",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url, api_key=SecretRef.inline("sk-test", warn=False)
        ),
    )
    return local, fallback


def with_runner(model: Path, mock: OpenAIMock, runner: type[TransformersRunner]) -> Topology:
    """The local and remote deployments, the local one's contexts built by ``runner``."""
    config = Config(cluster=ClusterConfig(), deployments=deployments(model, mock, Serving()))
    return Topology(config, runners={RuntimeKind.TRANSFORMERS: runner})


async def ask(base: str, *, max_tokens: int = 4) -> str:
    sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    try:
        answer = await sdk.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=max_tokens,
            temperature=0,
        )
    finally:
        await sdk.close()
    return answer.choices[0].message.content or ""


async def test_a_saturated_local_engine_falls_back_to_the_remote_model(
    tiny_model_dir: Path, remote: OpenAIMock
) -> None:
    one_at_a_time = Serving(
        max_concurrent=1, queue_capacity=1, on_capacity_exhausted=CapacityPolicy.FALLBACK
    )
    config = Config(
        cluster=ClusterConfig(), deployments=deployments(tiny_model_dir, remote, one_at_a_time)
    )
    topology = Topology(config)
    async with serving(topology.gateway) as base:
        assert await ask(base) != REMOTE  # the local model answers when it can
        # One long answer holds the only slot; the next request goes to the fallback.
        long = asyncio.create_task(ask(base, max_tokens=230))
        [replica] = topology.manager.engines("local")
        async with asyncio.timeout(10):
            while replica.in_flight == 0:
                await asyncio.sleep(0.005)
        assert await ask(base) == REMOTE
        assert await long != REMOTE
    assert len([r for r in remote.requests if r.path.endswith("/chat/completions")]) == 1


class _PoisonedRunner(TransformersRunner):
    """A runner whose device fails at prefill, before any token, every time it loads."""

    async def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        raise ContextPoisoned("the device context is unusable")
        yield  # an async generator, as the contract says


async def test_a_local_engine_poisoned_beyond_its_restarts_falls_back(
    tiny_model_dir: Path, remote: OpenAIMock
) -> None:
    topology = with_runner(tiny_model_dir, remote, _PoisonedRunner)
    async with serving(topology.gateway) as base:
        # Each poisoning rebuilds the context and the request falls back before its first
        # byte; past its restart limit the replica gives up, and the remote serves all.
        answers = [await ask(base) for _ in range(5)]
        [local] = [d for d in topology.manager.describe() if d.name == "local"]
    assert set(answers) == {REMOTE}
    # The replica gave up (3 restarts in 60 s) and is being placed again.
    [replica] = local.replicas
    assert replica.healthy is False


class _PoisonedOnce(TransformersRunner):
    """The first context's device fails at its first prefill; the rebuilt one works."""

    loads = 0

    async def load_weights(self) -> None:
        await super().load_weights()
        type(self).loads += 1
        self.first = type(self).loads == 1

    async def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        if self.first:
            raise ContextPoisoned("the device context is unusable")
        async for chunk in super().execute(request):
            yield chunk


async def test_local_replicas_report_their_batch_and_context_restarts(
    tiny_model_dir: Path, remote: OpenAIMock
) -> None:
    topology = with_runner(tiny_model_dir, remote, _PoisonedOnce)
    async with serving(topology.gateway) as base:
        assert await ask(base) == REMOTE  # the poisoned context: served by the fallback
        assert await ask(base) != REMOTE  # the rebuilt context serves
        text = topology.metrics.render().decode()
    assert 'inference_context_restarts{deployment="local",replica="local-0"} 1' in text
    assert 'inference_batch_size{deployment="local",replica="local-0"} 0' in text
    assert 'inference_context_restarts{deployment="remote"' not in text
