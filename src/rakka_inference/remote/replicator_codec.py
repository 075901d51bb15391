"""The wire codec of the worker processes' exchange: sync messages and circuit signals.

Pure and sans-I/O: :func:`encode_sync` and :func:`encode_circuit` turn messages into
datagrams, :func:`decode` turns one datagram back into a message or refuses it.
:class:`~rakka_inference.remote.replicator_unix.UnixDatagramReplicator` only moves their
bytes between the processes of one host. Beside the limiters'
:class:`~rakka_inference.remote.replicator.SyncMessage` it carries a second kind of
message, :class:`CircuitSignal`: one process's circuit breaker opened or closed, so the
others can follow.

Format
------
One datagram is one UTF-8 JSON object (``orjson``; never pickle), with a version and a
kind::

    {"v":1,"kind":"sync","origin":"w1","sent_at":1001.0,"keys":[KEY, ...]}
    KEY = {"key":[provider,key_fingerprint,model],
           "limits":[rpm|null,tpm|null,concurrent|null,strict,smoothing,sync_interval_ms],
           "epoch":1001,"horizon":940,
           "buckets":[[bucket,[[node,requests,tokens,refunded],...]],...],
           "blocked_until":1006.5|"-inf"|"inf"}

    {"v":1,"kind":"circuit","origin":"w1","provider":"openai",
     "endpoint":"https://api.openai.com/v1","model":"gpt-4o","state":"open","open_for_s":30.0}

JSON has no infinity: ``blocked_until`` (``-inf`` for a key never blocked) writes the
infinities as strings. A circuit signal's ``open_for_s`` is relative, so the processes'
clocks need not agree; ``blocked_until`` is on the limiters' monotonic clock, which the
processes of one host share.

A circuit signal names its breaker by (provider, endpoint, model). ``model`` came with the
breakers keyed by upstream model, within version 1: a signal without it — from a worker of
the release before, when a breaker guarded a whole endpoint — is still accepted and speaks
for every model at that endpoint; a worker of that release refuses one with it as
malformed (counted, dropped), so during a rolling upgrade its circuits only stop following
the new workers' until it is upgraded too.

Guarantees
----------
- Exact round trip: ``decode`` of an encoded message is that message.
- A sync message is split into datagrams of at most :data:`MAX_DATAGRAM` bytes (or a
  smaller ``max_size``) and :data:`MAX_ENTRIES` counter entries, whole keys each; every
  datagram is a valid sync message on its own (merging is per key). A key too large for
  one datagram, or that JSON cannot carry (a NaN, an integer over 64 bits), is left out and
  counted in :attr:`EncodedSync.dropped`.
- A datagram that is over the size cap (checked before parsing), not JSON, of another
  version or kind, or with any field of the wrong type (non-finite numbers, negative
  spend, a state outside the literal, an unknown or missing field, more entries than the
  cap) is refused whole with :class:`MalformedDatagram`; ``decode`` raises nothing else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import orjson

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.breaker import BreakerKey, BreakerState, BreakerTransition
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import LimiterKey
from rakka_inference.remote.replicator import KeySync, SyncMessage

__all__ = [
    "MAX_DATAGRAM",
    "MAX_ENTRIES",
    "VERSION",
    "CircuitSignal",
    "CircuitState",
    "EncodedSync",
    "MalformedDatagram",
    "decode",
    "encode_circuit",
    "encode_sync",
]

VERSION = 1
MAX_DATAGRAM = 60 * 1024
"""Bytes in one datagram, sent or accepted (well under the default socket buffers)."""
MAX_ENTRIES = 4096
"""Counter entries (bucket, node) in one datagram, sent or accepted."""

CircuitState = Literal["open", "closed"]


@dataclass(frozen=True, slots=True)
class CircuitSignal:
    """One process's breaker of ``(provider, endpoint, model)`` opened or closed."""

    origin: str
    provider: str
    endpoint: str
    state: CircuitState
    open_for_s: float = 0.0
    """Seconds left open when ``state == "open"``; 0 when closed."""
    model: str | None = None
    """The upstream model; None (an older sender) for every model at the endpoint."""

    def __post_init__(self) -> None:
        if self.state not in ("open", "closed"):
            raise ValueError(f"state must be 'open' or 'closed', got {self.state!r}")
        if not (math.isfinite(self.open_for_s) and self.open_for_s >= 0):
            raise ValueError("open_for_s must be a finite number >= 0")
        if self.state == "closed" and self.open_for_s != 0:
            raise ValueError("a closed circuit has open_for_s == 0")

    @property
    def key(self) -> BreakerKey | None:
        """The breaker it speaks for; None when it speaks for every model at the endpoint."""
        if self.model is None:
            return None
        return BreakerKey(self.provider, self.endpoint, self.model)

    @classmethod
    def from_transition(cls, origin: str, transition: BreakerTransition) -> CircuitSignal | None:
        """The fleet news of a local transition: opened or closed (half-open is none)."""
        key = transition.key
        if transition.to_state is BreakerState.CLOSED:
            return cls(origin, key.provider, key.endpoint, "closed", model=key.model)
        if transition.to_state is BreakerState.OPEN and transition.open_until is not None:
            open_for = max(0.0, transition.open_until - transition.at)
            return cls(origin, key.provider, key.endpoint, "open", open_for, model=key.model)
        return None


# ---------------------------------------------------------------------------- encoding


class EncodedSync(NamedTuple):
    datagrams: list[bytes]
    dropped: int
    """Keys left out: too large for one datagram, or not representable in JSON."""


def _float_out(value: float) -> float | str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if math.isnan(value):
        raise ValueError("NaN cannot be sent")
    return value


def _key_fragment(part: KeySync) -> tuple[bytes, int]:
    limits = part.limits
    buckets = [
        [bucket, [[node, *spend] for node, spend in row.items()]]
        for bucket, row in part.spend.buckets.items()
    ]
    body = {
        "key": list(part.key),
        "limits": [
            limits.requests_per_minute,
            limits.tokens_per_minute,
            limits.concurrent_requests,
            limits.strict,
            limits.smoothing,
            limits.sync_interval_ms,
        ],
        "epoch": part.epoch,
        "horizon": part.spend.horizon,
        "buckets": buckets,
        "blocked_until": _float_out(part.blocked_until),
    }
    return orjson.dumps(body), sum(len(row) for row in part.spend.buckets.values())


def encode_sync(
    message: SyncMessage, *, max_size: int = MAX_DATAGRAM, max_entries: int = MAX_ENTRIES
) -> EncodedSync:
    """``message`` as datagrams of whole keys, each at most ``max_size`` bytes and
    ``max_entries`` counter entries. A message with no keys is one datagram."""
    head = b'{"v":%d,"kind":"sync","origin":%b,"sent_at":%b,"keys":[' % (
        VERSION,
        orjson.dumps(message.origin),
        orjson.dumps(_float_out(message.sent_at)),
    )
    tail = b"]}"
    if not message.keys:
        return EncodedSync([head + tail], 0)
    room = max_size - len(head) - len(tail)
    groups: list[list[bytes]] = []
    dropped = size = entries = 0
    for part in message.keys:
        try:
            fragment, count = _key_fragment(part)
        except (TypeError, ValueError):  # orjson's encode error is a TypeError
            dropped += 1
            continue
        if len(fragment) > room or count > max_entries:
            dropped += 1
        elif groups and size + 1 + len(fragment) <= room and entries + count <= max_entries:
            groups[-1].append(fragment)
            size, entries = size + 1 + len(fragment), entries + count
        else:
            groups.append([fragment])
            size, entries = len(fragment), count
    return EncodedSync([head + b",".join(group) + tail for group in groups], dropped)


def encode_circuit(signal: CircuitSignal) -> bytes:
    body: dict[str, object] = {
        "v": VERSION,
        "kind": "circuit",
        "origin": signal.origin,
        "provider": signal.provider,
        "endpoint": signal.endpoint,
    }
    if signal.model is not None:
        body["model"] = signal.model
    body.update(state=signal.state, open_for_s=signal.open_for_s)
    return orjson.dumps(body)


# ---------------------------------------------------------------------------- decoding


class MalformedDatagram(ValueError):
    """A datagram the codec refuses. The replicator counts and drops it; it never leaves."""


def _fields(value: object, names: frozenset[str]) -> dict[str, object]:
    if not isinstance(value, dict) or value.keys() != names:
        raise MalformedDatagram("unexpected object shape")
    return value


def _list(value: object, length: int | None = None) -> list[object]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise MalformedDatagram("expected a list")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise MalformedDatagram("expected a string")
    return value


def _int(value: object, *, minimum: int | None = None) -> int:
    if type(value) is not int or (minimum is not None and value < minimum):
        raise MalformedDatagram("expected an integer in range")
    return value


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value, minimum=0)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise MalformedDatagram("expected a boolean")
    return value


def _float(value: object, *, infinite: bool = False) -> float:
    if infinite and value in ("inf", "-inf"):
        return math.inf if value == "inf" else -math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedDatagram("expected a finite number")
    return float(value)


_SYNC = frozenset({"v", "kind", "origin", "sent_at", "keys"})
_CIRCUIT_BEFORE_MODELS = frozenset(
    {"v", "kind", "origin", "provider", "endpoint", "state", "open_for_s"}
)
_CIRCUIT = _CIRCUIT_BEFORE_MODELS | {"model"}
_KEY = frozenset({"key", "limits", "epoch", "horizon", "buckets", "blocked_until"})


def _decode_limits(value: object) -> RateLimits:
    rpm, tpm, concurrent, strict, smoothing, interval = _list(value, 6)
    return RateLimits(
        requests_per_minute=_opt_int(rpm),
        tokens_per_minute=_opt_int(tpm),
        concurrent_requests=_opt_int(concurrent),
        strict=_bool(strict),
        smoothing=_bool(smoothing),
        sync_interval_ms=_int(interval, minimum=1),
    )


def _decode_key(value: object, budget: list[int]) -> KeySync:
    fields = _fields(value, _KEY)
    provider, fingerprint, model = (_str(item) for item in _list(fields["key"], 3))
    buckets: dict[int, dict[str, Spend]] = {}
    for item in _list(fields["buckets"]):
        bucket_value, row_value = _list(item, 2)
        bucket, row = _int(bucket_value), _list(row_value)
        budget[0] -= len(row)
        if budget[0] < 0 or bucket in buckets:
            raise MalformedDatagram("too many entries, or a bucket twice")
        spends = buckets[bucket] = {}
        for entry in row:
            node, requests, tokens, refunded = _list(entry, 4)
            name = _str(node)
            if name in spends:
                raise MalformedDatagram("a node twice in one bucket")
            spends[name] = Spend(
                _int(requests, minimum=0), _int(tokens, minimum=0), _int(refunded, minimum=0)
            )
    return KeySync(
        key=LimiterKey(provider, fingerprint, model),
        limits=_decode_limits(fields["limits"]),
        epoch=_int(fields["epoch"]),
        spend=CounterState(_int(fields["horizon"]), buckets),
        blocked_until=_float(fields["blocked_until"], infinite=True),
    )


def decode(datagram: bytes) -> SyncMessage | CircuitSignal:
    """The message in ``datagram``; :class:`MalformedDatagram` for anything else."""
    if len(datagram) > MAX_DATAGRAM:
        raise MalformedDatagram("oversized datagram")
    try:
        value = orjson.loads(datagram)
    except orjson.JSONDecodeError as error:
        raise MalformedDatagram("not JSON") from error
    if not isinstance(value, dict) or value.get("v") != VERSION or type(value["v"]) is not int:
        raise MalformedDatagram("unknown version")
    kind = value.get("kind")
    if kind == "sync":
        fields = _fields(value, _SYNC)
        budget = [MAX_ENTRIES]
        keys = tuple(_decode_key(item, budget) for item in _list(fields["keys"]))
        return SyncMessage(_str(fields["origin"]), _float(fields["sent_at"]), keys)
    if kind == "circuit":
        fields = _fields(value, _CIRCUIT if "model" in value else _CIRCUIT_BEFORE_MODELS)
        state = fields["state"]
        if state != "open" and state != "closed":  # noqa: PLR1714 (narrows for mypy)
            raise MalformedDatagram("unknown circuit state")
        model = _str(fields["model"]) if "model" in fields else None
        try:
            return CircuitSignal(
                _str(fields["origin"]),
                _str(fields["provider"]),
                _str(fields["endpoint"]),
                state,
                _float(fields["open_for_s"]),
                model,
            )
        except ValueError as error:
            raise MalformedDatagram("inconsistent circuit signal") from error
    raise MalformedDatagram("unknown kind")
