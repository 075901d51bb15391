"""A soak: many mixed requests through a long-running gateway, watching its memory and handles.

    python bench/soak.py [--requests N] [--concurrency C] [--every K]
                         [--target sandbox|configured|both]

Two gateways, each ``rakka serve`` in a child process on 127.0.0.1:

- ``sandbox``: the no-config default, its mock providers inside the gateway's process;
- ``configured``: a config whose deployments point at mock providers served by a child
  process of their own (``python -m rakka_inference.testkit.mock_server``), so the gateway's
  process holds the gateway alone.

Each gets ``--requests`` requests (100k by default) from ``--concurrency`` keep-alive
clients, in a fixed mix: chat unary, chat streamed, ``/v1/messages`` unary and streamed,
embeddings, and a bad request (a 400). Every ``--every`` requests (10k) the gateway's
``VmRSS`` and open file descriptors (``/proc/<pid>``) are printed, with the requests per
second of that stretch. Flat is the figure to look for: a leak shows as RSS that keeps
rising after the first stretches (allocator arenas and caches settle early).

Takes minutes; not run in CI (``tests/apps/test_soak.py`` runs a short in-process version
of the same check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

_MIX = (
    "chat",
    "chat-stream",
    "messages",
    "messages-stream",
    "embeddings",
    "chat",
    "chat-stream",
    "bad",
)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    chat_model: str
    messages_model: str
    embed_model: str


SANDBOX = Target("sandbox", "sandbox-gpt", "sandbox-claude", "sandbox-embed")
CONFIGURED = Target("configured", "gpt", "claude", "embed")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def _process(args: list[str], **options: object) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(args, **options)  # type: ignore[call-overload]
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _ready(base: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{base}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready in {timeout:g}s")


def _configured_toml(openai_url: str, anthropic_url: str, port: int) -> str:
    return f"""
[cluster]
name = "soak"
bind = "127.0.0.1:{port}"

[[deployment]]
name = "gpt"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{openai_url}"
api_key = {{ from_env = "SOAK_UPSTREAM_KEY" }}

[[deployment]]
name = "embed"
model = "text-embedding-3-small"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{openai_url}"
api_key = {{ from_env = "SOAK_UPSTREAM_KEY" }}

[[deployment]]
name = "claude"
model = "claude-haiku-4-5"
runtime = "anthropic"
[deployment.runtime_config]
endpoint = "{anthropic_url}"
api_key = {{ from_env = "SOAK_UPSTREAM_KEY" }}
"""


@contextlib.asynccontextmanager
async def _gateway(target: Target, workdir: Path) -> AsyncIterator[tuple[str, int]]:
    """``(base URL, gateway pid)`` of a running gateway for ``target``."""
    port = _free_port()
    env = {
        **os.environ,
        "RAKKA_ADMIN_KEY": "soak-admin-key-not-a-secret",
        "SOAK_UPSTREAM_KEY": "sk-soak-not-a-secret",
    }
    rakka = [sys.executable, "-c", "from rakka_inference.apps.cli import main; main()"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    if target is SANDBOX:
        with _process([*rakka, "serve", "--port", str(port)], **quiet) as gateway:
            base = f"http://127.0.0.1:{port}"
            await _ready(base)
            yield base, gateway.pid
        return
    mock_ports = (_free_port(), _free_port())
    mock = [sys.executable, "-m", "rakka_inference.testkit.mock_server"]
    with (
        _process([*mock, "--provider", "openai", "--port", str(mock_ports[0])], **quiet),
        _process([*mock, "--provider", "anthropic", "--port", str(mock_ports[1])], **quiet),
    ):
        config = workdir / "soak.toml"
        openai_url = f"http://127.0.0.1:{mock_ports[0]}/v1"
        config.write_text(_configured_toml(openai_url, f"http://127.0.0.1:{mock_ports[1]}", port))
        with _process([*rakka, "serve", "--config", str(config)], **quiet) as gateway:
            base = f"http://127.0.0.1:{port}"
            await _ready(base)
            yield base, gateway.pid


async def _one(client: httpx.AsyncClient, target: Target, kind: str, n: int) -> None:
    text = f"soak request {n}"
    if kind.startswith("chat"):
        body = {
            "model": target.chat_model,
            "messages": [{"role": "user", "content": text}],
            "stream": kind == "chat-stream",
        }
        path = "/v1/chat/completions"
    elif kind.startswith("messages"):
        body = {
            "model": target.messages_model,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": text}],
            "stream": kind == "messages-stream",
        }
        path = "/v1/messages"
    elif kind == "embeddings":
        body = {"model": target.embed_model, "input": [text, "another"]}
        path = "/v1/embeddings"
    else:
        body = {"model": target.chat_model, "messages": [{"role": "tool", "content": 1}]}
        path = "/v1/chat/completions"
    async with client.stream("POST", path, json=body) as answer:
        async for _ in answer.aiter_raw():
            pass
        expected = 400 if kind == "bad" else 200
        if answer.status_code != expected:
            raise RuntimeError(f"{kind}: {answer.status_code}, not {expected}")


async def soak(target: Target, requests: int, concurrency: int, every: int) -> None:
    with tempfile.TemporaryDirectory(prefix="rakka-soak-") as workdir:
        async with _gateway(target, Path(workdir)) as (base, pid):
            print(f"\n{target.name}: pid {pid}, {requests} requests, {concurrency} clients")
            print(f"{'requests':>9} {'RSS MB':>8} {'fds':>5} {'req/s':>7}")
            print(f"{0:>9} {_rss_mb(pid):>8.1f} {_fds(pid):>5} {'':>7}")
            counter = iter(range(requests))
            done = 0
            stretch = time.monotonic()
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

                async def worker() -> None:
                    nonlocal done, stretch
                    for n in counter:
                        await _one(client, target, _MIX[n % len(_MIX)], n)
                        done += 1
                        if done % every == 0:
                            now = time.monotonic()
                            rate = every / (now - stretch)
                            stretch = now
                            print(f"{done:>9} {_rss_mb(pid):>8.1f} {_fds(pid):>5} {rate:>7.0f}")

                await asyncio.gather(*(worker() for _ in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--every", type=int, default=10_000)
    parser.add_argument("--target", choices=("sandbox", "configured", "both"), default="both")
    options = parser.parse_args()
    targets = {"sandbox": (SANDBOX,), "configured": (CONFIGURED,)}.get(
        options.target, (SANDBOX, CONFIGURED)
    )
    for target in targets:
        asyncio.run(soak(target, options.requests, options.concurrency, options.every))


if __name__ == "__main__":
    main()
