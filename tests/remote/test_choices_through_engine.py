"""A request for ``n`` choices reserves the output of every choice: the rate limiter's token
estimate and the budget's reservation both count ``n`` times the output cap, and settle
against the real usage of all the choices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import Deployment
from rakka_inference.core.messages import ChatMessage, ChatRequest, SamplingParams
from rakka_inference.core.policies import Budget, ModelPrice
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import aggregate
from rakka_inference.engine.budget import BudgetReservation
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.ratelimit_types import Permit
from rakka_inference.runtime.replicas import EngineBuilder
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

KEY = "sk-choices-engine-01"
CAP = 50
OUTPUT_PER_MTOK = 10.0


class RecordingLimiter:
    """The engine's limiter, with the token estimate of every permit asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.estimates: list[int] = []

    async def acquire(self, tokens: int, **options: Any) -> Permit:
        self.estimates.append(tokens)
        permit: Permit = await self.inner.acquire(tokens, **options)
        return permit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingBudget:
    """The engine's budget gate, with every reservation it made."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reservations: list[BudgetReservation] = []

    def reserve(self, request: Any) -> BudgetReservation:
        reservation: BudgetReservation = self.inner.reserve(request)
        self.reservations.append(reservation)
        return reservation

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={KEY}), reply=ReplyScript(text="One two three")
    ) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
async def test_n_choices_reserve_n_times_the_output_cap(mock: OpenAIMock, stream: bool) -> None:
    deployment = Deployment(
        name="gpt",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url, api_key=SecretRef.inline(KEY, warn=False)
        ),
        budget=Budget(max_spend_per_hour=100.0),
        pricing=ModelPrice(input_per_mtok=0.0, output_per_mtok=OUTPUT_PER_MTOK),
    )
    engine = await EngineBuilder().build(deployment, "gpt-0", on_failed=lambda _reason: None)
    assert isinstance(engine, RemoteEngineCore)
    limiter = RecordingLimiter(engine.limiter)
    budget = RecordingBudget(engine.budget)
    engine.limiter = limiter
    engine.budget = budget
    system = ActorSystem()
    await engine.start(system, "gpt-0")
    request = ChatRequest(
        model="gpt",
        messages=(ChatMessage.user("count"),),
        sampling=SamplingParams(n=3, max_tokens=CAP),
        stream=stream,
    )
    try:
        answer = aggregate([chunk async for chunk in engine.submit(request)])
    finally:
        await engine.stop(timeout=5)
        await system.shutdown(timeout=5)

    assert limiter.estimates == [request.estimated_prompt_tokens() + 3 * CAP]
    [reservation] = budget.reservations
    assert reservation.reserved_usd == pytest.approx(3 * CAP * OUTPUT_PER_MTOK / 1_000_000)
    assert [choice.text for choice in answer.choices] == [
        "One two three",
        "One two three (2)",
        "One two three (3)",
    ]
    assert answer.usage is not None
    assert answer.usage.output_tokens == 3 + 4 + 4  # every choice's tokens, settled
    assert mock.requests[-1].json()["n"] == 3
