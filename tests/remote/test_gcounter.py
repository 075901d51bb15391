"""The bucketed G-Counter: updates, pruning, deltas, and the CRDT laws (Hypothesis)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.remote.gcounter import (
    NO_HORIZON,
    ZERO,
    BucketedGCounter,
    CounterState,
    Spend,
)

# ---------------------------------------------------------------- strategies

spends = st.builds(
    Spend,
    st.integers(0, 20),
    st.integers(0, 500),
    st.integers(0, 500),
)
rows = st.dictionaries(st.sampled_from(["a", "b", "c"]), spends, max_size=3)
states = st.builds(
    CounterState,
    st.one_of(st.just(NO_HORIZON), st.integers(0, 6)),
    st.dictionaries(st.integers(0, 8), rows, max_size=6),
)


def counter(state: CounterState) -> BucketedGCounter:
    return BucketedGCounter.from_state(state)


def join(*parts: CounterState) -> CounterState:
    result = BucketedGCounter()
    for part in parts:
        result.merge(part)
    return result.state()


def canonical(state: CounterState) -> CounterState:
    return counter(state).state()


# ---------------------------------------------------------------- laws


@settings(max_examples=60, deadline=None)
@given(states, states)
def test_merge_is_commutative(a: CounterState, b: CounterState) -> None:
    assert join(a, b) == join(b, a)


@settings(max_examples=60, deadline=None)
@given(states, states, states)
def test_merge_is_associative(a: CounterState, b: CounterState, c: CounterState) -> None:
    left = counter(a)
    left.merge(join(b, c))
    right = counter(join(a, b))
    right.merge(c)
    assert left.state() == right.state()


@settings(max_examples=60, deadline=None)
@given(states)
def test_merge_is_idempotent(a: CounterState) -> None:
    once = counter(a)
    once.merge(a)
    once.merge(once.state())
    assert once.state() == canonical(a)


@settings(max_examples=60, deadline=None)
@given(states, states)
def test_merge_is_monotone(a: CounterState, b: CounterState) -> None:
    merged = counter(a)
    merged.merge(b)
    assert merged.horizon >= max(canonical(a).horizon, canonical(b).horizon)
    for side in (a, b):
        for bucket, node, spend in canonical(side).entries():
            if bucket >= merged.horizon:  # live buckets only ever grow
                assert merged.entry(node, bucket).dominates(spend)


@settings(max_examples=60, deadline=None)
@given(states, states, st.integers(0, 9))
def test_pruning_distributes_over_merge(a: CounterState, b: CounterState, horizon: int) -> None:
    merged_then_pruned = counter(join(a, b))
    merged_then_pruned.prune(horizon)
    pa, pb = counter(a), counter(b)
    pa.prune(horizon)
    pb.prune(horizon)
    pa.merge(pb)
    assert merged_then_pruned.state() == pa.state()


@settings(max_examples=40, deadline=None)
@given(states, states)
def test_running_totals_match_the_entries(a: CounterState, b: CounterState) -> None:
    merged = counter(a)
    merged.merge(b)
    entries = list(merged.state().entries())
    assert merged.requests == sum(spend.requests for _, _, spend in entries)
    assert merged.tokens == sum(spend.net_tokens for _, _, spend in entries)


# ---------------------------------------------------------------- behaviour


def test_add_grows_only_the_nodes_own_entry() -> None:
    c = BucketedGCounter(bucket_width=1.0, window=60.0)
    assert c.add("a", 5, requests=1, tokens=100)
    assert c.add("a", 5, requests=1, tokens=50, refunded=30)
    assert c.entry("a", 5) == Spend(2, 150, 30)
    assert c.entry("b", 5) is ZERO
    assert c.entry("a", 6) is ZERO
    assert (c.requests, c.tokens) == (2, 120)
    assert c.entry("a", 5).net_tokens == 120
    with pytest.raises(ValueError, match="only grows"):
        c.add("a", 5, tokens=-1)
    assert c.add("a", 5)  # nothing to add: fine, no entry created
    assert c.add("z", 7)
    assert c.entry("z", 7) is ZERO
    assert "requests=2" in repr(c)


def test_time_buckets_and_the_conservative_window() -> None:
    c = BucketedGCounter(bucket_width=1.0, window=60.0)
    assert c.bucket_of(1000.5) == 1000
    assert c.horizon_at(1060.0) == 1000
    assert c.expires_at(1000) == 1061.0
    c.add("a", c.bucket_of(1000.5), requests=1)
    c.advance(1060.9)  # 60.4 s after the grant: still counted (whole bucket)
    assert c.requests == 1
    c.advance(1061.0)
    assert c.requests == 0
    assert c.horizon == 1001
    assert not c.add("a", 1000, requests=1)  # pruned: ignored, never resurrected
    c.merge(CounterState(NO_HORIZON, {1000: {"b": Spend(1)}}))
    assert c.requests == 0
    c.prune(900)  # the horizon never moves back
    assert c.horizon == 1001


def test_deltas_carry_changed_entries_once() -> None:
    c = BucketedGCounter()
    c.add("a", 1, requests=1, tokens=10)
    c.add("a", 2, requests=1, tokens=20)
    c.merge(CounterState(NO_HORIZON, {2: {"b": Spend(3, 30)}}))  # merges are not deltas
    delta = c.take_delta()
    assert dict(delta.buckets) == {1: {"a": Spend(1, 10)}, 2: {"a": Spend(1, 20)}}
    assert not c.take_delta().buckets
    c.add("a", 2, refunded=5)
    assert dict(c.take_delta().buckets) == {2: {"a": Spend(1, 20, 5)}}
    c.add("a", 3, requests=1)
    c.prune(3)
    assert dict(c.take_delta().buckets) == {3: {"a": Spend(1)}}
    c.add("a", 4, requests=1)
    assert dict(c.row("a").buckets) == {3: {"a": Spend(1)}, 4: {"a": Spend(1)}}
    assert not c.row("b").buckets


def test_applying_a_delta_twice_or_late_is_harmless() -> None:
    source, replica = BucketedGCounter(), BucketedGCounter()
    source.add("a", 1, requests=1, tokens=10)
    first = source.take_delta()
    source.add("a", 1, requests=1, tokens=10)
    second = source.take_delta()
    replica.merge(second)
    replica.merge(first)  # old news: the max keeps the newer value
    replica.merge(second)
    assert replica.state() == source.state()
    assert replica.node_total("a") == Spend(2, 20)
    assert replica.node_total("b") == ZERO


def test_free_at_scans_oldest_first() -> None:
    c = BucketedGCounter(bucket_width=1.0, window=60.0)
    c.add("a", 10, requests=2, tokens=100)
    c.add("b", 12, requests=1, tokens=300)
    assert c.free_at(0, 0) == -math.inf
    assert c.free_at(1, 0) == c.expires_at(10)
    assert c.free_at(3, 0) == c.expires_at(12)
    assert c.free_at(0, 101) == c.expires_at(12)
    assert c.free_at(4, 0) == math.inf


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        BucketedGCounter(bucket_width=0)
