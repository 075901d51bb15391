"""The lifecycle of a deployment's replica set, in one table.

::

    pending  → serving | failed | stopped      (stopped: its apply was rejected)
    serving  → draining | failed
    draining → stopped | failed
    failed   → pending | stopped               (pending: placed again)
    stopped  → nothing: it is final

- **pending**: built and placed; its replicas are starting (credentials resolved, weights
  loading). It takes no requests yet. An apply starts every new set before it touches a
  running one: when another set fails to start, this one goes straight to stopped.
- **serving**: registered with the coordinator; takes requests.
- **draining**: deregistered (no new requests); requests already queued or running finish.
- **stopped**: every request finished; engines closed. Terminal.
- **failed**: it could not start, or gave up (a local context poisoned four times in 60 s).
  It is deregistered; the manager may place it again (back to pending) or remove it.

Every move goes through :meth:`Lifecycle.move`, which refuses what the table does not have
with :class:`~rakka_inference.core.errors.IllegalTransition`, and keeps the history with a
readable cause for the admin API.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from rakka_inference.core.states import StateTable

__all__ = ["LIFECYCLE", "TRANSITIONS", "DeploymentState", "Lifecycle", "Transition"]


class DeploymentState(enum.StrEnum):
    PENDING = "pending"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


_S = DeploymentState

TRANSITIONS: Mapping[DeploymentState, frozenset[DeploymentState]] = {
    _S.PENDING: frozenset({_S.SERVING, _S.FAILED, _S.STOPPED}),
    _S.SERVING: frozenset({_S.DRAINING, _S.FAILED}),
    _S.DRAINING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.FAILED: frozenset({_S.PENDING, _S.STOPPED}),
    _S.STOPPED: frozenset(),
}
"""The legal moves: from a state to the states it may go to. Nothing else is allowed."""

LIFECYCLE: Final = StateTable(TRANSITIONS)


@dataclass(frozen=True, slots=True)
class Transition:
    """One move, with when (wall clock) and why."""

    source: DeploymentState
    target: DeploymentState
    cause: str
    at: float


@dataclass(slots=True)
class Lifecycle:
    """The state of one replica set (or one replica), moved only along the table."""

    name: str
    clock: Callable[[], float] = time.time
    state: DeploymentState = DeploymentState.PENDING
    history: list[Transition] = field(default_factory=list)

    def move(self, target: DeploymentState, cause: str) -> Transition:
        """Go to ``target``; IllegalTransition when the table has no such move."""
        LIFECYCLE.check(self.name, self.state, target)
        transition = Transition(self.state, target, cause, self.clock())
        self.state = target
        self.history.append(transition)
        return transition

    def can(self, target: DeploymentState) -> bool:
        return LIFECYCLE.can(self.state, target)

    @property
    def terminal(self) -> bool:
        return LIFECYCLE.final(self.state)
