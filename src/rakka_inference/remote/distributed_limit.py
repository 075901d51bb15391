"""Rate limits across gateway nodes: approximate (a CRDT, bounded over-spend) or strict.

With ``RateLimits.strict`` every node asks one *authority* per key (:class:`StrictAuthority`),
which holds an exact :class:`~rakka_inference.remote.ratelimit.SlidingWindowLimiter`: zero
over-spend, one hop per permit. In one process the authority is a shared
:class:`~rakka_inference.remote.ratelimit.RateLimiter`; a cluster singleton (DESIGN §7) will
implement the same protocol. Otherwise each node decides alone, from a G-Counter of spend
(:mod:`rakka_inference.remote.gcounter`) that the nodes gossip through a
:class:`~rakka_inference.remote.replicator.Replicator`: one
:class:`~rakka_inference.remote.distributed_limit_approximate.ApproximateLimiter` per key,
whose admission rule and over-spend bound (``< L + N·c`` in every sliding window) are set
out in :mod:`rakka_inference.remote.distributed_limit_rule`.

:class:`DistributedRateLimiter` is one node's face: it hands out each key's limiter,
publishes the node's changes at every epoch boundary and merges the others'.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol, Unpack

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit_approximate import (
    ApproximateLimiter,
    ApproximateTuning,
)
from rakka_inference.remote.ratelimit import (
    Clock,
    LimiterKey,
    PermitSource,
    RateLimiter,
    RateLimitUtilization,
    Sleep,
)
from rakka_inference.remote.replicator import KeySync, Replicator, SyncMessage

__all__ = ["DistributedRateLimiter", "StrictAuthority"]


class StrictAuthority(Protocol):
    """Where strict keys get their one exact limiter. :class:`RateLimiter` is the
    in-process one; a cluster singleton will hand out proxies that ask it."""

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> PermitSource: ...


class DistributedRateLimiter:
    """One node's rate limits: approximate keys gossiped through ``replicator``, strict
    keys delegated to ``authority`` (a node-local exact registry by default).

    ``tuning`` goes to every approximate limiter as it is (see :class:`ApproximateLimiter`
    for each knob and its default); its ``autotune`` also shapes the default authority's.
    """

    def __init__(
        self,
        replicator: Replicator,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        authority: StrictAuthority | None = None,
        **tuning: Unpack[ApproximateTuning],
    ) -> None:
        self.node_id = replicator.node_id
        self._replicator = replicator
        self._clock = clock
        self._sleep = sleep
        self._tuning = tuning
        if authority is None:
            authority = RateLimiter(clock=clock, sleep=sleep, autotune=tuning.get("autotune"))
        self._authority: StrictAuthority = authority
        self._limiters: dict[LimiterKey, ApproximateLimiter] = {}
        self._strict: dict[LimiterKey, PermitSource] = {}
        replicator.subscribe(self._on_message)

    def _node_count(self) -> int:
        return len(self._replicator.members())

    def limiter_for(
        self, key: LimiterKey, limits: RateLimits, *, max_request_tokens: int | None = None
    ) -> PermitSource:
        """The key's limiter: the strict authority's if ``limits.strict``, else this node's
        approximate one (created on first use, or on the first message about the key)."""
        if limits.strict:
            source = self._authority.limiter_for(key, limits)
            self._strict[key] = source
            return source
        return self._approximate(key, limits, max_request_tokens)

    def _approximate(
        self, key: LimiterKey, limits: RateLimits, max_request_tokens: int | None
    ) -> ApproximateLimiter:
        limiter = self._limiters.get(key)
        if limiter is not None:
            if limiter.limits != limits:
                limiter.reconfigure(limits)
            return limiter
        tuning = self._tuning
        if max_request_tokens:  # this key's own cap, over the node's
            tuning = tuning.copy()
            tuning["max_request_tokens"] = max_request_tokens
        limiter = ApproximateLimiter(
            key,
            limits,
            node_id=self.node_id,
            nodes=self._node_count,
            clock=self._clock,
            sleep=self._sleep,
            **tuning,
        )
        self._limiters[key] = limiter
        return limiter

    def sync(self) -> SyncMessage | None:
        """Publish this node's changes for every key whose epoch has turned."""
        now = self._clock()
        parts: list[KeySync] = []
        for limiter in self._limiters.values():
            part = limiter.make_sync(now)
            if part is not None:
                limiter.receive(part)
                parts.append(part)
        if not parts:
            return None
        message = SyncMessage(self.node_id, now, tuple(parts))
        self._replicator.publish(message)
        return message

    def _on_message(self, message: SyncMessage) -> None:
        if message.origin == self.node_id:
            return
        for part in message.keys:
            limiter = self._limiters.get(part.key)
            if limiter is None:
                limiter = self._approximate(part.key, part.limits, None)
            limiter.receive(part)

    def next_sync_at(self) -> float:
        """When the next epoch of any key begins."""
        now = self._clock()
        intervals = {limiter.sync_interval for limiter in self._limiters.values()} or {1.0}
        return min((math.floor(now / i) + 1) * i for i in intervals)

    async def run(self) -> None:
        """Sync at every epoch boundary, forever (run it as a task; cancel to stop)."""
        while True:
            await self._sleep(max(0.0, self.next_sync_at() - self._clock()))
            self.sync()

    def discard(self, key: LimiterKey) -> None:
        """Forget this node's limiter of ``key`` (the strict authority's stays: it is the
        cluster's); another node's gossip about the key makes it again."""
        self._limiters.pop(key, None)
        self._strict.pop(key, None)

    def utilization(self) -> list[RateLimitUtilization]:
        snapshots = [limiter.utilization() for limiter in self._limiters.values()]
        snapshots.extend(source.utilization() for source in self._strict.values())
        return snapshots
