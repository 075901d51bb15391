"""The spend exchange between the worker processes of one machine, over Unix datagrams.

:class:`UnixDatagramReplicator` is a :class:`~rakka_inference.remote.replicator.Replicator`
for N processes on one host: each binds an ``AF_UNIX``/``SOCK_DGRAM`` socket at
``<directory>/<node_id>.gossip`` and sends every message to each peer's file, without
blocking the event loop. Beside the limiters' :class:`SyncMessage` it carries a second
kind of message, :class:`CircuitSignal`: one process's circuit breaker opened or closed,
so the others can follow.

Wire format
-----------
One datagram is one UTF-8 JSON object (``orjson``; never pickle), with a version and a
kind::

    {"v":1,"kind":"sync","origin":"w1","sent_at":1001.0,"keys":[KEY, ...]}
    KEY = {"key":[provider,key_fingerprint,model],
           "limits":[rpm|null,tpm|null,concurrent|null,strict,smoothing,sync_interval_ms],
           "epoch":1001,"horizon":940,
           "buckets":[[bucket,[[node,requests,tokens,refunded],...]],...],
           "blocked_until":1006.5|"-inf"|"inf"}

    {"v":1,"kind":"circuit","origin":"w1","provider":"openai",
     "endpoint":"https://api.openai.com/v1","state":"open","open_for_s":30.0}

JSON has no infinity: ``blocked_until`` (``-inf`` for a key never blocked) writes the
infinities as strings. A circuit signal's ``open_for_s`` is relative, so the processes'
clocks need not agree; ``blocked_until`` is on the limiters' monotonic clock, which the
processes of one host share.

Guarantees and what is dropped
------------------------------
Best effort, as the protocol allows: a message may be lost, never half-applied.

- Sending never raises and never blocks: a peer whose file is missing (``ENOENT``), stale
  (``ECONNREFUSED``) or whose queue is full (``EAGAIN``, ``ENOBUFS``: Linux queues only
  ``net.unix.max_dgram_qlen`` datagrams per socket) is skipped and counted in
  :class:`ReplicatorStats`. Unread datagrams are charged to the sender's buffer
  (``SO_SNDBUF``, raised to 1 MiB where ``net.core.wmem_max`` allows), which bounds a
  burst. Membership is constant: a dead peer still counts as a member.
- A sync message is split into datagrams of at most :data:`MAX_DATAGRAM` bytes (or the
  replicator's smaller ``max_datagram``) and :data:`MAX_ENTRIES` counter entries, whole
  keys each; every datagram is a valid sync
  message on its own (merging is per key). A key too large for one datagram, or that JSON
  cannot carry (a NaN, an integer over 64 bits), is dropped and counted, and logged
  without its key.
- A received datagram that is over the size cap (checked before parsing), not JSON, of
  another version or kind, or with any field of the wrong type (non-finite numbers,
  negative spend, a state outside the literal, an unknown or missing field, more entries
  than the cap) is dropped whole and counted: it never raises into the loop. Messages
  from this node's own id are ignored.

:func:`encode_sync`, :func:`encode_circuit` and :func:`decode` are the pure codec; the
replicator only moves their bytes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import orjson

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.breaker import BreakerKey, BreakerState, BreakerTransition
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import LimiterKey
from rakka_inference.remote.replicator import Deliver, KeySync, SyncMessage

__all__ = [
    "MAX_DATAGRAM",
    "MAX_ENTRIES",
    "VERSION",
    "CircuitSignal",
    "CircuitState",
    "EncodedSync",
    "MalformedDatagram",
    "encode_sync",
    "encode_circuit",
    "decode",
    "ReplicatorStats",
    "UnixDatagramReplicator",
]

log = logging.getLogger("rakka_inference.remote.replicator_unix")

VERSION = 1
MAX_DATAGRAM = 60 * 1024
"""Bytes in one datagram, sent or accepted (well under the default socket buffers)."""
MAX_ENTRIES = 4096
"""Counter entries (bucket, node) in one datagram, sent or accepted."""
_READ_BURST = 64
"""Datagrams read per wake-up, so a flood cannot starve the loop."""
_SEND_BUFFER = 1024 * 1024
_SOCKET_SUFFIX = ".gossip"
_SUN_PATH_MAX = 107

CircuitState = Literal["open", "closed"]
_M = TypeVar("_M")


@dataclass(frozen=True, slots=True)
class CircuitSignal:
    """One process's breaker of ``(provider, endpoint)`` opened or closed."""

    origin: str
    provider: str
    endpoint: str
    state: CircuitState
    open_for_s: float = 0.0
    """Seconds left open when ``state == "open"``; 0 when closed."""

    def __post_init__(self) -> None:
        if self.state not in ("open", "closed"):
            raise ValueError(f"state must be 'open' or 'closed', got {self.state!r}")
        if not (math.isfinite(self.open_for_s) and self.open_for_s >= 0):
            raise ValueError("open_for_s must be a finite number >= 0")
        if self.state == "closed" and self.open_for_s != 0:
            raise ValueError("a closed circuit has open_for_s == 0")

    @property
    def key(self) -> BreakerKey:
        return BreakerKey(self.provider, self.endpoint)

    @classmethod
    def from_transition(cls, origin: str, transition: BreakerTransition) -> CircuitSignal | None:
        """The fleet news of a local transition: opened or closed (half-open is none)."""
        key = transition.key
        if transition.to_state is BreakerState.CLOSED:
            return cls(origin, key.provider, key.endpoint, "closed")
        if transition.to_state is BreakerState.OPEN and transition.open_until is not None:
            open_for = max(0.0, transition.open_until - transition.at)
            return cls(origin, key.provider, key.endpoint, "open", open_for)
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
    return orjson.dumps(
        {
            "v": VERSION,
            "kind": "circuit",
            "origin": signal.origin,
            "provider": signal.provider,
            "endpoint": signal.endpoint,
            "state": signal.state,
            "open_for_s": signal.open_for_s,
        }
    )


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
_CIRCUIT = frozenset({"v", "kind", "origin", "provider", "endpoint", "state", "open_for_s"})
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
        fields = _fields(value, _CIRCUIT)
        state = fields["state"]
        if state != "open" and state != "closed":  # noqa: PLR1714 (narrows for mypy)
            raise MalformedDatagram("unknown circuit state")
        try:
            return CircuitSignal(
                _str(fields["origin"]),
                _str(fields["provider"]),
                _str(fields["endpoint"]),
                state,
                _float(fields["open_for_s"]),
            )
        except ValueError as error:
            raise MalformedDatagram("inconsistent circuit signal") from error
    raise MalformedDatagram("unknown kind")


# ---------------------------------------------------------------------------- transport


@dataclass(slots=True)
class ReplicatorStats:
    """Counters of one replicator (a copy; read them from :attr:`~UnixDatagramReplicator.stats`)."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    dropped_malformed: int = 0
    """Datagrams refused by :func:`decode`: garbage, oversized, another version."""
    send_failures: int = 0
    """Datagrams not sent to a peer: missing, stale, or its queue full."""
    dropped_too_large: int = 0
    """Keys left out of a sync message (see :class:`EncodedSync`)."""
    dropped_not_running: int = 0
    """Messages published before ``start`` or after ``aclose``."""
    subscriber_errors: int = 0
    """Deliveries whose callback raised (logged; the next ones still arrive)."""


def _check_node_id(node_id: str) -> str:
    if not node_id or node_id in (".", "..") or "/" in node_id or "\0" in node_id:
        raise ValueError(f"node id {node_id!r} cannot name a socket file")
    return node_id


class UnixDatagramReplicator:
    """One process's endpoint: ``<directory>/<node_id>.gossip``; ``peers`` are every node of
    the host (this one may be among them). See the module docstring for the format.

    ``max_datagram`` (at most :data:`MAX_DATAGRAM`) is the size sync messages are split
    to: smaller datagrams suit small socket buffers.
    """

    def __init__(
        self,
        directory: str | Path,
        node_id: str,
        peers: Iterable[str],
        *,
        max_datagram: int = MAX_DATAGRAM,
    ) -> None:
        if not 1024 <= max_datagram <= MAX_DATAGRAM:
            raise ValueError(f"max_datagram must be in [1024, {MAX_DATAGRAM}]")
        self._max_datagram = max_datagram
        self._node_id = _check_node_id(node_id)
        self._members = frozenset(_check_node_id(p) for p in peers) | {node_id}
        self._directory = Path(directory)
        self._path = self._socket_path(node_id)
        self._peers = {p: self._socket_path(p) for p in sorted(self._members) if p != node_id}
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inode: int | None = None
        self._sync_subscribers: list[Deliver] = []
        self._circuit_subscribers: list[Callable[[CircuitSignal], None]] = []
        self._stats = ReplicatorStats()

    def _socket_path(self, node_id: str) -> str:
        path = str(self._directory / f"{node_id}{_SOCKET_SUFFIX}")
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise ValueError(f"socket path {path!r} is longer than {_SUN_PATH_MAX} bytes")
        return path

    # -- the Replicator protocol

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def path(self) -> str:
        return self._path

    def members(self) -> frozenset[str]:
        return self._members

    def publish(self, message: SyncMessage) -> None:
        """Send ``message`` to every peer, best effort (see the module docstring)."""
        encoded = encode_sync(message, max_size=self._max_datagram)
        if encoded.dropped:
            self._stats.dropped_too_large += encoded.dropped
            log.warning(
                "%d rate-limit key(s) too large for one datagram left out of a sync message",
                encoded.dropped,
            )
        self._send(encoded.datagrams)

    def subscribe(self, deliver: Deliver) -> None:
        """Hand every peer's sync message to ``deliver`` (each subscriber gets each one)."""
        self._sync_subscribers.append(deliver)

    # -- circuit signals

    def publish_circuit(self, signal: CircuitSignal) -> None:
        self._send([encode_circuit(signal)])

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None:
        self._circuit_subscribers.append(deliver)

    @property
    def stats(self) -> ReplicatorStats:
        return replace(self._stats)

    # -- lifecycle

    async def start(self) -> None:
        """Bind the socket (replacing a stale file) and read it on the running loop."""
        if self._sock is not None:
            raise RuntimeError(f"replicator {self._node_id!r} already started")
        loop = asyncio.get_running_loop()
        self._sock, self._loop = self._bind(), loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def _bind(self) -> socket.socket:
        self._directory.mkdir(parents=True, exist_ok=True)
        Path(self._path).unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Unread datagrams are charged to the sender's buffer: ask for room for a burst
            # (the kernel caps it at net.core.wmem_max).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            sock.bind(self._path)
            self._inode = os.stat(self._path).st_ino
        except BaseException:
            sock.close()
            raise
        return sock

    async def aclose(self) -> None:
        """Stop reading, close the socket and remove its file. Idempotent."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        assert self._loop is not None  # set with the socket
        self._loop.remove_reader(sock.fileno())
        sock.close()
        try:
            if os.stat(self._path).st_ino == self._inode:  # not a successor's socket
                os.unlink(self._path)
        except FileNotFoundError:
            pass

    # -- traffic

    def _send(self, datagrams: list[bytes]) -> None:
        sock, stats = self._sock, self._stats
        if sock is None:
            stats.dropped_not_running += 1
            return
        for peer, path in self._peers.items():
            for index, datagram in enumerate(datagrams):
                try:
                    sock.sendto(datagram, path)
                except OSError as error:
                    stats.send_failures += len(datagrams) - index
                    reason = errno.errorcode.get(error.errno or 0, str(error.errno))
                    log.debug("gossip to %s skipped: %s", peer, reason)
                    break
                stats.datagrams_sent += 1
                stats.bytes_sent += len(datagram)

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:  # pragma: no cover - the reader is removed before the socket closes
            return
        for _ in range(_READ_BURST):
            try:
                datagram = sock.recv(MAX_DATAGRAM + 1)
            except BlockingIOError:
                return
            except OSError as error:
                log.warning("gossip socket read failed: %s", error)
                return
            self._receive(datagram)

    def _receive(self, datagram: bytes) -> None:
        stats = self._stats
        try:
            message = decode(datagram)
        except MalformedDatagram as error:
            stats.dropped_malformed += 1
            log.debug("dropped a gossip datagram of %d bytes: %s", len(datagram), error)
            return
        if message.origin == self._node_id:
            return
        stats.datagrams_received += 1
        stats.bytes_received += len(datagram)
        if isinstance(message, CircuitSignal):
            for deliver_circuit in self._circuit_subscribers:
                self._call(deliver_circuit, message)
        else:
            for deliver in self._sync_subscribers:
                self._call(deliver, message)

    def _call(self, deliver: Callable[[_M], None], message: _M) -> None:
        try:
            deliver(message)
        except Exception:
            self._stats.subscriber_errors += 1
            log.exception("a gossip subscriber of %s failed", self._node_id)

    def __repr__(self) -> str:
        state = "running" if self._sock is not None else "stopped"
        return f"UnixDatagramReplicator({self._node_id!r}, {len(self._members)} members, {state})"
