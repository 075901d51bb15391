"""``rakka`` as a real child process, for the tests of ``tests/apps``: started with a clean
environment (no provider key, no admin key), its output read as it comes, never left
behind."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

CLI = "from rakka_inference.apps.cli import main; raise SystemExit(main())"

UNSET = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "LITELLM_API_KEY",
    "RAKKA_ADMIN_KEY",
    "RAKKA_URL",
)
"""What a child never inherits from the test run: it runs with no key."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    return {**env, **extra}


@dataclass
class Rakka:
    """A running ``rakka`` (stderr merged into stdout), its lines read so far."""

    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)

    async def line(self, pattern: str, timeout: float = 90) -> str:
        """The first line matching ``pattern`` (the lines already read count)."""
        regex = re.compile(pattern)
        for line in self.output:
            if regex.search(line):
                return line
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.process.stdout.readline()
                assert raw, "rakka exited:\n" + "".join(self.output)
                self.output.append(raw.decode(errors="replace"))
                if regex.search(self.output[-1]):
                    return self.output[-1]

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, the rest of the output read; the exit status."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            while raw := await self.process.stdout.readline():
                self.output.append(raw.decode(errors="replace"))
            return await self.process.wait()


@asynccontextmanager
async def running(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> AsyncIterator[Rakka]:
    """``rakka ARGS`` running for the block; stopped (killed if need be) after it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(clean_env() if env is None else env),
        cwd=cwd,
    )
    child = Rakka(process)
    try:
        yield child
    finally:
        if process.returncode is None:
            try:
                await child.stop()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()


@dataclass(frozen=True)
class Finished:
    status: int
    stdout: str
    stderr: str


async def run_rakka(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 120
) -> Finished:
    """``rakka ARGS`` to its end: the exit status and what it printed, apart."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(clean_env() if env is None else env),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())
