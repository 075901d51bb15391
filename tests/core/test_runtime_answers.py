"""What each runtime config answers about its provider, so nothing else decides by name:
the provider label, the credential field and its conventional variable, the output cap."""

from __future__ import annotations

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.messages import DEFAULT_MAX_OUTPUT_TOKENS
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RemoteRuntimeConfig,
    RuntimeKind,
    TransformersConfig,
    VllmConfig,
)
from rakka_inference.core.secrets import SecretRef

KEY = SecretRef.from_env("SOME_KEY")
TOKEN = SecretRef.from_env("SOME_TOKEN")
SA = SecretRef.from_file("/run/secrets/sa.json")


@pytest.mark.parametrize(
    ("config", "label", "field", "credential", "env"),
    [
        (OpenAIConfig(api_key=KEY), "openai", "api_key", KEY, "OPENAI_API_KEY"),
        (
            OpenAIConfig(variant="azure", api_key=KEY),
            "azure",
            "api_key",
            KEY,
            "AZURE_OPENAI_API_KEY",
        ),
        (
            OpenAIConfig(variant="azure", api_key=KEY, azure_ad_token=TOKEN),
            "azure",
            "azure_ad_token",
            TOKEN,
            "AZURE_OPENAI_API_KEY",
        ),
        (AnthropicConfig(api_key=KEY), "anthropic", "api_key", KEY, "ANTHROPIC_API_KEY"),
        (GeminiConfig(api_key=KEY), "gemini", "api_key", KEY, "GEMINI_API_KEY"),
        (
            GeminiConfig(variant="vertex", credentials=SA),
            "gemini",
            "credentials",
            SA,
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        (LiteLLMConfig(api_key=KEY), "litellm", "api_key", KEY, "LITELLM_API_KEY"),
    ],
)
def test_each_remote_config_answers_its_credential_and_label(
    config: RemoteRuntimeConfig, label: str, field: str, credential: SecretRef, env: str
) -> None:
    assert config.provider_label == label
    assert config.credential_field == field
    assert config.credential == credential
    assert config.credential_env == env


def test_the_fields_that_configure_a_credential_depend_on_the_variant() -> None:
    assert OpenAIConfig.credential_fields_for(None) == ("api_key",)
    assert OpenAIConfig.credential_fields_for("azure") == ("api_key", "azure_ad_token")
    assert GeminiConfig.credential_fields_for("vertex") == ("api_key", "credentials")
    assert AnthropicConfig.credential_fields_for(None) == ("api_key",)


def test_only_a_non_default_variant_is_named() -> None:
    assert OpenAIConfig().named_variant is None
    assert OpenAIConfig(variant="azure").named_variant == "azure"
    assert GeminiConfig().named_variant is None
    assert GeminiConfig(variant="vertex").named_variant == "vertex"
    assert AnthropicConfig().named_variant is None


def test_the_default_output_cap_is_the_runtime_configs() -> None:
    assert AnthropicConfig(max_tokens_default=16_000).default_max_output_tokens == 16_000
    assert AnthropicConfig().default_max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS
    assert OpenAIConfig().default_max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS
    assert VllmConfig().default_max_output_tokens == DEFAULT_MAX_OUTPUT_TOKENS
    assert TransformersConfig(max_new_tokens_default=64).default_max_output_tokens == 64


def test_a_deployment_is_labelled_by_its_provider_or_its_local_runtime() -> None:
    azure = Deployment(
        name="a",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(variant="azure"),
    )
    local = Deployment(name="l", model="m", runtime=RuntimeKind.VLLM, runtime_config=VllmConfig())
    assert azure.provider_label == "azure"
    assert local.provider_label == "vllm"
