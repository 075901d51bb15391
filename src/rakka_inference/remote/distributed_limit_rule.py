"""The approximate rate limit's admission rule and its over-spend bound, pure.

:class:`~rakka_inference.remote.distributed_limit_approximate.ApproximateLimiter` applies
this rule to one key on one node; the functions here are the rule's arithmetic, with no
clock and no I/O, so the bound is tested on its own.

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
"
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

__all__ = ["EpochShare", "epoch_grant", "over_spend_bound", "reserve_epochs"]


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


class EpochShare:
    """One limit's public grant history and this node's entitlement under it.

    ``headroom`` holds ``H_{k-m} .. H_{k-1}``, ``grant`` is ``Q_k``, ``allowance`` is the
    node's entitlement ``W`` and ``spent`` its own net spend ``s``.
    """

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
        """Start an epoch: grant ``Q_k`` (scaled by the auto-tune ``factor``) and move ``W``."""
        headroom, self.grant = epoch_grant(self.limit, stable_spend, self.headroom, nodes)
        self.headroom.append(headroom)
        self.allowance = min(self.allowance, self.spent) + factor * self.grant
