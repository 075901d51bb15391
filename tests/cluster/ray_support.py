"""A real multi-node Ray cluster on this machine for the cluster tests, and helpers.

``ray.cluster_utils.Cluster`` starts a head and three more nodes (each its own raylet and
workers), every one labelled with the port its gateway binds (``rakka-bind``), with health
checks tuned so a killed node is seen within about two seconds. Ray's environment is set
first: no cluster-address rewriting, no usage stats, a short temporary directory of its own.
The key the deployments read (``from_env``) is in the environment before the nodes start,
so every node's workers have it.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

# Before Ray is imported: it reads these once. Without the first, 127.0.0.1 would be
# rewritten to this machine's routable address.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rr", dir="/tmp"))

ray = pytest.importorskip("ray")

from ray.cluster_utils import Cluster  # noqa: E402
from serving_support import admin as admin_client  # noqa: E402
from serving_support import chat, chat_deployment, free_port  # noqa: E402

from rakka_inference.cluster.ray_driver import RayCluster  # noqa: E402
from rakka_inference.core.config import load_config  # noqa: E402

KEY_ENV = "RAKKA_RAY_TEST_KEY"
ADMIN_ENV = "RAKKA_RAY_TEST_ADMIN"
ADMIN = "ray-admin-key"
NODES = 4
HEALTH = {
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@dataclass
class LocalCluster:
    cluster: Any
    ports: list[int]
    nodes: list[Any] = field(default_factory=list)
    """The Ray node handles, head first, in the order of ``ports``."""

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]


def start_local_cluster(nodes: int = NODES, gpus: tuple[int, ...] = ()) -> LocalCluster:
    """``nodes`` nodes, the head first; node ``i`` has ``gpus[i]`` (fake) GPUs."""
    os.environ[KEY_ENV] = "sk-ray-test"
    os.environ[ADMIN_ENV] = ADMIN
    ports = [free_port() for _ in range(nodes)]
    counts = [gpus[i] if i < len(gpus) else 0 for i in range(nodes)]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "num_gpus": counts[0],
            "labels": {"rakka-bind": f"127.0.0.1:{ports[0]}"},
            "_system_config": HEALTH,
            "include_dashboard": False,
        },
    )
    handles = [cluster.head_node]
    handles += [
        cluster.add_node(num_cpus=1, num_gpus=count, labels={"rakka-bind": f"127.0.0.1:{port}"})
        for port, count in zip(ports[1:], counts[1:], strict=True)
    ]
    cluster.wait_for_nodes()
    assert cluster.address.startswith("127.0.0.1:"), cluster.address
    ray.init(address=cluster.address, log_to_driver=False)
    return LocalCluster(cluster, ports, handles)


def stop_local_cluster(local: LocalCluster) -> None:
    ray.shutdown()
    local.cluster.shutdown()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalCluster]:
    local = start_local_cluster()
    try:
        yield local
    finally:
        stop_local_cluster(local)


def cluster_config(endpoint: str, *, rpm: int, strict: bool = False, extra: str = "") -> str:
    cluster = f"""
[cluster]
name = "t{uuid.uuid4().hex[:10]}"
backend = "ray"
admin_api_key = {{ from_env = "{ADMIN_ENV}" }}
"""
    return cluster + chat_deployment(endpoint, key_env=KEY_ENV, rpm=rpm, strict=strict) + extra


async def bring_up(tmp_path: Path, local: LocalCluster, text: str) -> RayCluster:
    """The topology of ``text`` on ``local``, serving on every node."""
    path = tmp_path / "cluster.toml"
    path.write_text(
        text.replace('backend = "ray"', f'backend = "ray"\nray_address = "{local.address}"')
    )
    topology = RayCluster(path, load_config(path), grace_s=2.0)
    await asyncio.to_thread(topology.start)
    await asyncio.to_thread(topology.wait_ready)
    return topology


async def take_down(topology: RayCluster) -> None:
    await asyncio.to_thread(topology.stop)


async def load(urls: list[str], rounds: int, per_gateway: int, pause: float) -> list[int]:
    """``per_gateway`` requests at once to every gateway, ``rounds`` times."""
    statuses: list[int] = []
    for _ in range(rounds):
        statuses += await asyncio.gather(*(chat(u) for u in urls for _ in range(per_gateway)))
        await asyncio.sleep(pause)
    return statuses


def admin(url: str) -> httpx.AsyncClient:
    return admin_client(url, ADMIN)
