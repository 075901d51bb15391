"""``rakka serve`` with ``[cluster] backend = "ray"``: bring the topology up on a Ray cluster
and stay in the foreground, showing its state.

Ray is started the ordinary way (``ray start --head`` on one machine, ``ray start
--address=...`` on the others); this driver joins it (``[cluster].ray_address``, in the
namespace ``[cluster].name``), gets or creates the two singletons
(:mod:`rakka_inference.cluster.ray_manager`) and applies the config file through the
deployment manager, which places a gateway on every node. It prints one line when the
cluster serves, one per node, then a line for every change it sees (a node lost or joined,
a gateway placed, a singleton moved). ``SIGHUP`` applies the file again (on every gateway
or on none); ``SIGTERM`` or ``SIGINT`` stops every gateway (each drains within the grace
period), removes the singletons and leaves Ray running.

Exit status: 0 when stopped, 1 when the cluster could not be brought up (no Ray at the
address, a config a node refuses), as the CLI documents.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from rakka_inference.cluster.ray_nodes import ray_nodes, wants_gateway
from rakka_inference.cluster.ray_singletons import SingletonSpec, ensure_singletons
from rakka_inference.core.deployment import Config

__all__ = ["RayCluster", "serve_ray"]

log = logging.getLogger("rakka_inference.cluster.ray_driver")

READY_TIMEOUT_S = 120.0
SINGLETON_BACK_S = 30.0
"""How long a question to the deployment manager waits for it to be made again."""
WATCH_S = 1.0


class RayCluster:
    """The driver's handles on a running cluster topology."""

    def __init__(self, config_file: Path, config: Config, *, grace_s: float) -> None:
        self.config_file = config_file
        self.config = config
        self.grace_s = grace_s
        self.namespace = config.cluster.name
        self.manager: Any = None
        self.authority: Any = None
        self.spec: SingletonSpec | None = None

    def start(self) -> None:
        """Join Ray, get or create the singletons, apply the config file."""
        if not ray.is_initialized():
            ray.init(
                address=self.config.cluster.ray_address,
                namespace=self.namespace,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        text = self.config_file.read_text(encoding="utf-8")
        self.spec = SingletonSpec(
            namespace=self.namespace,
            source=str(self.config_file.absolute()),
            base_dir=str(self.config_file.absolute().parent),
            initial_text=text,
            default_bind=self.config.cluster.bind,
            grace_s=self.grace_s,
        )
        self.keep()
        # A manager left from an earlier run keeps its own config: this file wins.
        answer = self.coordinate({"op": "apply", "toml": text})
        if not answer.get("ok"):
            raise RuntimeError(str(answer.get("message")))

    def keep(self) -> None:
        """Make either singleton again if it is gone (see :mod:`ray_singletons`)."""
        assert self.spec is not None
        self.authority, self.manager = ensure_singletons(self.spec)

    def coordinate(self, message: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
        """Ask the deployment manager. While it is being made again (its node was lost), the
        question waits for the new one, up to :data:`SINGLETON_BACK_S`."""
        give_up = time.monotonic() + SINGLETON_BACK_S
        while True:
            self.keep()  # the handles of the singletons as they are now (one may have moved)
            try:
                answer = ray.get(self.manager.coordinate.remote(message), timeout=timeout)
            except (
                ray.exceptions.ActorDiedError,
                ray.exceptions.ActorUnavailableError,
                ray.exceptions.ActorUnschedulableError,
            ):
                if time.monotonic() > give_up:
                    raise
                time.sleep(0.2)
                continue
            return answer if isinstance(answer, dict) else {"ok": False, "message": "garbage"}

    def status(self) -> dict[str, Any]:
        return self.coordinate({"op": "status"}, timeout=30.0)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Wait for a gateway on every live node that should have one; the status.
        RuntimeError naming the node when one cannot start."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            wanted = [n for n in status["nodes"] if n["alive"] and _wants_gateway(n["node"])]
            problems = [n for n in wanted if n["problem"]]
            if problems:
                lines = "; ".join(f"node {n['node']}: {n['problem']}" for n in problems)
                raise RuntimeError(lines)
            if wanted and all(n["gateway"] for n in wanted):
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"no gateway on every node within {timeout:g} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every gateway (draining), then the singletons. Ray keeps running."""
        self.keep()
        try:
            ray.get(self.manager.shutdown.remote(self.grace_s), timeout=self.grace_s + 30)
        finally:
            for handle in (self.manager, self.authority):
                if handle is not None:
                    _close(handle)


def _close(handle: Any) -> None:
    """End a singleton the orderly way (its ``close``), or kill it."""
    try:
        ray.get(handle.close.remote(), timeout=5)
    except ray.exceptions.ActorDiedError:
        return  # it exited, as asked
    except (ray.exceptions.RayError, TimeoutError):
        pass
    ray.kill(handle)


def _wants_gateway(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and wants_gateway(n) for n in ray_nodes())


def describe(status: dict[str, Any]) -> dict[str, str]:
    """One line per node: where its gateway serves, or why it has none."""
    lines = {}
    manager = status["singletons"]["deployment_manager"]
    for node in status["nodes"]:
        if not node["alive"]:
            lines[node["node"]] = "down"
            continue
        where = f"gateway {node['gateway']}" if node["gateway"] else "no gateway"
        if node["problem"]:
            where += f" ({node['problem']})"
        if node["node"] == manager:
            where += ", deployment manager"
        lines[node["node"]] = where
    return lines


def serve_ray(
    config_file: str,
    config: Config,
    *,
    grace_s: float,
    announce: Callable[[str], None] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT (see the module docstring); the exit status."""
    say = announce or (lambda line: print(line, flush=True))
    cluster = RayCluster(Path(config_file), config, grace_s=grace_s)
    stop = threading.Event()
    reload = threading.Event()
    try:
        cluster.start()
        # After joining Ray, whose own SIGTERM handler would exit at once without stopping.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGHUP, lambda *_: reload.set())
        status = cluster.wait_ready()
    except Exception as error:  # no Ray there, a node that refuses the config, ...
        print(f"rakka: the cluster did not start: {error}", file=sys.stderr)
        if cluster.manager is not None:
            cluster.stop()
        return 1
    shown = describe(status)
    say(f"rakka: cluster {config.cluster.name!r} serving on {len(shown)} node(s)")
    for node, line in sorted(shown.items()):
        say(f"  node {node[:12]}: {line}")
    try:
        while not stop.wait(WATCH_S):
            if reload.is_set():
                reload.clear()
                _reload(cluster, say)
            try:
                now = describe(cluster.status())
            except Exception as error:  # the manager restarting: try again next tick
                log.warning("the deployment manager did not answer: %r", error)
                continue
            for node, line in sorted(now.items()):
                if shown.get(node) != line:
                    say(f"  node {node[:12]}: {line}")
            shown = now
    finally:
        say("rakka: stopping the cluster's gateways")
        cluster.stop()
    return 0


def _reload(cluster: RayCluster, say: Callable[[str], None]) -> None:
    try:
        text = cluster.config_file.read_text(encoding="utf-8")
    except OSError as error:
        say(f"rakka: reload rejected, the running config stays: {error.strerror}")
        return
    # Read here, where the file is: a reload's keys are read again on every gateway.
    answer = cluster.coordinate({"op": "apply", "toml": text, "reload": True})
    if answer.get("ok"):
        say(f"rakka: reloaded on every gateway (generation {answer.get('generation')})")
    else:
        say(f"rakka: reload rejected, the running config stays: {answer.get('message')}")
