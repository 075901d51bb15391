"""Rate limits across gateway nodes: approximate (a CRDT, bounded over-spend) or strict.

With ``RateLimits.strict`` every node asks one *authority* per key (:class:`StrictAuthority`),
which holds an exact :class:`~rakka_inference.remote.ratelimit.SlidingWindowLimiter`: zero
over-spend, one hop per permit. In one process the authority is a shared
:class:`~rakka_inference.remote.ratelimit.RateLimiter`; a cluster singleton (DESIGN §7) will
implement the same protocol. Otherwise each node decides alone, from a G-Counter of spend
(:mod:`rakka_inference.remote.gcounter`) that the nodes gossip through a
:class:`~rakka_inference.remote.replicator.Replicator`, as follows.

Epochs and the stable view
--------------------------
Time is cut into sync epochs of ``I = sync_interval_ms`` (epoch ``k`` is ``[kI, (k+1)I)``,
the same on every node: clocks are assumed synchronised well within ``I``). At the start of
each epoch a node publishes, per key, the entries of its counter that changed, stamped with
the epoch (and its whole row every ``anti_entropy_every`` epochs). Each node keeps two
counters per key:

- ``latest``: all it knows now (its own spend at once, the others' as messages arrive);
- ``stable``: only the messages stamped ``<= k - m``, folded in at the start of epoch ``k``,
  where ``m = floor(D / I) + 1`` for the assumed delivery bound ``D`` (``max_delay``,
  default ``I / 2``, so ``m = 1``). A message stamped ``s`` leaves at ``sI`` and arrives
  before ``(s + m) I``, so every node folds the same messages at the start of epoch ``k``:
  ``C_k``, the stable spend in the window evaluated at ``kI``, is the same number on every
  node. It holds everything spent before epoch ``k - m``.

The admission rule
------------------
Per limit ``L`` (requests, each costing 1; tokens, each request costing at most
``c = max_request_tokens``), with ``N`` nodes, at the start of epoch ``k`` every node computes

    H_k = max(0, L - C_k)                                            headroom, stable view
    Q_k = max(0, min(H_k / (m+1), H_k - (H_{k-m} + ... + H_{k-1}) / (m+1))) / N
    W  <- min(W, s) + Q_k

where ``Q_k`` is each node's grant for the epoch (the same on every node: it depends only
on stable views), ``s`` is the node's own net spend so far and ``W`` its entitlement
(an unused grant lapses, an overdraft carries over). A request is admitted iff

1. ``s < W`` for every limit (the node's share; the last request may straddle it),
2. the node's ``latest`` window spend plus the request fits under ``L`` (the view check),
3. the request costs at most ``c``; and the key is not blocked by a Retry-After.

The bound
---------
**In every sliding window, admitted spend < L + N·c** (for requests ``c = 1``), whatever
the sync interval and the delay, provided every message arrives within ``D``.

1. Grants are capped: ``N·Q_j <= H_j / (m+1)`` for every epoch, so if ``Q_k > 0`` then
   ``N·(Q_{k-m} + ... + Q_k) <= H_k``, i.e. ``C_k + N·(Q_{k-m} + ... + Q_k) <= L``.  (*)
2. A node's spend from the start of epoch ``a`` to any time in epoch ``k >= a`` is
   ``< Q_a + ... + Q_k + c``: by the update, ``W <= s_a + Q_a + ... + Q_k``, and a request
   is admitted only while ``s < W``.
3. Take a time ``t`` in epoch ``k`` and the last epoch ``k0 <= k`` with ``Q_{k0} > 0``
   (later grants are zero). The window at ``t`` holds at most the stable spend ``C_{k0}``
   (spend only leaves the window) plus every node's spend since the start of epoch
   ``k0 - m``: ``< C_{k0} + N·(Q_{k0-m} + ... + Q_{k0} + c) <= L + N·c`` by (*).

The bound is tight: nodes that stop just short of their entitlement and then each take a
request of cost ``c``, twice before anyone has seen anyone, admit ``L + N·c - N``
(``tests/remote/test_distributed_limit.py``). If no epoch ever had ``Q > 0`` nothing was
spent. The view check, auto-tune and refunds only refuse more, and the view check alone caps
each node's own window spend at ``L``; so when messages are late, lost or partitioned
the over-spend is still at most ``(N - 1)·L``. :func:`over_spend_bound` returns
``min(N·c, (N - 1)·L)`` (or ``(N - 1)·L`` when the delay breaks the assumption), and
every approximate limiter exports it in its utilization snapshot. The delay is paid in
throughput, not in over-spend: a grant is reserved for ``m`` epochs after it is made,
so all nodes together are granted at most ``H / (m + 1)`` per epoch.

Assumptions: synchronised epochs; delivery (plus tick lateness) within ``D``; the same
``N`` and ``L`` on every node; ``actual <= estimate`` at settlement (an overrun is charged
but cannot be refused). A node starts a key with an idle past (``H = L``): right for a
key first used, since nothing is stable anywhere before its first message is; a node
restarted under load should hold off for one anti-entropy round. Concurrency is local:
each node allows ``ceil(concurrent_requests / N)``. ``smoothing`` spaces a node's own
admissions at ``1/N`` of the rate.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from rakka_inference.core.deployment import RateLimits
from rakka_inference.remote.gcounter import BucketedGCounter, CounterState
from rakka_inference.remote.ratelimit import (
    WINDOW_SECONDS,
    AutoTune,
    Clock,
    Denial,
    DenialReason,
    Gcra,
    LimiterKey,
    Permit,
    PermitSource,
    RateFactor,
    RateLimiter,
    RateLimitUtilization,
    Sleep,
    WaitingLimiter,
    scaled,
)
from rakka_inference.remote.replicator import KeySync, Replicator, SyncMessage

__all__ = [
    "StrictAuthority",
    "reserve_epochs",
    "over_spend_bound",
    "epoch_grant",
    "ApproximateLimiter",
    "DistributedRateLimiter",
]

_NO_BUCKET = -(2**63)


class StrictAuthority(Protocol):
    """Where strict keys get their one exact limiter. :class:`RateLimiter` is the
    in-process one; a cluster singleton will hand out proxies that ask it."""

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> PermitSource: ...


def reserve_epochs(sync_interval: float, max_delay: float) -> int:
    """``m``: how many epochs a message may take, so how long a grant stays reserved."""
    if sync_interval <= 0 or max_delay < 0:
        raise ValueError("sync_interval must be > 0 and max_delay >= 0")
    return math.floor(max_delay / sync_interval) + 1


def over_spend_bound(
    nodes: int,
    limit: float,
    max_request_cost: float,
    sync_interval: float,
    delay: float,
    *,
    max_delay: float | None = None,
) -> float:
    """The most the approximate rule can admit above ``limit`` in any sliding window.

    ``delay`` is the network's worst delivery delay and ``max_delay`` the one the limiter
    assumes (default: the same). Within the assumption the bound is ``N·c`` (capped by
    ``(N - 1)·L``), independent of the interval and the delay, which the rule pays for in
    throughput; beyond it, only the per-node view check holds: ``(N - 1)·L``.
    """
    if nodes < 1 or limit < 0 or max_request_cost < 0:
        raise ValueError("nodes must be >= 1, limit and max_request_cost >= 0")
    assumed = delay if max_delay is None else max_delay
    fallback = (nodes - 1) * limit
    if delay >= reserve_epochs(sync_interval, assumed) * sync_interval:
        return fallback
    return min(nodes * max_request_cost, fallback)


def epoch_grant(
    limit: float, stable_spend: float, past_headroom: Sequence[float], nodes: int
) -> tuple[float, float]:
    """``(H_k, Q_k)``: the stable headroom and every node's grant for the epoch."""
    headroom = max(0.0, limit - stable_spend)
    parts = len(past_headroom) + 1
    grant = min(headroom / parts, headroom - sum(past_headroom) / parts)
    return headroom, max(0.0, grant) / nodes


class _Share:
    """One limit's public grant history and this node's entitlement under it."""

    __slots__ = ("allowance", "grant", "headroom", "limit", "spent")

    def __init__(self, limit: int, reserve: int) -> None:
        self.limit = limit
        self.headroom: deque[float] = deque([float(limit)] * reserve, maxlen=reserve)
        self.grant = 0.0
        self.allowance = 0.0
        self.spent = 0

    def reset(self, limit: int) -> None:
        """A new limit: assume the largest grants may still be out (the safe side)."""
        reserve = self.headroom.maxlen or 0
        self.headroom = deque([float(max(limit, self.limit))] * reserve, maxlen=reserve)
        self.limit = limit

    def open_epoch(self, stable_spend: int, nodes: int, factor: float) -> None:
        headroom, self.grant = epoch_grant(self.limit, stable_spend, self.headroom, nodes)
        self.headroom.append(headroom)
        self.allowance = min(self.allowance, self.spent) + factor * self.grant


class ApproximateLimiter(WaitingLimiter):
    """One key on one node of the approximate mode: see the module docstring."""

    __slots__ = (
        "_blocked_until",
        "_conc_share",
        "_epoch",
        "_factor",
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
        super().__init__(key, clock, sleep)
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
        self._req = _Share(limits.requests_per_minute or 0, self.reserve_epochs)
        self._tok = _Share(tpm or 0, self.reserve_epochs)
        self._in_flight = 0
        self._blocked_until = -math.inf
        self._published_block = -math.inf
        self._factor = RateFactor(AutoTune() if autotune is None else autotune)
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
        self._blocked_until = max(self._blocked_until, part.blocked_until)
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
        if now < self._blocked_until:
            return Denial(self._blocked_until, DenialReason.RETRY_AFTER)
        conc = self._conc_share
        if conc is not None and self._in_flight >= conc:
            return Denial(now + 1.0, DenialReason.CONCURRENCY)
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

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A provider 429: lower this node's rate; a Retry-After blocks the key everywhere."""
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._blocked_until = max(self._blocked_until, now + retry_after)
        self._factor.cut(now, recover_from=max(now, self._blocked_until))

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


class DistributedRateLimiter:
    """One node's rate limits: approximate keys gossiped through ``replicator``, strict
    keys delegated to ``authority`` (a node-local exact registry by default)."""

    def __init__(
        self,
        replicator: Replicator,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        authority: StrictAuthority | None = None,
        autotune: AutoTune | None = None,
        max_delay: float | None = None,
        max_request_tokens: int | None = None,
        anti_entropy_every: int = 10,
        window: float = WINDOW_SECONDS,
    ) -> None:
        self.node_id = replicator.node_id
        self._replicator = replicator
        self._clock = clock
        self._sleep = sleep
        self._autotune = autotune
        self._max_delay = max_delay
        self._max_request_tokens = max_request_tokens
        self._anti_entropy_every = anti_entropy_every
        self._window = window
        if authority is None:
            authority = RateLimiter(clock=clock, sleep=sleep, autotune=autotune)
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
        limiter = ApproximateLimiter(
            key,
            limits,
            node_id=self.node_id,
            nodes=self._node_count,
            clock=self._clock,
            sleep=self._sleep,
            autotune=self._autotune,
            max_delay=self._max_delay,
            max_request_tokens=max_request_tokens or self._max_request_tokens,
            anti_entropy_every=self._anti_entropy_every,
            window=self._window,
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

    def utilization(self) -> list[RateLimitUtilization]:
        snapshots = [limiter.utilization() for limiter in self._limiters.values()]
        snapshots.extend(source.utilization() for source in self._strict.values())
        return snapshots
