"""The Unix-datagram replicator's codec: exact round trip, splitting under the size and
entry caps, and strict refusal of anything malformed."""

from __future__ import annotations

import contextlib
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.breaker import (
    BreakerEvent,
    BreakerKey,
    BreakerState,
    BreakerTransition,
)
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import LimiterKey
from rakka_inference.remote.replicator import KeySync, SyncMessage
from rakka_inference.remote.replicator_codec import (
    MAX_DATAGRAM,
    MAX_ENTRIES,
    CircuitSignal,
    MalformedDatagram,
    decode,
    encode_circuit,
    encode_sync,
)

KEY = LimiterKey("openai", "fp-secret-0", "gpt-4o")
LIMITS = RateLimits(requests_per_minute=600)

# ---------------------------------------------------------------- strategies

i64 = st.integers(-(2**63), 2**63 - 1)
counts = st.integers(0, 2**63 - 1)
names = st.text(max_size=8)
spends = st.builds(Spend, counts, counts, counts)
counter_states = st.builds(
    CounterState,
    i64,
    st.dictionaries(i64, st.dictionaries(names, spends, max_size=3), max_size=3),
)
rate_limits = st.builds(
    RateLimits,
    requests_per_minute=st.none() | counts,
    tokens_per_minute=st.none() | counts,
    concurrent_requests=st.none() | counts,
    strict=st.booleans(),
    smoothing=st.booleans(),
    sync_interval_ms=st.integers(1, 2**63 - 1),
)
key_syncs = st.builds(
    KeySync,
    st.builds(LimiterKey, names, names, names),
    rate_limits,
    i64,
    counter_states,
    st.floats(allow_nan=False),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
sync_messages = st.builds(SyncMessage, names, finite, st.lists(key_syncs, max_size=4).map(tuple))
models = st.none() | names
circuit_signals = st.one_of(
    st.builds(CircuitSignal, names, names, names, st.just("closed"), model=models),
    st.builds(
        CircuitSignal,
        names,
        names,
        names,
        st.just("open"),
        st.floats(0, 1e9, allow_nan=False),
        model=models,
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | finite | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def key_sync(
    spend: CounterState | None = None, blocked_until: float = -math.inf, key: LimiterKey = KEY
) -> KeySync:
    return KeySync(key, LIMITS, 1000, spend or CounterState(940, {}), blocked_until)


def wide_spend(entries: int) -> CounterState:
    """``entries`` counter entries: one node in each of ``entries`` buckets."""
    return CounterState(0, {b: {"w1": Spend(1, 100, 0)} for b in range(entries)})


@settings(max_examples=200)
@given(sync_messages)
def test_a_sync_message_round_trips_exactly(message: SyncMessage) -> None:
    encoded = encode_sync(message)
    assert encoded.dropped == 0
    assert len(encoded.datagrams) == 1
    assert decode(encoded.datagrams[0]) == message


@given(circuit_signals)
def test_a_circuit_signal_round_trips_exactly(signal: CircuitSignal) -> None:
    assert decode(encode_circuit(signal)) == signal


@given(sync_messages, st.integers(200, 3000))
def test_a_split_message_is_its_keys_in_order(message: SyncMessage, max_size: int) -> None:
    encoded = encode_sync(message, max_size=max_size)
    parts = [decode(datagram) for datagram in encoded.datagrams]
    assert all(len(datagram) <= max_size for datagram in encoded.datagrams)
    assert all(part == SyncMessage(message.origin, message.sent_at, part.keys) for part in parts)
    kept = [key for part in parts if isinstance(part, SyncMessage) for key in part.keys]
    left_out = [
        key
        for key in message.keys
        if encode_sync(
            SyncMessage(message.origin, message.sent_at, (key,)), max_size=max_size
        ).dropped
    ]
    assert len(kept) + encoded.dropped == len(message.keys)
    assert kept == [key for key in message.keys if key not in left_out]


def test_many_keys_split_under_the_size_and_entry_caps() -> None:
    keys = tuple(key_sync(wide_spend(60), key=KEY._replace(model=f"m{i}")) for i in range(300))
    message = SyncMessage("w1", 1001.0, keys)
    encoded = encode_sync(message)
    assert encoded.dropped == 0
    assert len(encoded.datagrams) > 1
    assert all(len(datagram) <= MAX_DATAGRAM for datagram in encoded.datagrams)
    decoded = [decode(datagram) for datagram in encoded.datagrams]
    assert tuple(k for part in decoded if isinstance(part, SyncMessage) for k in part.keys) == keys
    # The entry cap splits too, even when the bytes would fit.
    by_entries = encode_sync(message, max_size=10**9, max_entries=600)
    assert len(by_entries.datagrams) == 30


def test_a_key_too_large_or_not_json_is_left_out_and_counted() -> None:
    fits = key_sync(CounterState(0, {1: {"w1": Spend(1, 1, 0)}}))
    message = SyncMessage(
        "w1",
        1001.0,
        (
            key_sync(wide_spend(MAX_ENTRIES + 1)),
            fits,
            key_sync(blocked_until=math.nan),
            key_sync(CounterState(0, {1: {"w1": Spend(2**64, 0, 0)}})),
        ),
    )
    encoded = encode_sync(message)
    assert encoded.dropped == 3
    assert [decode(datagram) for datagram in encoded.datagrams] == [
        SyncMessage("w1", 1001.0, (fits,))
    ]


def test_both_infinities_are_written_explicitly() -> None:
    for blocked in (-math.inf, math.inf):
        (datagram,) = encode_sync(SyncMessage("w1", 1.0, (key_sync(blocked_until=blocked),)))[0]
        assert b'"blocked_until":"' in datagram
        assert decode(datagram) == SyncMessage("w1", 1.0, (key_sync(blocked_until=blocked),))


def sync_body(**changes: object) -> dict[str, object]:
    key: dict[str, object] = {
        "key": ["openai", "fp", "gpt-4o"],
        "limits": [600, None, None, False, False, 1000],
        "epoch": 1000,
        "horizon": 940,
        "buckets": [[1000, [["w1", 1, 10, 0]]]],
        "blocked_until": "-inf",
    }
    body: dict[str, object] = {"v": 1, "kind": "sync", "origin": "w1", "sent_at": 1.5}
    body["keys"] = [{**key, **{k: v for k, v in changes.items() if k in key}}]
    body.update({k: v for k, v in changes.items() if k not in key})
    return body


def circuit_body(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {
        "v": 1,
        "kind": "circuit",
        "origin": "w1",
        "provider": "openai",
        "endpoint": "https://api.openai.com/v1",
        "model": "gpt-4o",
        "state": "open",
        "open_for_s": 30.0,
    }
    return {**body, **changes}


def test_the_documented_bodies_decode() -> None:
    message = decode(orjson.dumps(sync_body()))
    assert message == SyncMessage(
        "w1",
        1.5,
        (
            KeySync(
                LimiterKey("openai", "fp", "gpt-4o"),
                RateLimits(requests_per_minute=600),
                1000,
                CounterState(940, {1000: {"w1": Spend(1, 10, 0)}}),
                -math.inf,
            ),
        ),
    )
    assert decode(orjson.dumps(circuit_body())) == CircuitSignal(
        "w1", "openai", "https://api.openai.com/v1", "open", 30.0, "gpt-4o"
    )
    assert decode(orjson.dumps(sync_body(sent_at=2))) == SyncMessage("w1", 2.0, message.keys)


@pytest.mark.parametrize(
    "body",
    [
        sync_body(v=2),
        sync_body(v=True),
        sync_body(kind="gossip"),
        sync_body(extra=1),
        sync_body(sent_at="1.5"),
        sync_body(sent_at="inf"),
        sync_body(origin=7),
        sync_body(keys={}),
        sync_body(key=["openai", "fp"]),
        sync_body(limits=[600, None, None, False, False, 0]),
        sync_body(limits=[-1, None, None, False, False, 1000]),
        sync_body(limits=[600, None, None, 0, False, 1000]),
        sync_body(epoch=1000.0),
        sync_body(horizon=True),
        sync_body(buckets=[[1000, [["w1", -1, 10, 0]]]]),
        sync_body(buckets=[[1000, [["w1", 1, 10]]]]),
        sync_body(buckets=[[1000, [["w1", 1, 10, 0], ["w1", 2, 10, 0]]]]),
        sync_body(buckets=[[1000, []], [1000, []]]),
        sync_body(buckets=[[1000.5, []]]),
        sync_body(buckets=[[0, [[f"n{i}", 1, 1, 0] for i in range(MAX_ENTRIES + 1)]]]),
        sync_body(blocked_until="nan"),
        sync_body(blocked_until=None),
        circuit_body(state="half_open"),
        circuit_body(state="closed"),
        circuit_body(open_for_s=-1.0),
        circuit_body(open_for_s=False),
        circuit_body(endpoint=None),
        circuit_body(origin="w1", provider="openai", extra=True),
        circuit_body(model=None),
        circuit_body(model=4),
        [1, "kind"],
    ],
)
def test_a_malformed_body_is_refused(body: object) -> None:
    with pytest.raises(MalformedDatagram):
        decode(orjson.dumps(body))


@pytest.mark.parametrize(
    "datagram",
    [b"", b"not json", b"\xff\xfe", b"[" * 5000, b" " * (MAX_DATAGRAM + 1), b"{}", b'{"v":1}'],
)
def test_garbage_is_refused(datagram: bytes) -> None:
    with pytest.raises(MalformedDatagram):
        decode(datagram)


@given(st.binary(max_size=300) | json_values.map(orjson.dumps))
def test_decode_refuses_anything_but_a_message_without_other_errors(datagram: bytes) -> None:
    with contextlib.suppress(MalformedDatagram):
        decode(datagram)


@given(sync_messages, st.data())
def test_a_corrupted_datagram_never_escapes_as_another_error(
    message: SyncMessage, data: st.DataObject
) -> None:
    (datagram,) = encode_sync(message).datagrams
    at = data.draw(st.integers(0, len(datagram) - 1))
    corrupted = datagram[:at] + bytes([data.draw(st.integers(0, 255))]) + datagram[at + 1 :]
    with contextlib.suppress(MalformedDatagram):
        decode(corrupted)


def test_a_circuit_signal_is_consistent() -> None:
    with pytest.raises(ValueError, match="state"):
        CircuitSignal("w1", "openai", "e", "half_open", 0.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite"):
        CircuitSignal("w1", "openai", "e", "open", math.inf)
    with pytest.raises(ValueError, match="closed"):
        CircuitSignal("w1", "openai", "e", "closed", 1.0)
    closed = CircuitSignal("w1", "openai", "e", "closed", model="m")
    assert closed.key == BreakerKey("openai", "e", "m")
    assert CircuitSignal("w1", "openai", "e", "closed").key is None  # every model there


def test_a_signal_of_the_release_before_models_still_decodes() -> None:
    # Sent by a worker whose breakers guarded a whole endpoint: no "model".
    old = {k: v for k, v in circuit_body().items() if k != "model"}
    signal = decode(orjson.dumps(old))
    assert signal == CircuitSignal("w1", "openai", "https://api.openai.com/v1", "open", 30.0)
    assert isinstance(signal, CircuitSignal)
    assert signal.model is None
    # ... and one without a model is written as that release wrote it.
    assert orjson.loads(encode_circuit(signal)) == old


def test_a_circuit_signal_round_trips_with_its_model() -> None:
    signal = CircuitSignal("w1", "openai", "e", "open", 2.5, model="gpt-4o-mini")
    assert decode(encode_circuit(signal)) == signal
    assert orjson.loads(encode_circuit(signal))["model"] == "gpt-4o-mini"


def transition(to_state: BreakerState, open_until: float | None) -> BreakerTransition:
    return BreakerTransition(
        BreakerKey("openai", "e", "m"), BreakerState.CLOSED, to_state, BreakerEvent.TRIP, "",
        100.0, open_until,
    )  # fmt: skip


def test_a_signal_from_a_breaker_transition() -> None:
    opened = CircuitSignal.from_transition("w1", transition(BreakerState.OPEN, 130.0))
    assert opened == CircuitSignal("w1", "openai", "e", "open", 30.0, model="m")
    closed = CircuitSignal.from_transition("w1", transition(BreakerState.CLOSED, None))
    assert closed == CircuitSignal("w1", "openai", "e", "closed", model="m")
    assert CircuitSignal.from_transition("w1", transition(BreakerState.HALF_OPEN, None)) is None
