"""What runs a deployment's model: the runtime kinds and the ``runtime_config`` record of
each, remote (OpenAI, Azure OpenAI, Anthropic, Gemini, LiteLLM) and local: engine servers run
as supervised child processes (vLLM, SGLang, llama.cpp) and runners in process
(transformers, sentence-transformers).

Each remote runtime config answers for its provider: its label in metrics, which field holds
its credential and the environment variable read when none is set, and the output cap
assumed for a request that sets no ``max_tokens``. Nothing outside decides these again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from rakka_inference.core.messages import DEFAULT_MAX_OUTPUT_TOKENS
from rakka_inference.core.policies import CircuitBreakerConfig, RateLimits, RetryPolicy, Timeouts
from rakka_inference.core.secrets import SecretRef

__all__ = [
    "AnthropicConfig",
    "EngineServerConfig",
    "GeminiConfig",
    "LiteLLMConfig",
    "LlamaCppConfig",
    "LocalRuntimeConfig",
    "OpenAIConfig",
    "RemoteRuntimeConfig",
    "RuntimeConfig",
    "RuntimeKind",
    "SentenceTransformersConfig",
    "SglangConfig",
    "TransformersConfig",
    "VllmConfig",
    "default_credential_env",
    "infer_runtime",
    "runtime_config_type",
]


class RuntimeKind(enum.StrEnum):
    """What runs a deployment's model."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    LITELLM = "litellm"
    VLLM = "vllm"
    SGLANG = "sglang"
    LLAMACPP = "llamacpp"
    TRANSFORMERS = "transformers"
    SENTENCE_TRANSFORMERS = "sentence_transformers"

    @property
    def is_remote(self) -> bool:
        return self in _REMOTE_RUNTIMES

    @property
    def is_engine_server(self) -> bool:
        """Served by an engine's own OpenAI-compatible server, run as a child process."""
        return self in _ENGINE_SERVERS


_REMOTE_RUNTIMES = frozenset(
    {RuntimeKind.OPENAI, RuntimeKind.ANTHROPIC, RuntimeKind.GEMINI, RuntimeKind.LITELLM}
)
_ENGINE_SERVERS = frozenset({RuntimeKind.VLLM, RuntimeKind.SGLANG, RuntimeKind.LLAMACPP})


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteRuntimeConfig:
    """What every remote runtime shares: where, who, and the failure policies.

    Each runtime's record also answers what is provider-specific about it, so that the
    loader, the CLI, placement and the engine ask it rather than decide by provider name:
    its provider label, which field holds its credential, the conventional environment
    variable of that credential, and the default output-token cap.
    """

    PROVIDER: ClassVar[str] = ""
    """The provider label of the runtime's default variant."""
    CREDENTIAL_ENV: ClassVar[str] = ""
    """The conventional environment variable of the default variant's API key."""

    endpoint: str | None = None
    """Base URL. Unset means the provider's public endpoint."""
    api_key: SecretRef | None = None
    """Unset means the runtime's standard environment variable (see default_credential_env)."""
    http2: bool = False
    rate_limits: RateLimits = field(default_factory=RateLimits)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)

    @classmethod
    def credential_env_for(cls, variant: str | None = None) -> str:
        """The conventional environment variable of ``variant``'s credential."""
        return cls.CREDENTIAL_ENV

    @classmethod
    def credential_fields_for(cls, variant: str | None = None) -> tuple[str, ...]:
        """The fields that, when set, configure ``variant``'s credential."""
        return ("api_key",)

    @property
    def provider_label(self) -> str:
        """The provider in metrics labels, errors and limiter and breaker keys."""
        return self.PROVIDER

    @property
    def named_variant(self) -> str | None:
        """The variant, when it is not the provider's default one (worth naming in a
        summary); ``None`` otherwise."""
        return None

    @property
    def credential_field(self) -> str:
        """The secret-reference field that holds the credential this config sends."""
        return "api_key"

    @property
    def credential(self) -> SecretRef | None:
        """The credential this config sends (the value of :attr:`credential_field`)."""
        return self.api_key

    @property
    def credential_env(self) -> str:
        """The conventional environment variable of this config's credential."""
        return self.credential_env_for()

    @property
    def default_max_output_tokens(self) -> int:
        """The output cap of a request that sets none: the limiter's estimate, the budget's
        reservation and, where the API requires one, the upstream ``max_tokens``."""
        return DEFAULT_MAX_OUTPUT_TOKENS


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenAIConfig(RemoteRuntimeConfig):
    """OpenAI, Azure OpenAI (``variant = "azure"``) and any OpenAI-compatible endpoint."""

    PROVIDER: ClassVar[str] = "openai"
    CREDENTIAL_ENV: ClassVar[str] = "OPENAI_API_KEY"

    variant: Literal["openai", "azure"] = "openai"
    organization: str | None = None
    project: str | None = None
    resource: str | None = None
    """Azure: the resource name in ``https://{resource}.openai.azure.com``."""
    deployment: str | None = None
    """Azure: the deployment name in the URL path."""
    api_version: str | None = None
    """Azure: the ``api-version`` query parameter."""
    azure_ad_token: SecretRef | None = None
    """Azure: an Entra ID bearer token used instead of the ``api-key`` header."""

    @classmethod
    def credential_env_for(cls, variant: str | None = None) -> str:
        return "AZURE_OPENAI_API_KEY" if variant == "azure" else cls.CREDENTIAL_ENV

    @classmethod
    def credential_fields_for(cls, variant: str | None = None) -> tuple[str, ...]:
        return ("api_key", "azure_ad_token") if variant == "azure" else ("api_key",)

    @property
    def provider_label(self) -> str:
        return "azure" if self.variant == "azure" else self.PROVIDER

    @property
    def named_variant(self) -> str | None:
        return None if self.variant == "openai" else self.variant

    @property
    def credential_field(self) -> str:
        return "api_key" if self.azure_ad_token is None else "azure_ad_token"

    @property
    def credential(self) -> SecretRef | None:
        return self.api_key if self.azure_ad_token is None else self.azure_ad_token

    @property
    def credential_env(self) -> str:
        return self.credential_env_for(self.variant)


@dataclass(frozen=True, slots=True, kw_only=True)
class AnthropicConfig(RemoteRuntimeConfig):
    PROVIDER: ClassVar[str] = "anthropic"
    CREDENTIAL_ENV: ClassVar[str] = "ANTHROPIC_API_KEY"

    anthropic_version: str = "2023-06-01"
    max_tokens_default: int = DEFAULT_MAX_OUTPUT_TOKENS
    """The Messages API requires ``max_tokens``; this fills it when the request has none."""

    @property
    def default_max_output_tokens(self) -> int:
        return self.max_tokens_default


@dataclass(frozen=True, slots=True, kw_only=True)
class GeminiConfig(RemoteRuntimeConfig):
    """Gemini through AI Studio (an API key, sent in a header) or Vertex AI (OAuth2)."""

    PROVIDER: ClassVar[str] = "gemini"
    CREDENTIAL_ENV: ClassVar[str] = "GEMINI_API_KEY"

    variant: Literal["ai_studio", "vertex"] = "ai_studio"
    project: str | None = None
    """Vertex: the Google Cloud project id."""
    region: str | None = None
    """Vertex: the region, such as ``us-central1``."""
    credentials: SecretRef | None = None
    """Vertex: the service-account JSON, usually ``{ from_file = "sa.json" }``."""
    safety_settings: tuple[Mapping[str, str], ...] = ()
    """Passed to the API unchanged as ``safetySettings``, e.g.
    ``[{ category = "HARM_CATEGORY_HATE_SPEECH", threshold = "BLOCK_ONLY_HIGH" }]``."""

    @classmethod
    def credential_env_for(cls, variant: str | None = None) -> str:
        return "GOOGLE_APPLICATION_CREDENTIALS" if variant == "vertex" else cls.CREDENTIAL_ENV

    @classmethod
    def credential_fields_for(cls, variant: str | None = None) -> tuple[str, ...]:
        return ("api_key", "credentials") if variant == "vertex" else ("api_key",)

    @property
    def named_variant(self) -> str | None:
        return None if self.variant == "ai_studio" else self.variant

    @property
    def credential_field(self) -> str:
        return "credentials" if self.variant == "vertex" else "api_key"

    @property
    def credential(self) -> SecretRef | None:
        return self.credentials if self.variant == "vertex" else self.api_key

    @property
    def credential_env(self) -> str:
        return self.credential_env_for(self.variant)


@dataclass(frozen=True, slots=True, kw_only=True)
class LiteLLMConfig(RemoteRuntimeConfig):
    """The OpenAI wire format aimed at a LiteLLM proxy, which retries on its own."""

    PROVIDER: ClassVar[str] = "litellm"
    CREDENTIAL_ENV: ClassVar[str] = "LITELLM_API_KEY"

    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(max_retries=1))
    metadata: Mapping[str, str] = field(default_factory=dict)
    """Passed through as LiteLLM request ``metadata``."""
    tags: tuple[str, ...] = ()
    """Passed through as LiteLLM request tags (spend tracking, routing)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRuntimeConfig:
    """What every local runtime shares."""

    model_path: str | None = None
    """A local directory with the weights. Unset means the deployment's model name."""
    gpus: int | None = None
    """GPUs one replica occupies, for placement. Unset: what the runtime needs (vLLM's and
    SGLang's ``tensor_parallel_size``; llama.cpp one when ``n_gpu_layers`` is above 0;
    transformers and sentence-transformers one for a CUDA device; none otherwise). Set it
    with ``device = "auto"`` to place replicas on GPU nodes while the runner still starts
    where no GPU is visible (on CPU)."""

    @property
    def default_max_output_tokens(self) -> int:
        """The output cap of a request that sets none (the budget's reservation)."""
        return DEFAULT_MAX_OUTPUT_TOKENS

    def gpu_request(self) -> tuple[int, str | None]:
        """GPUs one replica occupies, and the field that asks for them (``None`` when
        none are asked for)."""
        if self.gpus is not None:
            return self.gpus, "gpus"
        return self._runtime_gpus()

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return 0, None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineServerConfig(LocalRuntimeConfig):
    """What the engine-server runtimes share (vLLM, SGLang, llama.cpp): the replica runs
    the engine's own OpenAI-compatible server as a child process on a loopback port and
    supervises it (see :mod:`rakka_inference.local.engine_process`)."""

    command: tuple[str, ...] = ()
    """The program to run, before the arguments the runtime adds. Empty: the engine's
    own (``vllm``, ``python -m sglang.launch_server``, ``llama-server``); set it to run
    another build or a wrapper."""
    extra_args: tuple[str, ...] = ()
    """Passed to the engine after the arguments mapped from this config, unchanged."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to the engine's environment (which is the gateway's otherwise)."""
    port: int | None = None
    """The engine's loopback port. Unset: a free port, chosen at each start."""
    max_tokens_default: int = DEFAULT_MAX_OUTPUT_TOKENS
    """The output cap assumed for a request that sets none (the budget's reservation)."""
    startup_timeout_ms: int = 600_000
    """How long the engine may take to answer its health check after it is started."""
    health_interval_ms: int = 5_000
    """How often a running engine's health is checked (and its metrics read)."""
    health_timeout_ms: int = 5_000
    """A health check that takes longer has failed (a hung engine)."""
    health_failures: int = 3
    """Consecutive failed health checks that make the engine poisoned: it is restarted."""
    metrics_interval_ms: int = 1_000
    """How often the engine's own metrics (its load, for routing) are read; 0: never."""
    stop_grace_ms: int = 30_000
    """After SIGTERM, how long the engine may take to exit before it is killed."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """The gateway's requests to the engine."""

    @property
    def default_max_output_tokens(self) -> int:
        return self.max_tokens_default


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmConfig(EngineServerConfig):
    """``vllm serve MODEL``."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return self.tensor_parallel_size, "tensor_parallel_size"


@dataclass(frozen=True, slots=True, kw_only=True)
class SglangConfig(EngineServerConfig):
    """``python -m sglang.launch_server --model-path MODEL`` (metrics enabled)."""

    tensor_parallel_size: int = 1
    mem_fraction_static: float | None = None
    context_length: int | None = None
    dtype: str = "auto"

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return self.tensor_parallel_size, "tensor_parallel_size"


@dataclass(frozen=True, slots=True, kw_only=True)
class LlamaCppConfig(EngineServerConfig):
    """``llama-server --model FILE.gguf`` (metrics enabled; one slot per concurrent
    request the deployment allows)."""

    ctx_size: int | None = None
    n_gpu_layers: int | None = None
    """Layers offloaded to the GPU. Unset: every layer when the replica has a GPU, none
    otherwise."""

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return (1, "n_gpu_layers") if self.n_gpu_layers else (0, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformersConfig(LocalRuntimeConfig):
    device: str = "cpu"
    max_new_tokens_default: int = 256

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return _device_gpus(self.device)

    @property
    def default_max_output_tokens(self) -> int:
        return self.max_new_tokens_default


@dataclass(frozen=True, slots=True, kw_only=True)
class SentenceTransformersConfig(LocalRuntimeConfig):
    device: str = "cpu"
    batch_size: int = 32
    normalize_embeddings: bool = True

    def _runtime_gpus(self) -> tuple[int, str | None]:
        return _device_gpus(self.device)


def _device_gpus(device: str) -> tuple[int, str | None]:
    device = device.strip().lower()
    return (1, "device") if device.startswith("cuda") or device == "gpu" else (0, None)


RuntimeConfig: TypeAlias = (
    OpenAIConfig
    | AnthropicConfig
    | GeminiConfig
    | LiteLLMConfig
    | VllmConfig
    | SglangConfig
    | LlamaCppConfig
    | TransformersConfig
    | SentenceTransformersConfig
)


_CONFIG_TYPES: dict[RuntimeKind, type[RuntimeConfig]] = {
    RuntimeKind.OPENAI: OpenAIConfig,
    RuntimeKind.ANTHROPIC: AnthropicConfig,
    RuntimeKind.GEMINI: GeminiConfig,
    RuntimeKind.LITELLM: LiteLLMConfig,
    RuntimeKind.VLLM: VllmConfig,
    RuntimeKind.SGLANG: SglangConfig,
    RuntimeKind.LLAMACPP: LlamaCppConfig,
    RuntimeKind.TRANSFORMERS: TransformersConfig,
    RuntimeKind.SENTENCE_TRANSFORMERS: SentenceTransformersConfig,
}


def runtime_config_type(runtime: RuntimeKind) -> type[RuntimeConfig]:
    """The ``runtime_config`` record a runtime is configured with."""
    return _CONFIG_TYPES[runtime]


# Checked in order; the first rule whose prefix matches names the runtime.
_INFERENCE_RULES: tuple[tuple[tuple[str, ...], RuntimeKind], ...] = (
    (("gpt-", "o1", "o3", "o4", "chatgpt-", "openai/"), RuntimeKind.OPENAI),
    (("claude-", "anthropic/"), RuntimeKind.ANTHROPIC),
    (("gemini-", "google/gemini"), RuntimeKind.GEMINI),
    (("litellm/",), RuntimeKind.LITELLM),
)


def default_credential_env(runtime: RuntimeKind, variant: str | None = None) -> str | None:
    """The environment variable a remote runtime reads its key from when none is configured
    (its runtime config's answer); ``None`` for a local runtime."""
    config_type = _CONFIG_TYPES[runtime]
    if not issubclass(config_type, RemoteRuntimeConfig):
        return None
    return config_type.credential_env_for(variant)


def infer_runtime(model: str, has_credentials: Callable[[RuntimeKind], bool]) -> RuntimeKind:
    """The runtime for a model name when the deployment does not name one (DESIGN §3).

    A remote runtime is chosen only when ``has_credentials(runtime)`` says its credentials
    are configured; otherwise the model is served locally by vLLM. So ``gpt-oss-20b`` with
    no OpenAI key is a local model.
    """
    lowered = model.lower()
    for prefixes, runtime in _INFERENCE_RULES:
        if lowered.startswith(prefixes):
            return runtime if has_credentials(runtime) else RuntimeKind.VLLM
    return RuntimeKind.VLLM
