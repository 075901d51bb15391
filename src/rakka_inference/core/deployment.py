"""Deployments and the configuration that holds them.

A :class:`Deployment` names a model served by replicas of one runtime
(:mod:`rakka_inference.core.runtimes`), with its policies
(:mod:`rakka_inference.core.policies`). A :class:`Config` is the cluster's settings and its
deployments. Everything here is an immutable value; the TOML loader
(:mod:`rakka_inference.core.config`) builds these from a file, tests and Python callers
build them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rakka_inference.core.policies import Budget, ModelPrice, Serving
from rakka_inference.core.runtimes import (
    _CONFIG_TYPES,
    RemoteRuntimeConfig,
    RuntimeConfig,
    RuntimeKind,
)
from rakka_inference.core.secrets import SecretRef

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_HEAD_BYTES",
    "MAX_REPLICAS",
    "MAX_WORKERS",
    "MIN_HEAD_LINE_BYTES",
    "ClusterConfig",
    "Config",
    "Deployment",
    "TracingConfig",
]

MAX_WORKERS = 128
"""The most worker processes ``[cluster].workers`` may ask for on one node."""
MAX_REPLICAS = 256
"""The most replicas one deployment runs, from a config or a scale: each is an engine with
its own queue and session, so an unbounded count is unbounded memory."""
MAX_CONNECTIONS = 1_000_000
"""The most ``[cluster].max_connections`` (and ``max_connections_per_client``) may be."""
MIN_HEAD_LINE_BYTES = 256
"""The least a request head's limits may be: what a client's ordinary request needs."""
MAX_HEAD_BYTES = 1024 * 1024
"""The most a request head's limits may be: past it, a head is not a request but an attack
(and the HTTP parser's cost grows faster than the head)."""


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
    cors_origins: tuple[str, ...] = ()
    """Web origins (``https://app.example.com``) whose pages may call the inference API
    from a browser; ``"*"`` for any. Empty (the default): no CORS headers at all."""
    backend: Literal["local", "ray"] = "local"
    """``local``: this machine (``workers`` processes). ``ray``: a gateway on every node of
    a Ray cluster (``pip install 'rakka-inference[ray]'``), with the cluster's singletons."""
    ray_address: str = "auto"
    """The Ray cluster to join with ``backend = "ray"``: ``auto`` (the local node's), an
    address ``host:port``, or ``ray://host:port``."""
    workers: int = 1
    """Processes serving ``bind`` on this node, 1 to :data:`MAX_WORKERS`. More than one
    runs a supervising parent and N workers that share the port, the rate limits (the
    CRDT over Unix datagrams; strict keys by leases from the parent) and the circuits."""
    mock_providers: bool = False
    """Serve the testkit's mock OpenAI, Anthropic and Gemini providers inside ``rakka
    serve`` (on loopback, any key accepted, an echo for an answer), and send every
    deployment of those runtimes that sets no ``endpoint`` to the mock of its format: a
    config that runs with no keys and no network (``examples/mock-providers.toml``). Not
    for production, and not with ``backend = "ray"``."""
    # What one client connection may cost the server (runtime.connection_guard).
    # Each serving process (each worker of a node) holds them for its own connections;
    # connections accepted after a reload get the reloaded values.
    header_timeout_ms: int = 10_000
    """A request head (its line and headers) must arrive whole within this time from its
    first byte (from the connection's opening, for its first request); else the connection
    is answered 408 and closed."""
    body_timeout_ms: int = 30_000
    """A request body must arrive whole within this time from the end of its head."""
    max_connections: int = 4096
    """Client connections open at once; past it a new one is closed as it is accepted.
    Lowered to what the process's open-file limit allows (``ulimit -n``)."""
    max_connections_per_client: int = 1024
    """Client connections open at once from one address (an IPv6 client: its /64), at most
    ``max_connections`` and lowered with it in proportion; behind a reverse proxy every
    connection comes from the proxy: raise it there."""
    max_request_line_bytes: int = 8192
    """The request line (``POST /v1/chat/completions HTTP/1.1``); longer: 414."""
    max_header_bytes: int = 8192
    """One header line (name and value); longer: 431."""
    max_head_bytes: int = 65_536
    """The request line and every header together; more: 431."""

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
