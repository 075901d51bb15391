"""One worker of a node: ``python -m rakka_inference.apps.worker``, started by the parent.

Everything it needs comes from the parent in the environment: the node's directory
(``RAKKA_NODE_DIR``), its name and the number of workers, the listening socket's file
descriptor (``RAKKA_LISTEN_FD``), the grace period, the node's config (a file the parent
wrote, with the original file's name and directory for messages and relative paths; no file
means the sandbox), and the file whose ``[cluster]`` says who may call the node (the one the
parent last read: its keys, never those of a config posted to the admin API). It serves
the shared port and its own control socket with the same
:class:`~rakka_inference.apps.serve.ServeApp` as a single process, with a
:class:`~rakka_inference.cluster.member.NodeMember`. It ends when the parent does (the
kernel sends it SIGTERM), and leaves SIGHUP to the parent, which reloads the whole node.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from rakka_inference.apps.serve import ServeApp, run_server
from rakka_inference.cluster.member import NodeMember, worker_share
from rakka_inference.core.config import parse_config
from rakka_inference.core.errors import ConfigError
from rakka_inference.runtime.topology import with_access_of

__all__ = ["main"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Have the kernel send SIGTERM when the parent dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    node_dir = Path(env["RAKKA_NODE_DIR"])
    workers = int(env["RAKKA_WORKERS"])
    source = env.get("RAKKA_CONFIG_SOURCE", "<node>")
    base_dir = Path(env.get("RAKKA_CONFIG_BASE_DIR", "."))
    config = None
    if "RAKKA_CONFIG_FILE" in env:
        text = Path(env["RAKKA_CONFIG_FILE"]).read_text(encoding="utf-8")
        try:
            config = worker_share(parse_config(text, source, base_dir=base_dir), workers)
            if "RAKKA_ACCESS_FILE" in env:
                # Who may call the node: the file last read, not a config posted since.
                access = Path(env["RAKKA_ACCESS_FILE"]).read_text(encoding="utf-8")
                cluster = parse_config(access, source, base_dir=base_dir).cluster
                config = with_access_of(config, cluster)
        except ConfigError as error:
            return _rejected(source, error)
    listener = socket.socket(fileno=int(env["RAKKA_LISTEN_FD"]))
    host, port = listener.getsockname()[:2]
    member = NodeMember(
        node_dir=node_dir,
        worker=env["RAKKA_WORKER"],
        workers=workers,
        config_source=source,
        base_dir=base_dir,
    )
    app = ServeApp(
        config,
        bind=f"{host}:{port}",
        member=member,
        generation=int(env.get("RAKKA_CONFIG_GENERATION", "0")),
    )
    try:
        return run_server(
            app,
            host=host,
            port=port,
            grace_s=float(env.get("RAKKA_GRACE_S", "30")),
            sockets=[listener, member.bind_control()],
        )
    except ConfigError as error:
        return _rejected(source, error)


def _rejected(source: str, error: ConfigError) -> int:
    print(f"{source}: configuration rejected", file=sys.stderr)
    for issue in error.issues:
        print(f"  {issue}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
