"""Reasoning on the chat route, end to end with the official openai SDK: ``reasoning_effort``
becomes Gemini's thinking budget, and the thoughts come back as ``reasoning_content`` (in
the answer and in the stream's deltas) to the client that asked for reasoning only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import openai
import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import GeminiConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.serving import serving

KEY = "gemini-key-reasoning-01"
THOUGHTS = "Let me think it over"


@dataclass
class Live:
    mock: GeminiMock
    client: openai.AsyncOpenAI


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={KEY})
    async with GeminiMock(
        faults=plan, reply=ReplyScript(text="The answer."), thoughts=THOUGHTS
    ) as mock:
        deployment = Deployment(
            name="gemini",
            model="gemini-2.5-flash",
            runtime=RuntimeKind.GEMINI,
            runtime_config=GeminiConfig(
                endpoint=mock.url, api_key=SecretRef.inline(KEY, warn=False)
            ),
        )
        topology = Topology(Config(cluster=ClusterConfig(), deployments=(deployment,)))
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(mock, client)
            finally:
                await client.close()


async def test_a_reasoning_effort_shows_the_thoughts(live: Live) -> None:
    answer = await live.client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "why?"}], reasoning_effort="low"
    )
    sent = live.mock.requests[-1].json()["generationConfig"]["thinkingConfig"]
    assert sent == {"thinkingBudget": 2048, "includeThoughts": True}
    message = answer.choices[0].message
    assert message.content == "The answer."
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"] == THOUGHTS
    assert answer.usage is not None
    assert answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 5
    stream = await live.client.chat.completions.create(
        model="gemini",
        messages=[{"role": "user", "content": "why?"}],
        reasoning_effort="low",
        stream=True,
    )
    reasoning = [
        (chunk.choices[0].delta.model_extra or {}).get("reasoning_content")
        async for chunk in stream
        if chunk.choices
    ]
    assert THOUGHTS in reasoning


async def test_no_reasoning_asked_none_shown(live: Live) -> None:
    answer = await live.client.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "why?"}]
    )
    assert "thinkingConfig" not in live.mock.requests[-1].json().get("generationConfig", {})
    assert "reasoning_content" not in (answer.choices[0].message.model_extra or {})
