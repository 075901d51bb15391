"""The gateway's metrics (DESIGN §6), on the registry of :mod:`.prometheus`.

Counted as requests end (:meth:`InferenceMetrics.record`, from the RequestActor's
``on_done``)::

    inference_requests_total{deployment,provider,outcome}
    inference_request_duration_seconds{deployment,provider}        histogram
    inference_time_to_first_token_seconds{deployment,provider}     histogram
    inference_inter_token_latency_seconds{deployment,provider}     histogram
    inference_tokens_in_total{deployment,provider,model}
    inference_tokens_out_total{deployment,provider,model}
    inference_cost_usd_total{deployment,provider,model}
    inference_retries_total{deployment,outcome}                    attempts tried again
    inference_gateway_overhead_seconds                             histogram

Counted as they happen::

    inference_circuit_transitions_total{provider,model,state}      a breaker entered state
    inference_budget_exceeded_total{deployment,window,action}      spend went over a limit
    inference_connections_shed_total{reason}                       a client connection closed
                                                                   to protect the server

Read when ``/metrics`` is scraped, from every replica given to :meth:`watch_replica`::

    inference_circuit_state{deployment,replica}        0 closed, 1 half-open, 2 open
    inference_ratelimit_utilization{deployment,replica,dimension}
                                                       used / configured, rpm and tpm
    inference_workers_busy{deployment,replica}
    inference_workers_idle{deployment,replica}
    inference_queue_depth{deployment,replica}
    inference_context_restarts{deployment,replica}     a local replica's rebuilt contexts
    inference_batch_size{deployment,replica}           a local replica's decode batch
    inference_kv_cache_usage{deployment,replica}       an engine server's KV-cache use, 0-1
    inference_engine_queue_depth{deployment,replica}   requests waiting inside the engine
    inference_connections_open                         client connections open now

Tokens per second are ``rate(inference_tokens_out_total[1m])``. The last two come from the
engine's own metrics (vLLM, SGLang, llama.cpp), read by its replica; a replica whose
engine has not reported lately has no sample.

Labels carry only names from the configuration (deployment, replica, provider) and the
outcome, which is ``ok`` or an error class's ``outcome`` (a bounded set). Never a request
id, never the model string a client sent, never a credential or its fingerprint. A request
that ended before it was routed to a deployment (unknown model, bad client key) is counted
with ``deployment=""``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from rakka_inference.engine.budget import BudgetEvent
from rakka_inference.engine.report import RequestRecord
from rakka_inference.local.engine_metrics import EngineLoad
from rakka_inference.observe.prometheus import (
    CONTENT_TYPE,
    DEFAULT_MAX_SERIES,
    CounterChild,
    HistogramChild,
    LabelValues,
    Registry,
)
from rakka_inference.remote.breaker import BreakerState, BreakerTransition

__all__ = [
    "CIRCUIT_STATE_VALUES",
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "GATEWAY_OVERHEAD_BUCKETS",
    "INTER_TOKEN_BUCKETS",
    "TTFT_BUCKETS",
    "BreakerView",
    "ConnectionsView",
    "InferenceMetrics",
    "LimiterView",
    "ReplicaGauges",
    "UtilizationView",
]

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
"""Whole requests: a cached short answer in tens of ms, a long generation in minutes."""
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2.5)
GATEWAY_OVERHEAD_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1)
"""The gateway's own added time: tens of µs when healthy, ms when something is wrong."""

CIRCUIT_STATE_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

_MAX_OUTCOMES = 64
"""Outcome children cached per (deployment, provider); more still count, uncached."""


class BreakerView(Protocol):
    @property
    def state(self) -> BreakerState: ...


class UtilizationView(Protocol):
    """A limiter's snapshot: used over configured, ``None`` where that limit is off."""

    @property
    def request_utilization(self) -> float | None: ...

    @property
    def token_utilization(self) -> float | None: ...


class LimiterView(Protocol):
    def utilization(self) -> UtilizationView: ...


class ConnectionsView(Protocol):
    """The server's client connections (:class:`~rakka_inference.runtime.connection_limits.
    ConnectionGuard`)."""

    @property
    def open_connections(self) -> int: ...

    @property
    def shed_reasons(self) -> Iterable[str]:
        """Every reason a connection may be shed for (:meth:`InferenceMetrics.
        connection_shed`)."""
        ...


class ContextView(Protocol):
    @property
    def context_restarts(self) -> int: ...

    @property
    def batch_size(self) -> int | None: ...

    @property
    def engine_load(self) -> EngineLoad | None: ...


class ReplicaGauges(Protocol):
    """What a replica shows to the scrape. :class:`RemoteEngineCore` is one as it is; a
    replica with no breaker or no limiter (a local engine) answers ``None`` there and its
    circuit or rate-limit series are left out."""

    @property
    def name(self) -> str: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def queued(self) -> int: ...

    @property
    def capacity(self) -> int:
        """Requests it may run at once now (its busy plus idle workers)."""
        ...

    @property
    def breaker(self) -> BreakerView | None: ...

    @property
    def limiter(self) -> LimiterView | None: ...

    @property
    def context(self) -> ContextView | None:
        """A local replica's model context (None for a remote one)."""
        ...


class _Series:
    """The children of one (deployment, provider, model): one dict lookup per record()."""

    __slots__ = (
        "cost",
        "duration",
        "key",
        "outcomes",
        "tokens_in",
        "tokens_out",
        "ttft",
    )

    def __init__(self, metrics: InferenceMetrics, key: LabelValues, model: str) -> None:
        self.key = key
        self.outcomes: dict[str, CounterChild] = {}
        self.duration = metrics.request_duration.labels(*key)
        self.ttft = metrics.time_to_first_token.labels(*key)
        self.tokens_in = metrics.tokens_in.labels(*key, model)
        self.tokens_out = metrics.tokens_out.labels(*key, model)
        self.cost = metrics.cost_usd.labels(*key, model)


class InferenceMetrics:
    """The gateway's metrics; render them with :meth:`render` for ``/metrics``.

    Record from the event loop's thread (see :mod:`.prometheus`).
    """

    CONTENT_TYPE = CONTENT_TYPE

    def __init__(
        self, registry: Registry | None = None, *, max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        """Register the metrics on ``registry`` (a new one by default); each holds at most
        ``max_series`` label sets (see :mod:`.prometheus` for what happens past that)."""
        self.registry = registry = Registry() if registry is None else registry
        self._max_series = max_series
        pair = ("deployment", "provider")
        replica = ("deployment", "replica")
        self.requests = registry.counter(
            "inference_requests_total",
            "Requests ended, by outcome (ok, or the error that ended them).",
            (*pair, "outcome"),
            max_series=max_series,
        )
        self.request_duration = registry.histogram(
            "inference_request_duration_seconds",
            "Time from routing a request to its last chunk.",
            pair,
            buckets=DURATION_BUCKETS,
            max_series=max_series,
        )
        self.time_to_first_token = registry.histogram(
            "inference_time_to_first_token_seconds",
            "Time from routing a request to its first visible chunk.",
            pair,
            buckets=TTFT_BUCKETS,
            max_series=max_series,
        )
        self.inter_token_latency = registry.histogram(
            "inference_inter_token_latency_seconds",
            "Time between consecutive visible chunks of a streamed answer.",
            pair,
            buckets=INTER_TOKEN_BUCKETS,
            max_series=max_series,
        )
        priced = (*pair, "model")
        self.tokens_in = registry.counter(
            "inference_tokens_in_total",
            "Prompt tokens, cached ones included (model: the deployment's upstream model).",
            priced,
            max_series=max_series,
        )
        self.tokens_out = registry.counter(
            "inference_tokens_out_total",
            "Generated tokens, reasoning included.",
            priced,
            max_series=max_series,
        )
        self.cost_usd = registry.counter(
            "inference_cost_usd_total",
            "Estimated cost in US dollars, by the price table.",
            priced,
            max_series=max_series,
        )
        self.retries = registry.counter(
            "inference_retries_total",
            "Failed attempts an engine tried again, by the deployment and the failure "
            "(rate_limited, server_error, timed_out ...).",
            ("deployment", "outcome"),
            max_series=max_series,
        )
        self.circuit_transitions = registry.counter(
            "inference_circuit_transitions_total",
            "Circuit breaker transitions, by the upstream's provider and model and the state "
            "entered (open, half_open, closed).",
            ("provider", "model", "state"),
            max_series=max_series,
        )
        self.budget_exceeded = registry.counter(
            "inference_budget_exceeded_total",
            "Times a deployment's spend went over a budget limit, by window (hour, day) and "
            "the action its budget takes (reject, warn, throttle).",
            ("deployment", "window", "action"),
            max_series=max_series,
        )
        self.gateway_overhead = registry.histogram(
            "inference_gateway_overhead_seconds",
            "Time the gateway itself adds to a request (parsing, routing, encoding).",
            buckets=GATEWAY_OVERHEAD_BUCKETS,
        )
        gauges = (
            ("inference_circuit_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open."),
            ("inference_workers_busy", "Requests running on the replica now."),
            ("inference_workers_idle", "Free request slots on the replica now."),
            ("inference_queue_depth", "Requests waiting in the replica's queue."),
        )
        collects = (self._circuit_states, self._workers_busy, self._workers_idle, self._queue_depth)
        for (name, help_text), collect in zip(gauges, collects, strict=True):
            registry.gauge_callback(name, help_text, replica, collect, max_series=max_series)
        registry.gauge_callback(
            "inference_context_restarts",
            "A local replica's model contexts rebuilt since it started (poisoned, or out of "
            "memory while loading).",
            replica,
            self._context_restarts,
            max_series=max_series,
        )
        registry.gauge_callback(
            "inference_batch_size",
            "Requests in a local replica's running decode batch.",
            replica,
            self._batch_size,
            max_series=max_series,
        )
        registry.gauge_callback(
            "inference_kv_cache_usage",
            "An engine server's KV-cache use, 0 to 1, as the engine reports it.",
            replica,
            self._kv_cache_usage,
            max_series=max_series,
        )
        registry.gauge_callback(
            "inference_engine_queue_depth",
            "Requests waiting inside an engine server, as the engine reports it.",
            replica,
            self._engine_waiting,
            max_series=max_series,
        )
        registry.gauge_callback(
            "inference_ratelimit_utilization",
            "Rate-limit use in the current window over the configured limit (rpm, tpm).",
            (*replica, "dimension"),
            self._ratelimit_utilization,
            max_series=max_series,
        )
        self.connections_shed = registry.counter(
            "inference_connections_shed_total",
            "Client connections the server closed to protect itself, by reason "
            "(head_timeout, body_timeout, client_limit, total_limit, request_line_too_long, "
            "header_too_long, head_too_large).",
            ("reason",),
            max_series=max_series,
        )
        registry.gauge_callback(
            "inference_connections_open",
            "Client connections open now on this process.",
            (),
            self._connections_open,
        )
        self._series: dict[LabelValues, _Series] = {}
        self._inter_token: dict[LabelValues, HistogramChild] = {}
        self._replicas: dict[LabelValues, ReplicaGauges] = {}
        self._connections: ConnectionsView | None = None

    # ------------------------------------------------------------------ counted

    def _series_for(self, deployment: str, provider: str, model: str = "") -> _Series:
        key = (deployment, provider)
        series = self._series.get((deployment, provider, model))
        if series is None:
            series = _Series(self, key, model)
            # The metrics fold past max_series by themselves; the cache only stops growing.
            if len(self._series) < self._max_series:
                self._series[deployment, provider, model] = series
        return series

    def record(self, record: RequestRecord, provider: str, model: str = "") -> None:
        """Count one finished request: outcome, latency, TTFT, tokens and cost (these by
        ``model`` too: the deployment's upstream model, from the config)."""
        series = self._series_for(record.deployment or "", provider, model)
        outcome = record.outcome
        counter = series.outcomes.get(outcome)
        if counter is None:
            counter = self.requests.labels(*series.key, outcome)
            if len(series.outcomes) < min(_MAX_OUTCOMES, self._max_series):
                series.outcomes[outcome] = counter
        counter.inc()
        series.duration.observe(record.latency_s)
        if record.ttft_s is not None:
            series.ttft.observe(record.ttft_s)
        for deployment, retried in record.retries:
            self.retries.labels(deployment, retried).inc()
        usage = record.usage
        series.tokens_in.inc(usage.input_tokens)
        series.tokens_out.inc(usage.output_tokens)
        if record.cost_usd is not None:
            series.cost.inc(record.cost_usd)

    def observe_inter_token(self, deployment: str, provider: str, seconds: float) -> None:
        """The gap between two visible chunks of one streamed answer."""
        child = self._inter_token.get((deployment, provider))
        if child is None:
            child = self.inter_token_latency.labels(deployment, provider)
            if len(self._inter_token) < self._max_series:
                self._inter_token[deployment, provider] = child
        child.observe(seconds)

    def circuit_transition(self, transition: BreakerTransition) -> None:
        """Count one circuit breaker transition (a breaker registry's observer)."""
        key = transition.key
        self.circuit_transitions.labels(key.provider, key.model, transition.to_state.value).inc()

    def budget_event(self, event: BudgetEvent) -> None:
        """Count a budget limit crossed (a ledger's ``on_event``); a return under it is not
        counted."""
        if event.exceeded:
            self.budget_exceeded.labels(
                event.deployment, event.window.value, event.action.value
            ).inc()

    def observe_gateway_overhead(self, seconds: float) -> None:
        self.gateway_overhead.observe(seconds)

    def connection_shed(self, reason: str) -> None:
        """Count a client connection the server closed, and why (a bounded set)."""
        self.connections_shed.labels(reason).inc()

    def watch_connections(self, connections: ConnectionsView) -> None:
        """Report ``connections``' open count from now on, and each reason it may shed a
        connection for from zero (the shed ones are counted by :meth:`connection_shed`)."""
        self._connections = connections
        for reason in connections.shed_reasons:
            self.connections_shed.labels(reason)

    # ------------------------------------------------------------------ read at scrape

    def watch_replica(self, deployment: str, replica: ReplicaGauges) -> None:
        """Report ``replica``'s gauges from now on (replacing one of the same name)."""
        self._replicas[deployment, replica.name] = replica

    def unwatch_replica(self, deployment: str, replica: ReplicaGauges | str) -> None:
        """Stop reporting a replica (given itself or its name); unknown ones are ignored."""
        name = replica if isinstance(replica, str) else replica.name
        self._replicas.pop((deployment, name), None)

    def _circuit_states(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            breaker = replica.breaker
            if breaker is not None:
                yield key, CIRCUIT_STATE_VALUES[breaker.state]

    def _ratelimit_utilization(self) -> Iterator[tuple[LabelValues, float]]:
        for (deployment, name), replica in self._replicas.items():
            limiter = replica.limiter
            if limiter is None:
                continue
            snapshot = limiter.utilization()
            rpm, tpm = snapshot.request_utilization, snapshot.token_utilization
            if rpm is not None:
                yield (deployment, name, "rpm"), rpm
            if tpm is not None:
                yield (deployment, name, "tpm"), tpm

    def _context_restarts(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            context = replica.context
            if context is not None:
                yield key, context.context_restarts

    def _batch_size(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            context = replica.context
            size = None if context is None else context.batch_size
            if size is not None:
                yield key, size

    def _engine_loads(self) -> Iterator[tuple[LabelValues, EngineLoad]]:
        for key, replica in self._replicas.items():
            context = replica.context
            load = None if context is None else context.engine_load
            if load is not None:
                yield key, load

    def _kv_cache_usage(self) -> Iterator[tuple[LabelValues, float]]:
        for key, load in self._engine_loads():
            if load.kv_cache_usage is not None:
                yield key, load.kv_cache_usage

    def _engine_waiting(self) -> Iterator[tuple[LabelValues, float]]:
        for key, load in self._engine_loads():
            if load.waiting is not None:
                yield key, load.waiting

    def _workers_busy(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            yield key, replica.in_flight

    def _workers_idle(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            yield key, max(0, replica.capacity - replica.in_flight)

    def _queue_depth(self) -> Iterator[tuple[LabelValues, float]]:
        for key, replica in self._replicas.items():
            yield key, replica.queued

    def _connections_open(self) -> Iterator[tuple[LabelValues, float]]:
        if self._connections is not None:
            yield (), self._connections.open_connections

    # ------------------------------------------------------------------ exposition

    def render(self) -> bytes:
        """The registry in the Prometheus text format; serve it with :data:`CONTENT_TYPE`."""
        return self.registry.render()
