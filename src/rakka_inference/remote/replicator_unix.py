"""The spend exchange between the worker processes of one machine, over Unix datagrams.

:class:`UnixDatagramReplicator` is a :class:`~rakka_inference.remote.replicator.Replicator`
for N processes on one host: each binds an ``AF_UNIX``/``SOCK_DGRAM`` socket at
``<directory>/<node_id>.gossip`` and sends every message to each peer's file, without
blocking the event loop. Beside the limiters' :class:`SyncMessage` it carries the
:class:`~rakka_inference.remote.replicator_codec.CircuitSignal`: one process's circuit
breaker opened or closed, so the others can follow.

The wire format (versioned JSON, one message per datagram) and its pure codec live in
:mod:`rakka_inference.remote.replicator_codec`; the replicator only moves its bytes.

Guarantees and what is dropped
------------------------------
Best effort, as the protocol allows: a message may be lost, never half-applied.

- Sending never raises and never blocks: a peer whose file is missing (``ENOENT``), stale
  (``ECONNREFUSED``) or whose queue is full (``EAGAIN``, ``ENOBUFS``: Linux queues only
  ``net.unix.max_dgram_qlen`` datagrams per socket) is skipped and counted in
  :class:`ReplicatorStats`. Unread datagrams are charged to the sender's buffer
  (``SO_SNDBUF``, raised to 1 MiB where ``net.core.wmem_max`` allows), which bounds a
  burst. Membership is constant: a dead peer still counts as a member.
- A sync message is sent as the codec splits it: datagrams of at most
  :data:`~rakka_inference.remote.replicator_codec.MAX_DATAGRAM` bytes (or the replicator's
  smaller ``max_datagram``), whole keys each. A key the codec leaves out (too large for one
  datagram, or not representable in JSON) is counted, and logged without its key.
- A received datagram the codec refuses
  (:class:`~rakka_inference.remote.replicator_codec.MalformedDatagram`: oversized, not
  JSON, another version or kind, any field of the wrong type) is dropped whole and
  counted: it never raises into the loop. Messages from this node's own id are ignored.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from rakka_inference.remote.replicator import Deliver, SyncMessage
from rakka_inference.remote.replicator_codec import (
    MAX_DATAGRAM,
    CircuitSignal,
    MalformedDatagram,
    decode,
    encode_circuit,
    encode_sync,
)

__all__ = ["GossipInbox", "ReplicatorStats", "UnixDatagramReplicator"]

log = logging.getLogger("rakka_inference.remote.replicator_unix")

_READ_BURST = 64
"""Datagrams read per wake-up, so a flood cannot starve the loop."""
_SEND_BUFFER = 1024 * 1024
_SOCKET_SUFFIX = ".gossip"
_SUN_PATH_MAX = 107

_M = TypeVar("_M")


@dataclass(slots=True)
class ReplicatorStats:
    """Counters of one replicator (a copy; read them from :attr:`~UnixDatagramReplicator.stats`)."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0
    dropped_malformed: int = 0
    """Datagrams refused by :func:`~rakka_inference.remote.replicator_codec.decode`: garbage,
    oversized, another version."""
    send_failures: int = 0
    """Datagrams not sent to a peer: missing, stale, or its queue full."""
    dropped_too_large: int = 0
    """Keys left out of a sync message (see
    :class:`~rakka_inference.remote.replicator_codec.EncodedSync`)."""
    dropped_not_running: int = 0
    """Messages published before ``start`` or after ``aclose``."""
    subscriber_errors: int = 0
    """Deliveries whose callback raised (logged; the next ones still arrive)."""


def _check_node_id(node_id: str) -> str:
    if not node_id or node_id in (".", "..") or "/" in node_id or "\0" in node_id:
        raise ValueError(f"node id {node_id!r} cannot name a socket file")
    return node_id


class GossipInbox:
    """What a replicator does with a datagram it received, whatever carried it: decoded
    (a malformed one dropped and counted), its own node's ignored, counted, and handed to
    every subscriber of its kind; a subscriber's failure is counted and logged, never
    raised into the loop."""

    __slots__ = ("_circuit", "_node_id", "_stats", "_sync")

    def __init__(self, node_id: str, stats: ReplicatorStats) -> None:
        self._node_id = node_id
        self._stats = stats
        self._sync: list[Deliver] = []
        self._circuit: list[Callable[[CircuitSignal], None]] = []

    def subscribe(self, deliver: Deliver) -> None:
        self._sync.append(deliver)

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None:
        self._circuit.append(deliver)

    def receive(self, datagram: bytes) -> None:
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
            for deliver_circuit in self._circuit:
                self._call(deliver_circuit, message)
        else:
            for deliver in self._sync:
                self._call(deliver, message)

    def _call(self, deliver: Callable[[_M], None], message: _M) -> None:
        try:
            deliver(message)
        except Exception:
            self._stats.subscriber_errors += 1
            log.exception("a gossip subscriber of %s failed", self._node_id)


class UnixDatagramReplicator:
    """One process's endpoint: ``<directory>/<node_id>.gossip``; ``peers`` are every node of
    the host (this one may be among them). The format is
    :mod:`~rakka_inference.remote.replicator_codec`'s.

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
        self._stats = ReplicatorStats()
        self._inbox = GossipInbox(self._node_id, self._stats)

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
        self._inbox.subscribe(deliver)

    # -- circuit signals

    def publish_circuit(self, signal: CircuitSignal) -> None:
        self._send([encode_circuit(signal)])

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None:
        self._inbox.subscribe_circuit(deliver)

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
        self._inbox.receive(datagram)

    def __repr__(self) -> str:
        state = "running" if self._sock is not None else "stopped"
        return f"UnixDatagramReplicator({self._node_id!r}, {len(self._members)} members, {state})"
