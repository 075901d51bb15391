"""A grow-only counter (G-Counter CRDT) of rate-limit spend, in time buckets.

The state is a map ``bucket -> node -> Spend`` plus a ``horizon`` (the oldest bucket kept).
Bucket ``b`` holds what was *admitted* in ``[b w, (b + 1) w)`` (``w`` is the bucket width,
the sync interval); a node only ever writes its own entries, and every component of an
entry only grows:

- ``requests`` and ``tokens`` count grants and their token estimates (plus any overrun a
  settlement reported);
- ``refunded`` counts tokens given back at settlement (estimate minus actual usage), in
  the bucket of the original grant, so they leave the window together with it.

Spend is ``requests`` and ``tokens - refunded``. Keeping refunds as a third grow-only
component, rather than decrementing, is what keeps the counter a G-Counter (the product of
three G-Counters is one: the order is componentwise).

Merge and its laws
------------------
``merge`` takes, for every bucket and node, the componentwise maximum of the two entries,
and the larger horizon. It is commutative, associative and idempotent, and monotone: no
entry of a live bucket ever decreases (``tests/remote/test_gcounter.py`` checks all four with
Hypothesis).

Pruning
-------
A bucket is live at time ``t`` while ``(b + 1) w + window > t``, i.e. for
``b >= floor((t - window) / w)``, the *horizon*; older buckets are dropped, so a counter
holds at most ``window / w + 1`` buckets. Counting whole buckets is conservative: a grant
counts for up to ``window + w`` seconds, never less than ``window``.

Pruning must not break the laws. It is the projection ``prune_h`` that drops buckets below
``h``; it distributes over merge (``prune_h(a ⊔ b) = prune_h(a) ⊔ prune_h(b)``) and composes
as ``prune_h ∘ prune_g = prune_max(h, g)``. Making the horizon part of the state, merged by
max, and pruning after every merge, the state space is the set of ``(h, entries >= h)`` and
merge is ``(max(h1, h2), prune_max(e1 ⊔ e2))``: still commutative, associative and
idempotent, and monotone on every bucket that is still live. A late delta that carries a
pruned bucket is ignored rather than resurrecting it.

Deltas
------
``add`` records which entries it changed; ``take_delta()`` hands them over (and forgets
them) as a :class:`CounterState` holding only those entries, with their full current
values (a delta-state, so applying it twice, or out of order, is harmless).
``row(node)`` is the node's whole live row, for anti-entropy after a lost message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["NO_HORIZON", "Spend", "ZERO", "CounterState", "BucketedGCounter"]

NO_HORIZON = -(2**63)
_new_tuple = tuple.__new__


class Spend(NamedTuple):
    """One node's spend in one bucket. Every component only grows."""

    requests: int = 0
    tokens: int = 0
    refunded: int = 0

    @property
    def net_tokens(self) -> int:
        return self.tokens - self.refunded

    def join(self, other: Spend) -> Spend:
        """The componentwise maximum (the G-Counter merge of one entry)."""
        return Spend(
            max(self.requests, other.requests),
            max(self.tokens, other.tokens),
            max(self.refunded, other.refunded),
        )

    def dominates(self, other: Spend) -> bool:
        return (
            self.requests >= other.requests
            and self.tokens >= other.tokens
            and self.refunded >= other.refunded
        )


ZERO = Spend()


@dataclass(frozen=True, slots=True)
class CounterState:
    """An immutable copy of a counter's state, or of part of it (a delta).

    Canonical: no zero entries, no empty buckets, no bucket below the horizon.
    """

    horizon: int = NO_HORIZON
    buckets: Mapping[int, Mapping[str, Spend]] = field(default_factory=dict)

    def entries(self) -> Iterable[tuple[int, str, Spend]]:
        for bucket, row in self.buckets.items():
            for node, spend in row.items():
                yield bucket, node, spend


class BucketedGCounter:
    """The replicated spend of one rate-limit key: see the module docstring."""

    __slots__ = (
        "_buckets",
        "_dirty",
        "_horizon",
        "_prune_at",
        "_totals",
        "bucket_width",
        "requests",
        "tokens",
        "window",
    )

    def __init__(self, *, bucket_width: float = 1.0, window: float = 60.0) -> None:
        if bucket_width <= 0 or window <= 0:
            raise ValueError("bucket_width and window must be > 0")
        self.bucket_width = bucket_width
        self.window = window
        self._horizon = NO_HORIZON
        self._prune_at = -math.inf
        """Once the clock reaches this, the oldest live bucket has left the window."""
        self._buckets: dict[int, dict[str, Spend]] = {}
        self._totals: dict[int, list[int]] = {}
        """Per bucket, the sum over nodes: [requests, net tokens]."""
        self.requests = 0
        """Requests in the live buckets, all nodes (read-only: a running sum)."""
        self.tokens = 0
        """Net tokens (charged minus refunded) in the live buckets, all nodes (read-only)."""
        self._dirty: set[tuple[int, str]] = set()

    @classmethod
    def from_state(
        cls, state: CounterState, *, bucket_width: float = 1.0, window: float = 60.0
    ) -> BucketedGCounter:
        counter = cls(bucket_width=bucket_width, window=window)
        counter.merge(state)
        return counter

    # -- time

    def bucket_of(self, t: float) -> int:
        return math.floor(t / self.bucket_width)

    def horizon_at(self, t: float) -> int:
        """The oldest bucket still live at ``t``."""
        return math.floor((t - self.window) / self.bucket_width)

    def expires_at(self, bucket: int) -> float:
        """When ``bucket`` leaves the window."""
        return (bucket + 1) * self.bucket_width + self.window

    @property
    def horizon(self) -> int:
        return self._horizon

    # -- updates

    def add(
        self, node: str, bucket: int, *, requests: int = 0, tokens: int = 0, refunded: int = 0
    ) -> bool:
        """Grow ``node``'s entry in ``bucket``. False (and nothing changes) if the bucket is
        already pruned."""
        if requests < 0 or tokens < 0 or refunded < 0:
            raise ValueError("a G-Counter only grows")
        if not (requests or tokens or refunded):
            return bucket >= self._horizon
        return self.grow(node, bucket, requests, tokens, refunded)

    def grow(self, node: str, bucket: int, requests: int, tokens: int, refunded: int) -> bool:
        """:meth:`add` without the argument checks, for callers that add non-negative
        amounts, not all zero (the limiter's hot path)."""
        if bucket < self._horizon:
            return False
        row = self._buckets.get(bucket)
        if row is None:
            row = self._buckets[bucket] = {}
            self._totals[bucket] = [0, 0]
        old = row.get(node, ZERO)
        # tuple.__new__ skips NamedTuple's Python-level constructor: this is the hot path.
        row[node] = _new_tuple(Spend, (old[0] + requests, old[1] + tokens, old[2] + refunded))
        total = self._totals[bucket]
        total[0] += requests
        total[1] += tokens - refunded
        self.requests += requests
        self.tokens += tokens - refunded
        self._dirty.add((bucket, node))
        return True

    def merge(self, other: CounterState | BucketedGCounter) -> None:
        """Join ``other`` into this counter (per-entry componentwise max, max horizon)."""
        state = other.state() if isinstance(other, BucketedGCounter) else other
        if state.horizon > self._horizon:
            self.prune(state.horizon)
        horizon = self._horizon
        for bucket, incoming in state.buckets.items():
            if bucket < horizon:
                continue
            row = self._buckets.get(bucket)
            for node, spend in incoming.items():
                old = ZERO if row is None else row.get(node, ZERO)
                new = old.join(spend)
                if new == old:
                    continue
                if row is None:
                    row = self._buckets[bucket] = {}
                    self._totals[bucket] = [0, 0]
                row[node] = new
                d_requests = new.requests - old.requests
                d_tokens = new.net_tokens - old.net_tokens
                total = self._totals[bucket]
                total[0] += d_requests
                total[1] += d_tokens
                self.requests += d_requests
                self.tokens += d_tokens

    def prune(self, horizon: int) -> None:
        """Drop every bucket below ``horizon`` (the horizon never moves back)."""
        if horizon <= self._horizon:
            return
        self._horizon = horizon
        self._prune_at = (horizon + 1) * self.bucket_width + self.window
        for bucket in [b for b in self._buckets if b < horizon]:
            del self._buckets[bucket]
            requests, tokens = self._totals.pop(bucket)
            self.requests -= requests
            self.tokens -= tokens
        if self._dirty:
            self._dirty = {entry for entry in self._dirty if entry[0] >= horizon}

    def advance(self, t: float) -> None:
        """Prune what has left the window at time ``t``."""
        if t >= self._prune_at:
            self.prune(math.floor((t - self.window) / self.bucket_width))

    # -- reads

    def entry(self, node: str, bucket: int) -> Spend:
        row = self._buckets.get(bucket)
        return ZERO if row is None else row.get(node, ZERO)

    def node_total(self, node: str) -> Spend:
        """``node``'s spend summed over the live buckets."""
        requests = tokens = refunded = 0
        for row in self._buckets.values():
            spend = row.get(node)
            if spend is not None:
                requests += spend.requests
                tokens += spend.tokens
                refunded += spend.refunded
        return Spend(requests, tokens, refunded)

    def free_at(self, requests: int, tokens: int) -> float:
        """The earliest time by which at least ``requests`` requests and ``tokens`` net
        tokens of what is counted now have left the window (``-inf`` if nothing needs to
        leave, ``inf`` if not even all of it is enough)."""
        if requests <= 0 and tokens <= 0:
            return -math.inf
        for bucket in sorted(self._totals):
            freed_requests, freed_tokens = self._totals[bucket]
            requests -= freed_requests
            tokens -= freed_tokens
            if requests <= 0 and tokens <= 0:
                return self.expires_at(bucket)
        return math.inf

    def state(self) -> CounterState:
        """A canonical immutable copy of the whole state."""
        return CounterState(
            self._horizon, {bucket: dict(row) for bucket, row in sorted(self._buckets.items())}
        )

    def take_delta(self) -> CounterState:
        """The entries changed by ``add`` since the last call, with their current values."""
        buckets: dict[int, dict[str, Spend]] = {}
        for bucket, node in sorted(self._dirty):
            buckets.setdefault(bucket, {})[node] = self._buckets[bucket][node]
        self._dirty.clear()
        return CounterState(self._horizon, buckets)

    def row(self, node: str) -> CounterState:
        """Every live entry of ``node`` (anti-entropy: repairs any lost delta)."""
        buckets = {
            bucket: {node: row[node]}
            for bucket, row in sorted(self._buckets.items())
            if node in row
        }
        return CounterState(self._horizon, buckets)

    def __repr__(self) -> str:
        return (
            f"BucketedGCounter(buckets={len(self._buckets)}, requests={self.requests}, "
            f"tokens={self.tokens})"
        )
