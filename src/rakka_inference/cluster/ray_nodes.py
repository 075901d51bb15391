"""Ray's node table as the cluster reads it: which nodes get a gateway, where the
singletons start, the labels that steer both, and the KV store the singletons keep their
state in."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import ray
from ray.experimental import internal_kv

__all__ = [
    "BIND_LABEL",
    "EGRESS_LABEL",
    "GATEWAY_LABEL",
    "PING_TIMEOUT_S",
    "SINGLETON_LABEL",
    "close_actor",
    "kv_delete",
    "kv_get",
    "kv_put",
    "ray_nodes",
    "singleton_node",
    "wants_gateway",
]

PING_TIMEOUT_S = 2.0

BIND_LABEL = "rakka-bind"
"""A node label: the ``host:port`` its gateway serves, over ``[cluster].bind``."""
GATEWAY_LABEL = "rakka-gateway"
"""A node label: ``false`` keeps a gateway off the node."""
EGRESS_LABEL = "rakka-egress"
"""A node label: ``false`` for a node that cannot reach the providers. A gateway serves
remote replicas of its own, so such a node gets no gateway either."""
SINGLETON_LABEL = "rakka-singletons"
"""A node label: ``true`` where the singletons should start (see :func:`singleton_node`)."""


def ray_nodes() -> list[dict[str, Any]]:
    """Ray's node table: one dict per node ever seen (``NodeID``, ``Alive``, ``Labels``...)."""
    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return nodes


def singleton_node() -> str | None:
    """Where the singletons should start: a live node labelled ``rakka-singletons=true``,
    else a live node other than the head (whose loss takes Ray's control store with it
    anyway, so the singletons there would have nowhere to come back), else anywhere. Only a
    preference (soft affinity): a singleton restarted after its node died goes to any node.
    """
    live = [n for n in ray_nodes() if n.get("Alive")]
    labelled = [n for n in live if (n.get("Labels") or {}).get(SINGLETON_LABEL) == "true"]
    workers = [n for n in live if "node:__internal_head__" not in (n.get("Resources") or {})]
    chosen = labelled or workers
    return str(sorted(n["NodeID"] for n in chosen)[0]) if chosen else None


def wants_gateway(node: dict[str, Any]) -> bool:
    """Whether the node (a row of :func:`ray_nodes`) should run a gateway: not when it is
    labelled ``rakka-gateway=false`` or ``rakka-egress=false``."""
    labels = node.get("Labels") or {}
    return all(str(labels.get(label, "true")).lower() != "false" for label in _NO_GATEWAY)


_NO_GATEWAY = (GATEWAY_LABEL, EGRESS_LABEL)


def _kv_key(namespace: str, name: str) -> str:
    return f"rakka/{namespace}/{name}"


def kv_get(namespace: str, name: str) -> bytes | None:
    value = internal_kv._internal_kv_get(_kv_key(namespace, name))
    return value if isinstance(value, bytes) else None


def kv_put(namespace: str, name: str, value: bytes) -> None:
    internal_kv._internal_kv_put(_kv_key(namespace, name), value, overwrite=True)


def kv_delete(namespace: str, name: str) -> None:
    with contextlib.suppress(Exception):
        internal_kv._internal_kv_del(_kv_key(namespace, name))


async def close_actor(handle: Any) -> None:
    """End an actor the orderly way (its ``close``), or kill it if that does not work."""
    try:
        await asyncio.wait_for(handle.close.remote(), PING_TIMEOUT_S)
    except ray.exceptions.ActorDiedError:
        return  # it exited, as asked
    except (TimeoutError, ray.exceptions.RayError):
        pass
    with contextlib.suppress(Exception):
        ray.kill(handle)
