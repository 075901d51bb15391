"""What the node and cluster tests share: ``rakka`` as a child process, the deployment they
serve in front of the mock upstream, and small clients."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from rakka_inference.testkit.mock_openai import OpenAIMock

CLI = "from rakka_inference.apps.cli import main; raise SystemExit(main())"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chat_deployment(
    endpoint: str,
    *,
    key_env: str,
    rpm: int,
    strict: bool = False,
    failure_threshold: int = 2,
) -> str:
    """``chat`` in front of ``endpoint``: no retries, a 300 ms wait for a permit at most."""
    return f"""
[[deployment]]
name = "chat"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{endpoint}"
api_key = {{ from_env = "{key_env}" }}
[deployment.runtime_config.rate_limits]
requests_per_minute = {rpm}
strict = {"true" if strict else "false"}
[deployment.runtime_config.retry]
max_retries = 0
[deployment.runtime_config.circuit_breaker]
failure_threshold = {failure_threshold}
open_duration_ms = 3000
[deployment.serving]
queue_timeout_ms = 300
"""


@dataclass
class Child:
    """``rakka`` running as a child process, its output read as it comes."""

    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)

    async def line(self, pattern: str, timeout: float = 90) -> str:
        """The first output line matching ``pattern`` (the lines read so far count)."""
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
        async with asyncio.timeout(timeout):
            assert self.process.stdout is not None
            while raw := await self.process.stdout.readline():
                self.output.append(raw.decode(errors="replace"))
            return await self.process.wait()


async def start_rakka(*args: str, env: Mapping[str, str] | None = None) -> Child:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=None if env is None else dict(env),
    )
    return Child(process)


async def chat(url: str, model: str = "chat") -> int:
    """One chat request on a connection of its own; its status."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
        return response.status_code


def admin(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=60)


def chat_calls(mock: OpenAIMock) -> int:
    """Chat completions the mock upstream received."""
    return sum(1 for r in mock.requests if r.path.endswith("/chat/completions"))


def report(line: str) -> None:
    """A measured figure, printed past pytest's capture (run with ``-s``; the README
    quotes them)."""
    print(f"\n[figure] {line}", file=sys.__stderr__, flush=True)
