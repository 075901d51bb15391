"""Rate policies of the limiters: the auto-tuned rate factor and GCRA spacing.

Pure arithmetic on an injected ``now``: no clock, no waiting, no limiter state.

Auto-tune
---------
A provider 429 cuts the effective rate (RPM and TPM alike): :meth:`RateFactor.cut`
multiplies it by ``AutoTune.decrease`` (0.5), never below ``AutoTune.floor`` (0.1 of the
configured rate), and at most once per ``AutoTune.cooldown_s`` (1 s), so a burst of 429s
from requests that were in flight together counts once. It then recovers additively by
``AutoTune.recovery_per_s`` (0.01 of the configured rate per second: from 0.5 back to 1.0
in 50 s), starting at ``recover_from`` (the limiter passes the end of the Retry-After).
The factor never exceeds 1, so the effective rate never exceeds the configured one and
:func:`scaled` limits keep the window guarantee while tuned.

Smoothing (GCRA)
----------------
:class:`Gcra` is a generic cell-rate algorithm with zero burst tolerance: after a grant of
cost ``c`` at ``rate`` per second, the next grant may come ``c / rate`` seconds later.
With ``RateLimits.smoothing`` the exact limiter runs one for requests (cost 1 at
``RPM / 60``) and one for tokens (cost ``t`` at ``TPM / 60``) on top of its window log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["AutoTune", "RateFactor", "Gcra", "scaled"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoTune:
    """How a provider 429 lowers the effective rate and how it comes back."""

    enabled: bool = True
    decrease: float = 0.5
    """Multiplicative decrease applied on a 429."""
    floor: float = 0.1
    """The effective rate never drops below this fraction of the configured rate."""
    recovery_per_s: float = 0.01
    """Additive recovery, as a fraction of the configured rate per second."""
    cooldown_s: float = 1.0
    """At most one decrease per this many seconds (429s of concurrent calls count once)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.decrease < 1.0:
            raise ValueError("decrease must be in (0, 1)")
        if not 0.0 < self.floor <= 1.0:
            raise ValueError("floor must be in (0, 1]")
        if self.recovery_per_s <= 0.0 or self.cooldown_s < 0.0:
            raise ValueError("recovery_per_s must be > 0 and cooldown_s >= 0")


class RateFactor:
    """The auto-tuned fraction of the configured rate: ``min(1, base + r * (t - since))``."""

    __slots__ = ("_base", "_last_cut", "_since", "config")

    def __init__(self, config: AutoTune) -> None:
        self.config = config
        self._base = 1.0
        self._since = -math.inf
        self._last_cut = -math.inf

    def at(self, now: float) -> float:
        if self._base >= 1.0:
            return 1.0
        factor = self._base + self.config.recovery_per_s * max(0.0, now - self._since)
        if factor >= 1.0:
            self._base = 1.0
            return 1.0
        return factor

    def cut(self, now: float, *, recover_from: float) -> None:
        """Apply one multiplicative decrease (unless disabled or within the cooldown)."""
        config = self.config
        if not config.enabled or now - self._last_cut < config.cooldown_s:
            return
        self._base = max(config.floor, self.at(now) * config.decrease)
        self._since = recover_from
        self._last_cut = now

    def time_to_reach(self, factor: float, now: float) -> float:
        """The earliest time >= now at which the factor is at least ``factor``."""
        if self.at(now) >= factor:
            return now
        if factor > 1.0:
            return math.inf
        return max(now, self._since + (factor - self._base) / self.config.recovery_per_s)


class Gcra:
    """Generic cell-rate algorithm, zero burst tolerance: after a grant of cost ``c`` at
    ``rate`` per second, the next grant may come ``c / rate`` seconds later."""

    __slots__ = ("tat",)

    def __init__(self) -> None:
        self.tat = -math.inf
        """Theoretical arrival time: the earliest time of the next grant."""

    def charge(self, now: float, cost: float, rate: float) -> None:
        self.tat = max(self.tat, now) + cost / rate

    def adjust(self, cost_delta: float, rate: float) -> None:
        self.tat += cost_delta / rate


def scaled(limit: int, factor: float) -> int:
    """A configured limit under the auto-tune factor (never below 1)."""
    return limit if factor >= 1.0 else max(1, int(limit * factor))
