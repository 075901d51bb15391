"""What the server lets a client connection cost, and the count of those it shed: the
policy and the accounting of :mod:`~rakka_inference.runtime.connection_guard` (which holds
uvicorn's connections to them), with no server in it.

- :class:`ConnectionLimits`: ``[cluster]``'s limits (:class:`~rakka_inference.core.
  deployment.ClusterConfig`) in the units the server uses, and what to answer and log
  for each.
- :class:`ConnectionGuard`: the connections open now and by client (:func:`client_key`:
  an address, an IPv6 client by its /64, one host's share of addresses), the caps
  (``max_connections`` lowered to what the open-file limit holds,
  :func:`connections_within`, the soft limit raised towards the hard one first), the
  connections shed by reason (:data:`SHED_REASONS`), and their log: at most one line per
  reason every :data:`LOG_EVERY_S` seconds, with how many more were shed since, the
  client's address and the limit, never anything the client sent.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.core.errors import HeadTooLarge, InferenceError, UriTooLong
from rakka_inference.wire.request_head import HeadLimit, HeadMeter

__all__ = [
    "BODY_TIMEOUT",
    "CLIENT_LIMIT",
    "FILE_RESERVE",
    "HEAD_TIMEOUT",
    "LOG_EVERY_S",
    "SHED_REASONS",
    "TOTAL_LIMIT",
    "ConnectionGuard",
    "ConnectionLimits",
    "client_key",
    "connections_within",
]

log = logging.getLogger("rakka_inference.connections")

HEAD_TIMEOUT: Final = "head_timeout"
BODY_TIMEOUT: Final = "body_timeout"
CLIENT_LIMIT: Final = "client_limit"
TOTAL_LIMIT: Final = "total_limit"
SHED_REASONS: Final = (
    HEAD_TIMEOUT,
    BODY_TIMEOUT,
    CLIENT_LIMIT,
    TOTAL_LIMIT,
    *(limit.value for limit in HeadLimit),
)
"""The ``reason`` label of ``inference_connections_shed_total``: every value it takes."""

LOG_EVERY_S: Final = 10.0
"""The least time between two log lines for one reason."""
FILE_RESERVE: Final = 128
"""Open files kept apart from client connections: the process's own, engines' pipes."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """``[cluster]``'s limits of a connection (see :mod:`~rakka_inference.runtime.
    connection_guard`), in the units the server uses."""

    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    """Already lowered to what the open-file limit holds."""
    max_connections_per_client: int
    """Lowered in proportion when ``max_connections`` is."""
    max_request_line_bytes: int
    max_header_bytes: int
    max_head_bytes: int

    @classmethod
    def of(cls, cluster: ClusterConfig, *, max_connections: int) -> ConnectionLimits:
        """``cluster``'s limits, with ``max_connections`` held (by the open-file limit):
        the per-client cap is lowered in proportion, so that one client keeps the share
        of the whole the config gives it."""
        wanted = cluster.max_connections
        per_client = min(cluster.max_connections_per_client, wanted)
        if max_connections < wanted:
            per_client = max(1, per_client * max_connections // wanted)
        return cls(
            header_timeout_s=cluster.header_timeout_ms / 1000,
            body_timeout_s=cluster.body_timeout_ms / 1000,
            max_connections=max_connections,
            max_connections_per_client=per_client,
            max_request_line_bytes=cluster.max_request_line_bytes,
            max_header_bytes=cluster.max_header_bytes,
            max_head_bytes=cluster.max_head_bytes,
        )

    def meter(self) -> HeadMeter:
        return HeadMeter(
            max_request_line=self.max_request_line_bytes,
            max_header=self.max_header_bytes,
            max_head=self.max_head_bytes,
        )

    def describe(self, reason: str) -> str:
        """Why a connection was shed, for the log (never what the client sent)."""
        return {
            HEAD_TIMEOUT: f"its request head did not arrive within {self.header_timeout_s:g} s",
            BODY_TIMEOUT: f"its request body did not arrive within {self.body_timeout_s:g} s",
            CLIENT_LIMIT: f"{self.max_connections_per_client} connections from that address "
            "are open (max_connections_per_client)",
            TOTAL_LIMIT: f"{self.max_connections} connections are open (max_connections)",
            HeadLimit.REQUEST_LINE.value: "its request line is longer than "
            f"{self.max_request_line_bytes} bytes (max_request_line_bytes)",
            HeadLimit.HEADER.value: "a header line is longer than "
            f"{self.max_header_bytes} bytes (max_header_bytes)",
            HeadLimit.HEAD.value: "its request head is longer than "
            f"{self.max_head_bytes} bytes (max_head_bytes)",
        }[reason]

    def error(self, limit: HeadLimit) -> InferenceError:
        """The answer to a head that passed ``limit``."""
        if limit is HeadLimit.REQUEST_LINE:
            return UriTooLong(
                f"the request line is longer than {self.max_request_line_bytes} bytes"
            )
        if limit is HeadLimit.HEADER:
            return HeadTooLarge(f"a request header is longer than {self.max_header_bytes} bytes")
        return HeadTooLarge(f"the request headers are longer than {self.max_head_bytes} bytes")


def connections_within(max_connections: int, file_limit: int) -> int:
    """The client connections a process whose open-file limit is ``file_limit`` (negative:
    none) can hold: each may hold a connection upstream too, and :data:`FILE_RESERVE`
    files are the process's own."""
    if file_limit < 0:
        return max_connections
    return max(1, min(max_connections, (file_limit - FILE_RESERVE) // 2))


def _file_limited(max_connections: int) -> int:
    """:func:`connections_within` this process's open-file limit, having raised its soft
    limit towards what ``max_connections`` need (never past the hard limit)."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * max_connections + FILE_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return connections_within(max_connections, -1 if soft == resource.RLIM_INFINITY else soft)


def client_key(peer: Any) -> str | None:
    """Whose connection it is, from the transport's ``peername``: an IPv4 address, an IPv6
    client's /64 (an IPv4-mapped one as IPv4), ``None`` for a Unix socket."""
    if not isinstance(peer, tuple) or not peer:
        return None
    host = str(peer[0])
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((address, 64), strict=False))


class ConnectionGuard:
    """The limits of one server's connections, and their counts (see the module).

    Used from the server's event loop only. ``cluster`` gives the settings: a config's
    ``[cluster]``, or where to read the current one (:meth:`follow`).
    """

    def __init__(
        self,
        cluster: ClusterConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        file_limited: Callable[[int], int] = _file_limited,
    ) -> None:
        self._source: Callable[[], ClusterConfig] = lambda: cluster
        self._cluster = cluster
        self._file_limited = file_limited
        self.limits = self._limits_of(cluster)
        self.open = 0
        """Client connections open now (Unix sockets not counted)."""
        self._per_client: dict[str, int] = {}
        self.shed_counts: dict[str, int] = dict.fromkeys(SHED_REASONS, 0)
        self.on_shed: Callable[[str], None] | None = None
        """Told each reason a connection was shed for (the metrics)."""
        self._clock = clock
        self._next_log: dict[str, float] = {}
        self._held: dict[str, int] = {}

    @property
    def open_connections(self) -> int:
        return self.open

    @property
    def shed_reasons(self) -> tuple[str, ...]:
        return SHED_REASONS

    def follow(self, source: Callable[[], ClusterConfig]) -> None:
        """Take the settings from ``source()`` from now on (the running config's, which a
        reload replaces): a connection gets those current when it is accepted."""
        self._source = source

    def _current(self) -> ConnectionLimits:
        cluster = self._source()
        if cluster is not self._cluster:
            self._cluster = cluster
            self.limits = self._limits_of(cluster, self.limits)
        return self.limits

    def _limits_of(
        self, cluster: ClusterConfig, before: ConnectionLimits | None = None
    ) -> ConnectionLimits:
        wanted = cluster.max_connections
        held = self._file_limited(wanted)
        limits = ConnectionLimits.of(cluster, max_connections=held)
        if held < wanted and (before is None or before.max_connections != held):
            log.warning(
                "the open-file limit holds %d client connections, not max_connections = %d "
                "(and %d from one client): raise it (ulimit -n, systemd's LimitNOFILE)",
                held,
                wanted,
                limits.max_connections_per_client,
            )
        return limits

    def admit(self, client: str | None) -> ConnectionLimits | None:
        """Count a connection from ``client`` in: its limits, or ``None`` (and it is shed)
        when a cap is reached."""
        limits = self._current()
        if client is None:
            return limits
        if self.open >= limits.max_connections:
            self.shed(TOTAL_LIMIT, client, limits)
            return None
        count = self._per_client.get(client, 0)
        if count >= limits.max_connections_per_client:
            self.shed(CLIENT_LIMIT, client, limits)
            return None
        self._per_client[client] = count + 1
        self.open += 1
        return limits

    def release(self, client: str | None) -> None:
        """Count a connection admitted from ``client`` out."""
        if client is None:
            return
        self.open -= 1
        count = self._per_client.pop(client) - 1
        if count:
            self._per_client[client] = count

    def shed(self, reason: str, client: str | None, limits: ConnectionLimits) -> None:
        """Count a connection shed, and log it unless one was logged for ``reason`` within
        :data:`LOG_EVERY_S` (the next line says how many were held back)."""
        self.shed_counts[reason] += 1
        if self.on_shed is not None:
            self.on_shed(reason)
        now = self._clock()
        if now < self._next_log.get(reason, -1.0):
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._next_log[reason] = now + LOG_EVERY_S
        held = self._held.pop(reason, 0)
        since = f" ({held} more since the last line for this)" if held else ""
        who = "a local socket" if client is None else client
        log.warning("closed a connection from %s: %s%s", who, limits.describe(reason), since)
