"""The admin API: operate the deployments of a running gateway, under ``/admin/``.

Every route needs ``Authorization: Bearer <cluster.admin_api_key>``, compared in constant
time. With no admin key configured the admin API is closed: every route answers 401, so
none is reachable by accident. Errors are the gateway's OpenAI-style JSON bodies.

==========  ==========================================  ===================================
method      path                                        does
==========  ==========================================  ===================================
GET         /admin/status                               deployments, circuits, limits, spend
GET         /admin/deployments                          every deployment and its replicas
POST        /admin/deployments                          apply a whole config (TOML body)
DELETE      /admin/deployments/{name}                   drain and remove
POST        /admin/deployments/{name}/scale             ``{"replicas": n}``, n in 1..256
POST        /admin/deployments/{name}/rebuild_session   rotate credentials, drop nothing
POST        /admin/deployments/{name}/drain             stop taking requests, finish running
POST        /admin/deployments/{name}/circuit           ``{"state": "open"|"closed",
                                                        "duration_s": d}``, d in (0, 86400]
GET         /admin/circuits                             every circuit breaker's state
GET         /admin/ratelimits                           every limiter's use
GET         /admin/costs?window_s=86400                 spend per deployment and model
POST        /admin/reload                               apply the config file again
==========  ==========================================  ===================================

A config that fails to load or apply is rejected whole: 400 (``invalid_request_error``,
its ``param`` the first issue's field) naming every issue with its line and field, a
deployment that did not start among them (a
secret that is not set, say), or 409 when no node can place it; the running deployments
stay as they were, serving — their limits, budgets and circuits too. ``POST /admin/reload``
without a config file is 409. A reload reads the client and admin keys again; a config
posted to ``POST /admin/deployments`` changes the deployments alone, never who may call
the gateway (see :mod:`~rakka_inference.runtime.topology`).

Every number the API takes is bounded, and past its bound is a 400 naming it (``param``):
``replicas`` 1 to :data:`~rakka_inference.core.deployment.MAX_REPLICAS` (256), a forced-open
circuit's ``duration_s`` at most :data:`MAX_FORCE_OPEN_S` (one day), the cost report's
``window_s`` at most one day, and a posted config's counts as a file's (``replicas``,
``serving.max_concurrent`` at most :data:`~rakka_inference.core.policies.MAX_CONCURRENT`,
4096); a body is at most 1 MiB.

The API operates an :class:`Operable` — what it needs of a serving topology, no more.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson

from rakka_inference.core.config import load_config
from rakka_inference.core.deployment import MAX_REPLICAS, Config
from rakka_inference.core.errors import (
    BadRequest,
    ClientUnauthorized,
    ConfigError,
    InferenceError,
    InternalError,
    OperationRefused,
    RouteNotFound,
    SecretError,
)
from rakka_inference.core.secrets import Secret
from rakka_inference.engine.budget_book import BudgetBook
from rakka_inference.remote.breaker import BreakerState
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.runtime.asgi import bearer_matches
from rakka_inference.runtime.capabilities import HasCircuit
from rakka_inference.runtime.manager import ApplyReport, DeploymentManager

__all__ = ["MAX_FORCE_OPEN_S", "AdminApi", "Operable", "rejected_field"]

log = logging.getLogger("rakka_inference.admin")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MAX_BODY = 1024 * 1024
_DAY_S = 86_400.0
MAX_FORCE_OPEN_S = _DAY_S
"""The longest an operator may force a circuit open for (then it half-opens as usual)."""


class Operable(Protocol):
    """What the admin API operates (a :class:`~rakka_inference.runtime.topology.Topology`)."""

    @property
    def manager(self) -> DeploymentManager:
        """The deployments: describe, scale, drain, remove, rebuild sessions."""
        ...

    @property
    def services(self) -> RemoteServices:
        """The circuit breakers and rate limiters remote replicas share."""
        ...

    @property
    def budgets(self) -> BudgetBook:
        """Every deployment's cost ledger."""
        ...

    async def apply(self, config: Config) -> ApplyReport:
        """Apply a whole config, all or nothing (ConfigError: nothing changed)."""
        ...

    async def reload(self) -> ApplyReport:
        """Apply the config file again (OperationRefused without one)."""
        ...


class AdminApi:
    """The ``/admin/`` routes over one topology."""

    def __init__(self, topology: Operable, admin_key: Secret | None) -> None:
        self.topology = topology
        self._key: bytes | None = None
        self.use_key(admin_key)

    def use_key(self, admin_key: Secret | None) -> None:
        """Accept ``admin_key`` from now on (None closes the API); one assignment."""
        self._key = None if admin_key is None else admin_key.expose().encode()

    async def handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        """Answer one admin request: (status, JSON body). Raises the typed errors only: an
        operation that fails otherwise (a replica that will not start on a scale-up, say)
        is logged and answered as a JSON 500, never a bare one."""
        try:
            return await self._handle(scope, receive)
        except InferenceError:
            raise
        except Exception as error:
            log.exception("admin %s %s failed", scope["method"], scope["path"])
            raise InternalError(
                f"the admin operation failed: {type(error).__name__} (see the gateway's log)"
            ) from error

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[int, bytes]:
        self.authorize(scope)
        method, parts = scope["method"], scope["path"].strip("/").split("/")[1:]
        body = await _read_body(receive) if method in {"POST", "DELETE"} else b""
        manager = self.topology.manager
        match method, parts:
            case "GET", ["status"]:
                return 200, _json(self._status())
            case "GET", ["deployments"]:
                return 200, _json({"data": [_status(s) for s in manager.describe()]})
            case "POST", ["deployments"]:
                return 200, _json(await self._apply(lambda: self.topology.apply(_config(body))))
            case "DELETE", ["deployments", name]:
                await manager.remove(name)
                return 200, _json({"removed": name})
            case "POST", ["deployments", name, "scale"]:
                replicas = _replicas(body)
                return 200, _json(_status(await manager.scale(name, replicas)))
            case "POST", ["deployments", name, "rebuild_session"]:
                generations = await manager.rebuild_session(name)
                return 200, _json({"deployment": name, "session_generations": generations})
            case "POST", ["deployments", name, "drain"]:
                await manager.drain(name)
                return 200, _json({"drained": name})
            case "POST", ["deployments", name, "circuit"]:
                return 200, _json(self._force_circuit(name, body))
            case "GET", ["circuits"]:
                return 200, _json({"data": self._circuits()})
            case "GET", ["ratelimits"]:
                return 200, _json({"data": self._limits()})
            case "GET", ["costs"]:
                window = _window(scope)
                rows = self.topology.budgets.report(window)
                return 200, _json({"window_s": window, "data": [asdict(r) for r in rows]})
            case "POST", ["reload"]:
                return 200, _json(await self._apply(self.topology.reload))
        raise RouteNotFound(f"Invalid URL ({method} {scope['path']})")

    async def _apply(self, apply: Callable[[], Awaitable[ApplyReport]]) -> dict[str, Any]:
        try:
            report = await apply()
        except (ConfigError, SecretError) as error:
            raise BadRequest(
                f"the config was rejected, nothing changed: {error}", param=rejected_field(error)
            ) from None
        return {"applied": asdict(report)}

    def authorize(self, scope: Scope) -> None:
        """ClientUnauthorized unless ``scope`` carries the admin key (or when closed)."""
        if self._key is None:
            raise ClientUnauthorized(
                "the admin API is closed: set cluster.admin_api_key to open it"
            )
        if not bearer_matches(scope, (self._key,)):
            raise ClientUnauthorized("a valid admin key is required: Authorization: Bearer <key>")

    # ------------------------------------------------------------------ views

    def _status(self) -> dict[str, Any]:
        return {
            "deployments": [_status(s) for s in self.topology.manager.describe()],
            "circuits": self._circuits(),
            "ratelimits": self._limits(),
            "budgets": [
                {**asdict(snapshot), "exceeded": [w.value for w in snapshot.exceeded]}
                for snapshot in self.topology.budgets.snapshot()
            ],
        }

    def _circuits(self) -> list[dict[str, Any]]:
        return [
            {
                "provider": snapshot.key.provider,
                "endpoint": snapshot.key.endpoint,
                "model": snapshot.key.model,
                "state": snapshot.state.value,
                "consecutive_failures": snapshot.consecutive_failures,
                "open_until": snapshot.open_until,
                "cause": snapshot.cause,
            }
            for snapshot in self.topology.services.breakers.snapshots()
        ]

    def _limits(self) -> list[dict[str, Any]]:
        rows = []
        for use in self.topology.services.limiters.utilization():
            row = asdict(use)
            key = row.pop("key")
            row.update(provider=key[0], model=key[2])  # never the key, not even its print
            rows.append(row)
        return rows

    def _force_circuit(self, name: str, body: bytes) -> dict[str, Any]:
        state = _field(body, "state", str)
        duration = _seconds(body, "duration_s", 300.0, MAX_FORCE_OPEN_S)
        breakers = {
            id(b): b
            for engine in self.topology.manager.engines(name)
            if isinstance(engine, HasCircuit) and (b := engine.breaker) is not None
        }
        if not breakers:
            raise OperationRefused(f"deployment {name!r} has no circuit breaker")
        for breaker in breakers.values():
            if state == BreakerState.OPEN.value:
                breaker.force_open(duration)
            elif state == BreakerState.CLOSED.value:
                breaker.force_close()
            else:
                raise BadRequest(f"state must be 'open' or 'closed', not {state!r}", param="state")
        return {"deployment": name, "state": state, "circuits": len(breakers)}


# ---------------------------------------------------------------------- helpers


def _status(status: Any) -> dict[str, Any]:
    view: dict[str, Any] = asdict(status)
    view["state"] = status.state.value
    view["replicas"] = [{**asdict(r), "state": r.state.value} for r in status.replicas]
    return view


def _json(document: Any) -> bytes:
    return orjson.dumps(document)


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise BadRequest(f"an admin request body is at most {_MAX_BODY} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def rejected_field(error: ConfigError | SecretError) -> str | None:
    """The field of the config a refusal names first (``param`` of its 400), if any."""
    issues = error.issues if isinstance(error, ConfigError) else ()
    return issues[0].path if issues else None


def _document(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    return document


def _field(body: bytes, name: str, kind: type[Any]) -> Any:
    value = _document(body).get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{name!r} must be a {kind.__name__}", param=name)
    return value


def _replicas(body: bytes) -> int:
    replicas: int = _field(body, "replicas", int)
    if not 1 <= replicas <= MAX_REPLICAS:
        raise BadRequest(
            f"'replicas' must be from 1 to {MAX_REPLICAS}, not {replicas}", param="replicas"
        )
    return replicas


def _seconds(body: bytes, name: str, default: float, most: float) -> float:
    """A duration field: more than 0 and at most ``most`` seconds (400 naming it else)."""
    value = _document(body).get(name, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value <= most:
        raise BadRequest(
            f"{name!r} must be a number of seconds, more than 0 and at most {most:g}",
            param=name,
        )
    return float(value)


def _window(scope: Scope) -> float:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    raw = query.get("window_s", [str(_DAY_S)])[0]
    try:
        window = float(raw)
    except ValueError:
        raise BadRequest("window_s must be a number of seconds", param="window_s") from None
    if not 0 < window <= _DAY_S:
        raise BadRequest("window_s must be within one day (86400 s)", param="window_s")
    return window


def _config(body: bytes) -> Config:
    """A config sent as TOML text; its issues name the line and field, as from a file."""
    if not body.strip():
        raise BadRequest("send the whole config as TOML in the body")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "admin-apply.toml"
        path.write_bytes(body)
        return load_config(path)
