"""Deployments on the testkit's mock providers, for the tests that serve a gateway in front
of them: the deployment's runtime, endpoint and a model of its provider follow from the mock
it stands on."""

from __future__ import annotations

from typing import Any

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import RetryPolicy
from rakka_inference.core.runtimes import AnthropicConfig, GeminiConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import OpenAIMock

__all__ = ["gateway_config", "last_body", "on_mock"]


def on_mock(
    name: str,
    mock: OpenAIMock | AnthropicMock | GeminiMock,
    key: str,
    *,
    model: str | None = None,
    retry: RetryPolicy | None = None,
) -> Deployment:
    """A deployment ``name`` served by ``mock`` with the upstream key ``key``."""
    secret = SecretRef.inline(key, warn=False)
    extra: dict[str, RetryPolicy] = {} if retry is None else {"retry": retry}
    if isinstance(mock, OpenAIMock):
        return Deployment(
            name=name,
            model=model or "gpt-4o",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(endpoint=mock.openai_base_url, api_key=secret, **extra),
        )
    if isinstance(mock, AnthropicMock):
        return Deployment(
            name=name,
            model=model or "claude-haiku-4-5",
            runtime=RuntimeKind.ANTHROPIC,
            runtime_config=AnthropicConfig(endpoint=mock.url, api_key=secret, **extra),
        )
    return Deployment(
        name=name,
        model=model or "gemini-2.5-flash",
        runtime=RuntimeKind.GEMINI,
        runtime_config=GeminiConfig(endpoint=mock.url, api_key=secret, **extra),
    )


def gateway_config(*deployments: Deployment, client_key: str | None = None) -> Config:
    """The deployments behind a gateway that takes ``client_key`` (any key when None)."""
    keys = () if client_key is None else (SecretRef.inline(client_key, warn=False),)
    return Config(cluster=ClusterConfig(client_api_keys=keys), deployments=deployments)


def last_body(mock: OpenAIMock | AnthropicMock | GeminiMock) -> dict[str, Any]:
    """The JSON body of the last request ``mock`` received."""
    document = mock.requests[-1].json()
    assert isinstance(document, dict)
    return document
