"""One worker of a node: its shared limits and circuits, and its answers for the node.

A worker process (``rakka serve`` with ``[cluster].workers > 1``) runs the same topology as
a single process, with three differences, all made here:

- **Shared services.** Its :class:`~rakka_inference.remote.factory.RemoteServices` hold a
  :class:`~rakka_inference.remote.distributed_limit.DistributedRateLimiter`: approximate keys
  gossip their spend with the other workers over Unix datagrams
  (:class:`~rakka_inference.remote.replicator_unix.UnixDatagramReplicator`, synced every
  ``sync_interval_ms``); strict keys take leases from the parent's authority
  (:class:`~rakka_inference.remote.strict_lease_unix.LeaseClient`). Its breakers tell the
  others when they open or close (:class:`~rakka_inference.cluster.gossip.CircuitGossip`).
- **A control socket.** Besides the shared port, the worker serves its own Unix socket in the
  node's directory. What arrives there is answered for this worker alone; ``/_node/apply``
  and ``/_node/revert`` are the parent's all-or-nothing apply.
- **Answers for the node.** ``GET /metrics`` and the ``/admin/`` routes on the shared port
  are answered for the whole node, whichever worker the connection reached
  (:mod:`rakka_inference.cluster.answers`): this member is their link, asking the other
  workers on their control sockets and the parent on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from rakka_inference.cluster.answers import GroupAnswers, Reply, Scope
from rakka_inference.cluster.gossip import CircuitGossip, traffic_metrics
from rakka_inference.cluster.supervisor import MAX_LINE, control_path, worker_name
from rakka_inference.cluster.unix_http import UnixHttpError, request
from rakka_inference.core.deployment import Config
from rakka_inference.core.errors import InternalError
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.remote.replicator_unix import UnixDatagramReplicator
from rakka_inference.remote.strict_lease_unix import LeaseClient

if TYPE_CHECKING:
    from rakka_inference.runtime.topology import Topology

__all__ = ["NodeMember", "worker_share"]


def worker_share(config: Config, workers: int) -> Config:
    """``config`` as one of ``workers`` workers runs it: each deployment's budget split
    evenly, so the node together never spends more than the budget (each worker keeps its
    own ledger; the kernel spreads connections over the workers, so the shares fill alike).
    """
    if workers <= 1:
        return config
    deployments = []
    for deployment in config.deployments:
        budget = deployment.budget
        if budget is None:
            deployments.append(deployment)
            continue
        share = replace(
            budget,
            max_spend_per_hour=_share(budget.max_spend_per_hour, workers),
            max_spend_per_day=_share(budget.max_spend_per_day, workers),
        )
        deployments.append(replace(deployment, budget=share))
    return replace(config, deployments=tuple(deployments))


def _share(limit: float | None, workers: int) -> float | None:
    return None if limit is None else limit / workers


class NodeMember:
    """This worker's part in the node, and its :class:`~rakka_inference.cluster.answers.
    GroupLink` to the others; see the module docstring."""

    label = "worker"

    def __init__(
        self,
        *,
        node_dir: Path,
        worker: str,
        workers: int,
        config_source: str = "<node>",
        base_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_dir = node_dir
        self.worker = worker
        self.peers = tuple(worker_name(i) for i in range(workers))
        self.clock = clock
        self.control_path = str(control_path(node_dir, worker))
        self.replicator = UnixDatagramReplicator(node_dir, worker, self.peers)
        self.gossip = CircuitGossip(self.replicator)
        self.leases = LeaseClient(
            str(node_dir / "authority.sock"), clock=clock, sleep=asyncio.sleep, holders=workers
        )
        self.limiter = DistributedRateLimiter(self.replicator, clock=clock, authority=self.leases)
        self.breakers = BreakerRegistry(clock=clock, on_transition=self.gossip.on_transition)
        self.gossip.breakers = self.breakers
        self.answers = GroupAnswers(
            self,
            config_source=config_source,
            base_dir=base_dir or Path.cwd(),
            adapt=lambda config: worker_share(config, workers),
        )
        self._sync: asyncio.Task[None] | None = None

    def services(self) -> RemoteServices:
        """The remote services this worker's topology is built with."""
        return RemoteServices(limiters=self.limiter, breakers=self.breakers, clock=self.clock)

    def bind_control(self) -> socket.socket:
        """The worker's own listening socket in the node's directory (owner only)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.control_path)
        os.chmod(self.control_path, 0o600)
        sock.listen(128)
        return sock

    async def start(self) -> None:
        await self.replicator.start()
        self._sync = asyncio.get_running_loop().create_task(self.limiter.run())

    def attach(self, topology: Topology) -> None:
        """Serve for ``topology``: its admin routes answer for the node from now on."""
        self.answers.attach(topology)

    async def announce_ready(self, generation: int) -> None:
        """Tell the parent this worker serves (with the config generation it started on)."""
        await self.coordinate(
            {"op": "ready", "worker": self.worker, "pid": os.getpid(), "generation": generation},
            10.0,
        )

    async def aclose(self) -> None:
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        await self.leases.aclose()
        await self.replicator.aclose()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control_path)

    # ------------------------------------------------------------------ GroupLink

    def is_local(self, scope: Scope) -> bool:
        """Whether ``scope`` came on this worker's control socket."""
        server = scope.get("server")
        return server is not None and server[1] is None and bool(server[0] == self.control_path)

    async def fan_out(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> list[tuple[str, Reply | None]]:
        async def ask(name: str) -> tuple[str, Reply | None]:
            path = str(control_path(self.node_dir, name))
            try:
                return name, await request(
                    path, method, target, headers=headers, body=body, timeout=timeout
                )
            except UnixHttpError:
                return name, None

        return list(await asyncio.gather(*(ask(name) for name in self.peers)))

    async def coordinate(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the node's parent on its control socket."""
        path = str(control_path(self.node_dir, "node"))
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=MAX_LINE)
                try:
                    writer.write(orjson.dumps(message) + b"\n")
                    await writer.drain()
                    line = await reader.readline()
                finally:
                    writer.close()
            answer = orjson.loads(line)
        except (OSError, TimeoutError, ValueError) as error:
            raise InternalError(f"the node's parent did not answer: {error}") from None
        if not isinstance(answer, dict):
            raise InternalError("the node's parent answered garbage")
        return answer

    def extra_metrics(self) -> list[str]:
        """The node's traffic as this worker sees it."""
        return traffic_metrics(
            self.replicator.stats, self.leases.round_trips, self.gossip, peers="workers"
        )
