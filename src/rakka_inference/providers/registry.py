"""Runtime name to adapter: the one place that chooses a wire format.

Nothing else in the code base dispatches on a provider's name: it asks this registry for
the deployment's adapter and talks to it through the
:class:`~rakka_inference.providers.base.ProviderAdapter` protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RuntimeKind,
)
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.base import ProviderAdapter, TokenCredential
from rakka_inference.providers.gemini import GeminiAdapter
from rakka_inference.providers.gemini_vertex import vertex_token_credential
from rakka_inference.providers.litellm import LiteLLMAdapter
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.wire.http import HttpTransport

__all__ = ["TokenCredentialFactory", "adapter_for", "remote_runtimes", "token_credential_for"]

_Factory = Callable[[Deployment, PriceTable | None], ProviderAdapter]

TokenCredentialFactory = Callable[[HttpTransport], TokenCredential]
"""Builds a deployment's token credential over the transport it fetches tokens with."""


def _openai(deployment: Deployment, prices: PriceTable | None) -> ProviderAdapter:
    config = _config(deployment, OpenAIConfig)
    return OpenAIAdapter(
        config, deployment.upstream_model, price_override=deployment.pricing, prices=prices
    )


def _anthropic(deployment: Deployment, prices: PriceTable | None) -> ProviderAdapter:
    config = _config(deployment, AnthropicConfig)
    return AnthropicAdapter(
        config, deployment.upstream_model, price_override=deployment.pricing, prices=prices
    )


def _gemini(deployment: Deployment, prices: PriceTable | None) -> ProviderAdapter:
    config = _config(deployment, GeminiConfig)
    return GeminiAdapter(
        config,
        deployment.upstream_model,
        price_override=deployment.pricing,
        prices=prices,
        safety_settings=config.safety_settings,
    )


def _litellm(deployment: Deployment, prices: PriceTable | None) -> ProviderAdapter:
    config = _config(deployment, LiteLLMConfig)
    return LiteLLMAdapter(
        config, deployment.upstream_model, price_override=deployment.pricing, prices=prices
    )


_ADAPTERS: dict[RuntimeKind, _Factory] = {
    RuntimeKind.OPENAI: _openai,
    RuntimeKind.ANTHROPIC: _anthropic,
    RuntimeKind.GEMINI: _gemini,
    RuntimeKind.LITELLM: _litellm,
}


def remote_runtimes() -> frozenset[RuntimeKind]:
    """The runtimes served by a provider adapter."""
    return frozenset(_ADAPTERS)


def adapter_for(deployment: Deployment, prices: PriceTable | None = None) -> ProviderAdapter:
    """The adapter for a remote deployment; ConfigError for a local runtime."""
    factory = _ADAPTERS.get(deployment.runtime)
    if factory is None:
        raise ConfigError(
            [
                ConfigIssue(
                    "<deployment>",
                    f"deployment {deployment.name!r}.runtime",
                    f"runtime {deployment.runtime.value!r} is local: it has no provider adapter",
                )
            ]
        )
    return factory(deployment, prices)


def _config(deployment: Deployment, kind: type[Any]) -> Any:
    # Deployment.__post_init__ guarantees the runtime_config type matches the runtime.
    assert isinstance(deployment.runtime_config, kind)
    return deployment.runtime_config


def token_credential_for(deployment: Deployment) -> TokenCredentialFactory | None:
    """How ``deployment`` exchanges its configured secret for a token (Vertex AI's service
    account); ``None`` when the secret is sent as it is (an API key)."""
    config = deployment.runtime_config
    if isinstance(config, GeminiConfig):
        return vertex_token_credential(config)
    return None
