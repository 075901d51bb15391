"""SpendRing: settled costs in a fixed ring of time buckets, with a running total.

The budget ledger (:mod:`rakka_inference.engine.budget`) keeps two: 61 one-minute buckets
for the hour and 97 fifteen-minute buckets for the day. Amounts are integers (nano-dollars),
so the running total never drifts; a reserve or settle is O(1), and only a refusal scans
the ring to say when enough will have rolled off.
"""

from __future__ import annotations

import math

__all__ = ["SpendRing"]


class SpendRing:
    """Fixed-size ring of time buckets with a running total. Bucket ``b`` covers
    ``[b * width, (b + 1) * width)`` and is dropped when the newest bucket reaches
    ``b + size``."""

    __slots__ = ("_amounts", "_counts", "_head", "size", "total", "width")

    def __init__(self, width: float, size: int, now: float) -> None:
        self.width = width
        self.size = size
        self.total = 0
        self._amounts = [0] * size
        self._counts = [0] * size
        self._head = math.floor(now / width)

    def advance(self, now: float) -> None:
        index = math.floor(now / self.width)
        steps = index - self._head
        if steps <= 0:
            return  # same bucket, or the clock stepped back
        if steps >= self.size:
            self._amounts = [0] * self.size
            self._counts = [0] * self.size
            self.total = 0
        else:
            for bucket in range(self._head + 1, index + 1):
                slot = bucket % self.size
                self.total -= self._amounts[slot]
                self._amounts[slot] = 0
                self._counts[slot] = 0
        self._head = index

    def add(self, nano: int) -> None:
        slot = self._head % self.size
        self._amounts[slot] += nano
        self._counts[slot] += 1
        self.total += nano

    def within(self, now: float, window_s: float) -> tuple[int, int]:
        """Cost and count of the buckets that overlap ``(now - window_s, now]``."""
        first = max(math.floor((now - window_s) / self.width), self._head - self.size + 1)
        nano = count = 0
        for bucket in range(first, self._head + 1):
            nano += self._amounts[bucket % self.size]
            count += self._counts[bucket % self.size]
        return nano, count

    def seconds_until_freed(self, now: float, need: int) -> float | None:
        """Seconds until ``need`` nano-dollars have rolled off; ``None`` if they never will."""
        freed = 0
        for bucket in range(self._head - self.size + 1, self._head + 1):
            freed += self._amounts[bucket % self.size]
            if freed >= need:
                return max(0.0, (bucket + self.size) * self.width - now)
        return None
