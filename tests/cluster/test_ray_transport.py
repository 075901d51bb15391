"""The Ray gateways' gossip endpoint and lease channel, on their own: peers are stand-in
handles (what Ray hands out has the same ``method.remote(...)`` shape), so what is sent,
dropped and counted is seen directly. The real thing runs in ``test_ray_cluster.py``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("ray")

from rakka_inference.cluster.ray_transport import (
    RayLeaseChannel,
    RayReplicator,
    SingletonSpec,
    cluster_clock,
)
from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.gcounter import CounterState, Spend
from rakka_inference.remote.ratelimit import LimiterKey
from rakka_inference.remote.replicator import KeySync, SyncMessage
from rakka_inference.remote.replicator_codec import (
    CircuitSignal,
    encode_circuit,
    encode_sync,
)
from rakka_inference.remote.strict_lease import LeaseAuthority
from rakka_inference.remote.strict_lease_wire import handle_line

KEY = LimiterKey("openai", "fp", "gpt-4o-mini")
LIMITS = RateLimits(requests_per_minute=10)


class _Method:
    def __init__(self, calls: list[Any], fail: bool = False) -> None:
        self.calls = calls
        self.fail = fail

    def remote(self, *args: Any) -> None:
        if self.fail:
            raise ValueError("the actor is gone")
        self.calls.append(args)


class _Peer:
    def __init__(self, *, fail: bool = False) -> None:
        self.received: list[Any] = []
        self.deliver = _Method(self.received, fail)


def message(origin: str) -> SyncMessage:
    part = KeySync(KEY, LIMITS, 3, CounterState(0, {3: {origin: Spend(2, 0, 0)}}), -float("inf"))
    return SyncMessage(origin, 1.0, (part,))


def test_a_replicator_sends_to_the_manager_s_peers_and_counts() -> None:
    replicator = RayReplicator("a")
    b, gone = _Peer(), _Peer(fail=True)
    assert replicator.set_peers(2, {"a": object(), "b": b, "gone": gone})
    assert not replicator.set_peers(1, {})  # an older table is ignored
    assert replicator.members() == {"a", "b", "gone"}
    assert set(replicator.peers) == {"b", "gone"}
    replicator.publish(message("a"))
    replicator.publish_circuit(CircuitSignal("a", "openai", "https://x", "closed"))
    assert len(b.received) == 2
    stats = replicator.stats
    assert stats.datagrams_sent == 2
    assert stats.send_failures == 2
    assert stats.bytes_sent == sum(len(args[0]) for args in b.received)


def test_a_replicator_hands_what_it_receives_to_its_subscribers() -> None:
    replicator = RayReplicator("a")
    syncs: list[SyncMessage] = []
    signals: list[CircuitSignal] = []
    replicator.subscribe(syncs.append)
    replicator.subscribe_circuit(signals.append)

    def broken(_: object) -> None:
        raise RuntimeError("a subscriber's bug")

    replicator.subscribe(broken)
    replicator.receive(encode_sync(message("b")).datagrams[0])
    replicator.receive(encode_sync(message("a")).datagrams[0])  # its own: ignored
    replicator.receive(encode_circuit(CircuitSignal("b", "openai", "https://x", "open", 3.0)))
    replicator.receive(b"garbage")
    assert [m.origin for m in syncs] == ["b"]
    assert signals == [CircuitSignal("b", "openai", "https://x", "open", 3.0)]
    stats = replicator.stats
    assert stats.datagrams_received == 2
    assert stats.dropped_malformed == 1
    assert stats.subscriber_errors == 1


class _Authority:
    """The authority actor's ``handle`` method, answered by a real LeaseAuthority."""

    def __init__(self, *, answer: str = "real") -> None:
        self.authority = LeaseAuthority(cluster_clock)
        self.answer = answer
        self.notices: list[bytes] = []
        self.handle = self

    def remote(self, line: bytes) -> Any:
        reply = handle_line(self.authority, line)
        if reply is None:
            self.notices.append(line)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.answer == "real":
            future.set_result(reply)
        elif self.answer == "garbage":
            future.set_result("not bytes")
        # "silent": never answers
        return future


async def test_the_lease_channel_leases_and_a_limiter_admits_from_the_lease() -> None:
    channel = RayLeaseChannel("ns", holders=lambda: 2, clock=cluster_clock)
    authority = _Authority()
    channel._authority = authority
    assert channel.holders == 2
    limiter = channel.limiter_for(KEY, RateLimits(requests_per_minute=10, strict=True))
    assert channel.limiter_for(KEY, RateLimits(requests_per_minute=10, strict=True)) is limiter
    assert channel.limiter_for(KEY, RateLimits(requests_per_minute=12, strict=True)) is limiter
    permit = await limiter.acquire(1, deadline=cluster_clock() + 2)
    permit.settle(1)
    assert channel.round_trips >= 1
    assert [u.mode for u in channel.utilization()] == ["strict"]
    limiter.on_rate_limited(5.0)  # told to the authority, no answer awaited
    await channel.aclose()  # the unused permits go back
    assert len(authority.notices) >= 1


@pytest.mark.parametrize("answer", ["garbage", "silent"])
async def test_an_authority_that_does_not_answer_is_a_connection_error(answer: str) -> None:
    channel = RayLeaseChannel("ns", holders=lambda: 1, clock=cluster_clock, request_timeout=0.05)
    channel._authority = _Authority(answer=answer)
    with pytest.raises(ConnectionError):
        await channel.lease(KEY, LIMITS, (1, 0), 0, [])
    assert channel._authority is None  # looked up again next time


def test_a_singleton_spec_is_a_plain_value() -> None:
    spec = SingletonSpec("ns", "/c.toml", "/", "text", "127.0.0.1:8080", 5.0)
    assert spec.grace_s == 5.0
