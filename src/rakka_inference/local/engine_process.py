"""EngineProcess: one engine server as a child process — started, probed, logged, stopped.

The process is a replica's model context (:mod:`rakka_inference.local.engine_server`
decides what its failures mean). This module only runs it:

- **start**: the command in a session of its own (so stopping reaches the engine's own
  workers too), with stdin closed and stdout and stderr captured. On Linux the kernel sends
  it SIGTERM if the gateway process dies, so no engine outlives its gateway.
- **logs**: every line the engine prints goes to the ``rakka_inference.engine`` logger as
  ``<replica> | <line>``, cleaned of key material (the values of ``runtime_config.env``
  among it); the last lines are kept for the error that says why it stopped. A line longer
  than :data:`MAX_LINE_BYTES` is cut.
- **probes**: ``GET /health`` and ``GET /metrics`` on its loopback port, each bounded by a
  timeout (a hung engine is a failed probe, not a hung gateway) and the metrics body by
  :data:`MAX_METRICS_BYTES`.
- **stop**: SIGTERM to its process group; after the grace period, SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
from collections import deque
from collections.abc import Collection, Mapping, Sequence

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.policies import Timeouts
from rakka_inference.wire.http import HttpRequest, HttpTransport
from rakka_inference.wire.redact import operator_text

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_METRICS_BYTES",
    "EngineProcess",
    "free_port",
]

log = logging.getLogger("rakka_inference.engine")

MAX_LINE_BYTES = 4000
"""A longer log line from an engine is cut (and the rest of it dropped)."""
MAX_METRICS_BYTES = 1 << 20
"""An engine's ``/metrics`` body larger than this is not read."""
_TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (the engine binds it a moment later; a lost race is an
    engine that exits at start, and the next start picks another)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class EngineProcess:
    """One engine server process. ``secrets`` are masked in the lines it logs."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        base_url: str,
        *,
        secrets: Collection[str] = (),
    ) -> None:
        self.name = name
        self.argv = tuple(argv)
        self.base_url = base_url.rstrip("/")
        self._env = dict(env)
        self._secrets = tuple(secrets)
        self._process: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        """The last lines the engine printed (cleaned), oldest first."""

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: the signal that ended it)."""
        return None if self._process is None else self._process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def describe_exit(self) -> str:
        """How it ended, for an error message: ``exited with status 1`` and its last line."""
        code = self.returncode
        if code is not None and code < 0:
            how = f"was killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        last = f" (its last line: {self.tail[-1]!r})" if self.tail else ""
        return f"{how}{last}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the process (OSError when the program cannot be run)."""
        log.info("engine %s: starting %s", self.name, self.argv[0])
        self._process = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        stdout = self._process.stdout
        assert stdout is not None
        self._pump = asyncio.get_running_loop().create_task(
            self._read_lines(stdout), name=f"engine-log:{self.name}"
        )

    async def wait(self) -> int:
        """Until the process exits; its exit status."""
        process = self._process
        assert process is not None
        return await process.wait()

    async def stop(self, grace_s: float) -> None:
        """SIGTERM to its process group; SIGKILL after ``grace_s`` if it has not exited.
        Idempotent; returns once the process has exited and its output is read."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            log.info("engine %s: stopping (SIGTERM, then SIGKILL after %gs)", self.name, grace_s)
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace_s):
                    await process.wait()
            except TimeoutError:
                log.warning(
                    "engine %s: still running %gs after SIGTERM; killing", self.name, grace_s
                )
        # Whatever the engine itself started is in its group: none of it may outlive it.
        self._signal(signal.SIGKILL)
        await process.wait()
        if self._pump is not None:
            # The pipe closes when the last holder of it exits; do not wait on a stray one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(self._pump)
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)

    def _signal(self, signum: signal.Signals) -> None:
        process = self._process
        assert process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)

    # ------------------------------------------------------------------ probes

    async def get(
        self, transport: HttpTransport, path: str, timeout_s: float, limit: int
    ) -> tuple[int, bytes]:
        """``GET path`` on the engine, all of it within ``timeout_s``: the status and at
        most ``limit`` bytes of the body. Raises the transport's typed errors, or
        :class:`TimeoutError` past the deadline."""
        ms = max(1, int(timeout_s * 1000))
        timeouts = Timeouts(
            connect_timeout_ms=ms, request_timeout_ms=ms, read_timeout_ms=ms, total_timeout_ms=ms
        )
        request = HttpRequest("GET", f"{self.base_url}{path}")

        async def fetch() -> tuple[int, bytes]:
            response = await transport.send(request, timeouts, stream=True)
            try:
                body = bytearray()
                async for data in response.iter_bytes():
                    body += data
                    if len(body) > limit:
                        break
                return response.status, bytes(body[:limit])
            finally:
                await response.aclose()

        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that lands as the fetch completes, and a watcher being stopped would run on.
        async with asyncio.timeout(timeout_s):
            return await fetch()

    async def healthy(self, transport: HttpTransport, timeout_s: float) -> bool:
        """Whether ``/health`` answers 200 within ``timeout_s``."""
        try:
            status, _ = await self.get(transport, "/health", timeout_s, 4096)
        except (InferenceError, TimeoutError, OSError):
            return False
        return status == 200

    # ------------------------------------------------------------------ logs

    async def _read_lines(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        cut = False
        while data := await stream.read(65536):
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not cut:
                    self._log_line(line)
                cut = False
            if len(pending) > MAX_LINE_BYTES:
                if not cut:
                    self._log_line(pending)
                pending, cut = b"", True
        if pending and not cut:
            self._log_line(pending)

    def _log_line(self, raw: bytes) -> None:
        if len(raw) > MAX_LINE_BYTES:
            raw = raw[:MAX_LINE_BYTES] + b" [cut]"
        text = operator_text(raw.decode("utf-8", "replace"), self._secrets)
        if text is None:
            return
        self.tail.append(text)
        log.info("%s | %s", self.name, text)
