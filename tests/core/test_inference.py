"""Runtime inference from the model name (DESIGN §3) and the model name sent upstream."""

from __future__ import annotations

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RuntimeKind,
    VllmConfig,
    default_credential_env,
    infer_runtime,
    runtime_config_type,
)

# (model, the runtime chosen when that provider's credentials are configured)
TABLE = [
    ("gpt-4o", RuntimeKind.OPENAI),
    ("gpt-4o-mini", RuntimeKind.OPENAI),
    ("gpt-oss-20b", RuntimeKind.OPENAI),
    ("o1", RuntimeKind.OPENAI),
    ("o1-preview", RuntimeKind.OPENAI),
    ("o3", RuntimeKind.OPENAI),
    ("o3-mini", RuntimeKind.OPENAI),
    ("o4-mini", RuntimeKind.OPENAI),
    ("chatgpt-4o-latest", RuntimeKind.OPENAI),
    ("openai/gpt-oss-120b", RuntimeKind.OPENAI),
    ("GPT-4o", RuntimeKind.OPENAI),
    ("claude-sonnet-4-20250514", RuntimeKind.ANTHROPIC),
    ("claude-3-5-haiku-latest", RuntimeKind.ANTHROPIC),
    ("anthropic/claude-opus-4", RuntimeKind.ANTHROPIC),
    ("gemini-2.5-pro", RuntimeKind.GEMINI),
    ("gemini-1.5-flash", RuntimeKind.GEMINI),
    ("google/gemini-2.0-flash", RuntimeKind.GEMINI),
    ("litellm/mixtral-8x7b", RuntimeKind.LITELLM),
    ("litellm/gpt-4o", RuntimeKind.LITELLM),
]

# Names that no rule claims: always served locally.
LOCAL = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "mistralai/Mistral-7B-v0.3",
    "google/gemma-2-9b",  # google/ but not google/gemini
    "gemma-2-9b",
    "distilgpt2",  # contains "gpt" but does not start with "gpt-"
    "gpt2",
    "omni-model",  # starts with "o", not o1/o3/o4
    "o2-model",
    "claude",  # no "claude-" prefix
    "my-org/claude-finetune",
    "",
]


@pytest.mark.parametrize(("model", "runtime"), TABLE)
def test_a_remote_runtime_is_chosen_when_its_credentials_are_configured(
    model: str, runtime: RuntimeKind
) -> None:
    asked: list[RuntimeKind] = []

    def has_credentials(kind: RuntimeKind) -> bool:
        asked.append(kind)
        return True

    assert infer_runtime(model, has_credentials) is runtime
    assert asked == [runtime]  # only the runtime the name points at is asked about


@pytest.mark.parametrize(("model", "runtime"), TABLE)
def test_without_credentials_the_model_is_served_locally(model: str, runtime: RuntimeKind) -> None:
    assert infer_runtime(model, lambda kind: False) is RuntimeKind.VLLM


@pytest.mark.parametrize(("model", "runtime"), TABLE)
def test_credentials_of_another_provider_do_not_count(model: str, runtime: RuntimeKind) -> None:
    assert infer_runtime(model, lambda kind: kind is not runtime) is RuntimeKind.VLLM


@pytest.mark.parametrize("model", LOCAL)
@pytest.mark.parametrize("credentials", [True, False])
def test_other_names_are_local(model: str, credentials: bool) -> None:
    assert infer_runtime(model, lambda kind: credentials) is RuntimeKind.VLLM


@pytest.mark.parametrize(
    ("runtime", "variant", "env"),
    [
        (RuntimeKind.OPENAI, None, "OPENAI_API_KEY"),
        (RuntimeKind.OPENAI, "openai", "OPENAI_API_KEY"),
        (RuntimeKind.OPENAI, "azure", "AZURE_OPENAI_API_KEY"),
        (RuntimeKind.ANTHROPIC, None, "ANTHROPIC_API_KEY"),
        (RuntimeKind.GEMINI, "ai_studio", "GEMINI_API_KEY"),
        (RuntimeKind.GEMINI, "vertex", "GOOGLE_APPLICATION_CREDENTIALS"),
        (RuntimeKind.LITELLM, None, "LITELLM_API_KEY"),
        (RuntimeKind.VLLM, None, None),
        (RuntimeKind.TRANSFORMERS, None, None),
        (RuntimeKind.SENTENCE_TRANSFORMERS, None, None),
    ],
)
def test_default_credential_env(runtime: RuntimeKind, variant: str | None, env: str | None) -> None:
    assert default_credential_env(runtime, variant) == env
    assert (env is not None) == runtime.is_remote


def make(model: str, runtime: RuntimeKind) -> Deployment:
    return Deployment(
        name="d", model=model, runtime=runtime, runtime_config=runtime_config_type(runtime)()
    )


@pytest.mark.parametrize(
    ("model", "runtime", "upstream"),
    [
        ("gpt-4o", RuntimeKind.OPENAI, "gpt-4o"),
        ("openai/gpt-4o", RuntimeKind.OPENAI, "gpt-4o"),
        ("anthropic/claude-opus-4", RuntimeKind.ANTHROPIC, "claude-opus-4"),
        ("claude-sonnet-4", RuntimeKind.ANTHROPIC, "claude-sonnet-4"),
        ("google/gemini-2.5-pro", RuntimeKind.GEMINI, "gemini-2.5-pro"),
        ("litellm/mixtral-8x7b", RuntimeKind.LITELLM, "mixtral-8x7b"),
        ("litellm/openai/gpt-4o", RuntimeKind.LITELLM, "openai/gpt-4o"),  # one prefix only
        ("meta-llama/Llama-3.1-8B", RuntimeKind.VLLM, "meta-llama/Llama-3.1-8B"),
        ("openai/gpt-oss-20b", RuntimeKind.VLLM, "gpt-oss-20b"),
    ],
)
def test_upstream_model_drops_the_routing_prefix(
    model: str, runtime: RuntimeKind, upstream: str
) -> None:
    deployment = make(model, runtime)
    assert deployment.upstream_model == upstream
    assert deployment.model == model


@pytest.mark.parametrize(
    ("runtime", "config_type"),
    [
        (RuntimeKind.OPENAI, OpenAIConfig),
        (RuntimeKind.ANTHROPIC, AnthropicConfig),
        (RuntimeKind.GEMINI, GeminiConfig),
        (RuntimeKind.LITELLM, LiteLLMConfig),
        (RuntimeKind.VLLM, VllmConfig),
    ],
)
def test_each_runtime_has_its_config_record(runtime: RuntimeKind, config_type: type) -> None:
    assert runtime_config_type(runtime) is config_type
    assert make("m", runtime).is_remote is runtime.is_remote


def test_a_deployment_refuses_another_runtimes_config() -> None:
    with pytest.raises(TypeError, match="runtime 'anthropic' takes AnthropicConfig"):
        Deployment(
            name="d", model="m", runtime=RuntimeKind.ANTHROPIC, runtime_config=OpenAIConfig()
        )
