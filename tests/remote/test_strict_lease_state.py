"""The strict lease authority across a restart: a restored authority answers as the
original would, malformed snapshots are refused with one error, and ```dirty`` moves
exactly when the record changes. The exactness simulation across a restore is in
``test_strict_lease.py``."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import AutoTune, LimiterKey
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    SnapshotError,
)
from rakka_inference.remote.strict_lease_state import VERSION
from rakka_inference.testkit.clock import FakeClock

KEYS = [LimiterKey("openai", "fp0", "gpt-4o"), LimiterKey("anthropic", "fp1", "claude")]
LIMITS = [
    RateLimits(requests_per_minute=30, tokens_per_minute=3000, strict=True),
    RateLimits(requests_per_minute=20, tokens_per_minute=4000, strict=True),
    RateLimits(tokens_per_minute=2000, concurrent_requests=4, strict=True, smoothing=True),
    RateLimits(requests_per_minute=10, strict=True, sync_interval_ms=250),
]
TUNE = AutoTune(cooldown_s=0.5)

Op = Callable[[LeaseAuthority], object]
Step = tuple[float, str, tuple[Any, ...]]  # (time step, operation, its arguments)


def random_steps(rng: random.Random, count: int) -> list[Step]:
    """Requests (now and then with other limits), returns, overruns and 429s."""
    steps: list[Step] = []
    for _ in range(count):
        step = rng.choice([0.0, 0.0, 0.25, 1.0, rng.uniform(0, 20)])
        kind = rng.random()
        key, limits = rng.choice(KEYS), rng.choice(LIMITS[:2] if rng.random() < 0.9 else LIMITS)
        if kind < 0.55:
            want = (rng.randrange(5), rng.randrange(800), rng.randrange(300))
            steps.append((step, "request", (key, limits, *want)))
        elif kind < 0.9:  # one of the last few grants (or one never granted)
            back = (rng.randrange(3), rng.randrange(300), rng.choice([0, 0, rng.randrange(500)]))
            steps.append((step, "release", (rng.randrange(1, 6), *back)))
        else:
            steps.append((step, "limited", (key, rng.choice([None, 0.0, rng.uniform(0, 10)]))))
    return steps


def answers(
    authority: LeaseAuthority, clock: FakeClock, steps: list[Step], granted: list[int]
) -> list[object]:
    """Every answer and every utilization after each step; ``granted`` is the lease ids
    granted so far (the releases give back the last few)."""
    results: list[object] = []
    for step, operation, args in steps:
        clock.advance(step)
        if operation == "request":
            key, limits, want_requests, want_tokens, need = args
            result = authority.request(key, limits, want_requests, want_tokens, need_tokens=need)
            if isinstance(result, LeaseGrant):
                granted.append(result.lease_id)
            results.append(result)
        elif operation == "release":
            back, *returned = args
            results.append(authority.release(granted[-back], *returned))
        else:
            authority.on_rate_limited(*args)
        results.append(authority.utilization())
    return results


@pytest.mark.parametrize("seed", range(12))
def test_a_restored_authority_answers_as_the_original_would(seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock(1_000.0)
    original = LeaseAuthority(clock, lease_ttl=1.5, window=30.0, autotune=TUNE)
    before = random_steps(rng, 150)
    after = random_steps(rng, 150)
    granted = [10**6] * 5  # never granted
    answers(original, clock, before, granted)
    assert original.dirty > 0
    data = original.snapshot()
    assert any(key["leases"] for key in orjson.loads(data)["keys"])

    twin_clock = FakeClock(clock())
    twin = LeaseAuthority.restore(data, twin_clock, autotune=TUNE)
    assert (twin.ttl, twin.window) == (1.5, 30.0)
    assert twin.snapshot() == data
    expected = answers(original, clock, after, list(granted))
    assert answers(twin, twin_clock, after, list(granted)) == expected
    assert twin.snapshot() == original.snapshot()


def test_returns_overruns_a_block_and_a_cut_survive() -> None:
    clock = FakeClock()
    original = LeaseAuthority(clock, autotune=AutoTune(cooldown_s=0.0))
    limits = RateLimits(requests_per_minute=4, tokens_per_minute=1000, strict=True)
    key = KEYS[0]
    first = original.request(key, limits, 1, 100, need_tokens=100)
    second = original.request(key, limits, 1, 100, need_tokens=100)
    assert isinstance(first, LeaseGrant)
    assert isinstance(second, LeaseGrant)
    assert original.release(first.lease_id, 1, 100, 0)
    assert original.release(second.lease_id, 0, 0, 700)
    original.on_rate_limited(key, 5.0)
    original.on_rate_limited(KEYS[1], math.inf)  # a block without end
    twin_clock = FakeClock(clock())
    twin = LeaseAuthority.restore(original.snapshot(), twin_clock)
    assert twin.utilization() == original.utilization()
    use = twin.utilization()[0]
    assert (use.requests_in_window, use.tokens_in_window, use.blocked_for) == (1, 800, 5.0)
    assert use.rate_factor == 0.5

    def after(authority: LeaseAuthority, at: FakeClock) -> list[object]:
        at.advance(5.0)  # the block ends; the factor is 0.5: 500 tokens, 800 counted
        small = authority.request(key, limits, 1, 100, need_tokens=100)
        at.advance(60.0)  # the leases leave, the factor has recovered
        return [small, authority.request(key, limits, 1, 600, need_tokens=600)]

    small, grant = after(original, clock)
    assert after(twin, twin_clock) == [small, grant]
    assert isinstance(small, LeaseRefusal)
    assert isinstance(grant, LeaseGrant)
    assert grant.lease_id == 3  # ids go on from the snapshot's: no collision
    blocked = twin.request(KEYS[1], limits, 1, 0)
    assert isinstance(blocked, LeaseRefusal)
    assert blocked.retry_after is None


def test_the_snapshot_leaves_expired_leases_out_and_keeps_every_limit() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0, window=10.0)
    limits = RateLimits(
        requests_per_minute=50,
        tokens_per_minute=None,
        concurrent_requests=3,
        strict=True,
        smoothing=True,
        sync_interval_ms=123,
    )
    authority.request(KEYS[0], limits, 1, 0)
    clock.advance(5.0)
    authority.request(KEYS[0], limits, 1, 0)
    state = orjson.loads(authority.snapshot())
    assert (state["v"], state["next"]) == (VERSION, 3)
    assert set(state["keys"][0]["limits"]) == {f.name for f in fields(RateLimits)}
    assert len(state["keys"][0]["leases"]) == 2
    clock.advance(6.0)  # the first leaves the window + ttl
    state = orjson.loads(authority.snapshot())
    assert [lease[0] for lease in state["keys"][0]["leases"]] == [2]
    twin = LeaseAuthority.restore(authority.snapshot(), clock)
    assert twin.utilization()[0].concurrent_limit == 3
    assert orjson.loads(twin.snapshot())["keys"][0]["limits"] == {
        "requests_per_minute": 50,
        "tokens_per_minute": None,
        "concurrent_requests": 3,
        "strict": True,
        "smoothing": True,
        "sync_interval_ms": 123,
    }


def test_a_restore_takes_the_snapshots_ttl_and_window_or_others() -> None:
    clock = FakeClock()
    data = LeaseAuthority(clock, lease_ttl=2.0, window=30.0).snapshot()
    assert (
        LeaseAuthority.restore(data, clock).ttl,
        LeaseAuthority.restore(data, clock).window,
    ) == (2.0, 30.0)
    twin = LeaseAuthority.restore(data, clock, lease_ttl=3.0, window=60.0)
    assert (twin.ttl, twin.window) == (3.0, 60.0)


def test_under_a_shorter_ttl_a_restored_lease_counts_for_its_own_ttl() -> None:
    clock = FakeClock()
    original = LeaseAuthority(clock, lease_ttl=2.0, window=30.0)
    limits = RateLimits(requests_per_minute=1, strict=True)
    assert isinstance(original.request(KEYS[0], limits, 1, 0), LeaseGrant)
    twin = LeaseAuthority.restore(original.snapshot(), clock, lease_ttl=1.0)
    clock.advance(31.5)  # past window + the new ttl, not past window + the lease's own
    refusal = twin.request(KEYS[0], limits, 1, 0)
    assert isinstance(refusal, LeaseRefusal)
    assert refusal.retry_at == 1_032.0
    clock.advance(0.5)
    grant = twin.request(KEYS[0], limits, 1, 0)
    assert isinstance(grant, LeaseGrant)
    assert grant.ttl == 1.0


def test_a_clock_that_is_not_finite_cannot_be_snapshot() -> None:
    clock = FakeClock(math.nan)
    authority = LeaseAuthority(clock)
    authority.request(KEYS[0], LIMITS[0], 1, 0)
    with pytest.raises(ValueError, match="clock"):
        authority.snapshot()


# ---------------------------------------------------------------- malformed snapshots


def valid_state() -> dict[str, Any]:
    clock = FakeClock()
    authority = LeaseAuthority(clock, autotune=AutoTune(cooldown_s=0.0))
    authority.request(KEYS[0], LIMITS[0], 2, 200)
    authority.request(KEYS[1], LIMITS[2], 1, 100)
    authority.on_rate_limited(KEYS[0], 3.0)
    state: dict[str, Any] = orjson.loads(authority.snapshot())
    return state


def mutated(change: Callable[[dict[str, Any]], object]) -> bytes:
    state = valid_state()
    change(state)
    return orjson.dumps(state)


def lease(state: dict[str, Any]) -> list[Any]:
    leases: list[Any] = state["keys"][0]["leases"][0]
    return leases


MALFORMED: dict[str, bytes] = {
    "not json": b"{v: 1",
    "not utf-8": b"\xff\xfe",
    "a list": b"[1]",
    "NaN": orjson.dumps(valid_state()).replace(b'"ttl":1.0', b'"ttl":NaN'),
    "too big an int": orjson.dumps(valid_state()).replace(b'"next":3', b'"next":1' + b"0" * 30),
    "too big a float": orjson.dumps(valid_state()).replace(b'"ttl":1.0', b'"ttl":1e400'),
    "version 2": mutated(lambda s: s.update(v=2)),
    "version true": mutated(lambda s: s.update(v=True)),
    "version text": mutated(lambda s: s.update(v="1")),
    "no version": mutated(lambda s: s.pop("v")),
    "an extra field": mutated(lambda s: s.update(extra=1)),
    "negative next": mutated(lambda s: s.update(next=-1)),
    "next zero": mutated(lambda s: s.update(next=0, keys=[])),
    "next at a lease": mutated(lambda s: s.update(next=2)),
    "ttl zero": mutated(lambda s: s.update(ttl=0)),
    "window text": mutated(lambda s: s.update(window="60")),
    "window inf": mutated(lambda s: s.update(window=None)),
    "keys an object": mutated(lambda s: s.update(keys={})),
    "a key twice": mutated(
        lambda s: s["keys"].append(copy.deepcopy(s["keys"][0]) | {"leases": []})
    ),
    "a lease twice": mutated(lambda s: s["keys"][1].update(leases=s["keys"][0]["leases"])),
    "a key of two": mutated(lambda s: s["keys"][0].update(key=["a", "b"])),
    "a key of numbers": mutated(lambda s: s["keys"][0].update(key=[1, 2, 3])),
    "no leases": mutated(lambda s: s["keys"][0].pop("leases")),
    "no limits field": mutated(lambda s: s["keys"][0]["limits"].pop("strict")),
    "an unknown limit": mutated(lambda s: s["keys"][0]["limits"].update(burst=3)),
    "a negative limit": mutated(lambda s: s["keys"][0]["limits"].update(requests_per_minute=-5)),
    "a float limit": mutated(lambda s: s["keys"][0]["limits"].update(tokens_per_minute=1.5)),
    "a bool limit": mutated(lambda s: s["keys"][0]["limits"].update(sync_interval_ms=True)),
    "strict as text": mutated(lambda s: s["keys"][0]["limits"].update(strict="yes")),
    "a huge count": mutated(lambda s: lease(s).__setitem__(3, 2**63)),
    "negative requests": mutated(lambda s: lease(s).__setitem__(2, -1)),
    "negative tokens": mutated(lambda s: lease(s).__setitem__(3, -1)),
    "lease id zero": mutated(lambda s: lease(s).__setitem__(0, 0)),
    "granted at null": mutated(lambda s: lease(s).__setitem__(1, None)),
    "granted at text": mutated(lambda s: lease(s).__setitem__(1, "now")),
    "a lease of three": mutated(lambda s: lease(s).pop()),
    "a lease as an object": mutated(lambda s: s["keys"][0]["leases"].__setitem__(0, {})),
    "blocked as text": mutated(lambda s: s["keys"][0].update(blocked_until="forever")),
    "blocked as a bool": mutated(lambda s: s["keys"][0].update(blocked_until=False)),
    "a factor of zero": mutated(lambda s: s["keys"][0]["factor"].__setitem__(0, 0.0)),
    "a factor above one": mutated(lambda s: s["keys"][0]["factor"].__setitem__(0, 1.5)),
    "a factor of two": mutated(lambda s: s["keys"][0]["factor"].pop()),
    "a factor as a number": mutated(lambda s: s["keys"][0].update(factor=0.5)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_snapshot_raises_the_snapshot_error(case: str) -> None:
    with pytest.raises(SnapshotError):
        LeaseAuthority.restore(MALFORMED[case], FakeClock())


def test_the_valid_base_of_the_malformed_cases_restores() -> None:
    state = valid_state()
    assert state["keys"][0]["blocked_until"] is not None
    assert LeaseAuthority.restore(orjson.dumps(state), FakeClock()).snapshot() == orjson.dumps(
        state
    )


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: object, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for name, item in value.items():
            found += paths(item, (*prefix, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


def restores_or_refuses(data: bytes) -> None:
    try:
        authority = LeaseAuthority.restore(data, FakeClock())
    except SnapshotError:
        return
    again = authority.snapshot()  # what restores must snapshot, and restore again
    assert LeaseAuthority.restore(again, FakeClock()).snapshot() == again
    authority.request(KEYS[0], LIMITS[0], 1, 10)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_any_change_to_a_snapshot_restores_or_raises_the_snapshot_error(
    data: st.DataObject,
) -> None:
    state = valid_state()
    path = data.draw(st.sampled_from(paths(state)[1:]))
    target: Any = state
    for step in path[:-1]:
        target = target[step]
    if data.draw(st.booleans()):
        target[path[-1]] = data.draw(JSON)
    else:
        del target[path[-1]]
    raw = orjson.dumps(state)
    restores_or_refuses(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        JSON.map(orjson.dumps),
        st.dictionaries(st.sampled_from(["v", "next", "ttl", "window", "keys"]), JSON).map(
            orjson.dumps
        ),
    )
)
def test_fuzz_arbitrary_bytes_raise_only_the_snapshot_error(raw: bytes) -> None:
    restores_or_refuses(raw)


# ---------------------------------------------------------------- dirty


def moved(authority: LeaseAuthority, op: Op) -> bool:
    before = authority.dirty
    op(authority)
    return authority.dirty != before


def test_dirty_moves_on_every_change_and_only_then() -> None:
    clock = FakeClock()
    authority = LeaseAuthority(clock, lease_ttl=1.0, window=10.0, autotune=AutoTune(cooldown_s=2.0))
    key, limits = KEYS[0], RateLimits(requests_per_minute=2, tokens_per_minute=100, strict=True)
    assert authority.dirty == 0
    grant = authority.request(key, limits, 1, 10)
    assert isinstance(grant, LeaseGrant)
    assert authority.dirty > 0
    assert moved(authority, lambda a: a.request(key, limits, 1, 10))  # a grant
    assert not moved(authority, lambda a: a.request(key, limits, 1, 10))  # refused: full
    assert not moved(authority, lambda a: a.request(key, limits, 1, 0, need_tokens=500))
    tighter = RateLimits(requests_per_minute=1, tokens_per_minute=100, strict=True)
    assert moved(authority, lambda a: a.request(key, tighter, 1, 10))  # refused, new limits
    assert not moved(authority, lambda a: a.release(999, 1, 1, 1))  # never granted
    assert not moved(authority, lambda a: a.release(grant.lease_id, 0, 0, 0))  # no change
    assert moved(authority, lambda a: a.release(grant.lease_id, 0, 0, 5))  # an overrun
    assert moved(authority, lambda a: a.release(grant.lease_id, 0, 4, 0))  # tokens back
    assert moved(authority, lambda a: a.release(grant.lease_id, 1, 0, 0))  # a request back
    assert moved(authority, lambda a: a.release(grant.lease_id, 1, 100, 0))  # all back
    assert not moved(authority, lambda a: a.release(grant.lease_id, 1, 100, 0))  # nothing left
    assert moved(authority, lambda a: a.on_rate_limited(key, 5.0))  # a block and a cut
    assert not moved(authority, lambda a: a.on_rate_limited(key, 1.0))  # shorter, cooldown
    assert not moved(authority, lambda a: a.request(key, tighter, 1, 0))  # blocked
    assert moved(authority, lambda a: a.on_rate_limited(key, 6.0))  # a longer block
    clock.advance(20.0)  # every lease leaves the window + ttl
    assert not moved(authority, LeaseAuthority.utilization)
    assert not moved(authority, LeaseAuthority.snapshot)
    assert not moved(authority, lambda a: a.release(grant.lease_id, 1, 1, 0))  # gone
    assert moved(authority, lambda a: a.on_rate_limited(key, None))  # a cut alone
    still = LeaseAuthority(clock, autotune=AutoTune(enabled=False))
    assert not moved(still, lambda a: a.on_rate_limited(key, None))  # neither block nor cut
    assert moved(still, lambda a: a.on_rate_limited(key, 1.0))
    assert LeaseAuthority.restore(authority.snapshot(), clock).dirty == 0
