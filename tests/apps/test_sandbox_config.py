"""The sandbox's configuration: its admin key comes from ``RAKKA_ADMIN_KEY`` (else the
admin API is closed), and :func:`with_mock_providers` sends what a config leaves without an
endpoint to the mocks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rakka_inference.apps.sandbox import Sandbox, sandbox_config, with_mock_providers
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RuntimeConfig,
    RuntimeKind,
    VllmConfig,
)
from rakka_inference.core.secrets import SecretRef


@pytest.fixture
async def mocks() -> AsyncIterator[Sandbox]:
    sandbox = Sandbox.for_config()
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.stop()


async def test_the_admin_key_is_the_one_in_rakka_admin_key(mocks: Sandbox) -> None:
    with_key = sandbox_config(mocks, bind="127.0.0.1:1", environ={"RAKKA_ADMIN_KEY": "k"})
    assert with_key.cluster.admin_api_key == SecretRef.from_env("RAKKA_ADMIN_KEY")
    closed = sandbox_config(mocks, bind="127.0.0.1:1", environ={"RAKKA_ADMIN_KEY": ""})
    assert closed.cluster.admin_api_key is None


async def test_only_the_deployments_a_mock_can_answer_go_to_it(mocks: Sandbox) -> None:
    key = SecretRef.from_env("K")

    def remote(name: str, runtime: RuntimeKind, settings: RuntimeConfig) -> Deployment:
        return Deployment(name=name, model="m", runtime=runtime, runtime_config=settings)

    deployments = (
        remote("gpt", RuntimeKind.OPENAI, OpenAIConfig(api_key=key)),
        remote("claude", RuntimeKind.ANTHROPIC, AnthropicConfig(api_key=key)),
        remote("gemini", RuntimeKind.GEMINI, GeminiConfig(api_key=key)),
        remote("mine", RuntimeKind.OPENAI, OpenAIConfig(endpoint="http://h/v1", api_key=key)),
        remote(
            "azure",
            RuntimeKind.OPENAI,
            OpenAIConfig(variant="azure", resource="r", deployment="d", api_key=key),
        ),
        remote("vertex", RuntimeKind.GEMINI, GeminiConfig(variant="vertex", credentials=key)),
        remote("proxy", RuntimeKind.LITELLM, LiteLLMConfig(endpoint="http://p", api_key=key)),
        remote("local", RuntimeKind.VLLM, VllmConfig()),
    )
    config = Config(cluster=ClusterConfig(mock_providers=True), deployments=deployments)
    mocked = with_mock_providers(config, mocks)
    endpoints = {d.name: getattr(d.runtime_config, "endpoint", None) for d in mocked.deployments}
    assert endpoints == {
        "gpt": mocks.openai.openai_base_url,
        "claude": mocks.anthropic.url,
        "gemini": mocks.gemini.url,
        "mine": "http://h/v1",
        "azure": None,
        "vertex": None,
        "proxy": "http://p",
        "local": None,
    }
    assert mocked.deployments[7] is deployments[7]
    credentials = [getattr(d.runtime_config, "credential", None) for d in mocked.deployments]
    assert credentials[:3] == [key, key, key]
