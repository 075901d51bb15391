"""Deployments and the records they are configured with, with the defaults of DESIGN §3.

Everything here is an immutable value. Durations are integers in milliseconds and their
names end in ``_ms``. The TOML loader (:mod:`rakka_inference.core.config`) builds these from
a file; tests and Python callers build them directly.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from rakka_inference.core.messages import DEFAULT_MAX_OUTPUT_TOKENS
from rakka_inference.core.secrets import SecretRef

__all__ = [
    "AnthropicConfig",
    "Budget",
    "BudgetAction",
    "CapacityPolicy",
    "CircuitBreakerConfig",
    "ClusterConfig",
    "Config",
    "Deployment",
    "GeminiConfig",
    "Jitter",
    "LiteLLMConfig",
    "LocalRuntimeConfig",
    "ModelPrice",
    "OpenAIConfig",
    "RateLimits",
    "RemoteRuntimeConfig",
    "RetryPolicy",
    "RuntimeConfig",
    "RuntimeKind",
    "SentenceTransformersConfig",
    "Serving",
    "Timeouts",
    "TracingConfig",
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
    TRANSFORMERS = "transformers"
    SENTENCE_TRANSFORMERS = "sentence_transformers"

    @property
    def is_remote(self) -> bool:
        return self in _REMOTE_RUNTIMES


_REMOTE_RUNTIMES = frozenset(
    {RuntimeKind.OPENAI, RuntimeKind.ANTHROPIC, RuntimeKind.GEMINI, RuntimeKind.LITELLM}
)


class Jitter(enum.StrEnum):
    NONE = "none"
    FULL = "full"
    EQUAL = "equal"


class CapacityPolicy(enum.StrEnum):
    """What a full worker pool does with a new request."""

    QUEUE = "queue"
    REJECT = "reject"
    FALLBACK = "fallback"


class BudgetAction(enum.StrEnum):
    REJECT = "reject"
    WARN = "warn"
    THROTTLE = "throttle"


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimits:
    """Per (provider, API key, model). ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    strict: bool = False
    """One exact authority per key instead of the approximate CRDT limiter."""
    smoothing: bool = False
    """Spread the per-minute allowance over the minute instead of allowing it as a burst."""
    sync_interval_ms: int = 1000
    """How often the approximate limiter exchanges spend with other nodes."""

    @property
    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent_requests is None
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_retries: int = 3
    initial_backoff_ms: int = 1000
    max_backoff_ms: int = 60_000
    backoff_multiplier: float = 2.0
    jitter: Jitter = Jitter.EQUAL
    respect_retry_after: bool = True
    max_retry_after_ms: int = 60_000
    """A Retry-After longer than this fails at once with RateLimitExceeded (so the caller
    can fall back) instead of holding the request."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreakerConfig:
    failure_threshold: int = 10
    open_duration_ms: int = 30_000
    max_open_duration_ms: int = 300_000
    half_open_max_probes: int = 1
    failure_rate_threshold: float | None = None
    """Optional second trigger: open when this fraction of calls in the window failed."""
    failure_rate_window_ms: int = 60_000
    failure_rate_min_calls: int = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect_timeout_ms: int = 5000
    request_timeout_ms: int | None = None
    """Time to first byte. Unset means 30 s for unary requests and 60 s for streams."""
    read_timeout_ms: int = 10_000
    """Longest silence between bytes of a response."""
    total_timeout_ms: int | None = None
    """Optional cap on a whole request. Unset: a healthy long stream is never cut."""

    def first_byte_ms(self, *, streaming: bool) -> int:
        if self.request_timeout_ms is not None:
            return self.request_timeout_ms
        return 60_000 if streaming else 30_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Serving:
    max_concurrent: int = 32
    queue_capacity: int = 1024
    queue_timeout_ms: int = 30_000
    on_capacity_exhausted: CapacityPolicy = CapacityPolicy.QUEUE


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    """Rolling spend limits in USD. At least one limit is set."""

    max_spend_per_hour: float | None = None
    max_spend_per_day: float | None = None
    on_exceeded: BudgetAction = BudgetAction.REJECT


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPrice:
    """USD per million tokens. Cached input defaults to the input price."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None = None

    @property
    def cached_input(self) -> float:
        return (
            self.input_per_mtok
            if self.cached_input_per_mtok is None
            else (self.cached_input_per_mtok)
        )


# --------------------------------------------------------------------------- runtime configs


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

    @property
    def default_max_output_tokens(self) -> int:
        """The output cap of a request that sets none (the budget's reservation)."""
        return DEFAULT_MAX_OUTPUT_TOKENS


@dataclass(frozen=True, slots=True, kw_only=True)
class VllmConfig(LocalRuntimeConfig):
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    dtype: str = "auto"


@dataclass(frozen=True, slots=True, kw_only=True)
class TransformersConfig(LocalRuntimeConfig):
    device: str = "cpu"
    max_new_tokens_default: int = 256

    @property
    def default_max_output_tokens(self) -> int:
        return self.max_new_tokens_default


@dataclass(frozen=True, slots=True, kw_only=True)
class SentenceTransformersConfig(LocalRuntimeConfig):
    device: str = "cpu"
    batch_size: int = 32
    normalize_embeddings: bool = True


RuntimeConfig: TypeAlias = (
    OpenAIConfig
    | AnthropicConfig
    | GeminiConfig
    | LiteLLMConfig
    | VllmConfig
    | TransformersConfig
    | SentenceTransformersConfig
)

_CONFIG_TYPES: dict[RuntimeKind, type[RuntimeConfig]] = {
    RuntimeKind.OPENAI: OpenAIConfig,
    RuntimeKind.ANTHROPIC: AnthropicConfig,
    RuntimeKind.GEMINI: GeminiConfig,
    RuntimeKind.LITELLM: LiteLLMConfig,
    RuntimeKind.VLLM: VllmConfig,
    RuntimeKind.TRANSFORMERS: TransformersConfig,
    RuntimeKind.SENTENCE_TRANSFORMERS: SentenceTransformersConfig,
}


def runtime_config_type(runtime: RuntimeKind) -> type[RuntimeConfig]:
    """The ``runtime_config`` record a runtime is configured with."""
    return _CONFIG_TYPES[runtime]


# --------------------------------------------------------------------------- deployment


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """A named model served by ``replicas`` independent replicas of one runtime."""

    name: str
    model: str
    runtime: RuntimeKind
    runtime_config: RuntimeConfig
    replicas: int = 1
    fallbacks: tuple[str, ...] = ()
    """Deployments tried in order when this one fails before the first byte."""
    idempotent: bool = True
    """False disables retries: the request is sent at most once."""
    aliases: tuple[str, ...] = ()
    serving: Serving = field(default_factory=Serving)
    budget: Budget | None = None
    pricing: ModelPrice | None = None
    """Overrides the price table for this deployment's model."""

    def __post_init__(self) -> None:
        expected = _CONFIG_TYPES[self.runtime]
        if type(self.runtime_config) is not expected:
            raise TypeError(
                f"deployment {self.name!r}: runtime {self.runtime.value!r} takes "
                f"{expected.__name__}, got {type(self.runtime_config).__name__}"
            )

    @property
    def is_remote(self) -> bool:
        return self.runtime.is_remote

    @property
    def provider_label(self) -> str:
        """The provider in metrics labels (never a key or a URL): the remote runtime
        config's label, else the local runtime's name."""
        config = self.runtime_config
        if isinstance(config, RemoteRuntimeConfig):
            return config.provider_label
        return self.runtime.value

    @property
    def upstream_model(self) -> str:
        """The model name sent upstream: the routing prefix (``openai/`` ...) removed."""
        for prefix in _ROUTING_PREFIXES:
            if self.model.startswith(prefix):
                return self.model[len(prefix) :]
        return self.model


_ROUTING_PREFIXES = ("openai/", "anthropic/", "google/", "litellm/")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    name: str = "rakka"
    bind: str = "127.0.0.1:8080"
    client_api_keys: tuple[SecretRef, ...] = ()
    """Keys clients must present. Empty means the gateway is open."""
    admin_api_key: SecretRef | None = None
    """Required for the admin API; unset means the admin API is closed."""

    @property
    def host(self) -> str:
        host, _, _ = self.bind.rpartition(":")
        return host.strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """``[tracing]``: OpenTelemetry spans, one trace per request (the ``otel`` extra)."""

    enabled: bool = False
    service_name: str = "rakka-inference"
    exporter: Literal["otlp", "console", "none"] = "otlp"
    endpoint: str | None = None
    """OTLP/HTTP traces URL; unset: ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or the
    exporter's default (``http://localhost:4318/v1/traces``)."""
    sample_ratio: float = 1.0
    """The share of requests traced, unless the caller's trace decides (parent-based)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """A whole configuration: the cluster, its deployments, and tracing."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    deployments: tuple[Deployment, ...] = ()
    tracing: TracingConfig = field(default_factory=TracingConfig)

    def deployment(self, name: str) -> Deployment:
        for deployment in self.deployments:
            if deployment.name == name:
                return deployment
        raise KeyError(name)


# --------------------------------------------------------------------------- inference


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
