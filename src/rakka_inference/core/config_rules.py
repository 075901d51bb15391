"""The rules a configuration's values must follow beyond their types.

Two kinds, both pure functions over already-typed values:

- **field rules** (:func:`rule_for`): one value on its own — a count is positive, a
  fraction is in (0, 1], an endpoint is an http(s) URL, ``bind`` is ``host:port``. They are
  declared per record in one table and looked up along the record's MRO, so the rules of
  :class:`~.deployment.RemoteRuntimeConfig` apply to every remote provider;
- **record checks** (:func:`record_issues`): several fields of one record together — an
  Azure deployment names its resource, deployment and API version; a Vertex one its
  project, region and credentials; a budget sets at least one limit.

Each returns messages; the loader attaches them to field paths and lines.

One rule spans deployments: :func:`shared_limit_conflicts`. Remote deployments that send
the same credential for the same upstream model of one provider share one rate limiter
(the provider counts them together), so they must all set the same ``rate_limits``; an
unset table (unlimited) differs from a set one. Otherwise whichever deployment was built
last would silently decide the limits of all of them. :func:`shared_limit_key` is the one
place that forms a limiter's key — for the engines
(:func:`~rakka_inference.remote.factory.build_remote_engine`, which keys each limiter by the
fingerprint of the credential the config names) and for this check. Where the secrets are
read (``rakka validate``, ``rakka serve`` before it starts, every apply) the check compares
credentials by that same fingerprint, so two references that hold one key (two variables,
a variable and a file) are found as they would share; where they are not
(``rakka validate --no-secrets``, a config posted to the admin API before it is applied),
by *reference* (variable name, file path, a fingerprint of an inline value). A key's value
is never shown: a conflict names the two deployments, their field and their references.

Other rules across deployments need what only a later layer knows — the circuit
breakers' key holds the endpoint as the provider adapter builds it — so the loader takes
them as :data:`DeploymentCheck` functions from the layer that does (``rakka validate``
hands it :func:`~rakka_inference.remote.breaker_registry.breaker_conflicts`), and places
each :class:`DeploymentIssue` on its file's line like its own.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, NamedTuple, TypeAlias
from urllib.parse import urlsplit

from rakka_inference.core.deployment import (
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_REPLICAS,
    MAX_WORKERS,
    MIN_HEAD_LINE_BYTES,
    ClusterConfig,
    Deployment,
    TracingConfig,
)
from rakka_inference.core.policies import (
    MAX_CONCURRENT,
    Budget,
    CircuitBreakerConfig,
    ModelPrice,
    RateLimits,
    RetryPolicy,
    Serving,
    Timeouts,
)
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    EngineServerConfig,
    GeminiConfig,
    LiteLLMConfig,
    LlamaCppConfig,
    LocalRuntimeConfig,
    OpenAIConfig,
    RemoteRuntimeConfig,
    SentenceTransformersConfig,
    SglangConfig,
    TransformersConfig,
    VllmConfig,
)
from rakka_inference.core.secrets import Secret, SecretRef

__all__ = [
    "DeploymentCheck",
    "DeploymentIssue",
    "FieldRule",
    "LimitConflict",
    "record_issues",
    "rule_for",
    "shared_limit_conflicts",
    "shared_limit_key",
    "suggest",
]

FieldRule: TypeAlias = Callable[[Any], str | None]
"""Takes a converted value; returns what is wrong with it, or ``None``."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` when one of ``choices`` is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _greater_than(bound: float) -> FieldRule:
    return lambda value: None if value > bound else f"must be > {bound}, got {value}"


def _at_least(bound: float) -> FieldRule:
    return lambda value: None if value >= bound else f"must be >= {bound}, got {value}"


def _within(low: int, high: int) -> FieldRule:
    return lambda value: None if low <= value <= high else f"must be in {low}..{high}, got {value}"


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def _ratio(value: float) -> str | None:
    return None if 0 <= value <= 1 else f"must be in [0, 1], got {value}"


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _non_empty_items(values: tuple[str, ...]) -> str | None:
    return None if all(item.strip() for item in values) else "must not contain empty names"


def _http_url(value: str) -> str | None:
    # The value is not echoed: a URL may carry credentials in its user-info part.
    parts = urlsplit(value)
    if parts.scheme in ("http", "https") and parts.hostname:
        return None
    return "must be an http:// or https:// URL with a host"


def _origins(values: tuple[str, ...]) -> str | None:
    for value in values:
        if value == "*":
            continue
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return f"each must be '*' or an origin such as 'https://app.example.com', got {value!r}"
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            return f"an origin is a scheme, a host and maybe a port, no path: {value!r}"
    return None


def _host_port(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        return f"must be host:port, such as '127.0.0.1:8080' or '[::1]:8080', got {value!r}"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{host} is not an IPv6 address"
    elif ":" in host:
        return "an IPv6 address must be in brackets, such as '[::1]:8080'"
    if not 1 <= int(port) <= 65535:
        return f"port must be in 1..65535, got {int(port)}"
    return None


_POSITIVE: Final = _greater_than(0)
_NON_NEGATIVE: Final = _at_least(0)

_FIELD_RULES: Final[Mapping[type, Mapping[str, FieldRule]]] = {
    ClusterConfig: {
        "name": _non_empty,
        "bind": _host_port,
        "workers": _within(1, MAX_WORKERS),
        "cors_origins": _origins,
        "header_timeout_ms": _POSITIVE,
        "body_timeout_ms": _POSITIVE,
        "max_connections": _within(1, MAX_CONNECTIONS),
        "max_connections_per_client": _within(1, MAX_CONNECTIONS),
        "max_request_line_bytes": _within(MIN_HEAD_LINE_BYTES, MAX_HEAD_BYTES),
        "max_header_bytes": _within(MIN_HEAD_LINE_BYTES, MAX_HEAD_BYTES),
        "max_head_bytes": _within(MIN_HEAD_LINE_BYTES, MAX_HEAD_BYTES),
    },
    Deployment: {
        "name": _non_empty,
        "model": _non_empty,
        "replicas": _within(1, MAX_REPLICAS),
        "aliases": _non_empty_items,
        "fallbacks": _non_empty_items,
    },
    RemoteRuntimeConfig: {"endpoint": _http_url},
    AnthropicConfig: {"max_tokens_default": _POSITIVE},
    RateLimits: dict.fromkeys(
        ("requests_per_minute", "tokens_per_minute", "concurrent_requests", "sync_interval_ms"),
        _POSITIVE,
    ),
    RetryPolicy: {
        "max_retries": _NON_NEGATIVE,
        "initial_backoff_ms": _POSITIVE,
        "max_backoff_ms": _POSITIVE,
        "backoff_multiplier": _at_least(1),
        "max_retry_after_ms": _NON_NEGATIVE,
        "max_wait_ms": _NON_NEGATIVE,
    },
    CircuitBreakerConfig: {
        "failure_threshold": _POSITIVE,
        "open_duration_ms": _POSITIVE,
        "max_open_duration_ms": _POSITIVE,
        "half_open_max_probes": _POSITIVE,
        "failure_rate_threshold": _fraction,
        "failure_rate_window_ms": _POSITIVE,
        "failure_rate_min_calls": _POSITIVE,
    },
    Timeouts: dict.fromkeys(
        ("connect_timeout_ms", "request_timeout_ms", "read_timeout_ms", "total_timeout_ms"),
        _POSITIVE,
    ),
    Serving: {
        "max_concurrent": _within(1, MAX_CONCURRENT),
        # Every request passes through the queue, even to a free slot.
        "queue_capacity": _POSITIVE,
        "queue_timeout_ms": _NON_NEGATIVE,
    },
    Budget: {"max_spend_per_hour": _POSITIVE, "max_spend_per_day": _POSITIVE},
    ModelPrice: dict.fromkeys(
        ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"), _NON_NEGATIVE
    ),
    EngineServerConfig: {
        "port": _within(1, 65535),
        "command": _non_empty_items,
        "max_tokens_default": _POSITIVE,
        "startup_timeout_ms": _POSITIVE,
        "health_interval_ms": _POSITIVE,
        "health_timeout_ms": _POSITIVE,
        "health_failures": _POSITIVE,
        "metrics_interval_ms": _NON_NEGATIVE,
        "stop_grace_ms": _NON_NEGATIVE,
    },
    VllmConfig: {
        "tensor_parallel_size": _POSITIVE,
        "gpu_memory_utilization": _fraction,
        "max_model_len": _POSITIVE,
    },
    SglangConfig: {
        "tensor_parallel_size": _POSITIVE,
        "mem_fraction_static": _fraction,
        "context_length": _POSITIVE,
    },
    LlamaCppConfig: {"ctx_size": _POSITIVE, "n_gpu_layers": _NON_NEGATIVE},
    LocalRuntimeConfig: {"gpus": _NON_NEGATIVE},
    TransformersConfig: {"max_new_tokens_default": _POSITIVE},
    SentenceTransformersConfig: {"batch_size": _POSITIVE},
    TracingConfig: {"service_name": _non_empty, "endpoint": _http_url, "sample_ratio": _ratio},
}


def rule_for(cls: type, name: str) -> FieldRule | None:
    """The rule for field ``name`` of record ``cls`` (or of one of its bases), if any."""
    for klass in cls.__mro__:
        rule = _FIELD_RULES.get(klass, {}).get(name)
        if rule is not None:
            return rule
    return None


def record_issues(record: object) -> Iterator[tuple[str | None, str]]:
    """What is wrong across the fields of one record: ``(field, message)`` pairs.

    ``field`` is ``None`` when the issue belongs to the record as a whole.
    """
    match record:
        case RetryPolicy() if record.max_backoff_ms < record.initial_backoff_ms:
            yield "max_backoff_ms", f"must be >= initial_backoff_ms ({record.initial_backoff_ms})"
        case CircuitBreakerConfig() if record.max_open_duration_ms < record.open_duration_ms:
            yield "max_open_duration_ms", f"must be >= open_duration_ms ({record.open_duration_ms})"
        case Budget() if record.max_spend_per_hour is None and record.max_spend_per_day is None:
            yield None, "set max_spend_per_hour and/or max_spend_per_day"
        case OpenAIConfig():
            yield from _variant_fields(
                record, "azure", ("resource", "deployment", "api_version"), ("azure_ad_token",)
            )
        case GeminiConfig():
            yield from _variant_fields(record, "vertex", ("project", "region", "credentials"), ())
        case LiteLLMConfig() if record.endpoint is None:
            yield "endpoint", "is required: the URL of the LiteLLM proxy"
        case ClusterConfig():
            yield from _cluster_issues(record)
        case TracingConfig() if record.endpoint is not None and record.exporter != "otlp":
            yield "endpoint", f"applies only to exporter = 'otlp' (exporter is {record.exporter!r})"


def _cluster_issues(cluster: ClusterConfig) -> Iterator[tuple[str | None, str]]:
    if cluster.backend == "ray" and cluster.workers > 1:
        yield "workers", "applies only to backend = 'local' (on Ray: one gateway per node)"
    # A line passing the whole head would be cut at the head's limit first: say so here.
    for name in ("max_request_line_bytes", "max_header_bytes"):
        if getattr(cluster, name) > cluster.max_head_bytes:
            yield name, f"must be <= max_head_bytes ({cluster.max_head_bytes})"


def _variant_fields(
    record: OpenAIConfig | GeminiConfig,
    variant: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
) -> Iterator[tuple[str | None, str]]:
    """The variant's fields are set when it is chosen, and left out when it is not."""
    for name in required:
        if record.variant == variant and getattr(record, name) is None:
            yield name, f"is required when variant = {variant!r}"
    for name in required + optional:
        if record.variant != variant and getattr(record, name) is not None:
            yield name, f"applies only to variant = {variant!r} (variant is {record.variant!r})"


# --------------------------------------------------------------------------- across deployments


class LimitConflict(NamedTuple):
    """``deployment`` sets other ``rate_limits`` than ``first``, with whom it shares a limiter."""

    deployment: str
    first: str
    key: tuple[str, str, str]
    """(provider, the two credentials as their references say, model), for messages; never
    a secret's value."""
    position: int
    """Where ``deployment`` stands in the deployments checked."""

    @property
    def message(self) -> str:
        provider, credentials, model = self.key
        return (
            f"deployment {self.deployment!r}.runtime_config.rate_limits differs from "
            f"deployment {self.first!r}.runtime_config.rate_limits, with which it shares one "
            f"rate limiter (provider {provider!r}, key {credentials}, model {model!r}): "
            "deployments that share a rate limiter must set the same rate_limits (unset is "
            "unlimited)"
        )


class DeploymentIssue(NamedTuple):
    """An issue that a check across deployments (:data:`DeploymentCheck`) found in one."""

    position: int
    """Where the deployment stands in the deployments checked."""
    field: tuple[str, ...]
    """Its field, below the deployment: ``("runtime_config", "circuit_breaker")``."""
    message: str


DeploymentCheck: TypeAlias = Callable[[Sequence[Deployment]], Iterable[DeploymentIssue]]
"""A rule across a config's deployments (in file order) that the loader is handed by a
layer above it, for what the config layer cannot know (see the module)."""


def _reference(ref: SecretRef | None) -> str:
    """Where a credential comes from, for messages: an inline value only by fingerprint."""
    if ref is None:
        return "unset"
    if ref.source == "inline":
        return f"inline:{ref.resolve().fingerprint()}"
    return ref.describe()


def shared_limit_key(
    deployment: Deployment, credential: Secret | None = None
) -> tuple[str, str, str] | None:
    """The rate limiter a remote deployment shares: (provider, credential, upstream model);
    ``None`` for a local one. The credential is ``credential``'s fingerprint — the secret
    its config names, read (the engines' key) — else where the config says it comes from
    (an inline value by the same fingerprint)."""
    config = deployment.runtime_config
    if not isinstance(config, RemoteRuntimeConfig):
        return None
    ref = config.credential
    if credential is None and ref is not None and ref.source == "inline":
        credential = ref.resolve()
    identity = _reference(ref) if credential is None else credential.fingerprint()
    return (config.provider_label, identity, deployment.upstream_model)


def shared_limit_conflicts(
    deployments: Iterable[Deployment],
    read: Callable[[SecretRef], Secret | None] | None = None,
) -> Iterator[LimitConflict]:
    """Each deployment whose ``rate_limits`` differ from those of the first deployment
    (in order) on the same limiter key. With ``read``, each credential is keyed by the
    fingerprint of what ``read`` returns (by its reference where it returns None)."""
    first: dict[tuple[str, str, str], tuple[str, RateLimits, str]] = {}
    for position, deployment in enumerate(deployments):
        config = deployment.runtime_config
        if not isinstance(config, RemoteRuntimeConfig):
            continue
        ref = config.credential
        secret = None if read is None or ref is None else read(ref)
        key = shared_limit_key(deployment, secret)
        assert key is not None  # a remote deployment
        reference = _reference(ref)
        owner, limits, owner_reference = first.setdefault(
            key, (deployment.name, config.rate_limits, reference)
        )
        if limits != config.rate_limits:
            credentials = (
                reference
                if reference == owner_reference
                else f"{reference}, which holds the key of {owner_reference}"
            )
            yield LimitConflict(deployment.name, owner, (key[0], credentials, key[2]), position)
