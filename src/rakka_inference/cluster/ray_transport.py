"""The gateways of a Ray cluster talk through Ray: gossip, and leases from the authority.

:class:`RayReplicator` is the :class:`~rakka_inference.remote.replicator.Replicator` of one
gateway: it sends the limiter's sync messages and the circuit signals, in the same versioned
datagrams the node's Unix sockets carry (:mod:`rakka_inference.remote.replicator_codec`), to
every other gateway as a fire-and-forget actor call (``deliver``). Membership is the
deployment manager's snapshot of the live gateways (:meth:`RayReplicator.set_peers`): a node
that dies leaves the members, and the approximate limiter's shares follow at its next epoch.
Best effort as the protocol allows: a call to a gateway that is gone is lost, never retried.

:class:`RayLeaseChannel` is the :class:`~rakka_inference.remote.strict_lease_limiter.
LeaseChannel` of one gateway: each lease request is one call to the strict-limit authority
actor with the wire line of :mod:`rakka_inference.remote.strict_lease_wire`, answered
within ``request_timeout``. It finds the authority by name in the cluster's namespace, and
finds it again after a failure (the singleton restarts elsewhere when its node dies). A
lease is spent only until the holder's own send time plus the ttl, so the holders' and the
authority's clocks need not agree.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import ray

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.ratelimit import (
    AutoTune,
    Clock,
    LimiterKey,
    RateLimitUtilization,
    Sleep,
)
from rakka_inference.remote.replicator import Deliver, SyncMessage
from rakka_inference.remote.replicator_codec import (
    CircuitSignal,
    encode_circuit,
    encode_sync,
)
from rakka_inference.remote.replicator_unix import GossipInbox, ReplicatorStats
from rakka_inference.remote.strict_lease import LeaseGrant, LeaseRefusal, LeaseReturn
from rakka_inference.remote.strict_lease_limiter import LeasedLimiter, LeasedLimiters
from rakka_inference.remote.strict_lease_wire import (
    LeaseProtocolError,
    decode_reply,
    encode_lease,
    encode_release,
)

__all__ = [
    "AUTHORITY_NAME",
    "MANAGER_NAME",
    "RayLeaseChannel",
    "RayReplicator",
    "SingletonSpec",
    "cluster_clock",
    "exit_this_actor",
]

log = logging.getLogger("rakka_inference.cluster.ray_transport")

AUTHORITY_NAME = "rakka-limits"
"""The strict-limit authority actor's name in the cluster's namespace."""
MANAGER_NAME = "rakka-manager"
"""The deployment manager actor's name in the cluster's namespace."""


@dataclass(frozen=True, slots=True)
class SingletonSpec:
    """What making the singletons again needs (the manager's constructor arguments): see
    :mod:`rakka_inference.cluster.ray_singletons`."""

    namespace: str
    source: str
    base_dir: str
    initial_text: str
    """The config a manager starts on when the KV store has none (the very first start)."""
    default_bind: str
    grace_s: float


def exit_this_actor() -> None:
    """End the calling actor's process the orderly way (its exit handlers run)."""
    ray.actor.exit_actor()  # type: ignore[no-untyped-call]


_WALL_OFFSET = time.time() - time.monotonic()


def cluster_clock() -> float:
    """A gateway's clock on a cluster: monotonic, and on the wall clock's scale (taken once,
    when the process starts). The approximate limiter's sync epochs must line up across
    nodes (clocks synchronised well within a sync interval, as NTP keeps them), and a
    provider's Retry-After travels as a time on this scale; within the process it never
    jumps, so deadlines and timers stay sound."""
    return time.monotonic() + _WALL_OFFSET


class RayReplicator:
    """One gateway's gossip endpoint on a Ray cluster (see the module docstring)."""

    def __init__(self, node_id: str) -> None:
        self._node_id = node_id
        self._peers: dict[str, Any] = {}
        self._version = -1
        self._stats = ReplicatorStats()
        self._inbox = GossipInbox(node_id, self._stats)

    @property
    def node_id(self) -> str:
        return self._node_id

    def members(self) -> frozenset[str]:
        return frozenset(self._peers) | {self._node_id}

    @property
    def peers(self) -> Mapping[str, Any]:
        """The other gateways' actor handles, by node id."""
        return self._peers

    def set_peers(self, version: int, peers: Mapping[str, Any]) -> bool:
        """Take the manager's snapshot of the live gateways (an older one is ignored)."""
        if version <= self._version:
            return False
        self._version = version
        self._peers = {node: handle for node, handle in peers.items() if node != self._node_id}
        return True

    @property
    def stats(self) -> ReplicatorStats:
        return replace(self._stats)

    def publish(self, message: SyncMessage) -> None:
        encoded = encode_sync(message)
        self._stats.dropped_too_large += encoded.dropped
        self._send(encoded.datagrams)

    def subscribe(self, deliver: Deliver) -> None:
        self._inbox.subscribe(deliver)

    def publish_circuit(self, signal: CircuitSignal) -> None:
        self._send([encode_circuit(signal)])

    def subscribe_circuit(self, deliver: Callable[[CircuitSignal], None]) -> None:
        self._inbox.subscribe_circuit(deliver)

    def _send(self, datagrams: list[bytes]) -> None:
        stats = self._stats
        for node, handle in self._peers.items():
            for datagram in datagrams:
                try:
                    handle.deliver.remote(datagram)
                except Exception as error:  # a handle Ray no longer knows: the node is gone
                    stats.send_failures += 1
                    log.debug("gossip to %s skipped: %r", node, error)
                    continue
                stats.datagrams_sent += 1
                stats.bytes_sent += len(datagram)

    def receive(self, datagram: bytes) -> None:
        """A datagram another gateway sent: decoded and handed to the subscribers."""
        self._inbox.receive(datagram)


class RayLeaseChannel:
    """One gateway's way to the strict-limit authority actor (see the module docstring);
    also the :class:`~rakka_inference.remote.distributed_limit.StrictAuthority` its
    distributed limiter asks for strict keys."""

    def __init__(
        self,
        namespace: str,
        *,
        holders: Callable[[], int],
        clock: Clock,
        sleep: Sleep = asyncio.sleep,
        lease_ttl: float = 1.0,
        autotune: AutoTune | None = None,
        retry_delay: float = 0.2,
        request_timeout: float = 2.0,
    ) -> None:
        self.namespace = namespace
        self._holders = holders
        self._clock = clock
        self.lease_ttl = lease_ttl
        self.retry_delay = retry_delay
        self._timeout = request_timeout
        self._authority: Any = None
        self._limiters = LeasedLimiters(self, clock=clock, sleep=sleep, autotune=autotune)
        self._next_id = 0
        self.round_trips = 0
        self._down = False

    @property
    def holders(self) -> int:
        """How many gateways share each key now (each applies ``ceil(C / holders)``)."""
        return max(1, self._holders())

    def limiter_for(self, key: LimiterKey, limits: RateLimits) -> LeasedLimiter:
        return self._limiters.limiter_for(key, limits)

    def utilization(self) -> list[RateLimitUtilization]:
        return self._limiters.utilization()

    def _handle(self) -> Any:
        if self._authority is None:
            self._authority = ray.get_actor(AUTHORITY_NAME, namespace=self.namespace)
        return self._authority

    async def lease(
        self,
        key: LimiterKey,
        limits: RateLimits,
        want: tuple[int, int],
        need: int,
        returns: list[LeaseReturn],
    ) -> LeaseGrant | LeaseRefusal:
        self._next_id += 1
        line = encode_lease(self._next_id, key, limits, want=want, need=need, returns=returns)
        try:
            handle = self._handle()
            self.round_trips += 1
            reply = await asyncio.wait_for(handle.handle.remote(line), self._timeout)
            if not isinstance(reply, bytes):
                raise LeaseProtocolError("the authority sent no reply")
            _, result = decode_reply(reply, self._clock())
        except (LeaseProtocolError, TimeoutError, ValueError, ray.exceptions.RayError) as error:
            self._authority = None  # find it again: it may have restarted elsewhere
            if not self._down:
                self._down = True
                log.warning("the strict-limit authority did not answer: %r", error)
            raise ConnectionError("no answer from the strict-limit authority") from error
        if self._down:
            self._down = False
            log.info("the strict-limit authority answers again")
        return result

    def tell(self, line: bytes) -> None:
        try:
            self._handle().handle.remote(line)
        except (ValueError, ray.exceptions.RayError):
            self._authority = None  # the local block still holds

    async def aclose(self) -> None:
        """Give every unused permit back to the authority (best effort)."""
        returns = await self._limiters.close()
        if returns:
            self.tell(encode_release(returns))
