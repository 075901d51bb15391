"""A budget limit crossed is logged and counted: the engine builder's ledgers tell the log
and the metrics, whatever the deployment's ``on_exceeded``."""

from __future__ import annotations

import logging

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.messages import ChatMessage, ChatRequest, SamplingParams
from rakka_inference.core.policies import Budget, BudgetAction, ModelPrice
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.engine.budget import BudgetEvent
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.runtime.replicas import EngineBuilder
from rakka_inference.testkit.clock import FakeClock

DOLLAR_PER_TOKEN = ModelPrice(input_per_mtok=0.0, output_per_mtok=1_000_000.0)


def test_a_warn_budget_crossed_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    builder = EngineBuilder(clock=FakeClock(1_000_000.0))
    metrics = InferenceMetrics()
    seen: list[BudgetEvent] = []

    def told(event: BudgetEvent) -> None:
        seen.append(event)
        metrics.budget_event(event)

    builder.on_budget_event = told
    deployment = Deployment(
        name="chat",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(),
        budget=Budget(max_spend_per_hour=2.0, on_exceeded=BudgetAction.WARN),
        pricing=DOLLAR_PER_TOKEN,
    )
    ledger = builder._ledger(deployment)
    request = ChatRequest(
        model="chat", messages=(ChatMessage.user("hi"),), sampling=SamplingParams(max_tokens=3)
    )
    with caplog.at_level(logging.INFO, logger="rakka_inference.replicas"):
        hold = ledger.reserve(request)  # $3 reserved against $2: over, and admitted (warn)
        hold.settle(0.0)  # it cost nothing in the end: back under
    assert [e.exceeded for e in seen] == [True, False]
    messages = [r.getMessage() for r in caplog.records]
    assert "over its limit of $2.0000 (on_exceeded = warn)" in messages[0]
    assert "back under its limit" in messages[1]
    rendered = metrics.render().decode()
    assert (
        'inference_budget_exceeded_total{deployment="chat",window="hour",action="warn"} 1'
        in rendered
    )
