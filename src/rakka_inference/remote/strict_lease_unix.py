"""Strict leases over a Unix stream socket: the authority's server, the holders' client.

The :class:`~rakka_inference.remote.strict_lease.LeaseAuthority` lives in one process (the
supervisor) behind a :class:`LeaseServer`; each worker holds a :class:`LeaseClient`, a
:class:`~rakka_inference.remote.distributed_limit.StrictAuthority` whose limiters
(:class:`LeasedLimiter`, one per key) spend leases locally.

Wire
----
One connection per client; newline-delimited compact JSON (orjson, never pickle), at most
:data:`~rakka_inference.remote.strict_lease.MAX_LINE` a line::

    -> {"op": "lease", "id": 7, "key": [provider, fingerprint, model], "limits": [rpm, tpm],
        "want": [requests, tokens], "need": tokens, "returns": [[lease, req, tok, over], ..]}
    <- {"id": 7, "grant": [lease, requests, tokens, ttl]}
    <- {"id": 7, "refuse": [retry_after | null, reason]}
    -> {"op": "release", "returns": [...]}                   (at close; no reply)
    -> {"op": "limited", "key": [...], "retry_after": s | null}   (a provider 429; no reply)
    <- {"id": 7 | null, "error": text}                        (a malformed line)

Every line is validated; a malformed one gets an ``error`` reply, and one over the limit
also closes its connection (the stream cannot be resynchronised). The socket is ``0600``.

The holder
----------
:class:`LeasedLimiter` admits from its current lease while the lease is valid (its clock
before the request's send time ``+ ttl``) and has room; otherwise it starts one lease
request (one in flight per key) and denies, and its FIFO waiters
(:class:`~rakka_inference.remote.ratelimit.WaitingLimiter`) are woken when the answer
comes. It asks for the waiting demand (waiters and their token estimates) or twice what
its last lease served, whichever is more, so at a steady rate a lease grows to a ttl of
traffic in a few round trips. A settled permit gives its unused tokens back to the lease
while the lease is valid; what a lease leaves unused at its end, and every later
settlement of its permits, rides back on the key's next lease request (or the ``release``
at close), never in a message of its own. A return that may have been lost with a
connection is not sent again: the authority counts it as used, the safe side.

If the authority cannot be reached the limiter never admits without a lease (strict means
strict): its denials (``DenialReason.SHARE``: no lease in hand) last ``retry_delay`` s,
after which the next request connects again, and ``acquire`` raises
:class:`~rakka_inference.core.errors.RateLimitExceeded` at its deadline (or once the next
try would fall after it). Each outage is logged once. Concurrency is local: ``ceil(C /
holders)`` (see the authority's docstring). Utilisation snapshots say ``mode="strict"``
and show the local view: the current lease's spend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time

import orjson

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import (
    CONCURRENCY_RETRY_HINT,
    AutoTune,
    Clock,
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    RateLimitUtilization,
    Sleep,
    WaitingLimiter,
    scaled,
)
from rakka_inference.remote.strict_lease import (
    MAX_LINE,
    MAX_RETURNS,
    LeaseAuthority,
    LeaseGrant,
    LeaseProtocolError,
    LeaseRefusal,
    LeaseReturn,
    decode_reply,
    encode_lease,
    encode_limited,
    encode_release,
)

__all__ = ["LeaseClient", "LeaseServer", "LeasedLimiter"]

log = logging.getLogger("rakka_inference.remote.strict_lease_unix")

_FETCH_STEP = 0.01
"""How long a denial lasts while a lease request is in flight (its answer wakes waiters)."""
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
                    writer.write(orjson.dumps({"id": None, "error": "line too long"}) + b"\n")
                    await writer.drain()
                    return
                if not line:
                    return
                reply = self._authority.handle_line(line)
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
        self._sleep = sleep
        self.holders = holders
        self.lease_ttl = lease_ttl
        self._autotune = autotune
        self.retry_delay = retry_delay
        self._timeout = request_timeout
        self._limiters: dict[LimiterKey, LeasedLimiter] = {}
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
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = LeasedLimiter(
                key, limits, self, clock=self._clock, sleep=self._sleep, autotune=self._autotune
            )
            self._limiters[key] = limiter
        elif limiter.limits != limits:
            limiter.reconfigure(limits)
        return limiter

    def utilization(self) -> list[RateLimitUtilization]:
        return [limiter.utilization() for limiter in self._limiters.values()]

    async def aclose(self) -> None:
        """Return every unused permit to the authority and close the connection. Limiters
        refuse from now on; permits still held are counted as used."""
        if self._closed:
            return
        self._closed = True
        returns: list[LeaseReturn] = []
        for limiter in self._limiters.values():
            returns.extend(await limiter._close())
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

    async def _lease(
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

    def _tell(self, line: bytes) -> None:
        """A notice without an answer: now if connected, else first thing on connecting."""
        if self._writer is not None:
            self._writer.write(line)
        elif len(self._outbox) < _MAX_OUTBOX:  # past it, the local block still holds
            self._outbox.append(line)


class _LocalLease:
    __slots__ = ("charged", "expires_at", "lease_id", "requests", "tokens", "used")

    def __init__(self, grant: LeaseGrant, expires_at: float) -> None:
        self.lease_id = grant.lease_id
        self.requests = grant.requests
        self.tokens = grant.tokens
        self.expires_at = expires_at
        self.used = 0
        self.charged = 0


class LeasedLimiter(WaitingLimiter):
    """One key's strict limiter in a worker: spends leases of the authority (see the
    module docstring). Its ``utilization`` is the local view: the current lease's spend."""

    __slots__ = (
        "_client",
        "_conc",
        "_down_until",
        "_fetch",
        "_in_flight",
        "_last_served",
        "_lease",
        "_refusal",
        "_returns",
        "_waiting",
        "_waiting_tokens",
        "limits",
    )
    mode = "strict"

    def __init__(
        self,
        key: LimiterKey,
        limits: RateLimits,
        client: LeaseClient,
        *,
        clock: Clock,
        sleep: Sleep,
        autotune: AutoTune | None = None,
    ) -> None:
        super().__init__(key, clock, sleep, autotune)
        self._client = client
        self._lease: _LocalLease | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._refusal: Denial | None = None
        self._down_until = -math.inf
        self._returns: dict[int, list[int]] = {}
        """Per lease id: [unused requests, unused tokens (negative: overrun)]."""
        self._last_served = (0, 0)
        self._in_flight = 0
        self._waiting = 0
        self._waiting_tokens = 0
        self.reconfigure(limits)

    def reconfigure(self, limits: RateLimits) -> None:
        """Apply new limits; the lease in hand is kept, the next request carries them."""
        self.limits = limits
        conc = limits.concurrent_requests
        self._conc = None if conc is None else math.ceil(conc / self._client.holders)

    # -- core

    def _current(self, now: float) -> _LocalLease | None:
        """The valid lease, after retiring an expired one."""
        lease = self._lease
        if lease is not None and now >= lease.expires_at:
            self._retire()
            return None
        return lease

    def _retire(self) -> None:
        lease = self._lease
        if lease is not None:
            self._lease = None
            self._last_served = (lease.used, lease.charged)
            unused = max(0, lease.requests - lease.used)  # used > requests: RPM is off
            self._give_back(lease.lease_id, unused, lease.tokens - lease.charged)

    def _give_back(self, lease_id: int, requests: int, tokens: int) -> None:
        entry = self._returns.setdefault(lease_id, [0, 0])
        entry[0] += requests
        entry[1] += tokens

    def _take_returns(self) -> list[LeaseReturn]:
        taken = []
        for lease_id in list(self._returns)[:MAX_RETURNS]:
            requests, tokens = self._returns.pop(lease_id)
            taken.append(LeaseReturn(lease_id, requests, max(0, tokens), max(0, -tokens)))
        return taken

    def _check(self, tokens: int, now: float) -> Denial | None:
        blocked = self._blocked(now)
        if blocked is not None:
            return blocked
        if self._conc is not None and self._in_flight >= self._conc:
            return Denial(now + CONCURRENCY_RETRY_HINT, DenialReason.CONCURRENCY)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        if rpm is None and tpm is None:
            return None
        if tpm is not None and tokens > tpm:
            return Denial(math.inf, DenialReason.TOO_LARGE)
        lease = self._current(now)
        if (
            lease is not None
            and (rpm is None or lease.used < lease.requests)
            and (tpm is None or lease.charged + tokens <= lease.tokens)
        ):
            return None
        if self._refusal is not None and now < self._refusal.retry_at:
            return self._refusal
        if now < self._down_until:
            return Denial(self._down_until, DenialReason.SHARE)
        if self._fetch is None:
            used, charged = self._last_served if lease is None else (lease.used, lease.charged)
            want = (
                max(1, self._waiting, 2 * used),
                max(tokens, self._waiting_tokens, 2 * charged),
            )
            self._fetch = asyncio.create_task(self._fetch_lease(want, tokens), name="lease")
        return Denial(now + _FETCH_STEP, DenialReason.SHARE)

    async def _fetch_lease(self, want: tuple[int, int], need: int) -> None:
        sent = self._clock()
        try:
            result = await self._client._lease(
                self.key, self.limits, want, need, self._take_returns()
            )
        except ConnectionError:
            self._down_until = self._clock() + self._client.retry_delay
            self._notify()
            return
        finally:
            self._fetch = None
        if isinstance(result, LeaseGrant):
            self._retire()
            ttl = min(result.ttl, self._client.lease_ttl)
            self._lease = _LocalLease(result, sent + ttl)
            self._refusal = None
        else:
            self._refusal = Denial(result.retry_at, result.reason)
        self._notify()

    def _grant(self, tokens: int, now: float) -> Permit:
        self._in_flight += 1
        lease, limits = self._lease, self.limits
        if lease is None or limits.requests_per_minute is limits.tokens_per_minute is None:
            return Permit(self, now, tokens, -1)
        lease.used += 1
        lease.charged += tokens
        return Permit(self, now, tokens, lease.lease_id)

    def _finish(self, permit: Permit, actual_tokens: int | None) -> None:
        self._in_flight -= 1
        if actual_tokens is not None and actual_tokens != permit.tokens and permit.slot >= 0:
            unused = permit.tokens - actual_tokens
            permit.tokens = actual_tokens
            lease = self._current(self._clock())
            if lease is not None and lease.lease_id == permit.slot:
                lease.charged -= unused
            else:
                self._give_back(permit.slot, 0, unused)
        self._notify()

    async def acquire(self, tokens: int, *, deadline: float) -> Permit:
        """Wait (FIFO) for a permit until ``deadline``; see :class:`WaitingLimiter`."""
        self._waiting += 1
        self._waiting_tokens += tokens
        try:
            return await super().acquire(tokens, deadline=deadline)
        finally:
            self._waiting -= 1
            self._waiting_tokens -= tokens

    def on_rate_limited(self, retry_after: float | None) -> None:
        """A provider 429: block locally and tell the authority (blocks every holder)."""
        super().on_rate_limited(retry_after)
        self._client._tell(encode_limited(self.key, retry_after))

    async def _close(self) -> list[LeaseReturn]:
        """Stop: no more leases; what is unused goes back."""
        self._down_until = math.inf
        self._refusal = None
        if self._fetch is not None:
            self._fetch.cancel()
            await asyncio.gather(self._fetch, return_exceptions=True)
        self._retire()
        self._notify()
        returns = []
        while self._returns:
            returns.extend(self._take_returns())
        return returns

    # -- metrics

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def utilization(self) -> RateLimitUtilization:
        now = self._clock()
        lease = self._current(now)
        factor = self._factor.at(now)
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        return RateLimitUtilization(
            key=self.key,
            mode=self.mode,
            requests_in_window=0 if lease is None else lease.used,
            tokens_in_window=0 if lease is None else lease.charged,
            requests_per_minute=rpm,
            tokens_per_minute=tpm,
            effective_requests_per_minute=None if rpm is None else scaled(rpm, factor),
            effective_tokens_per_minute=None if tpm is None else scaled(tpm, factor),
            concurrent_in_use=self._in_flight,
            concurrent_limit=self._conc,
            waiters=len(self._waiters),
            rate_factor=factor,
            blocked_for=max(0.0, self._blocked_until - now),
        )

    def __repr__(self) -> str:
        return f"LeasedLimiter({self.key.provider}/{self.key.model}, in_flight={self._in_flight})"
