"""The transformers runner's decode throughput: continuous batching against one at a time.

    python bench/local_engine.py [--tokens N] [--rounds N] [--device cpu|cuda|auto]
        [--no-gateway]

On the tiny random Llama of :mod:`rakka_inference.local.tiny_model` (built into a
temporary directory and loaded through the runner's offline path), at 1, 4 and 16
concurrent greedy requests of ``--tokens`` tokens each: generated tokens per second with
the runner's continuous batching, and with the same runner forced to batches of one
(``max_batch_size=1``), in the same run. The ratio is the figure to compare across
machines. Target (issue: transformers runtime): batching wins by >= 3x at 16.

A tiny model is dominated by per-step overhead, not arithmetic, which is exactly what
batching amortises; a real model on a GPU shows the same shape.

Then the gateway's cost per generated token: the same streams (one at a time) through
``rakka serve`` over loopback HTTP, its process's CPU per token, against the runner called
directly in this process, its CPU per token. The difference is what the gateway adds
(parsing, routing, the engine's admission and report, SSE encoding) on top of the model.
The served deployment runs on ``--device`` too (on a GPU, both sides' CPU includes the
time spent waiting for the device); ``--no-gateway`` leaves this part out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.messages import ChatMessage, ChatRequest, SamplingParams
from rakka_inference.core.policies import Serving
from rakka_inference.core.runtimes import RuntimeKind, TransformersConfig
from rakka_inference.local.tiny_model import build_tiny_chat_model
from rakka_inference.local.transformers_runner import TransformersRunner

CONCURRENCY = (1, 4, 16)


async def throughput(runner: TransformersRunner, concurrent: int, tokens: int) -> float:
    """Generated tokens per second for ``concurrent`` requests started together."""

    async def one(index: int) -> int:
        request = ChatRequest(
            model="tiny",
            messages=(ChatMessage.user(f"request {index}: tell me something"),),
            sampling=SamplingParams(max_tokens=tokens, temperature=0.0),
        )
        generated = 0
        async for chunk in runner.execute(request):
            if chunk.usage is not None:
                generated += chunk.usage.output_tokens
        return generated

    started = time.perf_counter()
    counts = await asyncio.gather(*(one(index) for index in range(concurrent)))
    return sum(counts) / (time.perf_counter() - started)


def _process_cpu_s(pid: int) -> float:
    """A process's user and system CPU, its ended threads included."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _through_gateway(url: str, streams: int, tokens: int) -> int:
    """``streams`` streams one after another through the gateway; tokens generated."""
    generated = 0
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "tell me something"}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(streams):
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            generated += usage["completion_tokens"]
    return generated


async def _directly(runner: TransformersRunner, tokens: int) -> int:
    """One stream from the runner itself; tokens generated."""
    request = ChatRequest(
        model="tiny",
        messages=(ChatMessage.user("tell me something"),),
        sampling=SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    generated = 0
    async for chunk in runner.execute(request):
        if chunk.usage is not None:
            generated += chunk.usage.output_tokens
    return generated


async def _until_serving(server: asyncio.subprocess.Process, timeout_s: float) -> None:
    """Wait for ``rakka serve`` to say it is serving; its output so far if it does not."""
    assert server.stdout is not None
    said: list[str] = []
    async with asyncio.timeout(timeout_s):
        while True:
            line = await server.stdout.readline()
            if b"serving" in line:
                return
            if not line:  # it exited before serving
                await server.wait()
                raise RuntimeError(
                    f"rakka serve exited with status {server.returncode} before serving:\n"
                    + "".join(said)
                )
            said.append(line.decode(errors="replace"))


async def gateway_cost(
    model_dir: Path, runner: TransformersRunner, tokens: int, device: str
) -> None:
    """CPU per generated token: through ``rakka serve``, against the runner directly."""
    streams = 20
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = model_dir.parent / "serve.toml"
    config.write_text(
        f'[cluster]\nbind = "127.0.0.1:{port}"\n\n[[deployment]]\nname = "tiny"\n'
        f'model = "tiny-llama"\nruntime = "transformers"\n[deployment.runtime_config]\n'
        f'model_path = "{model_dir}"\ndevice = "{device}"\n'
    )
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rakka_inference.apps.cli",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    drained: asyncio.Future[bytes] | None = None
    try:
        await _until_serving(server, timeout_s=300)
        assert server.stdout is not None
        drained = asyncio.ensure_future(server.stdout.read())  # a full pipe would block it
        url = f"http://127.0.0.1:{port}"
        await _through_gateway(url, 2, tokens)  # warm-up
        cpu = _process_cpu_s(server.pid)
        through = await _through_gateway(url, streams, tokens)
        gateway_cpu = (_process_cpu_s(server.pid) - cpu) / through
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
        if drained is not None:
            await drained
    cpu = time.process_time()
    direct = sum([await _directly(runner, tokens) for _ in range(streams)])
    direct_cpu = (time.process_time() - cpu) / direct
    print(
        f"CPU per generated token, one stream at a time: {gateway_cpu * 1e6:,.0f} us through "
        f"the gateway, {direct_cpu * 1e6:,.0f} us calling the runner directly: the gateway "
        f"adds {(gateway_cpu - direct_cpu) * 1e6:,.0f} us ({gateway_cpu / direct_cpu:.2f}x)"
    )


async def main(tokens: int, rounds: int, device: str, gateway: bool) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = build_tiny_chat_model(Path(scratch) / "tiny")
        deployment = Deployment(
            name="tiny",
            model=str(model_dir),
            runtime=RuntimeKind.TRANSFORMERS,
            runtime_config=TransformersConfig(device=device),
            serving=Serving(max_concurrent=max(CONCURRENCY)),
        )
        batched = TransformersRunner(deployment)
        single = TransformersRunner(deployment, max_batch_size=1)
        for runner in (batched, single):
            await runner.load_weights()
            await throughput(runner, 2, 8)  # warm-up
        print(f"tiny Llama, {tokens} tokens per request, best of {rounds}, {batched.describe()}")
        print(f"{'concurrent':>10}  {'batched tok/s':>14}  {'one-at-a-time':>14}  {'ratio':>6}")
        for concurrent in CONCURRENCY:
            best_batched = max(
                [await throughput(batched, concurrent, tokens) for _ in range(rounds)]
            )
            best_single = max([await throughput(single, concurrent, tokens) for _ in range(rounds)])
            ratio = best_batched / best_single
            print(
                f"{concurrent:>10}  {best_batched:>14,.0f}  {best_single:>14,.0f}  {ratio:>5.1f}x"
            )
        print(
            f"largest batch seen: {batched.stats.max_batch_size} (one-at-a-time: "
            f"{single.stats.max_batch_size})"
        )
        if gateway:
            await gateway_cost(model_dir, batched, tokens, device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--gateway",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the gateway's CPU per token through rakka serve (default: on)",
    )
    options = parser.parse_args()
    asyncio.run(main(options.tokens, options.rounds, options.device, options.gateway))
