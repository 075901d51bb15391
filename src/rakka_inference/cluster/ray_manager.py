"""The deployment manager, the cluster's singleton that holds the config and the gateways.

Both are named, detached Ray actors in the cluster's namespace (``[cluster].name``) that Ray
restarts (on another node, if theirs died) without limit. Neither keeps anything in memory
that a restart would lose: what must survive is in Ray's KV store, and the rest is asked
again of what is alive.

The deployment manager (:class:`RayManager`)
--------------------------------------------
- **The applied config.** Its TOML text and generation live in the KV store; a restarted
  manager reads them back. An apply (``POST /admin/deployments`` on any gateway, or the
  driver's SIGHUP) is parsed here first, then applied on every gateway in turn; if one
  refuses, those that took it go back to the previous config and the refusal is the
  answer. Only a config every gateway took is written to the KV store. Applies are serial.
- **Who may call the gateways.** The client keys, admin key and web origins of the config
  file's ``[cluster]``, as read at start and at each reload (the driver's SIGHUP,
  ``POST /admin/reload``): a reload tells every gateway to read them again, a config posted
  to ``POST /admin/deployments`` changes the deployments alone, and a gateway started
  later takes the keys of the file last read (its text is in the KV store too).
- **The gateways.** Every half second it reconciles the gateways with Ray's node table: a
  live node without a gateway gets one (placed with hard node affinity, started on the
  applied config, bound to ``[cluster].bind`` or the node's ``rakka-bind`` label; a node
  labelled ``rakka-gateway=false`` gets none), a gateway whose node died, or that stops
  answering, is dropped. A restarted manager adopts the gateways that are still alive (by
  their names) instead of starting new ones, and brings any that ran an older config up
  to date.
- **The routing snapshot.** Each change of the gateway set is a new version of the peer
  table, sent to every gateway; a gateway keeps working on its last one while the manager
  is away (requests never wait for it).

The strict-limit authority, the other singleton, is :mod:`rakka_inference.cluster.ray_authority`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rakka_inference.cluster.ray_gateway import RayGateway, gateway_name
from rakka_inference.cluster.ray_local import RayLocalReplica, local_replica_name
from rakka_inference.cluster.ray_nodes import (
    BIND_LABEL,
    PING_TIMEOUT_S,
    close_actor,
    kv_delete,
    kv_get,
    kv_put,
    ray_nodes,
    wants_gateway,
)
from rakka_inference.cluster.ray_transport import AUTHORITY_NAME, SingletonSpec, exit_this_actor
from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import Config, Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.runtime.placement import gpus_needed

__all__ = ["RayManager"]

log = logging.getLogger("rakka_inference.cluster.ray_manager")

RECONCILE_S = 0.5
START_TIMEOUT_S = 120.0
APPLY_TIMEOUT_S = 120.0


@dataclass
class _Gateway:
    node_id: str
    handle: Any
    bind: str
    generation: int


@dataclass
class _Local:
    name: str
    handle: Any
    node: str


def _refusal(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "message": message}


class RayManager:
    """The deployment manager singleton (see the module docstring)."""

    def __init__(
        self,
        namespace: str,
        *,
        source: str,
        base_dir: str,
        initial_text: str,
        default_bind: str,
        grace_s: float,
    ) -> None:
        self.namespace = namespace
        self.source = source
        self.base_dir = Path(base_dir)
        self.default_bind = default_bind
        self.grace_s = grace_s
        stored = kv_get(namespace, "config")
        generation = kv_get(namespace, "generation")
        access = kv_get(namespace, "access")
        if stored is not None and generation is not None:
            self.text, self.generation = stored.decode(), int(generation)
            self.access = initial_text if access is None else access.decode()
            log.info("the deployment manager restarted on generation %d", self.generation)
        else:
            self.text, self.generation = initial_text, 1
            self.access = initial_text
            self._persist()
        self.gateways: dict[str, _Gateway] = {}
        self.failures: dict[str, str] = {}
        self.locals: dict[str, _Local] = {}
        """The local replicas running, by actor name."""
        self.local_failures: dict[str, str] = {}
        self.version = 0
        self.started_at = time.time()
        self._lock = asyncio.Lock()
        self._stopping = False
        self._loop_task = asyncio.get_running_loop().create_task(self._reconcile_forever())

    def _persist(self) -> None:
        kv_put(self.namespace, "config", self.text.encode())
        kv_put(self.namespace, "generation", str(self.generation).encode())
        kv_put(self.namespace, "access", self.access.encode())

    # ------------------------------------------------------------------ reconcile

    async def _reconcile_forever(self) -> None:
        while not self._stopping:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling the gateways failed; trying again")
            await asyncio.sleep(RECONCILE_S)

    async def reconcile(self) -> None:
        """One pass: gateways on every live node, none on a dead one (module docstring)."""
        async with self._lock:
            if self._stopping:
                return
            nodes = {n["NodeID"]: n for n in ray_nodes() if n.get("Alive")}
            changed = await self._drop_lost(nodes)
            wanted = [
                (node_id, info)
                for node_id, info in nodes.items()
                if node_id not in self.gateways and wants_gateway(info)
            ]
            started = await asyncio.gather(*(self._place(n, info) for n, info in wanted))
            changed |= any(started)
            if changed:
                await self._publish_peers()
            await self._keep_locals(self._config(self.text))

    async def _drop_lost(self, nodes: dict[str, Any]) -> bool:
        async def alive(gateway: _Gateway) -> bool:
            if gateway.node_id not in nodes:
                return False
            try:
                await asyncio.wait_for(gateway.handle.describe.remote(), PING_TIMEOUT_S)
            except (TimeoutError, ray.exceptions.RayError):
                return False
            return True

        gateways = list(self.gateways.values())
        answers = await asyncio.gather(*(alive(g) for g in gateways))
        lost = [g for g, ok in zip(gateways, answers, strict=True) if not ok]
        for gateway in lost:
            log.warning("the gateway of node %s is gone", gateway.node_id)
            del self.gateways[gateway.node_id]
            with contextlib.suppress(Exception):
                ray.kill(gateway.handle)
        return bool(lost)

    async def _place(self, node_id: str, info: dict[str, Any]) -> bool:
        """Start (or adopt) the gateway of ``node_id``; True once it serves."""
        bind = str((info.get("Labels") or {}).get(BIND_LABEL) or self.default_bind)
        handle: Any = (
            ray.remote(RayGateway)
            .options(
                name=gateway_name(node_id),
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            )
            .remote(self.namespace, node_id, self.source, str(self.base_dir))
        )
        try:
            answer = await asyncio.wait_for(
                handle.start.remote(self.text, self.generation, bind, self.spec(), self.access),
                START_TIMEOUT_S,
            )
        except (TimeoutError, ray.exceptions.RayError) as error:
            answer = _refusal(500, f"the gateway did not start: {error!r}")
        if not answer.get("ok"):
            message = str(answer.get("message"))
            if self.failures.get(node_id) != message:
                log.error("no gateway on node %s: %s", node_id, message)
            self.failures[node_id] = message
            with contextlib.suppress(Exception):
                ray.kill(handle)
            return False
        self.failures.pop(node_id, None)
        gateway = _Gateway(node_id, handle, str(answer["bind"]), int(answer["generation"]))
        if gateway.generation != self.generation:  # adopted after a restart, behind
            caught_up = await self._call(gateway, "apply", self.text, self.access)
            if caught_up.get("ok"):
                gateway.generation = self.generation
                gateway.handle.mark.remote(self.generation)
        self.gateways[node_id] = gateway
        log.info("gateway on node %s serves %s", node_id, gateway.bind)
        return True

    def spec(self) -> SingletonSpec:
        """What a gateway needs to make this manager (or the authority) again."""
        return SingletonSpec(
            namespace=self.namespace,
            source=self.source,
            base_dir=str(self.base_dir),
            initial_text=self.text,
            default_bind=self.default_bind,
            grace_s=self.grace_s,
        )

    async def _publish_peers(self) -> None:
        # On the wall clock's scale, so that a restarted manager's tables are newer still.
        self.version = max(self.version + 1, time.time_ns())
        peers = {node: g.handle for node, g in self.gateways.items()}
        await asyncio.gather(
            *(g.handle.set_peers.remote(self.version, peers) for g in self.gateways.values()),
            return_exceptions=True,
        )

    # ------------------------------------------------------------------ local replicas

    def _config(self, text: str) -> Config:
        return parse_config(text, self.source, base_dir=self.base_dir)

    @staticmethod
    def _wanted_locals(config: Config) -> dict[str, tuple[Deployment, int]]:
        return {
            local_replica_name(d, i): (d, i)
            for d in config.deployments
            if not d.is_remote
            for i in range(d.replicas)
        }

    async def _keep_locals(self, config: Config) -> None:
        """Every local replica of ``config`` running (placed again when lost), no other."""
        wanted = self._wanted_locals(config)
        for name in [n for n in self.locals if n not in wanted]:
            await self._retire(self.locals.pop(name))
        alive = await asyncio.gather(*(self._alive(local) for local in self.locals.values()))
        for local, ok in zip(list(self.locals.values()), alive, strict=True):
            if not ok:
                log.warning("local replica %s is gone; placing it again", local.name)
                del self.locals[local.name]
                with contextlib.suppress(Exception):
                    ray.kill(local.handle)
        missing = [(n, d, i) for n, (d, i) in wanted.items() if n not in self.locals]
        await asyncio.gather(*(self._start_local(n, d, i, self.text) for n, d, i in missing))

    async def _alive(self, local: _Local) -> bool:
        try:
            await asyncio.wait_for(local.handle.describe.remote(), PING_TIMEOUT_S)
        except (TimeoutError, ray.exceptions.RayError):
            return False
        return True

    async def _start_local(
        self, name: str, deployment: Deployment, index: int, text: str
    ) -> str | None:
        """Start (or adopt) one local replica; None once it serves, else why not."""
        handle: Any = (
            ray.remote(RayLocalReplica)
            .options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                num_gpus=gpus_needed(deployment),
                max_restarts=0,
            )
            .remote(self.source, str(self.base_dir))
        )
        try:
            answer = await asyncio.wait_for(
                handle.start.remote(text, deployment.name, index), START_TIMEOUT_S
            )
        except (TimeoutError, ray.exceptions.RayError) as error:
            answer = _refusal(503, f"the replica did not start: {error!r}")
        if not answer.get("ok"):
            message = f"deployment {deployment.name!r} replica {index}: {answer.get('message')}"
            if self.local_failures.get(name) != message:
                log.error("%s", message)
            self.local_failures[name] = message
            with contextlib.suppress(Exception):
                ray.kill(handle)
            return message
        self.local_failures.pop(name, None)
        self.locals[name] = _Local(name, handle, str(answer["node"]))
        return None

    async def _retire(self, local: _Local) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(local.handle.stop.remote(self.grace_s), self.grace_s + 5)
        await close_actor(local.handle)

    # ------------------------------------------------------------------ coordination

    async def coordinate(self, message: dict[str, Any]) -> dict[str, Any]:
        """What a gateway or the driver asks: ``apply`` (``"reload": true`` for the file
        read again by the driver), ``reload``, ``status``."""
        match message.get("op"):
            case "apply":
                text = message.get("toml")
                if not isinstance(text, str):
                    return _refusal(400, "toml must be a string")
                # The driver's SIGHUP sends the file it read as a reload.
                return await self.apply(text, reload=message.get("reload") is True)
            case "reload":
                return await self.reload()
            case "status":
                return {"ok": True, **(await self.status())}
        return _refusal(400, f"unknown op {message.get('op')!r}")

    async def reload(self) -> dict[str, Any]:
        """Read the config file again where the manager runs, and apply it."""
        try:
            text = await asyncio.to_thread(Path(self.source).read_text, encoding="utf-8")
        except OSError as error:
            return _refusal(
                409,
                f"cannot read {self.source} where the deployment manager runs ({error.strerror});"
                " send SIGHUP to `rakka serve`, or POST the config to /admin/deployments",
            )
        return await self.apply(text, reload=True)

    async def apply(self, text: str, *, reload: bool = False) -> dict[str, Any]:
        """Apply a config (TOML text) on every gateway, all or nothing; a ``reload`` (the
        file read again) also says who may call them (see the module)."""
        access = text if reload else None
        try:
            parse_config(text, self.source, base_dir=self.base_dir)
        except ConfigError as error:
            return _refusal(400, f"the config was rejected, nothing changed: {error}")
        async with self._lock:
            config = self._config(text)
            new = {n: w for n, w in self._wanted_locals(config).items() if n not in self.locals}
            problems = await asyncio.gather(
                *(self._start_local(n, d, i, text) for n, (d, i) in new.items())
            )
            refused = next((p for p in problems if p is not None), None)
            if refused is not None:
                for name in new:
                    if name in self.locals:
                        await self._retire(self.locals.pop(name))
                return _refusal(400, f"the config was rejected, nothing changed: {refused}")
            done: list[_Gateway] = []
            report: Any = None
            for gateway in list(self.gateways.values()):
                answer = await self._call(gateway, "apply", text, access)
                if answer.get("ok"):
                    done.append(gateway)
                    report = answer.get("applied")
                    continue
                for taken in done:
                    await self._call(taken, "revert")
                for name in new:
                    if name in self.locals:
                        await self._retire(self.locals.pop(name))
                return _refusal(
                    int(answer.get("status", 500)),
                    f"node {gateway.node_id}: {answer.get('message')}",
                )
            self.text = text
            self.generation += 1
            if access is not None:
                self.access = access
            self._persist()
            await self._keep_locals(config)  # the replicas of the old config retire
            for gateway in done:
                gateway.generation = self.generation
                gateway.handle.mark.remote(self.generation)
        return {"ok": True, "applied": report, "generation": self.generation}

    async def _call(self, gateway: _Gateway, method: str, *args: Any) -> dict[str, Any]:
        try:
            answer = await asyncio.wait_for(
                getattr(gateway.handle, method).remote(*args), APPLY_TIMEOUT_S
            )
        except (TimeoutError, ray.exceptions.RayError) as error:
            return _refusal(503, f"the gateway did not answer: {error!r}")
        return answer if isinstance(answer, dict) else _refusal(502, "the gateway answered garbage")

    async def status(self) -> dict[str, Any]:
        """Nodes, gateways and where the singletons run: the cluster as the manager sees it."""
        authority: str | None = None
        with contextlib.suppress(TimeoutError, ValueError, ray.exceptions.RayError):
            handle = ray.get_actor(AUTHORITY_NAME, namespace=self.namespace)
            authority = str(await asyncio.wait_for(handle.where.remote(), PING_TIMEOUT_S))
        nodes = []
        for node in ray_nodes():
            node_id = node["NodeID"]
            gateway = self.gateways.get(node_id)
            nodes.append(
                {
                    "node": node_id,
                    "address": node.get("NodeManagerAddress"),
                    "alive": bool(node.get("Alive")),
                    "gateway": None if gateway is None else gateway.bind,
                    "config_generation": None if gateway is None else gateway.generation,
                    "problem": self.failures.get(node_id),
                }
            )
        local_replicas: list[dict[str, str | None]] = [
            {"replica": name, "node": local.node} for name, local in sorted(self.locals.items())
        ]
        local_replicas += [
            {"replica": name, "node": None, "problem": problem}
            for name, problem in sorted(self.local_failures.items())
        ]
        return {
            "nodes": nodes,
            "local_replicas": local_replicas,
            "singletons": {
                "deployment_manager": ray.get_runtime_context().get_node_id(),
                "limit_authority": authority,
                "peer_table_version": self.version,
            },
            "generation": self.generation,
        }

    def where(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def close(self) -> None:
        """End this actor's process the orderly way (after :meth:`shutdown`)."""
        self._stopping = True
        self._loop_task.cancel()
        exit_this_actor()

    async def shutdown(self, grace_s: float) -> None:
        """Stop every gateway (each drains within ``grace_s``), then stop reconciling."""
        self._stopping = True
        async with self._lock:
            gateways = list(self.gateways.values())
            await asyncio.gather(
                *(asyncio.wait_for(g.handle.stop.remote(grace_s), grace_s + 15) for g in gateways),
                return_exceptions=True,
            )
            await asyncio.gather(*(close_actor(g.handle) for g in gateways), return_exceptions=True)
            self.gateways.clear()
            await asyncio.gather(
                *(self._retire(local) for local in self.locals.values()), return_exceptions=True
            )
            self.locals.clear()
        for name in ("config", "generation", "limits", "access"):
            kv_delete(self.namespace, name)
