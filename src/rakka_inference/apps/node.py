"""``rakka serve`` with more than one worker: bind the port, then supervise the workers.

The parent binds ``host:port`` once (a port in use is one clear line and exit status 1,
before any worker starts) and runs the
:class:`~rakka_inference.cluster.supervisor.NodeSupervisor`, which starts each worker as
``python -m rakka_inference.apps.worker`` with the listening socket handed down.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
from pathlib import Path

from rakka_inference.cluster.supervisor import ConfigSource, NodeSupervisor

__all__ = ["WORKER_COMMAND", "bind_listener", "serve_node"]

WORKER_COMMAND = (sys.executable, "-m", "rakka_inference.apps.worker")
_BACKLOG = 2048


def bind_listener(host: str, port: int) -> socket.socket:
    """The node's listening socket, inheritable so the workers can be handed it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(_BACKLOG)
    except BaseException:
        listener.close()
        raise
    listener.set_inheritable(True)
    return listener


def serve_node(
    config_file: str | None,
    *,
    host: str,
    port: int,
    grace_s: float,
    workers: int,
    notice: str | None = None,
) -> int:
    """Serve ``workers`` processes on ``host:port`` until SIGTERM; the exit status.
    ``notice``: a line printed after the node's "serving" one."""
    try:
        listener = bind_listener(host, port)
    except OSError as error:
        reason = "the port is in use" if error.errno == errno.EADDRINUSE else error.strerror
        print(f"rakka: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 1
    source = ConfigSource(None if config_file is None else Path(config_file))
    supervisor = NodeSupervisor(
        workers=workers,
        listener=listener,
        command=WORKER_COMMAND,
        source=source,
        grace_s=grace_s,
        announce=lambda line: _announce(line, notice),
    )
    try:
        return asyncio.run(supervisor.run())
    finally:
        listener.close()


def _announce(line: str, notice: str | None) -> None:
    # One write: the workers print to the same terminal, and must not split a line.
    text = line if notice is None else f"{line}\n{notice}"
    print(f"{text}\n", end="", flush=True)
