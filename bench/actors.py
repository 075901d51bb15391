"""Actor kernel speed on one core: ask round trip and tell throughput.

    python bench/actors.py [--loop asyncio|uvloop|both] [--asks N] [--tells N]

Each figure comes with a baseline taken in the same run on the same loop — the same
exchange done with bare asyncio (a consumer task fed by an ``asyncio.Queue``, replying
through a future) — because absolute times on shared machines are noisy; the ratio is the
figure to compare across machines. Targets (issue: foundation): ask p50 <= 30 us,
tell >= 150,000 messages/s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

from rakka_inference.actors import Actor, ActorSystem
from rakka_inference.core.errors import MailboxFull


class Echo(Actor[int]):
    async def receive(self, message: int) -> int:
        return message


class Count(Actor[int]):
    def __init__(self) -> None:
        self.seen = 0

    async def receive(self, message: int) -> int:
        self.seen += 1
        return self.seen


def _percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0


async def ask_actor(n: int) -> list[int]:
    async with ActorSystem() as system:
        echo = system.spawn(Echo, "echo")
        for i in range(1000):  # warm up
            await echo.ask(i)
        samples = []
        clock = time.perf_counter_ns
        for i in range(n):
            start = clock()
            await echo.ask(i)
            samples.append(clock() - start)
        return samples


async def ask_baseline(n: int) -> list[int]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue(1024)

    async def consumer() -> None:
        while True:
            message, reply = await queue.get()
            reply.set_result(message)

    task = asyncio.create_task(consumer())
    samples = []
    clock = time.perf_counter_ns
    for i in range(1000 + n):
        start = clock()
        reply: asyncio.Future[int] = loop.create_future()
        queue.put_nowait((i, reply))
        await reply
        if i >= 1000:
            samples.append(clock() - start)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return samples


async def tell_actor(n: int) -> float:
    async with ActorSystem(mailbox_capacity=4096) as system:
        counter = system.spawn(Count, "count")
        start = time.perf_counter()
        sent = 0
        while sent < n:
            try:
                counter.tell(sent)
                sent += 1
            except MailboxFull:
                await asyncio.sleep(0)  # let the actor drain
        seen = await counter.ask(-1)  # everything before it has been handled
        elapsed = time.perf_counter() - start
        assert seen == n + 1, seen
        return n / elapsed


async def tell_baseline(n: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue(4096)
    done = asyncio.get_running_loop().create_future()
    seen = 0

    async def consumer() -> None:
        nonlocal seen
        while True:
            await queue.get()
            seen += 1
            if seen == n:
                done.set_result(None)

    task = asyncio.create_task(consumer())
    start = time.perf_counter()
    sent = 0
    while sent < n:
        try:
            queue.put_nowait(sent)
            sent += 1
        except asyncio.QueueFull:
            await asyncio.sleep(0)
    await done
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return n / elapsed


async def run_all(asks: int, tells: int) -> dict[str, Any]:
    gc.collect()
    actor_ask = await ask_actor(asks)
    base_ask = await ask_baseline(asks)
    actor_tell = statistics.median([await tell_actor(tells) for _ in range(3)])
    base_tell = statistics.median([await tell_baseline(tells) for _ in range(3)])
    return {
        "ask_p50_us": _percentile(actor_ask, 0.50),
        "ask_p99_us": _percentile(actor_ask, 0.99),
        "base_ask_p50_us": _percentile(base_ask, 0.50),
        "tell_per_s": actor_tell,
        "base_tell_per_s": base_tell,
    }


def _run(loop_name: str, asks: int, tells: int) -> dict[str, Any]:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(run_all(asks, tells))
    return asyncio.run(run_all(asks, tells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    parser.add_argument("--asks", type=int, default=20_000)
    parser.add_argument("--tells", type=int, default=200_000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    print(f"python {sys.version.split()[0]}, one core, {args.asks} asks, {args.tells} tells")
    print(f"{'loop':8} {'ask p50':>9} {'ask p99':>9} {'vs base':>8} {'tell/s':>10} {'vs base':>8}")
    for name in loops:
        try:
            r = _run(name, args.asks, args.tells)
        except ImportError:
            print(f"{name:8} not installed (pip install -e '.[bench]')")
            continue
        print(
            f"{name:8} {r['ask_p50_us']:7.1f}us {r['ask_p99_us']:7.1f}us "
            f"{r['ask_p50_us'] / r['base_ask_p50_us']:7.2f}x "
            f"{r['tell_per_s']:10,.0f} {r['tell_per_s'] / r['base_tell_per_s']:7.2f}x"
        )
    print("(vs base: actor figure over bare asyncio Queue+Future in the same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
