"""Exact slot accounting of the local engine under every way a request can end.

A seeded storm of requests — answers, out-of-memory, poisoned contexts, runner bugs, an
unrecoverable device, requests that never end, clients leaving while queued or while
running, deadlines, capacity changes, a stop in the middle — with the figures sampled at
every step: ``in_flight`` and ``queued`` never go negative, ``in_flight`` never exceeds
the limit, every accepted request is reported exactly once, and at the end everything
returns to zero with no play of the runner left running.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.actors.stream import BoundedStream
from rakka_inference.core.errors import (
    Backpressure,
    ContextPoisoned,
    InferenceError,
    OutOfMemory,
    Unrecoverable,
)
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import Serving
from rakka_inference.core.stream import TokenChunk
from rakka_inference.local.engine import LocalEngineCore
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript
from rakka_inference.testkit.reports import ReportLog

MAX_CONCURRENT = 3


@dataclass(frozen=True)
class Plan:
    close_at: int | None
    """Close the stream after this many chunks (0: before reading any); None: read all."""
    yields: int
    """Event-loop steps to wait before closing a stream that reads nothing."""


def random_case(rng: random.Random, *, fatal: bool) -> tuple[MockReply, Plan]:
    """A reply and how its client reads it. A client waiting on a reply that never ends
    is rare: only a deadline, a rebuild, a failure or the final stop frees it."""
    pieces = [f"p{n}" for n in range(rng.randint(0, 3))]
    kind = rng.choices(
        ["text", "oom", "poison", "bug", "hang", "fatal"],
        weights=[6, 1, 0.7, 0.5, 1.5, 0.1 if fatal else 0],
    )[0]
    close_at = rng.choice([None, None, None, 0, 1, 2])
    yields = rng.randint(0, 4)
    if kind == "text":
        return MockReply.text(*pieces), Plan(close_at, yields)
    if kind == "hang":
        if close_at is None or close_at > len(pieces):
            close_at = None if rng.random() < 0.05 else rng.randint(0, len(pieces))
        return MockReply.hanging(*pieces), Plan(close_at, yields)
    if kind == "fatal":
        pieces = []
    error: Exception = {
        "oom": OutOfMemory("oom"),
        "poison": ContextPoisoned("poison"),
        "bug": RuntimeError("bug"),
        "fatal": Unrecoverable("fatal"),
    }[kind]
    return MockReply.failing(error, after=len(pieces)), Plan(close_at, yields)


class Storm:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fatal = seed % 3 == 0
        self.clock = FakeClock()
        self.script = MockScript()
        self.report_log = ReportLog()
        self.failures: list[Exception] = []
        self.samples = 0
        self.engine = LocalEngineCore(
            "storm",
            lambda: MockRunner(self.script),
            serving=Serving(
                max_concurrent=MAX_CONCURRENT, queue_capacity=8, queue_timeout_ms=60_000
            ),
            clock=self.clock,
            on_failed=self.failures.append,
        )
        self.report_log.watch(self.engine)

    def check(self) -> None:
        engine = self.engine
        assert 0 <= engine.in_flight <= MAX_CONCURRENT
        assert engine.queued >= 0
        self.samples += 1

    async def consume(self, stream: BoundedStream[TokenChunk], plan: Plan) -> str:
        seen = 0
        try:
            if plan.close_at == 0:
                for _ in range(plan.yields):
                    await asyncio.sleep(0)
                    self.check()
                stream.close()
                return "closed"
            async for _ in stream:
                self.check()
                seen += 1
                if plan.close_at is not None and seen >= plan.close_at:
                    stream.close()
                    return "closed"
        except InferenceError as error:
            return error.outcome
        return "ok"

    async def run(self, requests: int) -> Counter[str]:
        engine = self.engine
        rng = self.rng
        accepted: list[str] = []
        consumers: list[asyncio.Future[str]] = []
        refused = 0
        for index in range(requests):
            prompt = f"r{index}"
            reply, plan = random_case(rng, fatal=self.fatal)
            self.script.answer(prompt, reply)
            deadline = self.clock() - 1 if rng.random() < 0.03 else None
            request = ChatRequest(model="m", messages=(ChatMessage.user(prompt),))
            try:
                stream = engine.submit(request, deadline=deadline)
            except Backpressure:
                refused += 1
            else:
                accepted.append(request.request_id)
                consumers.append(asyncio.ensure_future(self.consume(stream, plan)))
            self.check()
            if rng.random() < 0.05:
                engine.set_concurrency_limit(rng.randint(1, MAX_CONCURRENT))
            self.clock.advance(rng.choice([0.0, 5.0, 30.0]))
            for _ in range(rng.randint(0, 6)):
                await asyncio.sleep(0)
                self.check()
            if index == requests // 2 and rng.random() < 0.3:
                await engine.stop(timeout=0)
        for _ in range(100):
            await asyncio.sleep(0)
            self.check()
        await engine.stop(timeout=0)
        outcomes = Counter(await asyncio.wait_for(asyncio.gather(*consumers), 10))
        outcomes["refused"] = refused

        counts = Counter(report.request_id for report in self.report_log.reports)
        assert set(counts) == set(accepted)
        assert set(counts.values()) <= {1}, "a request was reported (and released) twice"
        return outcomes


@pytest.mark.parametrize("seed", range(12))
async def test_every_path_gives_its_slot_back_exactly_once(seed: int) -> None:
    storm = Storm(seed)
    loop_errors: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    try:
        async with ActorSystem(clock=storm.clock) as system:
            await storm.engine.start(system)
            outcomes = await storm.run(150)
    finally:
        loop.set_exception_handler(previous)
    engine = storm.engine
    assert (engine.in_flight, engine.queued, engine.load_score) == (0, 0, 0)
    assert storm.script.active == 0
    assert loop_errors == []
    assert storm.samples > 150
    if storm.failures:
        assert engine.failed
        assert outcomes["refused"] > 0


async def test_the_storm_reaches_every_ending() -> None:
    """The seeds above, together, end requests in every way there is."""
    seen: Counter[str] = Counter()
    failed = 0
    for seed in range(12):
        storm = Storm(seed)
        async with ActorSystem(clock=storm.clock) as system:
            await storm.engine.start(system)
            seen += await storm.run(150)
        failed += bool(storm.failures)
    expected = {
        "ok",
        "closed",
        "refused",
        "out_of_memory",
        "context_poisoned",
        "internal_error",
        "unrecoverable",
        "stream_interrupted",
        "request_cancelled",
        "backpressure",
        "timed_out",
    }
    assert expected <= set(seen), expected - set(seen)
    assert failed > 0
