"""Circuits shared by a node's workers: a breaker that opens on one opens on all.

Each worker keeps its own :class:`~rakka_inference.remote.breaker.CircuitBreaker` per
(provider, endpoint, upstream model), fed by its own calls. :class:`CircuitGossip` tells
the others of the transitions that carry news, as :class:`~rakka_inference.remote.
replicator_codec.CircuitSignal` datagrams:

- a breaker that opens (it tripped, a probe failed, an operator forced it) sends ``open``
  with the time left open; a worker that hears it forces its own breaker open for that
  long **plus** ``hold_s``. So the worker that saw the failures sends the probe when its
  period ends, and the fleet does not each send one into a dead provider; if that worker is
  gone, the others' periods end ``hold_s`` later and they probe themselves.
- a breaker that closes (a probe succeeded, an operator forced it) sends ``closed``, and a
  worker that hears it closes its own.

Transitions a signal caused are not sent on (no echo), and a signal for a breaker this
worker does not have is ignored: that worker makes no calls there. A signal names the
breaker by its whole key, so one model's circuit opening never opens another's; a signal
from a worker of the release before, which names no model, speaks for every model at its
endpoint, as that worker's one breaker did.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from rakka_inference.remote.breaker import (
    BreakerEvent,
    BreakerState,
    BreakerTransition,
    CircuitBreaker,
)
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.replicator_codec import CircuitSignal
from rakka_inference.remote.replicator_unix import ReplicatorStats

__all__ = ["DEFAULT_HOLD_S", "CircuitChannel", "CircuitGossip", "traffic_metrics"]

log = logging.getLogger("rakka_inference.cluster.gossip")

DEFAULT_HOLD_S = 2.0
"""How much longer than the worker that opened it the others keep a circuit open."""

_NEWS_OPEN = frozenset({BreakerEvent.TRIP, BreakerEvent.PROBE_FAILED, BreakerEvent.FORCE_OPEN})
_NEWS_CLOSED = frozenset({BreakerEvent.PROBE_SUCCEEDED, BreakerEvent.FORCE_CLOSE})


class CircuitChannel(Protocol):
    """What carries the signals: the node's Unix datagrams, or the Ray gateways' calls."""

    @property
    def node_id(self) -> str: ...

    def publish_circuit(self, signal: CircuitSignal) -> None: ...

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None: ...


class CircuitGossip:
    """Sends this worker's circuit news to the others and applies theirs."""

    def __init__(self, replicator: CircuitChannel, *, hold_s: float = DEFAULT_HOLD_S) -> None:
        self._replicator = replicator
        self.hold_s = hold_s
        self.breakers: BreakerRegistry | None = None
        self._applying = False
        self.sent = 0
        self.applied = 0
        replicator.subscribe_circuit(self.on_signal)

    def on_transition(self, transition: BreakerTransition) -> None:
        """The breaker registry's observer: send what the others should know."""
        if self._applying:
            return
        key = transition.key
        origin = self._replicator.node_id
        if transition.to_state is BreakerState.OPEN and transition.event in _NEWS_OPEN:
            open_for = (
                0.0 if transition.open_until is None else transition.open_until - transition.at
            )
            signal = CircuitSignal(
                origin, key.provider, key.endpoint, "open", max(0.0, open_for), model=key.model
            )
        elif transition.to_state is BreakerState.CLOSED and transition.event in _NEWS_CLOSED:
            signal = CircuitSignal(origin, key.provider, key.endpoint, "closed", model=key.model)
        else:
            return
        self._replicator.publish_circuit(signal)
        self.sent += 1

    def on_signal(self, signal: CircuitSignal) -> None:
        """Another worker's news: open or close this worker's breaker to match."""
        if self.breakers is None:
            return
        key = signal.key
        breakers: tuple[CircuitBreaker, ...]
        if key is None:
            breakers = self.breakers.at_endpoint(signal.provider, signal.endpoint)
        else:
            breaker = self.breakers.get(key)
            breakers = () if breaker is None else (breaker,)
        for breaker in breakers:
            self._apply(breaker, signal)

    def _apply(self, breaker: CircuitBreaker, signal: CircuitSignal) -> None:
        by = f"worker {signal.origin}"
        self._applying = True
        try:
            if signal.state == "open":
                breaker.force_open(signal.open_for_s + self.hold_s, by=by)
            elif breaker.state is not BreakerState.CLOSED:
                breaker.force_close(by=by)
            else:
                return
            self.applied += 1
        finally:
            self._applying = False


def traffic_metrics(
    stats: ReplicatorStats, lease_round_trips: int, gossip: CircuitGossip, *, peers: str
) -> list[str]:
    """A member's exposition lines for what it exchanges with its ``peers`` (``workers``
    of a node, ``gateways`` of a cluster): limiter sync, strict leases, circuit signals."""
    sent, received = stats.datagrams_sent, stats.datagrams_received
    return [
        "# HELP inference_node_sync_datagrams_total Datagrams of limiter spend and circuit "
        f"news this member sent to or received from the other {peers}.",
        "# TYPE inference_node_sync_datagrams_total counter",
        f'inference_node_sync_datagrams_total{{direction="sent"}} {sent}',
        f'inference_node_sync_datagrams_total{{direction="received"}} {received}',
        "# HELP inference_node_sync_bytes_total Bytes of those datagrams.",
        "# TYPE inference_node_sync_bytes_total counter",
        f'inference_node_sync_bytes_total{{direction="sent"}} {stats.bytes_sent}',
        f'inference_node_sync_bytes_total{{direction="received"}} {stats.bytes_received}',
        "# HELP inference_node_sync_dropped_total Datagrams lost: refused as malformed, not "
        "delivered to a peer, or a key too large to send.",
        "# TYPE inference_node_sync_dropped_total counter",
        f'inference_node_sync_dropped_total{{reason="malformed"}} {stats.dropped_malformed}',
        f'inference_node_sync_dropped_total{{reason="send_failed"}} {stats.send_failures}',
        f'inference_node_sync_dropped_total{{reason="too_large"}} {stats.dropped_too_large}',
        "# HELP inference_node_lease_round_trips_total Strict-limit lease requests this member "
        "made to the authority.",
        "# TYPE inference_node_lease_round_trips_total counter",
        f"inference_node_lease_round_trips_total {lease_round_trips}",
        "# HELP inference_node_circuit_signals_total Circuit transitions this member told the "
        "others (sent) or took from them (applied).",
        "# TYPE inference_node_circuit_signals_total counter",
        f'inference_node_circuit_signals_total{{direction="sent"}} {gossip.sent}',
        f'inference_node_circuit_signals_total{{direction="applied"}} {gossip.applied}',
    ]
