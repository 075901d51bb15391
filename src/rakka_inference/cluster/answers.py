"""Answers for a whole group of gateways, whichever one a connection reached.

A node of many workers and a cluster on Ray both run several gateways, each its own
topology. ``GET /metrics`` and the ``/admin/`` routes must answer for the group, never for
the one gateway that happened to take the connection: :class:`GroupAnswers` asks every
member over a :class:`GroupLink` (a worker's sibling control sockets; the Ray gateway
actors) and merges what they say (:mod:`rakka_inference.cluster.merge`):

- reads (``/metrics``, ``GET /admin/...``) are asked of every member and merged, each row
  and sample marked with its member (``worker="w0"``, or ``node="…"``);
- operations (scale, drain, rotate, circuit, remove) are done on every member; the first
  refusal is the answer, as that member gave it;
- an apply or a reload goes to the group's coordinator (the node's parent, the cluster's
  deployment manager), which applies it on every member or on none.

A request that a member is asked on another's behalf is a *local* one (the link says which:
it came on the worker's control socket, or through the actor call): it is answered by that
member's own topology, never fanned out again.

Each member also answers :meth:`GroupAnswers.apply_local` and
:meth:`GroupAnswers.revert_local`, the two halves of the coordinator's all-or-nothing apply.
A reload's apply carries the text of the file whose ``[cluster]`` says who may call the
gateways (``access``): each member reads those keys before it applies anything, swaps them
in with its deployments, and a revert puts back the keys it had (as they were read, not
read again). An admin apply carries none: the keys stay.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from rakka_inference.cluster.merge import (
    WorkerView,
    merge_costs,
    merge_deployments,
    merge_metrics,
    merge_rows,
    merge_status,
)
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
from rakka_inference.runtime.admin import AdminApi, rejected_field
from rakka_inference.runtime.asgi import (
    receive_body,
    request_ids,
    send_error,
    send_json,
    send_whole,
)
from rakka_inference.runtime.topology import GatewayAccess

if TYPE_CHECKING:
    from rakka_inference.runtime.topology import Topology

__all__ = ["GroupAdmin", "GroupAnswers", "GroupLink", "Reply"]

log = logging.getLogger("rakka_inference.cluster.answers")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_ADMIN_BODY = 1024 * 1024
FANOUT_TIMEOUT_S = 10.0
OPERATION_TIMEOUT_S = 120.0
_FORWARDED_HEADERS = (b"authorization", b"content-type", b"x-request-id")


class Reply(Protocol):
    """A member's answer to a request asked on another's behalf."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> bytes: ...


class GroupLink(Protocol):
    """How one member reaches the others and the coordinator."""

    label: str
    """What the merged rows call a member: ``worker`` or ``node``."""

    def is_local(self, scope: Scope) -> bool:
        """Whether ``scope`` was asked of this member alone (by another member)."""
        ...

    async def fan_out(
        self,
        method: str,
        target: str,
        *,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> list[tuple[str, Reply | None]]:
        """Ask every member (this one too) as a local request; None for no answer."""
        ...

    async def coordinate(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Ask the coordinator: ``{"op": "apply", "toml"}``, ``{"op": "reload"}`` or
        ``{"op": "status"}``; its answer (``{"ok": ..., ...}``)."""
        ...

    def extra_metrics(self) -> list[str]:
        """This member's own exposition lines (its sync traffic), after its topology's."""
        ...


class GroupAnswers:
    """One member's answers for the group (see the module docstring)."""

    def __init__(
        self,
        link: GroupLink,
        *,
        config_source: str,
        base_dir: Path,
        adapt: Callable[[Config], Config] = lambda config: config,
    ) -> None:
        self.link = link
        self.config_source = config_source
        self.base_dir = base_dir
        self.adapt = adapt
        """What this member makes of a config before applying it (its budget share)."""
        self.topology: Topology | None = None
        self._previous: tuple[Config, GatewayAccess] | None = None

    def attach(self, topology: Topology) -> None:
        """Answer for ``topology``: its admin routes answer for the group from now on."""
        self.topology = topology
        topology.gateway.admin = GroupAdmin(self.link, topology.admin)

    # ------------------------------------------------------------------ ASGI

    def intercepts(self, scope: Scope) -> bool:
        """Whether :meth:`handle` answers ``scope`` (else the gateway does)."""
        if scope["type"] != "http":
            return False
        if scope["path"] == "/metrics":
            return bool(scope["method"] == "GET")
        return self.link.is_local(scope) and str(scope["path"]).startswith("/_node/")

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        ids = request_ids(scope)
        try:
            if scope["path"] == "/metrics":
                if self.link.is_local(scope):  # another member asks for this one's own
                    body = self.own_metrics()
                else:
                    body = await self.group_metrics()
                await send_whole(send, 200, body, ids.header, CONTENT_TYPE.encode())
                return
            body = await receive_body(scope, receive, 64 * 1024 * 1024)
            if scope["path"] == "/_node/apply":
                answer = await self.apply_local(_toml(body), access=_access_toml(body))
            elif scope["path"] == "/_node/revert":
                answer = await self.revert_local()
            else:
                raise BadRequest(f"no node operation {scope['path']!r}")
            await send_json(send, 200, orjson.dumps(answer), ids.header)
        except InferenceError as error:
            await send_error(send, error, ids.header)

    # ------------------------------------------------------------------ metrics

    async def group_metrics(self) -> bytes:
        answers = await self.link.fan_out(
            "GET", "/metrics", headers=(), body=b"", timeout=FANOUT_TIMEOUT_S
        )
        return merge_metrics(
            (
                (name, reply.body.decode("utf-8", "replace"))
                for name, reply in answers
                if reply is not None and reply.status == 200
            ),
            self.link.label,
        ).encode()

    def own_metrics(self) -> bytes:
        """This member's exposition: its topology's series, then the link's own lines."""
        topology = self._running()
        extra = self.link.extra_metrics()
        return topology.metrics.render() + ("\n".join(extra) + "\n" if extra else "").encode()

    # ------------------------------------------------------------------ apply

    async def apply_local(self, text: str, *, access: str | None = None) -> dict[str, Any]:
        """Apply ``text`` on this member, keeping the config it replaces for a revert;
        with ``access`` (a reload), the keys of that config's ``[cluster]`` too."""
        topology = self._running()
        try:
            config = self.adapt(parse_config(text, self.config_source, base_dir=self.base_dir))
            keys = None
            if access is not None:
                cluster = parse_config(access, self.config_source, base_dir=self.base_dir).cluster
                keys = GatewayAccess.read(cluster)
            previous = topology.config, topology.access
            report = await topology.apply(config, access=keys)
        except (ConfigError, SecretError) as error:
            message = f"the config was rejected, nothing changed: {error}"
            return {"ok": False, "status": 400, "message": message, "param": rejected_field(error)}
        self._previous = previous
        return {
            "ok": True,
            "applied": {
                "added": list(report.added),
                "changed": list(report.changed),
                "removed": list(report.removed),
            },
        }

    async def revert_local(self) -> dict[str, Any]:
        """Go back to the config the last :meth:`apply_local` replaced (once)."""
        topology = self._running()
        if self._previous is not None:
            (previous, access), self._previous = self._previous, None
            try:
                await topology.apply(previous, access=access)
            except (ConfigError, SecretError) as error:
                return {"ok": False, "status": 500, "message": str(error)}
        return {"ok": True}

    def _running(self) -> Topology:
        if self.topology is None:
            raise OperationRefused("the gateway is still starting")
        return self.topology


class GroupAdmin:
    """The ``/admin/`` routes for the whole group. Asked locally (by another member), they
    are this member's own (:class:`~rakka_inference.runtime.admin.AdminApi`)."""

    def __init__(self, link: GroupLink, local: AdminApi) -> None:
        self.link = link
        self.local = local

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        if self.link.is_local(scope):
            return await self.local.handle(scope, receive)
        self.local.authorize(scope)
        method, parts = scope["method"], scope["path"].strip("/").split("/")[1:]
        body = await receive_body(scope, receive, MAX_ADMIN_BODY) if method != "GET" else b""
        if method == "POST" and parts in (["reload"], ["deployments"]):
            return await self._through_coordinator(parts, body)
        headers = tuple(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
            if name in _FORWARDED_HEADERS
        )
        query = scope.get("query_string", b"").decode("latin-1")
        target = scope["path"] + (f"?{query}" if query else "")
        timeout = FANOUT_TIMEOUT_S if method == "GET" else OPERATION_TIMEOUT_S
        answers = await self.link.fan_out(
            method, target, headers=headers, body=body, timeout=timeout
        )
        for _name, reply in answers:
            if reply is not None and reply.status != 200:
                return reply.status, reply.body  # the first refusal, as it was given
        views: list[WorkerView] = [
            (name, None if reply is None else orjson.loads(reply.body)) for name, reply in answers
        ]
        if method == "GET":
            return 200, orjson.dumps(await self._merge_view(parts, views))
        first = next((view for _name, view in views if view is not None), None)
        if first is None:
            raise InternalError("no member of the group answered")
        done = [name for name, view in views if view is not None]
        missed = [name for name, view in views if view is None]
        return 200, orjson.dumps({**first, "members": done, "unreachable": missed})

    async def _merge_view(self, parts: list[str], views: list[WorkerView]) -> Any:
        label = self.link.label
        match parts:
            case ["status"]:
                status = merge_status(views, label)
                coordinator = await self.link.coordinate({"op": "status"}, FANOUT_TIMEOUT_S)
                status.update({k: v for k, v in coordinator.items() if k != "ok"})
                return status
            case ["deployments"]:
                return {"data": merge_deployments(views, "data", label)}
            case ["costs"]:
                window = next((v.get("window_s") for _n, v in views if v is not None), None)
                return {"window_s": window, "data": merge_costs(views)}
        return {"data": merge_rows(views, "data", label)}

    async def _through_coordinator(self, parts: list[str], body: bytes) -> tuple[int, bytes]:
        if parts == ["reload"]:
            message: dict[str, Any] = {"op": "reload"}
        else:
            if not body.strip():
                raise BadRequest("send the whole config as TOML in the body")
            message = {"op": "apply", "toml": body.decode("utf-8", "replace")}
        answer = await self.link.coordinate(message, OPERATION_TIMEOUT_S * 2)
        if answer.get("ok"):
            return 200, orjson.dumps({"applied": answer.get("applied")})
        status = int(answer.get("status", 500))
        text = str(answer.get("message", "the config was refused"))
        if status == 400:
            param = answer.get("param")
            raise BadRequest(text, param=param if isinstance(param, str) else None)
        if status == 409:
            raise OperationRefused(text)
        raise InternalError(text)


def _access_toml(body: bytes) -> str | None:
    """The ``access`` text of a ``/_node/apply`` body (checked by :func:`_toml` first)."""
    text = orjson.loads(body).get("access")
    if text is not None and not isinstance(text, str):
        raise BadRequest("access must be a string")
    return text


def _toml(body: bytes) -> str:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    text = document.get("toml") if isinstance(document, dict) else None
    if not isinstance(text, str):
        raise BadRequest("toml must be a string")
    return text
