"""One key on one node of the approximate distributed rate limit.

Each node decides alone, from a G-Counter of spend (:mod:`rakka_inference.remote.gcounter`)
that the nodes gossip through a :class:`~rakka_inference.remote.replicator.Replicator`:
:class:`ApproximateLimiter` keeps the ``latest`` and ``stable`` views, opens an epoch's
grants and admits by the rule set out, with its bound, in
:mod:`rakka_inference.remote.distributed_limit_rule`.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections.abc import Callable
from typing import TypedDict

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit_rule import (
    EpochShare,
    over_spend_bound,
    reserve_epochs,
)
from rakka_inference.remote.gcounter import BucketedGCounter, CounterState
from rakka_inference.remote.ratelimit import (
    CONCURRENCY_RETRY_HINT,
    WINDOW_SECONDS,
    AutoTune,
    Clock,
    Denial,
    DenialReason,
    Gcra,
    LimiterKey,
    Permit,
    RateLimitUtilization,
    Sleep,
    WaitingLimiter,
    scaled,
)
from rakka_inference.remote.replicator import KeySync

__all__ = ["ApproximateLimiter", "ApproximateTuning"]

_NO_BUCKET = -(2**63)


class ApproximateTuning(TypedDict, total=False):
    """The knobs a node passes to each of its :class:`ApproximateLimiter` s; what each
    means, and its default, is written once, in :class:`ApproximateLimiter`'s signature."""

    autotune: AutoTune | None
    max_delay: float | None
    max_request_tokens: int | None
    anti_entropy_every: int
    window: float


class ApproximateLimiter(WaitingLimiter):
    """One key on one node of the approximate mode: see the module docstring.

    ``autotune`` shapes the cut after a provider 429 (:class:`AutoTune` by default); the
    node's Retry-After block travels in its sync part, so it blocks the key on every node.
    ``max_delay`` is the assumed delivery bound ``D`` (half the sync interval by default),
    ``max_request_tokens`` the largest charge ``c`` (the TPM by default, never above it),
    ``anti_entropy_every`` how often the node's whole row is sent instead of its delta,
    and ``window`` the sliding window's length in seconds.
    """

    __slots__ = (
        "_conc_share",
        "_epoch",
        "_gcra_req",
        "_gcra_tok",
        "_in_flight",
        "_n",
        "_next_epoch_at",
        "_nodes",
        "_pending",
        "_published",
        "_published_block",
        "_req",
        "_rpm",
        "_seq",
        "_syncs",
        "_tok",
        "_tpm",
        "anti_entropy_every",
        "latest",
        "limits",
        "max_delay",
        "max_request_tokens",
        "node_id",
        "reserve_epochs",
        "stable",
        "sync_interval",
    )
    mode = "approximate"

    def __init__(
        self,
        key: LimiterKey,
        limits: RateLimits,
        *,
        node_id: str,
        nodes: Callable[[], int],
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        autotune: AutoTune | None = None,
        max_delay: float | None = None,
        max_request_tokens: int | None = None,
        anti_entropy_every: int = 10,
        window: float = WINDOW_SECONDS,
    ) -> None:
        super().__init__(key, clock, sleep, autotune)
        if anti_entropy_every < 1:
            raise ValueError("anti_entropy_every must be >= 1")
        self.limits = limits
        self._rpm, self._tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.node_id = node_id
        self._nodes = nodes
        self.sync_interval = limits.sync_interval_ms / 1000
        self.max_delay = self.sync_interval / 2 if max_delay is None else max_delay
        self.reserve_epochs = reserve_epochs(self.sync_interval, self.max_delay)
        tpm = limits.tokens_per_minute
        if max_request_tokens is None:
            max_request_tokens = tpm
        elif tpm is not None:
            max_request_tokens = min(max_request_tokens, tpm)
        self.max_request_tokens = max_request_tokens
        self.anti_entropy_every = anti_entropy_every
        self.latest = BucketedGCounter(bucket_width=self.sync_interval, window=window)
        self.stable = BucketedGCounter(bucket_width=self.sync_interval, window=window)
        self._pending: list[tuple[int, int, CounterState]] = []
        self._seq = 0
        self._req = EpochShare(limits.requests_per_minute or 0, self.reserve_epochs)
        self._tok = EpochShare(tpm or 0, self.reserve_epochs)
        self._in_flight = 0
        self._published_block = -math.inf
        self._gcra_req = Gcra()
        self._gcra_tok = Gcra()
        self._n = max(1, nodes())
        self._conc_share: int | None = None
        self._share_concurrency()
        self._epoch = math.floor(clock() / self.sync_interval) - 1
        self._next_epoch_at = -math.inf
        self._published = self._epoch
        self._syncs = 0

    def reconfigure(self, limits: RateLimits) -> None:
        """Apply new limits (a config reload), keeping the spend. The sync interval is
        fixed when the limiter is created."""
        self.limits = limits
        self._rpm, self._tpm = limits.requests_per_minute, limits.tokens_per_minute
        self._share_concurrency()
        self._req.reset(limits.requests_per_minute or 0)
        self._tok.reset(limits.tokens_per_minute or 0)
        if limits.tokens_per_minute is not None:
            self.max_request_tokens = min(
                self.max_request_tokens or limits.tokens_per_minute, limits.tokens_per_minute
            )

    # -- epochs

    @property
    def epoch(self) -> int:
        return self._epoch

    def _advance(self, now: float) -> None:
        target = math.floor(now / self.sync_interval)
        if target <= self._epoch:
            return
        # Only the last m + 1 epochs matter; skipping older ones only lowers W.
        for epoch in range(max(self._epoch + 1, target - self.reserve_epochs), target + 1):
            self._open_epoch(epoch)
        self._epoch = target
        self._next_epoch_at = (target + 1) * self.sync_interval

    def _open_epoch(self, epoch: int) -> None:
        pending, due = self._pending, epoch - self.reserve_epochs
        while pending and pending[0][0] <= due:
            self.stable.merge(heapq.heappop(pending)[2])
        start = epoch * self.sync_interval
        self.stable.advance(start)
        nodes = self._n = max(1, self._nodes())  # membership is read once per epoch
        self._share_concurrency()
        factor = self._factor.at(start)
        if self.limits.requests_per_minute is not None:
            self._req.open_epoch(self.stable.requests, nodes, factor)
        if self.limits.tokens_per_minute is not None:
            self._tok.open_epoch(self.stable.tokens, nodes, factor)

    # -- replication

    def make_sync(self, now: float) -> KeySync | None:
        """This node's part of the sync message for the current epoch (once per epoch)."""
        self._advance(now)
        if self._epoch <= self._published:
            return None
        self._published = self._epoch
        self._syncs += 1
        if self._syncs % self.anti_entropy_every == 0:
            self.latest.take_delta()
            spend = self.latest.row(self.node_id)
        else:
            spend = self.latest.take_delta()
        if not spend.buckets and self._blocked_until <= self._published_block:
            return None
        self._published_block = self._blocked_until
        return KeySync(self.key, self.limits, self._epoch, spend, self._blocked_until)

    def receive(self, part: KeySync) -> None:
        """Merge a node's sync part (this node's own too: it goes into ``stable`` later)."""
        self.latest.merge(part.spend)
        self._block_until(part.blocked_until)
        if part.epoch <= self._epoch - self.reserve_epochs:  # late: fold at once
            self.stable.merge(part.spend)
        else:
            heapq.heappush(self._pending, (part.epoch, self._seq, part.spend))
            self._seq += 1

    # -- core

    def _share_concurrency(self) -> None:
        conc = self.limits.concurrent_requests
        self._conc_share = None if conc is None else math.ceil(conc / self._n)

    def _check(self, tokens: int, now: float) -> Denial | None:
        if now >= self._next_epoch_at:
            self._advance(now)
        blocked = self._blocked(now)
        if blocked is not None:
            return blocked
        conc = self._conc_share
        if conc is not None and self._in_flight >= conc:
            return Denial(now + CONCURRENCY_RETRY_HINT, DenialReason.CONCURRENCY)
        rpm, tpm = self._rpm, self._tpm
        if rpm is None and tpm is None:
            return None
        if tpm is not None and tokens > (self.max_request_tokens or 0):
            return Denial(math.inf, DenialReason.TOO_LARGE)
        retry_at, reason = now, DenialReason.SHARE
        if (rpm is not None and self._req.spent >= self._req.allowance) or (
            tpm is not None and self._tok.spent >= self._tok.allowance
        ):
            retry_at = self._next_epoch_at
        latest = self.latest
        latest.advance(now)
        factor = self._factor.at(now)
        if rpm is not None:
            need = latest.requests + 1 - (rpm if factor >= 1.0 else scaled(rpm, factor))
            at = latest.free_at(need, 0) if need > 0 else now
            if self.limits.smoothing:
                at = max(at, self._gcra_req.tat)
            if at > retry_at:
                retry_at, reason = at, DenialReason.REQUESTS
        if tpm is not None:
            limit = tpm if factor >= 1.0 else scaled(tpm, factor)
            earliest = now
            if tokens > limit:  # only a recovered rate can take it
                earliest = self._factor.time_to_reach(tokens / tpm, now)
                limit = tokens
            need = latest.tokens + tokens - limit
            at = max(earliest, latest.free_at(0, need)) if need > 0 else earliest
            if self.limits.smoothing:
                at = max(at, self._gcra_tok.tat)
            if at > retry_at:
                retry_at, reason = at, DenialReason.TOKENS
        if retry_at <= now:
            return None
        return Denial(max(retry_at, now + 1e-3), reason)

    def _grant(self, tokens: int, now: float) -> Permit:
        self._in_flight += 1
        rpm, tpm = self._rpm, self._tpm
        if rpm is None and tpm is None:
            return Permit(self, now, tokens, _NO_BUCKET)
        bucket = math.floor(now / self.sync_interval)
        self.latest.grow(self.node_id, bucket, 1, tokens, 0)
        self._req.spent += 1
        self._tok.spent += tokens
        if self.limits.smoothing:
            share = self._factor.at(now) / (self._n * WINDOW_SECONDS)
            if rpm is not None:
                self._gcra_req.charge(now, 1, rpm * share)
            if tpm is not None:
                self._gcra_tok.charge(now, tokens, tpm * share)
        return Permit(self, now, tokens, bucket)

    def _finish(self, permit: Permit, actual_tokens: int | None) -> None:
        self._in_flight -= 1
        if (
            actual_tokens is not None
            and actual_tokens != permit.tokens
            and permit.slot != _NO_BUCKET
        ):
            delta = actual_tokens - permit.tokens
            permit.tokens = actual_tokens
            self.latest.advance(self._clock())
            if delta > 0:  # an overrun: charged, against this node's share too
                self.latest.grow(self.node_id, permit.slot, 0, delta, 0)
                self._tok.spent += delta
            elif self.latest.grow(self.node_id, permit.slot, 0, 0, -delta):
                self._tok.spent += delta  # refunds count only while the grant is live
        self._notify()

    # -- signals and metrics

    def over_spend_bounds(self) -> tuple[float, float]:
        """``(requests, tokens)``: the worst-case over-spend of this key's windows."""
        nodes = self._n
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        interval, delay = self.sync_interval, self.max_delay
        requests = 0.0 if rpm is None else over_spend_bound(nodes, rpm, 1, interval, delay)
        tokens = 0.0
        if tpm is not None:
            tokens = over_spend_bound(nodes, tpm, self.max_request_tokens or 0, interval, delay)
        return requests, tokens

    def utilization(self) -> RateLimitUtilization:
        now = self._clock()
        self._advance(now)
        self.latest.advance(now)
        factor = self._factor.at(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        bound_requests, bound_tokens = self.over_spend_bounds()
        return RateLimitUtilization(
            key=self.key,
            mode=self.mode,
            requests_in_window=self.latest.requests,
            tokens_in_window=self.latest.tokens,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            effective_requests_per_minute=None if rpm is None else scaled(rpm, factor),
            effective_tokens_per_minute=None if tpm is None else scaled(tpm, factor),
            concurrent_in_use=self._in_flight,
            concurrent_limit=self._conc_share,
            waiters=len(self._waiters),
            rate_factor=factor,
            blocked_for=max(0.0, self._blocked_until - now),
            over_spend_bound_requests=bound_requests,
            over_spend_bound_tokens=bound_tokens,
        )

    def __repr__(self) -> str:
        return f"ApproximateLimiter({self.key!r}, node={self.node_id!r}, epoch={self._epoch})"
