"""Keeping the cluster's two singletons alive: found by name, made again when gone.

The deployment manager and the strict-limit authority are named, detached Ray actors,
placed with hard node affinity on :func:`~rakka_inference.cluster.ray_nodes.
singleton_node` (Ray's soft affinity may place an actor elsewhere even when the chosen node
is free). Ray restarts one whose process dies on a live node; but an actor pinned to a node
that is lost is dead for Ray, and its name is released. So the driver and every gateway
keep them: once a second each checks both names, and one whose name is gone is made again
on a live node (``get_if_exists``: when several keepers race, one actor is made and the
others get it). A singleton made again starts from what survives in Ray's KV store (the
applied config; the authority's record) and the live gateways, which the manager adopts.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rakka_inference.cluster.ray_authority import RayAuthority
from rakka_inference.cluster.ray_manager import RayManager
from rakka_inference.cluster.ray_nodes import singleton_node
from rakka_inference.cluster.ray_transport import AUTHORITY_NAME, MANAGER_NAME, SingletonSpec

__all__ = ["SingletonSpec", "ensure_singletons"]

log = logging.getLogger("rakka_inference.cluster.ray_singletons")


def _exists(name: str, namespace: str) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def ensure_singletons(spec: SingletonSpec) -> tuple[Any, Any]:
    """The manager's and the authority's handles, each made where it is missing."""
    home = None
    options: dict[str, Any] = {
        "namespace": spec.namespace,
        "lifetime": "detached",
        "get_if_exists": True,
        "max_restarts": -1,
        "num_cpus": 0,
    }
    handles = []
    for name in (AUTHORITY_NAME, MANAGER_NAME):
        handle = _exists(name, spec.namespace)
        if handle is None:
            if home is None:
                home = singleton_node()
                if home is not None:
                    options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                        home, soft=False
                    )
            log.info("making the %s singleton on node %s", name, home)
            if name == AUTHORITY_NAME:
                handle = (
                    ray.remote(RayAuthority).options(name=name, **options).remote(spec.namespace)
                )
            else:
                handle = (
                    ray.remote(RayManager)
                    .options(name=name, max_concurrency=1000, **options)
                    .remote(
                        spec.namespace,
                        source=spec.source,
                        base_dir=spec.base_dir,
                        initial_text=spec.initial_text,
                        default_bind=spec.default_bind,
                        grace_s=spec.grace_s,
                    )
                )
        handles.append(handle)
    return handles[0], handles[1]
