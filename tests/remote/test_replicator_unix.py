"""The Unix-datagram replicator's transport on real sockets (peers absent or full, garbage,
circuit signals), ending with three distributed limiters gossiping through it. Its codec
is tested in ``test_replicator_codec.py``."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.distributed_limit_approximate import ApproximateLimiter
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import Denial, DenialReason, LimiterKey, Permit
from rakka_inference.remote.replicator import KeySync, SyncMessage
from rakka_inference.remote.replicator_codec import (
    MAX_DATAGRAM,
    CircuitSignal,
    encode_circuit,
    encode_sync,
)
from rakka_inference.remote.replicator_unix import UnixDatagramReplicator
from rakka_inference.testkit.clock import FakeClock

KEY = LimiterKey("openai", "fp-secret-0", "gpt-4o")
LIMITS = RateLimits(requests_per_minute=600)


def key_sync(
    spend: CounterState | None = None, blocked_until: float = -math.inf, key: LimiterKey = KEY
) -> KeySync:
    return KeySync(key, LIMITS, 1000, spend or CounterState(940, {}), blocked_until)


def wide_spend(entries: int) -> CounterState:
    """``entries`` counter entries: one node in each of ``entries`` buckets."""
    return CounterState(0, {b: {"w1": Spend(1, 100, 0)} for b in range(entries)})


# ---------------------------------------------------------------- the transport


@pytest.fixture
def directory() -> Iterator[Path]:
    path = tempfile.mkdtemp(dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def trio_of_nodes(directory: Path) -> AsyncIterator[list[UnixDatagramReplicator]]:
    nodes = [UnixDatagramReplicator(directory, name, ["a", "b", "c"]) for name in "abc"]
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        await node.aclose()


async def until(condition: Callable[[], bool], timeout: float = 1.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


def inbox(node: UnixDatagramReplicator) -> list[SyncMessage]:
    messages: list[SyncMessage] = []
    node.subscribe(messages.append)
    return messages


def raw_socket() -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


SMALL = SyncMessage("a", 1001.0, (key_sync(CounterState(940, {1000: {"a": Spend(1, 5, 0)}})),))


async def test_a_message_reaches_every_peer_but_its_sender(
    trio_of_nodes: list[UnixDatagramReplicator],
) -> None:
    a, b, _ = trio_of_nodes
    assert a.members() == frozenset("abc")
    assert a.node_id == "a"
    boxes = [inbox(node) for node in trio_of_nodes]
    a.publish(SMALL)
    await until(lambda: len(boxes[1]) == len(boxes[2]) == 1)
    await asyncio.sleep(0.01)
    assert boxes == [[], [SMALL], [SMALL]]
    size = len(encode_sync(SMALL).datagrams[0])
    assert (a.stats.datagrams_sent, a.stats.bytes_sent) == (2, 2 * size)
    assert (b.stats.datagrams_received, b.stats.bytes_received) == (1, size)
    assert "running" in repr(a)


async def test_absent_and_stale_peers_are_skipped_and_counted(directory: Path) -> None:
    (directory / "stale.gossip").write_bytes(b"")  # a file, but nobody bound there
    a = UnixDatagramReplicator(directory, "a", ["b", "ghost", "stale"])
    b = UnixDatagramReplicator(directory, "b", ["a", "ghost", "stale"])
    await a.start()
    await b.start()
    try:
        assert a.members() == frozenset({"a", "b", "ghost", "stale"})  # the dead still count
        received = inbox(b)
        a.publish(SMALL)
        await until(lambda: received == [SMALL])
        assert a.stats.send_failures == 2
        assert a.stats.datagrams_sent == 1
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_full_peer_is_skipped_without_blocking(directory: Path) -> None:
    a = UnixDatagramReplicator(directory, "a", ["slow"])
    await a.start()
    slow = raw_socket()
    slow.bind(str(directory / "slow.gossip"))  # bound, never read
    try:
        for _ in range(200):
            a.publish(SMALL)
        assert a.stats.send_failures > 0
        assert a.stats.datagrams_sent + a.stats.send_failures == 200
    finally:
        slow.close()
        await a.aclose()


async def test_bad_datagrams_are_dropped_and_counted_while_good_ones_arrive(
    trio_of_nodes: list[UnixDatagramReplicator],
) -> None:
    a, b, _ = trio_of_nodes
    received = inbox(b)
    sync = encode_sync(SMALL).datagrams[0]
    circuit = encode_circuit(CircuitSignal("a", "openai", "e", "open", 30.0))
    bad = [
        b"garbage",
        b"x" * (MAX_DATAGRAM + 100),
        sync.replace(b'"v":1', b'"v":99'),
        sync.replace(b'["a",1,5,0]', b'["a",-5,5,0]'),
        circuit.replace(b'"open"', b'"half_open"'),
    ]
    sender = raw_socket()
    try:
        for datagram in bad:
            sender.sendto(datagram, b.path)
        sender.sendto(encode_sync(SyncMessage("b", 1.0, SMALL.keys)).datagrams[0], b.path)
    finally:
        sender.close()
    a.publish(SMALL)
    await until(lambda: received == [SMALL])
    assert b.stats.dropped_malformed == len(bad)
    assert b.stats.datagrams_received == 1  # its own origin is ignored, not counted


async def test_a_large_message_arrives_in_parts(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = UnixDatagramReplicator(directory, "a", ["b"], max_datagram=8 * 1024)
    b = UnixDatagramReplicator(directory, "b", ["a"])
    await a.start()
    await b.start()
    try:
        received = inbox(b)
        keys = tuple(key_sync(wide_spend(60), key=KEY._replace(model=f"m{i}")) for i in range(20))
        too_large = key_sync(wide_spend(1000))
        a.publish(SyncMessage("a", 1001.0, (*keys, too_large)))
        await until(lambda: sum(len(m.keys) for m in received) == len(keys))
        assert len(received) > 2
        assert tuple(key for message in received for key in message.keys) == keys
        assert a.stats.send_failures == 0
        assert a.stats.dropped_too_large == 1
        assert "left out" in caplog.text
        assert KEY.key_fingerprint not in caplog.text
    finally:
        await a.aclose()
        await b.aclose()


def test_max_datagram_is_bounded(directory: Path) -> None:
    for size in (1023, MAX_DATAGRAM + 1):
        with pytest.raises(ValueError, match="max_datagram"):
            UnixDatagramReplicator(directory, "a", [], max_datagram=size)


async def test_circuit_signals_reach_the_peers(
    trio_of_nodes: list[UnixDatagramReplicator],
) -> None:
    a, b, c = trio_of_nodes
    signals: dict[str, list[CircuitSignal]] = {node.node_id: [] for node in trio_of_nodes}
    for node in trio_of_nodes:
        node.subscribe_circuit(signals[node.node_id].append)
    sync_box = inbox(b)
    opened = CircuitSignal("a", "openai", "https://api.openai.com/v1", "open", 30.0)
    a.publish_circuit(opened)
    c.publish_circuit(CircuitSignal("c", "openai", "https://api.openai.com/v1", "closed"))
    await until(lambda: len(signals["b"]) == 2 and len(signals["a"]) == 1)
    assert opened in signals["b"]
    assert signals["c"] == [opened]
    assert signals["a"][0].state == "closed"
    assert sync_box == []


async def test_a_failing_subscriber_is_logged_and_the_others_still_get_it(
    trio_of_nodes: list[UnixDatagramReplicator], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = trio_of_nodes

    def broken(message: SyncMessage) -> None:
        raise RuntimeError("subscriber bug")

    b.subscribe(broken)
    received = inbox(b)
    a.publish(SMALL)
    a.publish(SMALL)
    await until(lambda: len(received) == 2)
    assert b.stats.subscriber_errors == 2
    assert "subscriber of b failed" in caplog.text


async def test_lifecycle(directory: Path) -> None:
    own = directory / "a.gossip"
    own.write_bytes(b"stale")
    a = UnixDatagramReplicator(str(directory), "a", ["a", "b"])
    a.publish(SMALL)  # not started: counted, not raised
    assert a.stats.dropped_not_running == 1
    assert "stopped" in repr(a)
    await a.start()
    with pytest.raises(RuntimeError, match="already started"):
        await a.start()
    assert own.is_socket()
    await a.aclose()
    await a.aclose()
    assert not own.exists()
    a.publish_circuit(CircuitSignal("a", "p", "e", "closed"))
    assert a.stats.dropped_not_running == 2
    # A successor bound at the same path keeps its file when the old one closes.
    old = UnixDatagramReplicator(directory, "a", [])
    await old.start()
    successor = UnixDatagramReplicator(directory, "a", [])
    await successor.start()
    await old.aclose()
    assert own.is_socket()
    os.unlink(own)
    await successor.aclose()


@pytest.mark.parametrize("node_id", ["", ".", "..", "a/b", "a\0b"])
def test_a_node_id_must_name_a_file(node_id: str, directory: Path) -> None:
    with pytest.raises(ValueError, match="cannot name"):
        UnixDatagramReplicator(directory, node_id, [])
    with pytest.raises(ValueError, match="cannot name"):
        UnixDatagramReplicator(directory, "a", [node_id])


def test_a_socket_path_must_fit_sun_path(directory: Path) -> None:
    with pytest.raises(ValueError, match="longer than"):
        UnixDatagramReplicator(directory / ("d" * 120), "a", [])


# ---------------------------------------------------------------- end to end


async def test_three_limiters_share_spend_and_a_retry_after_block(
    trio_of_nodes: list[UnixDatagramReplicator],
) -> None:
    clock = FakeClock(1000.25)
    nodes = [DistributedRateLimiter(replicator, clock=clock) for replicator in trio_of_nodes]
    limiters = [node.limiter_for(KEY, LIMITS) for node in nodes]
    assert all(isinstance(limiter, ApproximateLimiter) for limiter in limiters)
    for count, limiter in zip((1, 2, 3), limiters, strict=True):
        for _ in range(count):
            permit = limiter.try_acquire(10)
            assert isinstance(permit, Permit)
            permit.release()

    def latest(index: int) -> int:
        limiter = limiters[index]
        assert isinstance(limiter, ApproximateLimiter)
        return limiter.latest.requests

    clock.advance(1.0)
    for node in nodes:
        node.sync()
    await until(lambda: all(latest(i) == 6 for i in range(3)))

    limiters[0].on_rate_limited(5)
    clock.advance(1.0)
    for node in nodes:
        node.sync()
    await until(lambda: all(limiter.utilization().blocked_for > 0 for limiter in limiters))
    for limiter in limiters[1:]:
        assert limiter.utilization().blocked_for == pytest.approx(4.0)
        denial = limiter.try_acquire(0)
        assert isinstance(denial, Denial)
        assert denial.reason is DenialReason.RETRY_AFTER
        assert denial.retry_at == pytest.approx(1006.25)
