"""Strict leases over real Unix sockets, real clock, one event loop: exact across clients,
few round trips, a server that survives bad lines, and an authority that goes away."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import orjson
import pytest

from rakka_inference.core.errors import RateLimitExceeded
from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit import StrictAuthority
from rakka_inference.remote.ratelimit import (
    Denial,
    DenialReason,
    LimiterKey,
    Permit,
    PermitSource,
)
from rakka_inference.remote.strict_lease import LeaseAuthority
from rakka_inference.remote.strict_lease_limiter import LeasedLimiter
from rakka_inference.remote.strict_lease_unix import LeaseClient, LeaseServer
from rakka_inference.remote.strict_lease_wire import MAX_LINE

KEY = LimiterKey("openai", "fp-secret-0", "gpt-4o")


@pytest.fixture
def socket_path() -> Iterator[str]:
    folder = tempfile.mkdtemp(dir="/tmp")
    try:
        yield os.path.join(folder, "lease.sock")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def server(socket_path: str) -> AsyncIterator[LeaseServer]:
    authority = LeaseAuthority(time.monotonic, lease_ttl=0.2)
    lease_server = LeaseServer(socket_path, authority)
    await lease_server.start()
    try:
        yield lease_server
    finally:
        await lease_server.aclose()


def authority_of(server: LeaseServer) -> LeaseAuthority:
    return server._authority


async def until(condition: object, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def limits(**values: int) -> RateLimits:
    return RateLimits(strict=True, **values)  # type: ignore[arg-type]


# ---------------------------------------------------------------- exactness and batching


async def test_four_clients_sharing_a_key_admit_exactly_the_limit(server: LeaseServer) -> None:
    clients = [LeaseClient(server.path, holders=4, lease_ttl=0.2) for _ in range(4)]
    admitted: list[Permit] = []
    refusals: list[RateLimitExceeded] = []

    async def spend(limiter: LeasedLimiter) -> None:
        for _ in range(12):
            try:
                permit = await limiter.acquire(10, deadline=time.monotonic() + 1.0)
            except RateLimitExceeded as exc:
                refusals.append(exc)
                return
            admitted.append(permit)
            permit.settle(10)

    try:
        key_limits = limits(requests_per_minute=20, tokens_per_minute=10_000)
        await asyncio.gather(
            *(spend(client.limiter_for(KEY, key_limits)) for client in clients for _ in range(2))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert len(admitted) == 20
    assert len(refusals) == 8
    assert all(exc.retry_after is not None and exc.retry_after > 50 for exc in refusals)
    assert "fp-secret-0" not in str(refusals[0])
    record = authority_of(server)
    await until(lambda: record.utilization()[0].tokens_in_window == 200)  # returns are in
    assert record.utilization()[0].requests_in_window == 20


async def test_a_high_limit_needs_few_round_trips(server: LeaseServer) -> None:
    clients = [LeaseClient(server.path, holders=4) for _ in range(4)]
    key_limits = limits(requests_per_minute=600_000, tokens_per_minute=60_000_000)

    async def spend(limiter: LeasedLimiter) -> None:
        for _ in range(100):
            permit = await limiter.acquire(50, deadline=time.monotonic() + 1.0)
            permit.settle(40)

    try:
        limiters = [client.limiter_for(KEY, key_limits) for client in clients]
        await asyncio.gather(*(spend(limiter) for limiter in limiters for _ in range(5)))
    finally:
        for client in clients:
            await client.aclose()
    requests = 4 * 5 * 100
    round_trips = sum(client.round_trips for client in clients)
    assert round_trips == server.replies
    assert round_trips <= requests / 20
    await until(lambda: authority_of(server).utilization()[0].requests_in_window == requests)


async def test_settlements_ride_back_on_the_next_lease_request(server: LeaseServer) -> None:
    client = LeaseClient(server.path, lease_ttl=0.05)
    limiter = client.limiter_for(KEY, limits(tokens_per_minute=6000))
    try:
        first = await limiter.acquire(100, deadline=time.monotonic() + 1.0)
        first.settle(40)  # within the lease: its tokens are free again at once
        assert limiter.utilization().tokens_in_window == 40
        second = await limiter.acquire(60, deadline=time.monotonic() + 1.0)
        assert client.round_trips == 1
        await asyncio.sleep(0.06)  # the lease has ended
        second.settle(160)  # an overrun after the lease: charged with the next request
        third = await limiter.acquire(100, deadline=time.monotonic() + 1.0)
        third.release()
        assert client.round_trips == 2
        assert authority_of(server).utilization()[0].tokens_in_window == 40 + 160 + 100
    finally:
        await client.aclose()


async def test_closing_returns_every_unused_permit(server: LeaseServer) -> None:
    client = LeaseClient(server.path, lease_ttl=5.0)
    limiter = client.limiter_for(KEY, limits(requests_per_minute=6000))
    permits = [await limiter.acquire(0, deadline=time.monotonic() + 1.0) for _ in range(4)]
    granted = authority_of(server).utilization()[0].requests_in_window
    assert granted > 4  # leases grew past the demand: 1, 2, 4
    await client.aclose()
    await client.aclose()  # idempotent
    await until(lambda: authority_of(server).utilization()[0].requests_in_window == 4)
    with pytest.raises(RateLimitExceeded) as closed:
        await limiter.acquire(0, deadline=time.monotonic() + 1.0)
    assert closed.value.retry_after is None
    for permit in permits:
        permit.settle(0)


# ---------------------------------------------------------------- signals and local limits


async def test_a_429_in_one_worker_blocks_the_key_for_all(server: LeaseServer) -> None:
    first, second = LeaseClient(server.path), LeaseClient(server.path)
    key_limits = limits(requests_per_minute=600)
    try:
        one = first.limiter_for(KEY, key_limits)
        one.on_rate_limited(30.0)  # before connecting: sent first thing on connecting
        assert isinstance(one.try_acquire(0), Denial)
        assert one.utilization().blocked_for > 29
        other = second.limiter_for(KEY, key_limits)
        await first.limiter_for(LimiterKey("openai", "fp1", "x"), key_limits).acquire(
            0, deadline=time.monotonic() + 1.0
        )
        await until(lambda: authority_of(server).utilization()[0].blocked_for > 0)
        with pytest.raises(RateLimitExceeded) as blocked:
            await other.acquire(0, deadline=time.monotonic() + 1.0)
        assert blocked.value.retry_after == pytest.approx(30.0, abs=1.0)
        one.on_rate_limited(None)  # connected now: told at once
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrency_is_a_local_share_and_unlimited_keys_need_no_authority(
    socket_path: str,
) -> None:
    client = LeaseClient(socket_path, holders=2)
    authority: StrictAuthority = client  # a worker's strict authority, by its protocol
    source: PermitSource = authority.limiter_for(KEY, limits(concurrent_requests=3))
    limiter = client.limiter_for(KEY, limits(concurrent_requests=3))
    assert source is limiter
    assert client.limiter_for(KEY, limits(concurrent_requests=3)) is limiter
    held = [limiter.try_acquire(10**9) for _ in range(2)]
    denial = limiter.try_acquire(0)
    assert isinstance(denial, Denial)
    assert denial.reason is DenialReason.CONCURRENCY
    assert limiter.utilization().concurrent_limit == 2  # ceil(3 / 2)
    for permit in held:
        assert isinstance(permit, Permit)
        permit.settle(5)
    assert limiter.in_flight == 0
    client.limiter_for(KEY, limits(tokens_per_minute=100))
    too_large = limiter.try_acquire(101)
    assert isinstance(too_large, Denial)
    assert too_large.reason is DenialReason.TOO_LARGE
    use = client.utilization()[0]
    assert (use.mode, use.tokens_per_minute, use.requests_in_window) == ("strict", 100, 0)
    assert "fp-secret" not in repr(limiter)
    assert "gpt-4o" in repr(limiter)
    with pytest.raises(ValueError, match="holders"):
        LeaseClient(socket_path, holders=0)
    await client.aclose()


# ---------------------------------------------------------------- a robust server


async def test_malformed_lines_do_not_kill_the_server(server: LeaseServer) -> None:
    reader, writer = await asyncio.open_unix_connection(server.path, limit=4 * MAX_LINE)
    try:
        for line in (b"not json\n", b"[1, 2]\n", b'{"op": "lease", "id": 3}\n'):
            writer.write(line)
            reply = orjson.loads(await reader.readline())
            assert reply["error"]
        writer.write(b"x" * (MAX_LINE + 10) + b"\n")  # too long: answered, then closed
        assert orjson.loads(await reader.readline())["error"] == "line too long"
        assert await reader.readline() == b""
    finally:
        writer.close()
        await writer.wait_closed()
    client = LeaseClient(server.path)
    try:
        limiter = client.limiter_for(KEY, limits(requests_per_minute=60))
        permit = await limiter.acquire(0, deadline=time.monotonic() + 1.0)
        permit.settle(0)
    finally:
        await client.aclose()


async def test_an_authority_that_never_answers_counts_as_unreachable(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"id": 1, "error": "confused"}\n')  # a reply without a lease
        await reader.read()
        writer.close()

    mute_server = await asyncio.start_unix_server(mute, socket_path)
    client = LeaseClient(socket_path, request_timeout=0.05, retry_delay=0.05)
    try:
        limiter = client.limiter_for(KEY, limits(requests_per_minute=60))
        with caplog.at_level(logging.WARNING), pytest.raises(RateLimitExceeded):
            await limiter.acquire(0, deadline=time.monotonic() + 0.2)
    finally:
        await client.aclose()
        mute_server.close()
        await mute_server.wait_closed()
    assert any("bad reply" in record.getMessage() for record in caplog.records)
    assert any("unreachable" in record.getMessage() for record in caplog.records)


async def test_a_hang_up_fails_the_lease_request_at_once(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    rude = await asyncio.start_unix_server(hang_up, socket_path)
    client = LeaseClient(socket_path, request_timeout=30.0, retry_delay=10.0)
    try:
        limiter = client.limiter_for(KEY, limits(requests_per_minute=60))
        started = time.monotonic()
        with caplog.at_level(logging.WARNING), pytest.raises(RateLimitExceeded) as caught:
            await limiter.acquire(0, deadline=started + 5.0)
        assert time.monotonic() - started < 1.0  # not the request timeout: the hang-up
        assert caught.value.retry_after == pytest.approx(10.0, abs=0.5)
    finally:
        await client.aclose()
        rude.close()
        await rude.wait_closed()
    assert any("unreachable" in record.getMessage() for record in caplog.records)


async def test_closing_cancels_a_lease_request_in_flight(socket_path: str) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    silent = await asyncio.start_unix_server(mute, socket_path)
    client = LeaseClient(socket_path, request_timeout=30.0)
    try:
        limiter = client.limiter_for(KEY, limits(requests_per_minute=60))
        waiting = asyncio.create_task(limiter.acquire(0, deadline=time.monotonic() + 5.0))
        await until(lambda: client.round_trips == 1)
        await client.aclose()
        with pytest.raises(RateLimitExceeded) as closed:
            await waiting
        assert closed.value.retry_after is None
        late = client.limiter_for(LimiterKey("openai", "fp1", "x"), limits(tokens_per_minute=9))
        with pytest.raises(RateLimitExceeded):  # a limiter made after closing never leases
            await late.acquire(1, deadline=time.monotonic() + 0.05)
    finally:
        silent.close()
        await silent.wait_closed()


async def test_an_absent_authority_refuses_by_the_deadline_then_recovers(
    socket_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = LeaseClient(socket_path, lease_ttl=0.05, retry_delay=0.02)
    limiter = client.limiter_for(KEY, limits(requests_per_minute=600))
    authority = LeaseAuthority(time.monotonic, lease_ttl=0.05)
    try:
        with caplog.at_level(logging.INFO):
            started = time.monotonic()
            with pytest.raises(RateLimitExceeded) as down:
                await limiter.acquire(0, deadline=started + 0.15)
            assert 0.15 - 0.02 <= time.monotonic() - started < 0.5  # tried till then
            assert down.value.retry_after is not None
            assert down.value.retry_after <= 0.05
            denial = limiter.try_acquire(0)
            assert isinstance(denial, Denial)
            assert denial.reason is DenialReason.SHARE
            server = LeaseServer(socket_path, authority)
            await server.start()
            permit = await limiter.acquire(0, deadline=time.monotonic() + 1.0)
            permit.settle(0)
            await server.aclose()  # the connection is lost; the lease in hand ends soon
            await asyncio.sleep(0.06)
            with pytest.raises(RateLimitExceeded):
                await limiter.acquire(0, deadline=time.monotonic() + 0.1)
            await server.start()
            permit = await limiter.acquire(0, deadline=time.monotonic() + 1.0)
            permit.settle(0)
            await server.aclose()
    finally:
        await client.aclose()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("unreachable" in message for message in messages) == 2  # once per outage
    assert sum("reachable again" in message for message in messages) == 2
    assert not any("fp-secret" in message for message in messages)
