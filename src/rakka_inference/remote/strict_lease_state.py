"""The strict lease authority's record as bytes, so that it survives a restart (sans-I/O).

:meth:`LeaseAuthority.snapshot <rakka_inference.remote.strict_lease.LeaseAuthority.snapshot>`
turns the record into an :class:`AuthorityState` and :func:`encode_state` into bytes;
:func:`decode_state` validates bytes back into an :class:`AuthorityState` (or raises
:class:`SnapshotError`), and ``LeaseAuthority.restore`` rebuilds the authority from it.

Format (version 1)
------------------
One compact JSON object (orjson, never pickle)::

    {"v": 1, "next": next lease id, "ttl": s, "window": s,
     "keys": [{"key": [provider, fingerprint, model],
               "limits": {every RateLimits field by name: value},
               "blocked_until": t | null,
               "factor": [base, since | null, last_cut | null],
               "leases": [[lease_id, granted_at, requests, tokens], ...]}, ...]}

Times are the authority's clock. ``null`` is "never" (minus infinity: no block, no cut
yet) and the string ``"inf"`` is "forever" (a block without end). A lease's ``requests``
and ``tokens`` are what it still counts for, returns and overruns applied; the running
sums are not stored but summed again on restore.

Validation
----------
:func:`decode_state` accepts exactly this shape and nothing else: the version, every field
present and no other, integers non-negative and below 2**63, times finite (or the two
markers above), ``0 < base <= 1``, keys distinct, lease ids distinct, at least 1 and below
``next``. Anything else raises :class:`SnapshotError` (a :class:`ValueError`), never a
``KeyError`` or ``TypeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import orjson

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import LimiterKey, RateFactor

__all__ = [
    "VERSION",
    "AuthorityState",
    "FactorState",
    "KeyState",
    "LeaseState",
    "SnapshotError",
    "decode_state",
    "encode_state",
]

VERSION = 1
_MAX_INT = 2**63
_TOP = frozenset({"v", "next", "ttl", "window", "keys"})
_KEY = frozenset({"key", "limits", "blocked_until", "factor", "leases"})


class SnapshotError(ValueError):
    """Bytes that are not a valid snapshot of a lease authority."""


class LeaseState(NamedTuple):
    """One live lease: what it still counts for in the record."""

    lease_id: int
    granted_at: float
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class FactorState:
    """A :class:`RateFactor`'s three numbers: ``min(1, base + r * (t - since))``, and the
    time of its last cut (for the cooldown)."""

    base: float
    since: float
    last_cut: float

    @classmethod
    def of(cls, factor: RateFactor) -> FactorState:
        # RateFactor keeps these private; this record is the one reader outside it.
        return cls(factor._base, factor._since, factor._last_cut)

    def apply(self, factor: RateFactor) -> None:
        factor._base, factor._since, factor._last_cut = self.base, self.since, self.last_cut


@dataclass(frozen=True, slots=True)
class KeyState:
    key: LimiterKey
    limits: RateLimits
    blocked_until: float
    factor: FactorState
    leases: tuple[LeaseState, ...]


@dataclass(frozen=True, slots=True)
class AuthorityState:
    """Everything a :class:`LeaseAuthority` needs to go on exactly where it stopped."""

    next_lease_id: int
    ttl: float
    window: float
    keys: tuple[KeyState, ...]


# --------------------------------------------------------------------------- encoding


def _time_out(value: float) -> float | str | None:
    if value == -math.inf:
        return None
    if value == math.inf:
        return "inf"
    return _finite_out(value)


def _finite_out(value: float) -> float:
    if not math.isfinite(value):  # JSON has no such number: orjson would write null
        raise ValueError(f"the authority's clock gave {value}")
    return value


def encode_state(state: AuthorityState) -> bytes:
    """The snapshot's bytes (compact JSON, version :data:`VERSION`)."""
    return orjson.dumps(
        {
            "v": VERSION,
            "next": state.next_lease_id,
            "ttl": state.ttl,
            "window": state.window,
            "keys": [
                {
                    "key": list(key.key),
                    "limits": {f.name: getattr(key.limits, f.name) for f in fields(key.limits)},
                    "blocked_until": _time_out(key.blocked_until),
                    "factor": [
                        key.factor.base,
                        _time_out(key.factor.since),
                        _time_out(key.factor.last_cut),
                    ],
                    "leases": [
                        [lease_id, _finite_out(granted_at), requests, tokens]
                        for lease_id, granted_at, requests, tokens in key.leases
                    ],
                }
                for key in state.keys
            ],
        }
    )


# --------------------------------------------------------------------------- decoding


def _count(value: object) -> int:
    if type(value) is not int or not 0 <= value < _MAX_INT:
        raise SnapshotError(f"expected a non-negative integer, not {value!r:.40}")
    return value


def _optional_count(value: object) -> int | None:
    return None if value is None else _count(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise SnapshotError(f"expected true or false, not {value!r:.40}")
    return value


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SnapshotError(f"expected a finite number, not {value!r:.40}")
    return float(value)


def _positive(value: object) -> float:
    number = _finite(value)
    if number <= 0:
        raise SnapshotError("ttl and window must be > 0")
    return number


def _time(value: object) -> float:
    if value is None:
        return -math.inf
    if value == "inf":
        return math.inf
    return _finite(value)


_LIMITS = frozenset(
    {
        "requests_per_minute",
        "tokens_per_minute",
        "concurrent_requests",
        "strict",
        "smoothing",
        "sync_interval_ms",
    }
)


def _object(value: object, names: frozenset[str], what: str) -> dict[str, object]:
    if not isinstance(value, dict) or value.keys() != names:
        raise SnapshotError(f"{what} is an object of exactly {sorted(names)}")
    return value


def _list(value: object, length: int | None, what: str) -> list[object]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise SnapshotError(f"{what} is a list" + ("" if length is None else f" of {length}"))
    return value


def _limits(value: object) -> RateLimits:
    items = _object(value, _LIMITS, "limits")  # a field added to RateLimits fails here
    return RateLimits(
        requests_per_minute=_optional_count(items["requests_per_minute"]),
        tokens_per_minute=_optional_count(items["tokens_per_minute"]),
        concurrent_requests=_optional_count(items["concurrent_requests"]),
        strict=_flag(items["strict"]),
        smoothing=_flag(items["smoothing"]),
        sync_interval_ms=_count(items["sync_interval_ms"]),
    )


def _factor(value: object) -> FactorState:
    base, since, last_cut = _list(value, 3, "factor")
    state = FactorState(_finite(base), _time(since), _time(last_cut))
    if not 0.0 < state.base <= 1.0:
        raise SnapshotError("a factor's base is in (0, 1]")
    return state


def _lease(value: object) -> LeaseState:
    lease_id, granted_at, requests, tokens = _list(value, 4, "a lease")
    lease = LeaseState(_count(lease_id), _finite(granted_at), _count(requests), _count(tokens))
    if lease.lease_id < 1:
        raise SnapshotError("lease ids start at 1")
    return lease


def _key_state(value: object) -> KeyState:
    items = _object(value, _KEY, "a key's record")
    key = _list(items["key"], 3, "key")
    if not all(isinstance(part, str) for part in key):
        raise SnapshotError("a key is [provider, fingerprint, model]")
    return KeyState(
        key=LimiterKey(*(str(part) for part in key)),
        limits=_limits(items["limits"]),
        blocked_until=_time(items["blocked_until"]),
        factor=_factor(items["factor"]),
        leases=tuple(_lease(lease) for lease in _list(items["leases"], None, "leases")),
    )


def decode_state(data: bytes) -> AuthorityState:
    """A snapshot's bytes validated into an :class:`AuthorityState`; raises only
    :class:`SnapshotError`."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError("a snapshot is one JSON object") from exc
    items = _object(message, _TOP, "a snapshot")
    if type(items["v"]) is not int or items["v"] != VERSION:
        raise SnapshotError(f"unknown snapshot version {items['v']!r:.20}")
    state = AuthorityState(
        next_lease_id=_count(items["next"]),
        ttl=_positive(items["ttl"]),
        window=_positive(items["window"]),
        keys=tuple(_key_state(key) for key in _list(items["keys"], None, "keys")),
    )
    if len({key.key for key in state.keys}) != len(state.keys):
        raise SnapshotError("a key appears twice")
    ids = [lease.lease_id for key in state.keys for lease in key.leases]
    if len(set(ids)) != len(ids):
        raise SnapshotError("a lease id appears twice")
    if max(ids, default=0) >= state.next_lease_id or state.next_lease_id < 1:
        raise SnapshotError("the next lease id must be above every lease's")
    return state
