"""``POST /v1/embeddings`` end to end: the official openai SDK → uvicorn → the gateway →
engines → the OpenAI-format mock (and Azure's URL shape), with errors, retries, fallback
and a provider that serves no embeddings."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.core.runtimes import AnthropicConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, FaultPlan
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock, embedding_vector
from rakka_inference.testkit.serving import serving

KEY = "sk-embed-upstream-0001"
FLAKY_KEY = "sk-embed-flaky-0002"
RETRY = RetryPolicy(max_retries=2, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)


@dataclass
class Live:
    openai_mock: OpenAIMock
    client: openai.AsyncOpenAI
    base: str
    records: list[RequestRecord]


def _openai(mock: OpenAIMock, name: str, *, fallbacks: tuple[str, ...] = ()) -> Deployment:
    return Deployment(
        name=name,
        model="text-embedding-3-small",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url, api_key=SecretRef.inline(KEY, warn=False), retry=RETRY
        ),
        fallbacks=fallbacks,
    )


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={KEY, FLAKY_KEY})
    async with OpenAIMock(faults=plan) as mock, AnthropicMock(faults=plan) as claude:
        flaky = Deployment(
            name="flaky",
            model="text-embedding-3-small",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(
                endpoint=mock.openai_base_url,
                api_key=SecretRef.inline(FLAKY_KEY, warn=False),
                retry=RETRY,
            ),
            fallbacks=("embed",),
        )
        chat_only = Deployment(
            name="claude",
            model="claude-haiku-4-5",
            runtime=RuntimeKind.ANTHROPIC,
            runtime_config=AnthropicConfig(
                endpoint=claude.url, api_key=SecretRef.inline(KEY, warn=False)
            ),
        )
        config = Config(
            cluster=ClusterConfig(),
            deployments=(_openai(mock, "embed"), flaky, chat_only),
        )
        records: list[RequestRecord] = []
        topology = Topology(config, on_record=records.append)
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(mock, client, base, records)
            finally:
                await client.close()


async def test_the_sdk_gets_the_providers_vectors_in_input_order(live: Live) -> None:
    texts = ["the cat sat", "on the mat", "a third input"]
    answer = await live.client.embeddings.create(model="embed", input=texts)
    assert [item.index for item in answer.data] == [0, 1, 2]
    for item, text in zip(answer.data, texts, strict=True):
        expected = embedding_vector(text)
        assert len(item.embedding) == len(expected)
        assert all(
            math.isclose(a, b, abs_tol=1e-6) for a, b in zip(item.embedding, expected, strict=True)
        )
    assert answer.model == "embed"
    assert answer.usage.prompt_tokens > 0
    record = live.records[-1]
    assert (record.deployment, record.outcome, record.attempts) == ("embed", "ok", 1)
    assert record.usage.input_tokens == answer.usage.prompt_tokens
    assert record.cost_usd is not None
    assert record.cost_usd > 0


async def test_float_encoding_and_dimensions(live: Live) -> None:
    answer = await live.client.embeddings.create(
        model="embed", input="one string", dimensions=8, encoding_format="float"
    )
    vector = answer.data[0].embedding
    assert len(vector) == 8
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(vector, embedding_vector("one string", 8), strict=True)
    )


async def test_a_429_is_retried_inside_the_engine(live: Live) -> None:
    live.openai_mock.faults.next(Fault.rate_limit(0))
    answer = await live.client.embeddings.create(model="embed", input="retry me")
    assert len(answer.data) == 1
    assert live.records[-1].attempts == 2


async def test_5xx_after_retries_falls_back_to_the_next_deployment(live: Live) -> None:
    live.openai_mock.faults.for_key(FLAKY_KEY, Fault.server_error(503), times=3)
    answer = await live.client.embeddings.create(model="flaky", input="fall back")
    assert len(answer.data) == 1
    record = live.records[-1]
    assert record.tried == ["flaky", "embed"]
    assert record.attempts == 4  # three on the flaky deployment, one on the next


async def test_a_chat_only_provider_answers_400_naming_model(live: Live) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await live.client.embeddings.create(model="claude", input="no vectors here")
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == "model"
    assert "does not serve embeddings" in body["message"]


async def test_bad_input_and_unknown_models_are_typed(live: Live) -> None:
    with pytest.raises(openai.NotFoundError):
        await live.client.embeddings.create(model="nope", input="x")
    async with httpx.AsyncClient(base_url=live.base) as http:
        empty = await http.post("/v1/embeddings", json={"model": "embed", "input": []})
        missing = await http.post("/v1/embeddings", json={"model": "embed"})
    assert empty.status_code == missing.status_code == 400
    assert missing.json()["error"]["param"] == "input"


async def test_token_id_inputs_are_forwarded_as_ids(live: Live) -> None:
    answer = await live.client.embeddings.create(model="embed", input=[[101, 7592], [2088]])
    assert len(answer.data) == 2
    assert live.openai_mock.requests[-1].json()["input"] == [[101, 7592], [2088]]
    expected = embedding_vector("101 7592")  # the mock embeds the ids' text
    assert all(
        math.isclose(a, b, abs_tol=1e-6)
        for a, b in zip(answer.data[0].embedding, expected, strict=True)
    )
    one = await live.client.embeddings.create(model="embed", input=[101, 7592])
    assert len(one.data) == 1
    assert live.openai_mock.requests[-1].json()["input"] == [[101, 7592]]
