"""Strict leases over a Unix stream socket: the authority's server, the holders' client.

The :class:`~rakka_inference.remote.strict_lease.LeaseAuthority` lives in one process (the
supervisor) behind a :class:`LeaseServer`; each worker holds a :class:`LeaseClient`, a
:class:`~rakka_inference.remote.distributed_limit.StrictAuthority` whose limiters
(:class:`~rakka_inference.remote.strict_lease_limiter.LeasedLimiter`, one per key) spend
leases locally.

The lines they exchange, and how each is validated, are
:mod:`rakka_inference.remote.strict_lease_wire`'s: one connection per client, at most
:data:`~rakka_inference.remote.strict_lease_wire.MAX_LINE` a line. A malformed line gets
an ``error`` reply, and one over the limit also closes its connection (the stream cannot
be resynchronised). The socket is ``0600``.

The client keeps one connection for all its keys, with one lease request in flight per
key, each answered within ``request_timeout`` or the connection is given up (what awaits
it fails with :class:`ConnectionError`, and the limiters treat the authority as down for
``retry_delay``). Notices (a provider 429) sent while disconnected go out first thing on
the next connection. Each outage is logged once. At close every unused permit goes back
in ``release`` lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import (
    AutoTune,
    Clock,
    LimiterKey,
    RateLimitUtilization,
    Sleep,
)
from rakka_inference.remote.strict_lease import (
    LeaseAuthority,
    LeaseGrant,
    LeaseRefusal,
    LeaseReturn,
)
from rakka_inference.remote.strict_lease_limiter import LeasedLimiter, LeasedLimiters
from rakka_inference.remote.strict_lease_wire import (
    MAX_LINE,
    MAX_RETURNS,
    LeaseProtocolError,
    decode_reply,
    encode_error,
    encode_lease,
    encode_release,
    handle_line,
)

__all__ = ["LeaseClient", "LeaseServer"]

log = logging.getLogger("rakka_inference.remote.strict_lease_unix")

_MAX_OUTBOX = 256


class LeaseServer:
    """Serves ``authority`` to any number of clients on the Unix socket at ``path``."""

    def __init__(self, path: str, authority: LeaseAuthority) -> None:
        self.path = path
        self._authority = authority
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.replies = 0
        """Lease requests answered: the round trips of every client together."""

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
        os.chmod(self.path, 0o600)

    async def aclose(self) -> None:
        """Stop listening, close every connection and remove the socket file."""
        if self._server is None:
            return
        self._server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # over MAX_LINE: the rest of the stream is unframed
                    writer.write(encode_error(None, "line too long"))
                    await writer.drain()
                    return
                if not line:
                    return
                reply = handle_line(self._authority, line)
                if reply is not None:
                    self.replies += 1
                    writer.write(reply)
                    await writer.drain()
        except OSError:  # the client went away mid-reply
            return
        finally:
            self._connections.discard(task)
            writer.close()


class LeaseClient:
    """One worker's side of the strict authority: a :class:`LeasedLimiter` per key, all
    over one connection to the :class:`LeaseServer` at ``path``.

    ``holders`` is how many processes share each key (their concurrency share),
    ``lease_ttl`` caps how long a lease is spent (the authority's ttl caps it too),
    ``retry_delay`` is how long the authority counts as unreachable after a failure and
    ``request_timeout`` how long an answer may take before the connection is given up.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        holders: int = 1,
        lease_ttl: float = 1.0,
        autotune: AutoTune | None = None,
        retry_delay: float = 0.1,
        request_timeout: float = 1.0,
    ) -> None:
        if holders < 1:
            raise ValueError("holders must be >= 1")
        self.path = path
        self._clock = clock
        self.holders = holders
        self.lease_ttl = lease_ttl
        self.retry_delay = retry_delay
        self._timeout = request_timeout
        self._limiters = LeasedLimiters(self, clock=clock, sleep=sleep, autotune=autotune)
        self._lock = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[LeaseGrant | LeaseRefusal]] = {}
        self._outbox: list[bytes] = []
        self._next_id = 0
        self._down = False
        self._closed = False
        self.round_trips = 0

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> LeasedLimiter:
        """The key's limiter, created on first use; new limits reconfigure it."""
        return self._limiters.limiter_for(key, limits)

    def utilization(self) -> list[RateLimitUtilization]:
        return self._limiters.utilization()

    async def aclose(self) -> None:
        """Return every unused permit to the authority and close the connection. Limiters
        refuse from now on; permits still held are counted as used."""
        if self._closed:
            return
        self._closed = True
        returns = await self._limiters.close()
        if returns:
            with contextlib.suppress(OSError):
                writer = await self._connection()
                for start in range(0, len(returns), MAX_RETURNS):
                    writer.write(encode_release(returns[start : start + MAX_RETURNS]))
                await writer.drain()
        if self._writer is not None:
            self._drop(self._writer, None)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    # -- the connection

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is not None:
                return self._writer
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE)
            except OSError as exc:
                self._outage(exc)
                raise ConnectionError("the lease authority is unreachable") from exc
            if self._down:
                self._down = False
                log.info("strict lease authority at %s is reachable again", self.path)
            self._writer = writer
            self._reader = asyncio.create_task(self._read(reader, writer), name="lease-reader")
            for line in self._outbox:
                writer.write(line)
            self._outbox.clear()
            return writer

    def _outage(self, exc: BaseException) -> None:
        if not self._down and not self._closed:
            self._down = True
            log.warning("strict lease authority at %s is unreachable: %r", self.path, exc)

    def _drop(self, writer: asyncio.StreamWriter, exc: BaseException | None) -> None:
        """Give up the connection of ``writer`` (if still current); fail what awaits it."""
        if self._writer is not writer:
            return
        self._writer = None
        writer.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        if exc is not None:
            self._outage(exc)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the lease authority connection was lost"))
        self._pending.clear()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason: BaseException = ConnectionError("the lease authority closed the connection")
        try:
            while line := await reader.readline():
                try:
                    message_id, result = decode_reply(line, self._clock())
                except LeaseProtocolError as exc:
                    log.warning("strict lease authority sent a bad reply: %s", exc)
                    continue
                future = self._pending.pop(message_id, None)
                if future is not None and not future.done():
                    future.set_result(result)
        except (OSError, ValueError) as exc:  # ValueError: a reply over MAX_LINE
            reason = exc
        self._drop(writer, reason)

    async def lease(
        self,
        key: LimiterKey,
        limits: RateLimits,
        want: tuple[int, int],
        need: int,
        returns: list[LeaseReturn],
    ) -> LeaseGrant | LeaseRefusal:
        """One round trip. Raises :class:`ConnectionError` when there is no answer."""
        if self._closed:
            raise ConnectionError("the lease client is closed")
        writer = await self._connection()
        self._next_id += 1
        message_id = self._next_id
        future: asyncio.Future[LeaseGrant | LeaseRefusal] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending[message_id] = future
        try:
            writer.write(
                encode_lease(message_id, key, limits, want=want, need=need, returns=returns)
            )
            self.round_trips += 1
            await writer.drain()
            return await asyncio.wait_for(future, self._timeout)
        except (OSError, TimeoutError) as exc:
            self._drop(writer, exc)
            raise ConnectionError("no answer from the lease authority") from exc
        finally:
            self._pending.pop(message_id, None)

    def tell(self, line: bytes) -> None:
        """A notice without an answer: now if connected, else first thing on connecting."""
        if self._writer is not None:
            self._writer.write(line)
        elif len(self._outbox) < _MAX_OUTBOX:  # past it, the local block still holds
            self._outbox.append(line)
