"""The transformers runner's decode throughput: continuous batching against one at a time.

    python bench/local_engine.py [--tokens N] [--rounds N] [--device cpu|cuda|auto]

On the tiny random Llama of :mod:`rakka_inference.local.tiny_model` (built into a
temporary directory and loaded through the runner's offline path), at 1, 4 and 16
concurrent greedy requests of ``--tokens`` tokens each: generated tokens per second with
the runner's continuous batching, and with the same runner forced to batches of one
(``max_batch_size=1``), in the same run. The ratio is the figure to compare across
machines. Target (issue: transformers runtime): batching wins by >= 3x at 16.

A tiny model is dominated by per-step overhead, not arithmetic, which is exactly what
batching amortises; a real model on a GPU shows the same shape.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

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


async def main(tokens: int, rounds: int, device: str) -> None:
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args()
    asyncio.run(main(options.tokens, options.rounds, options.device))
