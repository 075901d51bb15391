"""The LiteLLM adapter through the remote engine, against the OpenAI-format mock (a LiteLLM
proxy speaks that format): metadata and tags reach the proxy; it retries less."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ServerError
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import RetryPolicy
from rakka_inference.core.runtimes import LiteLLMConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import aggregate
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

KEY = "sk-litellm-master-7777"


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={KEY}), reply=ReplyScript(text="via the proxy")
    ) as running:
        yield running


def deployment(mock: OpenAIMock) -> Deployment:
    config = LiteLLMConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(KEY, warn=False),
        metadata={"team": "search"},
        tags=("prod",),
        retry=RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2),
    )
    return Deployment(
        name="proxy",
        model="litellm/mixtral-8x7b",
        runtime=RuntimeKind.LITELLM,
        runtime_config=config,
    )


async def test_metadata_and_tags_reach_the_proxy(mock: OpenAIMock) -> None:
    system = ActorSystem()
    engine = await build_remote_engine(deployment(mock), RemoteServices())
    await engine.start(system)
    try:
        request = ChatRequest(
            model="proxy", messages=(ChatMessage.user("hi"),), stream=True, metadata={"t": "1"}
        )
        completion = aggregate([chunk async for chunk in engine.submit(request)])
        assert completion.text == "via the proxy"
        [sent] = mock.requests
        body = sent.json()
        assert body["model"] == "mixtral-8x7b"
        assert body["metadata"] == {"team": "search", "t": "1", "tags": ["prod"]}
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        mock.faults.next(Fault.server_error(503), Fault.server_error(503))
        with pytest.raises(ServerError):
            aggregate(
                [
                    c
                    async for c in engine.submit(
                        ChatRequest(model="proxy", messages=(ChatMessage.user("x"),))
                    )
                ]
            )
        assert len(mock.requests) == 3  # one retry only: the proxy retries on its own
    finally:
        await engine.stop()
        await system.shutdown()
