"""RemoteSession: snapshots, leases, coalesced rebuilds, and draining."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest

from rakka_inference.core.errors import InternalError, SecretError
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.remote.credentials import SecretRefCredential, StaticCredential
from rakka_inference.remote.session import RemoteSession, SessionSnapshot
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.wire.http import HttpRequest, HttpResponse

UNAUTHORIZED = SessionRebuildCause.UNAUTHORIZED
OPERATOR = SessionRebuildCause.OPERATOR


class FakeTransport:
    """An HttpTransport that only records being closed."""

    _ids = itertools.count(1)

    def __init__(self, fail_close: bool = False) -> None:
        self.id = next(self._ids)
        self.aclose_calls = 0
        self.fail_close = fail_close

    async def send(self, request: HttpRequest, timeouts: Timeouts, *, stream: bool) -> HttpResponse:
        raise AssertionError("not used here")

    async def aclose(self) -> None:
        self.aclose_calls += 1
        if self.fail_close:
            raise OSError("socket already gone")


class TransportFactory:
    def __init__(self) -> None:
        self.made: list[FakeTransport] = []
        self.fail: Exception | None = None
        self.fail_close = False

    def __call__(self) -> FakeTransport:
        if self.fail is not None:
            raise self.fail
        transport = FakeTransport(self.fail_close)
        self.made.append(transport)
        return transport


class ScriptedCredential:
    """A provider whose refreshes count, can be held at a gate, and can fail."""

    def __init__(self) -> None:
        self.value = "sk-gen-1"
        self.refreshes = 0
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.closed = 0
        self._current = Secret(self.value)

    async def credential(self) -> Secret:
        return self._current

    async def refresh(self) -> None:
        self.refreshes += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self._current = Secret(self.value)

    def describe(self) -> str:
        return "scripted"

    async def aclose(self) -> None:
        self.closed += 1


async def started(
    credentials: ScriptedCredential | None = None,
) -> tuple[RemoteSession, TransportFactory, ScriptedCredential]:
    factory = TransportFactory()
    creds = credentials or ScriptedCredential()
    session = RemoteSession(factory, creds, clock=FakeClock())
    await session.start()
    return session, factory, creds


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- start, lease


async def test_start_builds_generation_one() -> None:
    factory = TransportFactory()
    creds = ScriptedCredential()
    clock = FakeClock(50.0)
    session = RemoteSession(factory, creds, clock=clock)
    assert session.generation == 0
    with pytest.raises(InternalError, match="not started"):
        _ = session.current
    with pytest.raises(InternalError, match="not started"):
        await session.rebuild(OPERATOR)
    snapshot = await session.start()
    assert snapshot is session.current
    assert snapshot.generation == session.generation == 1
    assert snapshot.created_at == 50.0
    assert snapshot.transport is factory.made[0]
    assert snapshot.credentials is creds is session.credentials
    assert (await snapshot.credential()).expose() == "sk-gen-1"
    assert creds.refreshes == 1
    assert await session.start() is snapshot  # idempotent
    assert len(factory.made) == 1
    assert repr(session) == "RemoteSession(generation=1, credential=scripted)"
    assert repr(snapshot) == "SessionSnapshot(generation=1, live, in_flight=0)"
    await session.aclose()


async def test_concurrent_starts_build_one_snapshot() -> None:
    factory = TransportFactory()
    creds = ScriptedCredential()
    session = RemoteSession(factory, creds)
    first, second = await asyncio.gather(session.start(), session.start())
    assert first is second
    assert len(factory.made) == 1
    assert creds.refreshes == 1
    await session.aclose()


async def test_a_failed_start_raises_and_can_be_retried() -> None:
    factory = TransportFactory()
    creds = ScriptedCredential()
    creds.fail = SecretError("secret env:KEY is not set")
    session = RemoteSession(factory, creds)
    with pytest.raises(SecretError):
        await session.start()
    assert factory.made == []
    creds.fail = None
    assert (await session.start()).generation == 1
    await session.aclose()


async def test_leases_count_requests_in_flight() -> None:
    session, _, _ = await started()
    snapshot = session.current
    with snapshot.lease() as leased:
        assert leased is snapshot
        with session.lease() as again:
            assert again is snapshot
            assert snapshot.in_flight == 2
        assert snapshot.in_flight == 1
    assert snapshot.in_flight == 0

    def failing_request() -> None:
        with snapshot.lease():
            assert snapshot.in_flight == 1
            raise RuntimeError("a request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    assert snapshot.in_flight == 0
    await session.aclose()


# --------------------------------------------------------------------------- rebuild


async def test_rebuild_with_no_leases_closes_the_old_transport_at_once() -> None:
    session, factory, creds = await started()
    old = session.current
    creds.value = "sk-gen-2"
    new = await session.rebuild(OPERATOR)
    assert new is session.current
    assert new.generation == 2
    assert new.transport is factory.made[1]
    assert (await new.credential()).expose() == "sk-gen-2"
    assert old.retired
    assert old.closed
    assert factory.made[0].aclose_calls == 1
    assert not new.retired
    with pytest.raises(InternalError, match="generation 1 is closed"):
        old.lease().__enter__()
    await session.aclose()
    assert factory.made[1].aclose_calls == 1
    assert factory.made[0].aclose_calls == 1


async def test_old_transport_closes_once_after_its_last_lease() -> None:
    session, factory, _ = await started()
    old = session.current
    first, second = old.lease(), old.lease()
    first.__enter__()
    second.__enter__()
    await session.rebuild(OPERATOR)
    assert old.retired
    assert not old.closed
    assert repr(old) == "SessionSnapshot(generation=1, retired, in_flight=2)"
    with old.lease():  # a retired snapshot still serves (its leases keep it open)
        assert old.in_flight == 3
    first.__exit__(None, None, None)
    await settle()
    assert factory.made[0].aclose_calls == 0
    second.__exit__(None, None, None)
    assert old.closed
    await session.wait_retired_closed()
    assert factory.made[0].aclose_calls == 1
    await session.aclose()
    assert factory.made[0].aclose_calls == 1


async def test_a_request_that_saw_an_older_generation_does_not_rebuild() -> None:
    session, factory, creds = await started()
    await session.rebuild(UNAUTHORIZED, seen_generation=1)
    assert session.generation == 2
    again = await session.rebuild(UNAUTHORIZED, seen_generation=1)
    assert again is session.current
    assert session.generation == 2
    assert creds.refreshes == 2
    assert len(factory.made) == 2
    await session.aclose()


async def test_concurrent_rebuilds_share_one() -> None:
    session, factory, creds = await started()
    creds.gate = asyncio.Event()
    calls = [asyncio.create_task(session.rebuild(OPERATOR)) for _ in range(5)]
    await settle()
    assert session.rebuilding
    creds.gate.set()
    snapshots = await asyncio.gather(*calls)
    assert {id(s) for s in snapshots} == {id(session.current)}
    assert session.generation == 2
    assert creds.refreshes == 2  # start + one rebuild
    assert len(factory.made) == 2
    assert not session.rebuilding
    await session.aclose()


async def test_a_cancelled_caller_does_not_cancel_the_shared_rebuild() -> None:
    session, _, creds = await started()
    creds.gate = asyncio.Event()
    first = asyncio.create_task(session.rebuild(UNAUTHORIZED, seen_generation=1))
    second = asyncio.create_task(session.rebuild(UNAUTHORIZED, seen_generation=1))
    await settle()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    creds.gate.set()
    assert (await second).generation == 2
    await session.aclose()


async def test_a_failed_rebuild_keeps_the_old_snapshot_and_can_be_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, factory, creds = await started()
    old = session.current
    creds.fail = SecretError("secret file:/run/k cannot be read: No such file or directory")
    creds.gate = asyncio.Event()
    calls = [
        asyncio.create_task(session.rebuild(UNAUTHORIZED, seen_generation=1)) for _ in range(3)
    ]
    await settle()
    creds.gate.set()
    with caplog.at_level(logging.WARNING, logger="rakka_inference.remote.session"):
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, SecretError) for r in results)
    assert creds.refreshes == 2
    assert session.current is old
    assert not old.retired
    assert factory.made[0].aclose_calls == 0
    assert "generation 1 goes on serving" in caplog.text
    assert "file:/run/k" in caplog.text

    creds.gate = None
    creds.fail = None
    factory.fail = RuntimeError("bad TLS config")
    with pytest.raises(RuntimeError, match="bad TLS config"):
        await session.rebuild(OPERATOR)
    assert session.current is old
    assert "RuntimeError" in caplog.text

    factory.fail = None
    assert (await session.rebuild(UNAUTHORIZED, seen_generation=1)).generation == 2
    await session.aclose()


async def test_a_transport_that_fails_to_close_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = TransportFactory()
    factory.fail_close = True
    session = RemoteSession(factory, ScriptedCredential())
    await session.start()
    with caplog.at_level(logging.WARNING, logger="rakka_inference.remote.session"):
        await session.rebuild(OPERATOR)
    assert "closing the transport of session generation 1 failed: OSError" in caplog.text
    await session.aclose()


# --------------------------------------------------------------------------- aclose


async def test_aclose_closes_the_current_transport_and_the_provider() -> None:
    session, factory, creds = await started()
    await session.aclose()
    assert factory.made[0].aclose_calls == 1
    assert creds.closed == 1
    assert session.current.closed
    with pytest.raises(InternalError, match="is closed"):
        session.lease().__enter__()
    with pytest.raises(InternalError, match="is closed"):
        await session.rebuild(OPERATOR)
    with pytest.raises(InternalError, match="is closed"):
        await session.start()
    await session.aclose()  # idempotent
    assert factory.made[0].aclose_calls == 1
    assert creds.closed == 1


async def test_aclose_of_a_session_never_started() -> None:
    session = RemoteSession(TransportFactory(), StaticCredential(Secret("k")))
    await session.aclose()  # StaticCredential has no aclose: nothing to close


async def test_aclose_leaves_a_draining_snapshot_to_close_when_drained() -> None:
    session, factory, _ = await started()
    lease = session.lease()
    lease.__enter__()
    await session.rebuild(OPERATOR)
    await session.aclose()
    assert factory.made[1].aclose_calls == 1
    assert factory.made[0].aclose_calls == 0
    lease.__exit__(None, None, None)
    await session.wait_retired_closed()
    assert factory.made[0].aclose_calls == 1


async def test_aclose_cancels_a_rebuild_in_flight() -> None:
    session, factory, creds = await started()
    creds.gate = asyncio.Event()
    rebuild = asyncio.create_task(session.rebuild(OPERATOR))
    await settle()
    await session.aclose()
    with pytest.raises(asyncio.CancelledError):
        await rebuild
    assert len(factory.made) == 1
    assert factory.made[0].aclose_calls == 1


async def test_a_snapshot_without_a_session_closes_nothing_when_drained() -> None:
    transport = FakeTransport()
    snapshot = SessionSnapshot(transport, StaticCredential(Secret("k")), 7)
    with snapshot.lease():
        assert snapshot._retire() is False
        assert snapshot._retire() is False  # already retired
    assert snapshot.closed
    assert snapshot._force_close() is False
    assert transport.aclose_calls == 0


# --------------------------------------------------------------------------- rotation


async def test_credential_rotation_under_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "api-key"
    key_file.write_text("sk-before-rotation-0001\n")
    factory = TransportFactory()
    session = RemoteSession(
        factory, SecretRefCredential(SecretRef.from_file(key_file)), clock=FakeClock()
    )
    await session.start()
    old = session.current

    held: list[tuple[SessionSnapshot, Secret]] = []
    releases = [asyncio.Event() for _ in range(50)]

    async def request(release: asyncio.Event) -> None:
        with session.lease() as snapshot:
            secret = await snapshot.credential()
            held.append((snapshot, secret))
            await release.wait()  # the provider's answer is still streaming

    in_flight = [asyncio.create_task(request(release)) for release in releases]
    await settle()
    assert old.in_flight == 50

    key_file.write_text("sk-after-rotation-0002\n")
    with caplog.at_level(logging.DEBUG):
        rebuilt = await asyncio.gather(
            *(session.rebuild(UNAUTHORIZED, seen_generation=1) for _ in range(10))
        )
    assert len(factory.made) == 2  # exactly one rebuild
    assert {snapshot.generation for snapshot in rebuilt} == {2}
    new = session.current
    assert new is not old

    # The 50 in flight still hold the old snapshot, transport and credential.
    assert len(held) == 50
    assert all(s is old and s.transport is factory.made[0] for s, _ in held)
    assert {secret.expose() for _, secret in held} == {"sk-before-rotation-0001"}
    # New leases see the new ones.
    with session.lease() as snapshot:
        assert snapshot is new
        assert snapshot.transport is factory.made[1]
        assert (await snapshot.credential()).expose() == "sk-after-rotation-0002"

    for release in releases[:-1]:
        release.set()
    await settle()
    await session.wait_retired_closed()
    assert old.in_flight == 1
    assert factory.made[0].aclose_calls == 0  # one request still on it
    releases[-1].set()
    await asyncio.gather(*in_flight)
    await session.wait_retired_closed()
    assert factory.made[0].aclose_calls == 1
    assert factory.made[1].aclose_calls == 0

    await session.aclose()
    assert factory.made[0].aclose_calls == 1
    assert factory.made[1].aclose_calls == 1

    assert "cause unauthorized" in caplog.text
    assert "generation 1 -> 2" in caplog.text
    assert f"file:{key_file}" in caplog.text
    assert "sk-before" not in caplog.text
    assert "sk-after" not in caplog.text


async def test_rebuild_logs_never_carry_the_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-live-very-secret")
    session = RemoteSession(TransportFactory(), SecretRefCredential(SecretRef.from_file(key_file)))
    with caplog.at_level(logging.DEBUG):
        await session.start()
        key_file.write_text("sk-rotated-very-secret")
        await session.rebuild(OPERATOR)
        key_file.write_text("")
        with pytest.raises(SecretError) as caught:
            await session.rebuild(OPERATOR)
        await session.aclose()
    assert "cause operator" in caplog.text
    for text in (caplog.text, str(caught.value), repr(session), repr(session.current)):
        assert "very-secret" not in text
