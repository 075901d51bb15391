"""One gateway per node of a Ray cluster: that node's topology, serving that node's port.

:class:`RayGateway` is the actor the deployment manager places on each live node (as Ray
Serve places its proxies: hard node affinity, no CPU reserved). It runs the same topology
as ``rakka serve`` does in one process, with that node's own remote-engine replicas, so a
request to a remote provider never crosses nodes, behind uvicorn on the node's bind
address (``[cluster].bind``, or the node's ``rakka-bind`` label where set).

What it shares with the other gateways, through Ray (:mod:`rakka_inference.cluster.
ray_transport`):

- **rate limits**: approximate keys gossip their spend (the CRDT), strict keys take leases
  from the authority singleton. The limiter runs on the wall clock, so every node's sync
  epochs line up (NTP-synchronised clocks; a provider's Retry-After travels as a wall time
  too);
- **circuits**: a breaker that opens or closes here is followed on the others
  (:mod:`rakka_inference.cluster.gossip`);
- **answers**: ``/metrics`` and the ``/admin/`` routes answer for the whole cluster
  (:mod:`rakka_inference.cluster.answers`, each row and sample labelled ``node``), an apply
  or reload goes to the deployment manager, which applies it on every gateway or on none.

A request another gateway asks of this one (``local_http``) runs through the same ASGI app
marked local, so it is answered by this gateway's own topology and never fanned out again.
Secrets are resolved here, on the node, from its own environment or files: the manager
ships the config's text, never a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from rakka_inference.cluster.answers import GroupAnswers, Reply, Scope
from rakka_inference.cluster.gossip import CircuitGossip, traffic_metrics
from rakka_inference.cluster.ray_local import RayReplicaEngine, replica_index
from rakka_inference.cluster.ray_transport import (
    MANAGER_NAME,
    RayLeaseChannel,
    RayReplicator,
    SingletonSpec,
    cluster_clock,
    exit_this_actor,
)
from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, InternalError, SecretError
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.runtime.topology import Topology, with_access_of

__all__ = ["GATEWAY_PREFIX", "LocalReply", "RayGateway", "gateway_name"]

log = logging.getLogger("rakka_inference.cluster.ray_gateway")

GATEWAY_PREFIX = "rakka-gateway-"
_BACKLOG = 2048
_KEEP_S = 1.0
"""How often (plus up to as much again, at random) a gateway checks the singletons."""
_BACKSTOP_S = 5

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def gateway_name(node_id: str) -> str:
    """The gateway actor's name for the node ``node_id``."""
    return GATEWAY_PREFIX + node_id


@dataclass(frozen=True, slots=True)
class LocalReply:
    """A gateway's answer to a request another gateway asked of it."""

    status: int
    body: bytes


class _App:
    """The gateway's ASGI callable as uvicorn wants it: an object, not a bound method
    (which it would take for an app factory)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


class RayGateway:
    """The gateway of one node (see the module docstring). Built by the manager as a Ray
    actor; every method below is called through Ray."""

    label = "node"

    def __init__(self, namespace: str, node_id: str, source: str, base_dir: str) -> None:
        self.namespace = namespace
        self.node_id = node_id
        self.replicator = RayReplicator(node_id)
        self.gossip = CircuitGossip(self.replicator)
        self.leases = RayLeaseChannel(
            namespace, holders=lambda: len(self.replicator.members()), clock=cluster_clock
        )
        self.limiter = DistributedRateLimiter(
            self.replicator, clock=cluster_clock, authority=self.leases
        )
        self.breakers = BreakerRegistry(
            clock=cluster_clock, on_transition=self.gossip.on_transition
        )
        self.gossip.breakers = self.breakers
        self.answers = GroupAnswers(self, config_source=source, base_dir=Path(base_dir))
        self.topology: Topology | None = None
        self.bind = ""
        self.generation = 0
        self._server: Any = None
        self._serving: asyncio.Task[None] | None = None
        self._sync: asyncio.Task[None] | None = None
        self._manager: Any = None
        self._spec: SingletonSpec | None = None
        self._keeper: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(
        self,
        text: str,
        generation: int,
        bind: str,
        spec: SingletonSpec,
        access: str | None = None,
    ) -> dict[str, Any]:
        """Build the topology from the config ``text`` and serve it on ``bind``; keep the
        singletons (``spec``) from now on. ``access``: the text of the file whose
        ``[cluster]`` says who may call the gateway (the one the cluster last read)."""
        self._spec = spec
        if self.topology is not None:
            return self.describe()
        grace_s = spec.grace_s
        try:
            source, base_dir = self.answers.config_source, self.answers.base_dir
            config = parse_config(text, source, base_dir=base_dir)
            if access is not None:
                cluster = parse_config(access, source, base_dir=base_dir).cluster
                config = with_access_of(config, cluster)
            topology = Topology(
                config,
                services=RemoteServices(
                    limiters=self.limiter, breakers=self.breakers, clock=cluster_clock
                ),
                local_engines=self._local_engine,
            )
            await topology.start()
        except (ConfigError, SecretError) as error:
            return {"ok": False, "status": 400, "message": str(error)}
        self.topology, self.generation = topology, generation
        self.answers.attach(topology)
        loop = asyncio.get_running_loop()
        self._sync = loop.create_task(self.limiter.run())
        self._keeper = loop.create_task(self._keep_singletons())
        try:
            await self._serve(bind, grace_s)
        except OSError as error:
            await self.stop(0.0)
            return {"ok": False, "status": 500, "message": f"cannot listen on {bind}: {error}"}
        return self.describe()

    async def _serve(self, bind: str, grace_s: float) -> None:
        import uvicorn  # noqa: PLC0415 - the server only where a gateway runs

        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, int(port)))
            listener.listen(_BACKLOG)
        except OSError:
            listener.close()
            raise
        self.bind = f"{host}:{listener.getsockname()[1]}"
        server = uvicorn.Server(
            uvicorn.Config(
                _App(self.asgi),
                loop="none",
                interface="asgi3",
                http="httptools",
                lifespan="off",
                access_log=False,
                log_level="warning",
                timeout_graceful_shutdown=math.ceil(grace_s) + _BACKSTOP_S,
            )
        )
        self._server = server
        self._serving = asyncio.get_running_loop().create_task(server.serve(sockets=[listener]))
        async with asyncio.timeout(30):
            while not server.started:
                if self._serving.done():
                    self._serving.result()
                    raise OSError(f"the server on {bind} stopped at start")
                await asyncio.sleep(0.01)

    def _local_engine(self, deployment: Deployment, name: str) -> RayReplicaEngine:
        """A local replica is the cluster's actor; this gateway holds a proxy to it."""
        index = replica_index(deployment.name, name)
        return RayReplicaEngine(self.namespace, deployment, index, name, clock=cluster_clock)

    def describe(self) -> dict[str, Any]:
        return {
            "ok": self.topology is not None,
            "node_id": self.node_id,
            "bind": self.bind,
            "pid": os.getpid(),
            "generation": self.generation,
            "peers": len(self.replicator.members()),
        }

    async def _keep_singletons(self) -> None:
        """Make a singleton again when it is gone (:mod:`ray_singletons`), every second."""
        # Imported here: the keeper makes managers, and the manager module makes gateways.
        from rakka_inference.cluster.ray_singletons import ensure_singletons  # noqa: PLC0415

        while True:
            await asyncio.sleep(_KEEP_S + random.random() * _KEEP_S)  # noqa: S311 - jitter
            spec = self._spec
            if spec is None:
                continue
            try:
                await asyncio.to_thread(ensure_singletons, spec)
            except Exception as error:  # Ray's control store unreachable: next time
                log.warning("could not check the cluster's singletons: %r", error)

    async def stop(self, grace_s: float) -> None:
        """Stop taking connections, let requests finish (within ``grace_s``), close."""
        if self._keeper is not None:
            self._keeper.cancel()
        server = self._server
        if server is not None:
            server.should_exit = True
        topology = self.topology
        # Past the grace, requests still in flight are cut: each client is told why in its
        # route's format (as `rakka serve` does), before uvicorn's backstop cancels them.
        cut = (
            None
            if topology is None
            else asyncio.get_running_loop().call_later(grace_s, topology.gateway.cut)
        )
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, grace_s + _BACKSTOP_S + 1)
        if cut is not None:
            cut.cancel()
        if self.topology is not None:
            await self.topology.stop(timeout=grace_s)
        if self._sync is not None:
            self._sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync
        await self.leases.aclose()

    async def close(self) -> None:
        """End this actor's process the orderly way (after :meth:`stop`): its exit
        handlers run, which a kill would skip."""
        exit_this_actor()

    # ------------------------------------------------------------------ what Ray calls

    def set_peers(self, version: int, peers: dict[str, Any]) -> bool:
        """The manager's snapshot of the live gateways (older ones are ignored)."""
        return self.replicator.set_peers(version, peers)

    def deliver(self, datagram: bytes) -> None:
        """Gossip from another gateway."""
        self.replicator.receive(datagram)

    async def apply(self, text: str, access: str | None = None) -> dict[str, Any]:
        """Apply ``text`` here (the manager's apply); with ``access``, a reload's keys too."""
        answer = await self.answers.apply_local(text, access=access)
        return answer

    async def revert(self) -> dict[str, Any]:
        return await self.answers.revert_local()

    def mark(self, generation: int) -> None:
        """The manager says the config this gateway runs is now ``generation``."""
        self.generation = generation

    async def local_http(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> LocalReply:
        """Answer a request as this gateway alone (another gateway asks on a client's
        behalf; see the module docstring)."""
        path, _, query = target.partition("?")
        scope: Scope = {
            "type": "http",
            "http_version": "1.1",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "server": None,
            "client": None,
            "rakka.local": True,
        }
        sent = False
        status = 500
        parts: list[bytes] = []

        async def receive() -> Message:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # nothing more: the request is whole
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                parts.append(bytes(message.get("body", b"")))

        await self.asgi(scope, receive, send)
        return LocalReply(status, b"".join(parts))

    # ------------------------------------------------------------------ ASGI

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        topology = self.topology
        assert topology is not None, "the server starts after the topology"
        if self.answers.intercepts(scope):
            await self.answers.handle(scope, receive, send)
            return
        await topology.gateway(scope, receive, send)

    # ------------------------------------------------------------------ GroupLink

    def is_local(self, scope: Scope) -> bool:
        return scope.get("rakka.local") is True

    async def fan_out(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> list[tuple[str, Reply | None]]:
        peers = dict(self.replicator.peers)

        async def ask(node: str, handle: Any) -> tuple[str, Reply | None]:
            try:
                if handle is None:
                    return node, await self.local_http(method, target, headers, body)
                reply = await asyncio.wait_for(
                    handle.local_http.remote(method, target, list(headers), body), timeout
                )
            except (TimeoutError, ray.exceptions.RayError) as error:
                log.warning("gateway %s did not answer %s %s: %r", node, method, target, error)
                return node, None
            return node, reply if isinstance(reply, LocalReply) else None

        members = [(self.node_id, None), *sorted(peers.items())]
        return list(await asyncio.gather(*(ask(node, handle) for node, handle in members)))

    async def coordinate(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the deployment manager singleton (found again if it restarted)."""
        try:
            if self._manager is None:
                self._manager = ray.get_actor(MANAGER_NAME, namespace=self.namespace)
            answer = await asyncio.wait_for(self._manager.coordinate.remote(message), timeout)
        except (TimeoutError, ValueError, ray.exceptions.RayError) as error:
            self._manager = None
            raise InternalError(f"the deployment manager did not answer: {error!r}") from None
        if not isinstance(answer, dict):
            raise InternalError("the deployment manager answered garbage")
        return answer

    def extra_metrics(self) -> list[str]:
        return traffic_metrics(
            self.replicator.stats, self.leases.round_trips, self.gossip, peers="gateways"
        )
