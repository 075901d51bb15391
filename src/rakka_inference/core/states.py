"""State tables: every legal move of a state machine in one mapping, and one error for the
rest.

A table maps each state to the states it may move to; a state with no moves is final. Any
move the table lacks raises :class:`~rakka_inference.core.errors.IllegalTransition`,
naming the subject, where it is and where it could go. A deployment's lifecycle
(:mod:`rakka_inference.runtime.lifecycle`) and a request's life inside an engine
(:mod:`rakka_inference.engine.jobs`) are written this way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Generic, TypeVar

from rakka_inference.core.errors import IllegalTransition

__all__ = ["StateTable"]

S = TypeVar("S", bound=enum.Enum)


class StateTable(Generic[S]):
    """The legal moves between the states ``S``; nothing else is allowed."""

    __slots__ = ("moves",)

    def __init__(self, moves: Mapping[S, frozenset[S]]) -> None:
        self.moves = moves

    def can(self, source: S, target: S) -> bool:
        return target in self.moves[source]

    def final(self, state: S) -> bool:
        return not self.moves[state]

    def check(self, subject: str, source: S, target: S) -> None:
        """Raise IllegalTransition unless ``source -> target`` is in the table."""
        if target not in self.moves[source]:
            names = sorted(str(state.value) for state in self.moves[source])
            allowed = ", ".join(names) if names else "nothing: it is final"
            raise IllegalTransition(
                f"{subject} is {source.value} and cannot become {target.value} "
                f"(from {source.value} it can become {allowed})"
            )
