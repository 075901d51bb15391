"""What a request leaves behind: the engine's :class:`RequestReport` and the gateway's
:class:`RequestRecord`.

An engine writes one report per request it admitted, when the request ends, onto the
request's stream (:attr:`~rakka_inference.engine.stream.RequestStream.report`): the one
channel it travels on. The RequestActor folds the reports of every replica it tried into
the request's record, which metrics, the log line and the trace read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.usage import Usage

__all__ = ["RequestRecord", "RequestReport"]


@dataclass(frozen=True, slots=True)
class RequestReport:
    """What happened to one request in one engine, for metrics and the log line."""

    request_id: str
    outcome: str
    """``ok`` or the snake-case name of the error class that ended it."""
    error: InferenceError | None
    attempts: int
    usage: Usage
    cost_usd: float | None
    queued_s: float
    latency_s: float
    ttft_s: float | None
    retried: tuple[str, ...] = ()
    """The outcome of each failed attempt the engine tried again."""


@dataclass(slots=True)
class RequestRecord:
    """The figures of the per-request log line, across every replica tried."""

    request_id: str
    model: str
    deployment: str | None = None
    replica: str | None = None
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    outcome: str = "ok"
    latency_s: float = 0.0
    ttft_s: float | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    engine_s: float = 0.0
    """Time spent inside engines (queued, permits, upstream): the rest is the gateway's."""
    retries: list[tuple[str, str]] = field(default_factory=list)
    """(deployment, outcome) of each failed attempt that was tried again, in order."""

    def add(self, report: RequestReport) -> None:
        """Fold one engine's report into the record (its retries under the deployment being
        tried)."""
        self.attempts += report.attempts
        self.retries.extend((self.deployment or "", outcome) for outcome in report.retried)
        self.engine_s += report.latency_s
        if report.cost_usd is not None:
            self.cost_usd = (self.cost_usd or 0.0) + report.cost_usd

    def as_log_fields(self) -> dict[str, object]:
        return {
            "request_id": self.request_id,
            "model": self.model,
            "deployment": self.deployment,
            "replica": self.replica,
            "attempts": self.attempts,
            "fallbacks_tried": len(self.tried) - 1 if self.tried else 0,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_s * 1000, 3),
            "ttft_ms": None if self.ttft_s is None else round(self.ttft_s * 1000, 3),
            "tokens_in": self.usage.input_tokens,
            "tokens_out": self.usage.output_tokens,
            "cost_usd": self.cost_usd,
        }
