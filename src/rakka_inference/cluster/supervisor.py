"""The parent of a node's workers: one port, N processes, one config, one strict authority.

``rakka serve`` with ``[cluster].workers = N`` (or ``--workers N``) runs this parent. It
binds the port once and hands the listening socket down to N worker processes
(``pass_fds``): the kernel gives each new connection to whichever worker accepts it, and a
worker that dies leaves its queued connections to the others (a per-worker
``SO_REUSEPORT`` socket would take them down with it). The parent serves no request itself.

What the parent does
--------------------
- **Supervises.** A worker that exits while the node is serving is started again: at once
  the first time, then with a doubling back-off (up to 30 s) while it keeps dying within
  10 s of its start. Each worker tells the parent when it serves (``ready``, on the control
  socket) and only then counts as up.
- **Holds the node's config.** The applied config's text is kept here; a worker that
  starts (or starts again) is given that text, so a config applied through the admin API
  outlives the worker that received it. ``SIGHUP``, ``POST /admin/reload`` and
  ``POST /admin/deployments`` on any worker come here, and the parent applies the config to
  every live worker in turn: if one refuses it, the ones that took it go back to the
  previous config, and the refusal is the answer (all or nothing). Applies are serialised.
- **Holds who may call the node.** The client keys, admin key and web origins come from
  the config file's ``[cluster]``, as read at start and at each reload (SIGHUP,
  ``POST /admin/reload``): a reload's apply tells every worker to read them again
  (:meth:`~rakka_inference.cluster.answers.GroupAnswers.apply_local`), a config posted to
  ``POST /admin/deployments`` changes the deployments alone, and a worker that starts again
  takes the keys of the file last read (``access.toml`` in the node's directory), never
  those of a posted config.
- **Is the strict limiter authority.** Keys with ``strict = true`` get leases of permits
  from the parent's :class:`~rakka_inference.remote.strict_lease.LeaseAuthority` on
  ``authority.sock`` (the approximate keys need no one: the workers gossip their spend).
- **Stops everything.** ``SIGTERM``/``SIGINT`` closes the parent's copy of the listening
  socket and sends ``SIGTERM`` to every worker, which drains as a single process does;
  the exit status is the worst of the workers' (3 when one had to cut requests).

The control socket (``node.sock``) speaks one JSON object per line each way:
``{"op": "ready", "worker", "pid", "generation"}``, ``{"op": "apply", "toml"}``,
``{"op": "reload"}`` and ``{"op": "status"}``, each answered with
``{"ok": true, ...}`` or ``{"ok": false, "status": <http status>, "message": ...}``.
Everything lives in a private directory (mode 0700) removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from rakka_inference.cluster.unix_http import UnixHttpError, request
from rakka_inference.core.config import parse_config
from rakka_inference.core.errors import ConfigError
from rakka_inference.remote.strict_lease import LeaseAuthority
from rakka_inference.remote.strict_lease_unix import LeaseServer

__all__ = [
    "ConfigSource",
    "NodeSupervisor",
    "WorkerState",
    "control_path",
    "worker_name",
]

log = logging.getLogger("rakka_inference.cluster.supervisor")

MAX_LINE = 16 * 1024 * 1024
"""The longest control message (a whole config's TOML travels in one)."""
QUICK_DEATH_S = 10.0
MAX_BACKOFF_S = 30.0
APPLY_TIMEOUT_S = 120.0
"""How long one worker may take to apply a config (its replicas start meanwhile)."""


def worker_name(index: int) -> str:
    return f"w{index}"


def control_path(node_dir: Path, name: str) -> Path:
    """Where a worker (or, for ``node``, the parent) answers on the node's directory."""
    return node_dir / f"{name}.sock"


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where the node's config comes from: a file (reloadable), or none (the sandbox)."""

    path: Path | None

    def read(self) -> str:
        assert self.path is not None
        return self.path.read_text(encoding="utf-8")

    @property
    def base_dir(self) -> Path:
        return Path.cwd() if self.path is None else self.path.absolute().parent

    @property
    def name(self) -> str:
        return "<sandbox>" if self.path is None else str(self.path)


@dataclass(slots=True)
class WorkerState:
    name: str
    process: asyncio.subprocess.Process | None = None
    pid: int | None = None
    ready: bool = False
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 0.0
    generation: int = 0
    exit_status: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> dict[str, Any]:
        state = "ready" if self.ready else "starting" if self.process is not None else "down"
        return {
            "worker": self.name,
            "pid": self.pid,
            "state": state,
            "restarts": self.restarts,
            "config_generation": self.generation,
        }


class NodeSupervisor:
    """Runs N workers on one listening socket until stopped; see the module docstring."""

    def __init__(
        self,
        *,
        workers: int,
        listener: socket.socket,
        command: Sequence[str],
        source: ConfigSource,
        env: Mapping[str, str] | None = None,
        grace_s: float = 30.0,
        stop_margin_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.listener = listener
        self.command = tuple(command)
        self.source = source
        self.env = dict(os.environ if env is None else env)
        self.grace_s = grace_s
        self.stop_margin_s = stop_margin_s
        """How long past the grace a worker may take to stop before it is killed."""
        self.clock = clock
        self._announce = announce or (lambda line: print(line, flush=True))
        self.node_dir = Path(tempfile.mkdtemp(prefix="rakka-node-", dir=_runtime_dir()))
        self.workers = [WorkerState(worker_name(i)) for i in range(workers)]
        self.generation = 0
        self._applied: str | None = None
        self._access: str | None = None
        """The text of the file whose ``[cluster]`` says who may call the node."""
        self._stopping = asyncio.Event()
        self._apply_lock = asyncio.Lock()
        self._all_ready = asyncio.Event()
        self._ever_ready = False
        self.start_failed: str | None = None
        """Why the node did not start: a worker exited before any worker served."""
        self._tasks: set[asyncio.Task[None]] = set()
        self.authority = LeaseAuthority(clock)
        self._lease_server = LeaseServer(str(self.node_dir / "authority.sock"), self.authority)
        self._control: asyncio.AbstractServer | None = None

    # ------------------------------------------------------------------ running

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status (the worst of the workers')."""
        loop = asyncio.get_running_loop()
        if self.source.path is not None:
            self._applied = self._access = self.source.read()
        self.generation = 1
        self._write_config()
        self._write_access()
        await self._lease_server.start()
        self._control = await asyncio.start_unix_server(
            self._serve_control, path=str(control_path(self.node_dir, "node")), limit=MAX_LINE
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn_task(self._on_sighup()))
        try:
            for worker in self.workers:
                self._spawn(worker)
            self._spawn_task(self._announce_when_ready())
            await self._stopping.wait()
            status = await self._stop()
            if self.start_failed is not None:
                print(f"rakka: the node did not start: {self.start_failed}", file=sys.stderr)
                return 1
            return status
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._close()

    def stop(self) -> None:
        """Begin the stop (as SIGTERM does)."""
        self._stopping.set()

    async def _announce_when_ready(self) -> None:
        await self._all_ready.wait()
        host, port = self.listener.getsockname()[:2]
        self._announce(
            f"rakka: node serving on http://{host}:{port} with {len(self.workers)} workers"
        )

    def _spawn_task(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, worker: WorkerState) -> None:
        self._spawn_task(self._keep(worker))

    async def _keep(self, worker: WorkerState) -> None:
        """Run ``worker`` and start it again whenever it exits while the node serves."""
        while not self._stopping.is_set():
            if worker.backoff_s:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(worker.backoff_s):
                        await self._stopping.wait()
                if self._stopping.is_set():
                    return
            status = await self._run_once(worker)
            if self._stopping.is_set():
                return
            if not self._ever_ready:
                # Nothing ever served: a config every worker will refuse, most likely.
                self.start_failed = f"worker {worker.name} exited with status {status}"
                self._stopping.set()
                return
            lived = self.clock() - worker.started_at
            worker.restarts += 1
            worker.backoff_s = (
                min(MAX_BACKOFF_S, max(1.0, worker.backoff_s * 2)) if lived < QUICK_DEATH_S else 0.0
            )
            log.error(
                "worker %s (pid %s) exited with status %s after %.1f s; starting it again%s",
                worker.name,
                worker.pid,
                status,
                lived,
                f" in {worker.backoff_s:g} s" if worker.backoff_s else "",
            )

    async def _run_once(self, worker: WorkerState) -> int:
        env = {
            **self.env,
            "RAKKA_NODE_DIR": str(self.node_dir),
            "RAKKA_WORKER": worker.name,
            "RAKKA_WORKERS": str(len(self.workers)),
            "RAKKA_LISTEN_FD": str(self.listener.fileno()),
            "RAKKA_GRACE_S": repr(self.grace_s),
            "RAKKA_CONFIG_SOURCE": self.source.name,
            "RAKKA_CONFIG_BASE_DIR": str(self.source.base_dir),
            "RAKKA_CONFIG_GENERATION": str(self.generation),
        }
        if self._applied is not None:
            env["RAKKA_CONFIG_FILE"] = str(self._config_file(self.generation))
        if self._access is not None:
            env["RAKKA_ACCESS_FILE"] = str(self._access_file())
        worker.ready = False
        worker.exit_status = None
        worker.exited.clear()
        worker.started_at = self.clock()
        process = await asyncio.create_subprocess_exec(
            *self.command, env=env, pass_fds=(self.listener.fileno(),)
        )
        worker.process, worker.pid = process, process.pid
        try:
            status = await process.wait()
        finally:
            worker.process = None
            worker.ready = False
            worker.exit_status = process.returncode
            worker.exited.set()
            self._all_ready.clear()
        return status

    async def _stop(self) -> int:
        """SIGTERM every worker, wait for them (SIGKILL past the grace and a margin)."""
        log.info("stopping %d workers", len(self.workers))
        with contextlib.suppress(OSError):
            self.listener.close()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        limit = self.grace_s + self.stop_margin_s
        pending = [w for w in self.workers if w.process is not None]
        try:
            async with asyncio.timeout(limit):
                for worker in pending:
                    await worker.exited.wait()
        except TimeoutError:
            for worker in pending:
                if worker.process is not None and worker.process.returncode is None:
                    log.error("worker %s did not stop in %g s: killing it", worker.name, limit)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
            for worker in pending:
                await worker.exited.wait()
        for task in list(self._tasks):
            task.cancel()
        statuses = [w.exit_status for w in self.workers if w.exit_status is not None]
        if any(s == 3 for s in statuses):
            return 3
        return 0 if all(s == 0 for s in statuses) else 1

    async def _close(self) -> None:
        if self._control is not None:
            self._control.close()
        await self._lease_server.aclose()
        shutil.rmtree(self.node_dir, ignore_errors=True)

    # ------------------------------------------------------------------ config

    def _config_file(self, generation: int) -> Path:
        return self.node_dir / f"config-{generation}.toml"

    def _write_config(self) -> None:
        if self._applied is not None:
            self._config_file(self.generation).write_text(self._applied, encoding="utf-8")

    def _access_file(self) -> Path:
        return self.node_dir / "access.toml"

    def _write_access(self) -> None:
        if self._access is not None:
            spare = self._access_file().with_suffix(".tmp")
            spare.write_text(self._access, encoding="utf-8")
            spare.replace(self._access_file())  # a worker starting now reads one or the other

    async def _on_sighup(self) -> None:
        answer = await self.reload()
        if answer["ok"]:
            log.info("reloaded on every worker: %s", answer.get("applied"))
        else:
            log.error("reload rejected, the running config stays: %s", answer["message"])

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and apply it on every worker (all or nothing)."""
        if self.source.path is None:
            return _refusal(409, "cannot reload: the node was not started from a file")
        try:
            text = self.source.read()
        except OSError as error:
            return _refusal(400, f"the config was rejected, nothing changed: {error}")
        return await self.apply(text, reload=True)

    async def apply(self, text: str, *, reload: bool = False) -> dict[str, Any]:
        """Apply a config (TOML text) on every live worker, all or nothing; a ``reload``
        (the file read again) also says who may call the node (see the module)."""
        try:
            parse_config(text, self.source.name, base_dir=self.source.base_dir)
        except ConfigError as error:
            return _refusal(400, f"the config was rejected, nothing changed: {error}")
        async with self._apply_lock:
            return await self._apply_everywhere(text, text if reload else None)

    async def _apply_everywhere(self, text: str, access: str | None) -> dict[str, Any]:
        body = orjson.dumps({"toml": text, "access": access})
        done: list[WorkerState] = []
        report: Any = None
        for worker in [w for w in self.workers if w.ready]:
            answer = await self._worker_call(worker, "/_node/apply", body)
            if answer.get("ok"):
                done.append(worker)
                report = answer.get("applied")
                continue
            for taken in done:
                back = await self._worker_call(taken, "/_node/revert", b"{}")
                if not back.get("ok"):
                    log.error("worker %s could not go back: %s", taken.name, back.get("message"))
            refused = _refusal(int(answer.get("status", 500)), str(answer.get("message")))
            if answer.get("param") is not None:
                refused["param"] = answer["param"]  # the field of the config it names
            return refused
        self._applied = text
        self.generation += 1
        self._write_config()
        if access is not None:
            self._access = access
            self._write_access()
        for worker in done:
            worker.generation = self.generation
        return {"ok": True, "applied": report, "generation": self.generation}

    async def _worker_call(self, worker: WorkerState, target: str, body: bytes) -> dict[str, Any]:
        path = str(control_path(self.node_dir, worker.name))
        try:
            response = await request(path, "POST", target, body=body, timeout=APPLY_TIMEOUT_S)
            answer = orjson.loads(response.body)
        except (UnixHttpError, orjson.JSONDecodeError) as error:
            return _refusal(503, f"worker {worker.name} did not answer: {error}")
        if not isinstance(answer, dict):
            return _refusal(502, f"worker {worker.name} answered garbage")
        return answer

    # ------------------------------------------------------------------ control socket

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                try:
                    message = orjson.loads(line)
                    answer = await self._control_op(message)
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                    answer = _refusal(400, f"a malformed control message: {error}")
                writer.write(orjson.dumps(answer) + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _control_op(self, message: Any) -> dict[str, Any]:
        if not isinstance(message, dict):
            raise TypeError("not an object")
        match message.get("op"):
            case "ready":
                return self._worker_ready(message)
            case "apply":
                text = message["toml"]
                if not isinstance(text, str):
                    raise TypeError("toml must be a string")
                return await self.apply(text)
            case "reload":
                return await self.reload()
            case "status":
                return {"ok": True, "workers": [w.view() for w in self.workers]}
        raise ValueError(f"unknown op {message.get('op')!r}")

    def _worker_ready(self, message: dict[str, Any]) -> dict[str, Any]:
        name, generation = message["worker"], message["generation"]
        worker = next((w for w in self.workers if w.name == name), None)
        if worker is None or not isinstance(generation, int):
            raise ValueError(f"no worker {name!r}")
        worker.ready = True
        self._ever_ready = True
        worker.generation = generation
        if generation != self.generation and self._applied is not None:
            # It started while an apply was under way: bring it to the node's config.
            self._spawn_task(self._catch_up(worker))
        if all(w.ready for w in self.workers):
            self._all_ready.set()
        log.info("worker %s (pid %s) is serving", name, worker.pid)
        return {"ok": True}

    async def _catch_up(self, worker: WorkerState) -> None:
        async with self._apply_lock:
            if worker.generation == self.generation or self._applied is None:
                return
            # The keys of the file last read too: a reload may have run while it started.
            body = orjson.dumps({"toml": self._applied, "access": self._access})
            answer = await self._worker_call(worker, "/_node/apply", body)
            if answer.get("ok"):
                worker.generation = self.generation
            else:
                log.error("worker %s did not take the node's config: %s", worker.name, answer)


def _refusal(status: int, message: str) -> dict[str, Any]:
    return {"ok": False, "status": status, "message": message}


def _runtime_dir() -> str:
    """A short directory for the node's sockets (a Unix socket path is at most 107 bytes)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and len(runtime) < 60:
        return runtime
    # Not the default temporary directory: $TMPDIR may be long. The directory made in
    # it is private (mkdtemp: mode 0700, a name no one else can take).
    return "/tmp"  # noqa: S108
