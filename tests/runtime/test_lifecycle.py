"""The lifecycle table: every legal move is taken, every other one refused."""

from __future__ import annotations

import itertools

import pytest

from rakka_inference.core.errors import IllegalTransition
from rakka_inference.runtime.lifecycle import TRANSITIONS, DeploymentState, Lifecycle

S = DeploymentState


def _reach(state: DeploymentState) -> Lifecycle:
    """A lifecycle brought to ``state`` along legal moves."""
    paths = {
        S.PENDING: [],
        S.SERVING: [S.SERVING],
        S.DRAINING: [S.SERVING, S.DRAINING],
        S.STOPPED: [S.SERVING, S.DRAINING, S.STOPPED],
        S.FAILED: [S.FAILED],
    }
    lifecycle = Lifecycle("deployment 'd'", clock=lambda: 42.0)
    for step in paths[state]:
        lifecycle.move(step, "setup")
    assert lifecycle.state is state
    return lifecycle


@pytest.mark.parametrize(("source", "target"), list(itertools.product(S, S)))
def test_every_pair_is_either_in_the_table_or_refused(
    source: DeploymentState, target: DeploymentState
) -> None:
    lifecycle = _reach(source)
    before = list(lifecycle.history)
    if target in TRANSITIONS[source]:
        assert lifecycle.can(target)
        transition = lifecycle.move(target, "because")
        assert (transition.source, transition.target, transition.cause, transition.at) == (
            source,
            target,
            "because",
            42.0,
        )
        assert lifecycle.state is target
    else:
        assert not lifecycle.can(target)
        with pytest.raises(IllegalTransition, match=f"is {source.value} and cannot become"):
            lifecycle.move(target, "because")
        assert lifecycle.state is source
        assert lifecycle.history == before


def test_the_full_walk_and_the_replacement_loop() -> None:
    lifecycle = Lifecycle("d")
    for target in (S.SERVING, S.FAILED, S.PENDING, S.SERVING, S.DRAINING, S.STOPPED):
        lifecycle.move(target, f"to {target.value}")
    assert [t.target for t in lifecycle.history][-1] is S.STOPPED
    assert lifecycle.terminal
    with pytest.raises(IllegalTransition, match="nothing: it is final"):
        lifecycle.move(S.SERVING, "revive")


def test_the_table_is_closed_and_stopped_is_the_only_final_state() -> None:
    assert set(TRANSITIONS) == set(S)
    assert [s for s, targets in TRANSITIONS.items() if not targets] == [S.STOPPED]
    assert all(target in S for targets in TRANSITIONS.values() for target in targets)
