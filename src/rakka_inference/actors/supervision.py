"""Supervision: what a parent does when one of its children fails.

A child's failure is decided by its parent's :class:`OneForOneStrategy` (only the failed
child is affected). The strategy's *decider* maps the exception's **type** to a
:class:`Directive` — never its message text. Lookup walks the exception's MRO, so the most
specific registered class wins; an exception no entry covers is escalated.

- ``RESUME``   keep the actor's state and go on with the next message;
- ``RESTART``  build a fresh actor through its factory; the mailbox is kept;
- ``STOP``     stop the actor; its watchers are told, with the failure as the cause;
- ``ESCALATE`` the parent fails with the same exception, and *its* parent decides.

At most ``max_restarts`` restarts are allowed within ``within_s`` seconds (default 3 in 60,
as DESIGN §3's two-tier restart). One more failure that would restart inside the window is
escalated instead. The window is measured with the actor system's injected clock.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["Decider", "Directive", "OneForOneStrategy", "RestartWindow"]


class Directive(enum.Enum):
    RESUME = "resume"
    RESTART = "restart"
    STOP = "stop"
    ESCALATE = "escalate"


Decider = Callable[[BaseException], Directive]


def _by_type(table: Mapping[type[BaseException], Directive]) -> Decider:
    entries = dict(table)

    def decide(error: BaseException) -> Directive:
        for klass in type(error).__mro__:
            directive = entries.get(klass)
            if directive is not None:
                return directive
        return Directive.ESCALATE

    return decide


_DEFAULT_TABLE: Mapping[type[BaseException], Directive] = {Exception: Directive.RESTART}


@dataclass(frozen=True, slots=True)
class OneForOneStrategy:
    """Decide for the failed child alone.

    ``decider`` is either a mapping from exception types to directives (looked up along the
    MRO; unmatched types escalate) or a function of the exception that must decide by type.
    """

    decider: Mapping[type[BaseException], Directive] | Decider = field(
        default_factory=lambda: dict(_DEFAULT_TABLE)
    )
    max_restarts: int = 3
    within_s: float = 60.0
    _decide: Decider = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")
        if self.within_s <= 0:
            raise ValueError("within_s must be > 0")
        decide = _by_type(self.decider) if isinstance(self.decider, Mapping) else self.decider
        object.__setattr__(self, "_decide", decide)

    def decide(self, error: BaseException) -> Directive:
        return self._decide(error)


class RestartWindow:
    """Counts one actor's restarts inside a sliding time window."""

    __slots__ = ("_clock", "_stamps")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._stamps: deque[float] = deque()

    def try_restart(self, strategy: OneForOneStrategy) -> bool:
        """Record a restart if the strategy still allows one now; False means escalate."""
        now = self._clock()
        horizon = now - strategy.within_s
        stamps = self._stamps
        while stamps and stamps[0] <= horizon:
            stamps.popleft()
        if len(stamps) >= strategy.max_restarts:
            return False
        stamps.append(now)
        return True

    def __len__(self) -> int:
        return len(self._stamps)
