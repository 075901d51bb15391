"""How the nodes' rate limiters exchange spend, and a simulated network to test them on.

A :class:`Replicator` is one node's endpoint: it knows the members of the cluster, it
``publish``-es this node's :class:`SyncMessage` to every other member, and it hands the
messages of the others to the callback given to ``subscribe``. The distributed limiter
(:mod:`rakka_inference.remote.distributed_limit`) publishes once per sync interval: for
each key, the entries of its G-Counter that changed (a delta, see
:mod:`rakka_inference.remote.gcounter`), or every few intervals its whole live row.
Nothing more is asked of the transport: messages may be lost, duplicated or reordered,
because merging is idempotent, commutative and associative. The limiter's over-spend
bound does assume that a message reaches every member within the limiter's ``max_delay``.

:class:`SimulatedNetwork` is the in-process transport for tests: N nodes in one process,
each with an :class:`InProcessReplicator`, a delivery delay, and partitions that drop or
hold the messages between chosen groups of nodes. It is driven by a fake clock:
``advance(dt)`` moves the clock to each due delivery in turn, in (due time, send order)
order, so a run is deterministic. A Ray-based replicator (DESIGN §7) will implement the
same protocol.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from rakka_inference.core.policies import RateLimits
from rakka_inference.remote.gcounter import CounterState
from rakka_inference.remote.ratelimit import LimiterKey

__all__ = [
    "KeySync",
    "SyncMessage",
    "Deliver",
    "Replicator",
    "SteppableClock",
    "PartitionMode",
    "SimulatedNetwork",
    "InProcessReplicator",
]


@dataclass(frozen=True, slots=True)
class KeySync:
    """One key's part of a sync message."""

    key: LimiterKey
    limits: RateLimits
    """The sender's limits, so a node that never served the key can track it."""
    epoch: int
    """The sender's sync epoch for this key when it captured ``spend``."""
    spend: CounterState
    """The sender's own G-Counter entries: changed ones, or its whole live row."""
    blocked_until: float
    """A provider Retry-After on this key (a max-register: merged by max)."""


@dataclass(frozen=True, slots=True)
class SyncMessage:
    origin: str
    sent_at: float
    keys: tuple[KeySync, ...] = ()


Deliver = Callable[[SyncMessage], None]


class Replicator(Protocol):
    """One node's endpoint of the spend exchange."""

    @property
    def node_id(self) -> str: ...

    def members(self) -> frozenset[str]:
        """Every node of the cluster, this one included."""
        ...

    def publish(self, message: SyncMessage) -> None:
        """Send ``message`` to every other member (best effort)."""
        ...

    def subscribe(self, deliver: Deliver) -> None:
        """Have the other members' messages handed to ``deliver``."""
        ...


class SteppableClock(Protocol):
    def __call__(self) -> float: ...

    def advance(self, seconds: float) -> float: ...


class PartitionMode(enum.StrEnum):
    DROP = "drop"
    """Messages across the cut are lost."""
    HOLD = "hold"
    """Messages across the cut are kept and delivered (after the delay) on ``heal()``."""


@dataclass(order=True, slots=True)
class _InFlight:
    due: float
    seq: int
    dest: str = field(compare=False)
    message: SyncMessage = field(compare=False)


class SimulatedNetwork:
    """N in-process nodes, a delivery delay and partitions, on a fake clock."""

    def __init__(self, clock: SteppableClock, *, delay: float = 0.0) -> None:
        self.clock = clock
        self.delay = delay
        self._subscribers: dict[str, Deliver | None] = {}
        self._queue: list[_InFlight] = []
        self._seq = itertools.count()
        self._groups: dict[str, int] | None = None
        self._mode = PartitionMode.DROP
        self._held: list[tuple[str, SyncMessage]] = []
        self.sent = 0
        self.delivered = 0
        self.dropped = 0

    @property
    def delay(self) -> float:
        return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._delay = seconds

    # -- membership

    def join(self, node_id: str) -> InProcessReplicator:
        if node_id in self._subscribers:
            raise ValueError(f"node {node_id!r} already joined")
        self._subscribers[node_id] = None
        return InProcessReplicator(self, node_id)

    def leave(self, node_id: str) -> None:
        """Remove a node; messages on their way to it are lost."""
        self._subscribers.pop(node_id, None)

    def members(self) -> frozenset[str]:
        return frozenset(self._subscribers)

    # -- partitions

    def partition(self, *groups: Iterable[str], mode: PartitionMode = PartitionMode.DROP) -> None:
        """Cut the network: messages flow only within a group. A node named in no group is
        cut off from every other node."""
        assignment: dict[str, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in assignment:
                    raise ValueError(f"node {node!r} is in two groups")
                assignment[node] = index
        self._groups = assignment
        self._mode = mode

    def heal(self) -> None:
        """Reconnect everyone; held messages leave now (and arrive after the delay)."""
        self._groups = None
        held, self._held = self._held, []
        for dest, message in held:
            self._schedule(dest, message)

    def connected(self, a: str, b: str) -> bool:
        groups = self._groups
        if groups is None or a == b:
            return True
        group_a, group_b = groups.get(a), groups.get(b)
        return group_a is not None and group_a == group_b

    # -- traffic

    def _send(self, origin: str, message: SyncMessage) -> None:
        for dest in sorted(self._subscribers):
            if dest == origin:
                continue
            self.sent += 1
            if self.connected(origin, dest):
                self._schedule(dest, message)
            elif self._mode is PartitionMode.HOLD:
                self._held.append((dest, message))
            else:
                self.dropped += 1

    def _schedule(self, dest: str, message: SyncMessage) -> None:
        heapq.heappush(
            self._queue, _InFlight(self.clock() + self._delay, next(self._seq), dest, message)
        )

    @property
    def in_flight(self) -> int:
        """Messages on their way (not counting held ones)."""
        return len(self._queue)

    @property
    def held(self) -> int:
        return len(self._held)

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``, delivering what falls due on the way."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        target = self.clock() + seconds
        queue = self._queue
        while queue and queue[0].due <= target:
            item = heapq.heappop(queue)
            now = self.clock()
            if item.due > now:
                self.clock.advance(item.due - now)
            self._deliver(item.dest, item.message)
        now = self.clock()
        if target > now:
            self.clock.advance(target - now)

    def flush(self) -> None:
        """Deliver what is due now (zero-delay messages), without moving the clock."""
        self.advance(0.0)

    def _deliver(self, dest: str, message: SyncMessage) -> None:
        if dest not in self._subscribers:
            self.dropped += 1
            return
        deliver = self._subscribers[dest]
        if deliver is None:
            self.dropped += 1
            return
        self.delivered += 1
        deliver(message)


class InProcessReplicator:
    """One node's :class:`Replicator` endpoint on a :class:`SimulatedNetwork`."""

    __slots__ = ("_network", "_node_id")

    def __init__(self, network: SimulatedNetwork, node_id: str) -> None:
        self._network = network
        self._node_id = node_id

    @property
    def node_id(self) -> str:
        return self._node_id

    def members(self) -> frozenset[str]:
        return self._network.members()

    def publish(self, message: SyncMessage) -> None:
        self._network._send(self._node_id, message)

    def subscribe(self, deliver: Deliver) -> None:
        if self._node_id not in self._network._subscribers:
            raise ValueError(f"node {self._node_id!r} has left the network")
        self._network._subscribers[self._node_id] = deliver

    def __repr__(self) -> str:
        return f"InProcessReplicator({self._node_id!r})"
