"""Circuits shared by a node's workers: a breaker that opens on one opens on all.

Each worker keeps its own :class:`~rakka_inference.remote.breaker.CircuitBreaker` per
(provider, endpoint), fed by its own calls. :class:`CircuitGossip` tells the others of the
transitions that carry news, as :class:`~rakka_inference.remote.replicator_codec.
CircuitSignal` datagrams:

- a breaker that opens (it tripped, a probe failed, an operator forced it) sends ``open``
  with the time left open; a worker that hears it forces its own breaker open for that
  long **plus** ``hold_s``. So the worker that saw the failures sends the probe when its
  period ends, and the fleet does not each send one into a dead provider; if that worker is
  gone, the others' periods end ``hold_s`` later and they probe themselves.
- a breaker that closes (a probe succeeded, an operator forced it) sends ``closed``, and a
  worker that hears it closes its own.

Transitions a signal caused are not sent on (no echo), and a signal for an endpoint this
worker has no breaker for is ignored: that worker makes no calls there.
"""

from __future__ import annotations

import logging

from rakka_inference.remote.breaker import (
    BreakerEvent,
    BreakerKey,
    BreakerState,
    BreakerTransition,
)
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.replicator_codec import CircuitSignal
from rakka_inference.remote.replicator_unix import UnixDatagramReplicator

__all__ = ["DEFAULT_HOLD_S", "CircuitGossip"]

log = logging.getLogger("rakka_inference.cluster.gossip")

DEFAULT_HOLD_S = 2.0
"""How much longer than the worker that opened it the others keep a circuit open."""

_NEWS_OPEN = frozenset({BreakerEvent.TRIP, BreakerEvent.PROBE_FAILED, BreakerEvent.FORCE_OPEN})
_NEWS_CLOSED = frozenset({BreakerEvent.PROBE_SUCCEEDED, BreakerEvent.FORCE_CLOSE})


class CircuitGossip:
    """Sends this worker's circuit news to the others and applies theirs."""

    def __init__(
        self, replicator: UnixDatagramReplicator, *, hold_s: float = DEFAULT_HOLD_S
    ) -> None:
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
        if transition.to_state is BreakerState.OPEN and transition.event in _NEWS_OPEN:
            open_for = (
                0.0 if transition.open_until is None else transition.open_until - transition.at
            )
            signal = CircuitSignal(
                self._replicator.node_id, key.provider, key.endpoint, "open", max(0.0, open_for)
            )
        elif transition.to_state is BreakerState.CLOSED and transition.event in _NEWS_CLOSED:
            signal = CircuitSignal(
                self._replicator.node_id, key.provider, key.endpoint, "closed", 0.0
            )
        else:
            return
        self._replicator.publish_circuit(signal)
        self.sent += 1

    def on_signal(self, signal: CircuitSignal) -> None:
        """Another worker's news: open or close this worker's breaker to match."""
        if self.breakers is None:
            return
        breaker = self.breakers.get(BreakerKey(signal.provider, signal.endpoint))
        if breaker is None:
            return
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
