"""One default output-token cap per deployment: the runtime config's.

A request without ``max_tokens`` is estimated by the rate limiter, reserved against the
budget and sent upstream with the same cap — an Anthropic deployment's
``max_tokens_default`` — as the engine builder wires a replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from rakka_inference.actors import ActorSystem
from rakka_inference.core.deployment import Config, Deployment
from rakka_inference.core.messages import DEFAULT_MAX_OUTPUT_TOKENS, ChatMessage, ChatRequest
from rakka_inference.core.policies import Budget, ModelPrice, Serving
from rakka_inference.core.runtimes import AnthropicConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.budget import BudgetReservation
from rakka_inference.engine.budget_book import BudgetBook
from rakka_inference.remote.engine import RemoteEngineCore
from rakka_inference.remote.ratelimit_types import Permit
from rakka_inference.runtime.replicas import EngineBuilder
from rakka_inference.testkit.faults import FaultPlan
from rakka_inference.testkit.mock_anthropic import AnthropicMock

KEY = "sk-ant-api03-output-cap"
CAP = 16_000
OUTPUT_PER_MTOK = 15.0


class RecordingLimiter:
    """The engine's limiter, with the token estimate of every permit asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.estimates: list[int] = []

    async def acquire(self, tokens: int, *, deadline: float, wait_budget: float) -> Permit:
        self.estimates.append(tokens)
        permit: Permit = await self.inner.acquire(
            tokens, deadline=deadline, wait_budget=wait_budget
        )
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


def anthropic(url: str, **config: Any) -> Deployment:
    return Deployment(
        name="claude",
        model="claude-sonnet-4-5",
        runtime=RuntimeKind.ANTHROPIC,
        runtime_config=AnthropicConfig(
            endpoint=url, api_key=SecretRef.inline(KEY, warn=False), **config
        ),
        serving=Serving(max_concurrent=2),
        budget=Budget(max_spend_per_hour=100.0),
        pricing=ModelPrice(input_per_mtok=0.0, output_per_mtok=OUTPUT_PER_MTOK),
    )


def chat() -> ChatRequest:
    return ChatRequest(model="claude", messages=(ChatMessage.user("hi"),))


@pytest.fixture
async def mock() -> AsyncIterator[AnthropicMock]:
    async with AnthropicMock(faults=FaultPlan(valid_keys={KEY})) as server:
        yield server


async def test_max_tokens_default_is_the_limiter_budget_and_upstream_cap(
    mock: AnthropicMock,
) -> None:
    deployment = anthropic(mock.url, max_tokens_default=CAP)
    builder = EngineBuilder()
    engine = await builder.build(deployment, "claude-0", on_failed=lambda _reason: None)
    assert isinstance(engine, RemoteEngineCore)
    limiter = RecordingLimiter(engine.limiter)
    budget = RecordingBudget(engine.budget)
    engine.limiter = limiter
    engine.budget = budget
    system = ActorSystem()
    await engine.start(system, "claude-0")
    try:
        request = chat()
        chunks = [chunk async for chunk in engine.submit(request)]
        assert chunks
    finally:
        await engine.stop(timeout=5)
        await system.shutdown(timeout=5)

    assert limiter.estimates == [request.estimated_prompt_tokens() + CAP]
    [reservation] = budget.reservations
    assert reservation.reserved_usd == pytest.approx(CAP * OUTPUT_PER_MTOK / 1_000_000)
    [sent] = mock.requests
    assert sent.json()["max_tokens"] == CAP


def test_each_deployment_reserves_with_its_own_runtime_cap() -> None:
    openai = Deployment(
        name="gpt",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(api_key=SecretRef.inline("sk", warn=False)),
        budget=Budget(max_spend_per_hour=1.0),
        pricing=ModelPrice(input_per_mtok=0.0, output_per_mtok=1.0),
    )
    claude = anthropic("http://127.0.0.1:9", max_tokens_default=CAP)
    book = BudgetBook.from_config(Config(deployments=(openai, claude)))
    caps = {ledger.deployment: ledger.default_max_output_tokens for ledger in book.ledgers}
    assert caps == {"gpt": DEFAULT_MAX_OUTPUT_TOKENS, "claude": CAP}
