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
  are answered for the whole node, whichever worker the connection reached: reads are asked
  of every worker's control socket and merged (:mod:`rakka_inference.cluster.merge`);
  operations (scale, drain, rotate, circuit) are done on every worker; an apply or a reload
  goes to the parent, which applies it everywhere or nowhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from rakka_inference.cluster.gossip import CircuitGossip
from rakka_inference.cluster.merge import (
    WorkerView,
    merge_costs,
    merge_deployments,
    merge_metrics,
    merge_rows,
    merge_status,
)
from rakka_inference.cluster.supervisor import MAX_LINE, control_path, worker_name
from rakka_inference.cluster.unix_http import UnixHttpError, request
from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import Config
from rakka_inference.core.errors import (
    BadRequest,
    ConfigError,
    InferenceError,
    InternalError,
    OperationRefused,
    SecretError,
)
from rakka_inference.observe.metrics import CONTENT_TYPE
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.remote.distributed_limit import DistributedRateLimiter
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.remote.replicator_unix import UnixDatagramReplicator
from rakka_inference.remote.strict_lease_unix import LeaseClient
from rakka_inference.runtime.admin import AdminApi
from rakka_inference.runtime.asgi import receive_body, request_ids, send_error, send_json

if TYPE_CHECKING:
    from rakka_inference.runtime.topology import Topology

__all__ = ["NodeAdmin", "NodeMember", "worker_share"]

log = logging.getLogger("rakka_inference.cluster.member")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_ADMIN_BODY = 1024 * 1024
_FANOUT_TIMEOUT_S = 10.0
_OPERATION_TIMEOUT_S = 120.0
_FORWARDED_HEADERS = (b"authorization", b"content-type", b"x-request-id")


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
    """This worker's part in the node; see the module docstring."""

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
        self.config_source = config_source
        self.base_dir = base_dir or Path.cwd()
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
        self.topology: Topology | None = None
        self._previous: Config | None = None
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
        self.topology = topology
        topology.gateway.admin = NodeAdmin(self, topology.admin)

    async def announce_ready(self, generation: int) -> None:
        """Tell the parent this worker serves (with the config generation it started on)."""
        await self.ask_parent(
            {"op": "ready", "worker": self.worker, "pid": os.getpid(), "generation": generation}
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

    # ------------------------------------------------------------------ the parent

    async def ask_parent(self, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
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

    # ------------------------------------------------------------------ ASGI

    def is_control(self, scope: Scope) -> bool:
        server = scope.get("server")
        return server is not None and server[1] is None and bool(server[0] == self.control_path)

    def intercepts(self, scope: Scope) -> bool:
        """Whether :meth:`handle` answers ``scope`` (else the gateway does)."""
        if scope["type"] != "http":
            return False
        if scope["path"] == "/metrics":
            return bool(scope["method"] == "GET")
        return self.is_control(scope) and str(scope["path"]).startswith("/_node/")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = request_ids(scope)
        try:
            if scope["path"] == "/metrics":
                if self.is_control(scope):  # a sibling asks for this worker's own
                    await _send_metrics(send, self.own_metrics(), ids.header)
                else:
                    await self._node_metrics(send, ids.header)
                return
            body = await receive_body(scope, receive, 64 * 1024 * 1024)
            answer = await self._node_op(scope["path"], body)
            await send_json(send, 200, orjson.dumps(answer), ids.header)
        except InferenceError as error:
            await send_error(send, error, ids.header)

    async def _node_metrics(self, send: Send, request_id: str) -> None:
        answers = await self.fan_out("GET", "/metrics")
        text = merge_metrics(
            (name, response.body.decode("utf-8", "replace"))
            for name, response in answers
            if response is not None and response.status == 200
        )
        await _send_metrics(send, text.encode(), request_id)

    def own_metrics(self) -> bytes:
        """This worker's exposition: its topology's series, then the node's traffic."""
        assert self.topology is not None
        stats = self.replicator.stats
        lines = [
            "# HELP inference_node_sync_datagrams_total Datagrams of limiter spend and circuit "
            "news this worker sent to or received from the node's other workers.",
            "# TYPE inference_node_sync_datagrams_total counter",
            f'inference_node_sync_datagrams_total{{direction="sent"}} {stats.datagrams_sent}',
            f'inference_node_sync_datagrams_total{{direction="received"}} {stats.datagrams_received}',
            "# HELP inference_node_sync_bytes_total Bytes of those datagrams.",
            "# TYPE inference_node_sync_bytes_total counter",
            f'inference_node_sync_bytes_total{{direction="sent"}} {stats.bytes_sent}',
            f'inference_node_sync_bytes_total{{direction="received"}} {stats.bytes_received}',
            "# HELP inference_node_sync_dropped_total Datagrams lost: refused as malformed, not "
            "delivered to a peer, or a key too large to send.",
            "# TYPE inference_node_sync_dropped_total counter",
            f'inference_node_sync_dropped_total{{reason="malformed"}} {stats.dropped_malformed}',
            f'inference_node_sync_dropped_total{{reason="send_failed"}} {stats.send_failures}',
            f'inference_node_sync_dropped_total{{reason="too_large"}} {stats.dropped_too_large}',
            "# HELP inference_node_lease_round_trips_total Strict-limit lease requests this worker "
            "made to the node's parent.",
            "# TYPE inference_node_lease_round_trips_total counter",
            f"inference_node_lease_round_trips_total {self.leases.round_trips}",
            "# HELP inference_node_circuit_signals_total Circuit transitions this worker told the "
            "others (sent) or took from them (applied).",
            "# TYPE inference_node_circuit_signals_total counter",
            f'inference_node_circuit_signals_total{{direction="sent"}} {self.gossip.sent}',
            f'inference_node_circuit_signals_total{{direction="applied"}} {self.gossip.applied}',
        ]
        return self.topology.metrics.render() + ("\n".join(lines) + "\n").encode()

    async def _node_op(self, path: str, body: bytes) -> dict[str, Any]:
        topology = self.topology
        if topology is None:
            raise OperationRefused("the worker is still starting")
        try:
            match path:
                case "/_node/apply":
                    document = orjson.loads(body)
                    text = document["toml"] if isinstance(document, dict) else None
                    if not isinstance(text, str):
                        raise BadRequest("toml must be a string")
                    config = worker_share(
                        parse_config(text, self.config_source, base_dir=self.base_dir),
                        len(self.peers),
                    )
                    previous = topology.config
                    report = await topology.apply(config)
                    self._previous = previous
                    return {"ok": True, "applied": _report(report)}
                case "/_node/revert":
                    if self._previous is not None:
                        await topology.apply(self._previous)
                        self._previous = None
                    return {"ok": True}
        except (ConfigError, SecretError) as error:
            return {"ok": False, "status": 400, "message": str(error)}
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not valid JSON") from None
        raise BadRequest(f"no node operation {path!r}")

    async def fan_out(
        self,
        method: str,
        target: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        timeout: float = _FANOUT_TIMEOUT_S,
    ) -> list[tuple[str, Any]]:
        """Ask every worker's control socket (this one's too); ``(worker, response)``, the
        response None for a worker that did not answer."""

        async def ask(name: str) -> tuple[str, Any]:
            path = str(control_path(self.node_dir, name))
            try:
                return name, await request(
                    path, method, target, headers=headers, body=body, timeout=timeout
                )
            except UnixHttpError as error:
                log.warning("worker %s did not answer %s %s: %s", name, method, target, error)
                return name, None

        return list(await asyncio.gather(*(ask(name) for name in self.peers)))


class NodeAdmin:
    """The ``/admin/`` routes for the whole node (see the module docstring). On the control
    socket they are this worker's own (:class:`~rakka_inference.runtime.admin.AdminApi`)."""

    def __init__(self, member: NodeMember, local: AdminApi) -> None:
        self.member = member
        self.local = local

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        if self.member.is_control(scope):
            return await self.local.handle(scope, receive)
        self.local.authorize(scope)
        method, parts = scope["method"], scope["path"].strip("/").split("/")[1:]
        body = await receive_body(scope, receive, _MAX_ADMIN_BODY) if method != "GET" else b""
        if method == "POST" and parts in (["reload"], ["deployments"]):
            return await self._through_parent(parts, body)
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
            if name in _FORWARDED_HEADERS
        )
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        timeout = _FANOUT_TIMEOUT_S if method == "GET" else _OPERATION_TIMEOUT_S
        answers = await self.member.fan_out(
            method, target, headers=headers, body=body, timeout=timeout
        )
        for _name, response in answers:
            if response is not None and response.status != 200:
                return response.status, response.body  # the first refusal, as it was given
        views: list[WorkerView] = [
            (name, None if response is None else orjson.loads(response.body))
            for name, response in answers
        ]
        if method == "GET":
            return 200, orjson.dumps(await self._merge_view(parts, views))
        done = [name for name, view in views if view is not None]
        first = next((view for _name, view in views if view is not None), None)
        if first is None:
            raise InternalError("no worker of the node answered")
        missed = [name for name, view in views if view is None]
        return 200, orjson.dumps({**first, "workers": done, "unreachable": missed})

    async def _merge_view(self, parts: list[str], views: list[WorkerView]) -> Any:
        match parts:
            case ["status"]:
                status = merge_status(views)
                parent = await self.member.ask_parent({"op": "status"})
                status["workers"] = parent.get("workers", status["workers"])
                return status
            case ["deployments"]:
                return {"data": merge_deployments(views, "data")}
            case ["costs"]:
                window = next((v.get("window_s") for _n, v in views if v is not None), None)
                return {"window_s": window, "data": merge_costs(views)}
        return {"data": merge_rows(views, "data")}

    async def _through_parent(self, parts: list[str], body: bytes) -> tuple[int, bytes]:
        if parts == ["reload"]:
            message: dict[str, Any] = {"op": "reload"}
        else:
            if not body.strip():
                raise BadRequest("send the whole config as TOML in the body")
            message = {"op": "apply", "toml": body.decode("utf-8", "replace")}
        answer = await self.member.ask_parent(message, timeout=_OPERATION_TIMEOUT_S * 2)
        if answer.get("ok"):
            return 200, orjson.dumps({"applied": answer.get("applied")})
        status = int(answer.get("status", 500))
        text = str(answer.get("message", "the node refused the config"))
        if status == 400:
            raise BadRequest(text)
        if status == 409:
            raise OperationRefused(text)
        raise InternalError(text)


async def _send_metrics(send: Send, body: bytes, request_id: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _report(report: Any) -> dict[str, Any]:
    return {
        "added": list(report.added),
        "changed": list(report.changed),
        "removed": list(report.removed),
    }
