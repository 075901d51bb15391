"""A local deployment's budget: enforced like a remote one's, and its spend reported.

The local engine shares the engine core with the remote one, so the budget gate reserves
at admission and settles with the runner's cost; ``rakka cost-report`` lists the spend.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import openai
import pytest

from rakka_inference.apps.cli import main
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import Budget, ModelPrice
from rakka_inference.core.runtimes import RuntimeKind, TransformersConfig
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript
from rakka_inference.testkit.serving import serving

ADMIN = "rk-local-admin-0003"
PRICE = ModelPrice(input_per_mtok=1000.0, output_per_mtok=1000.0)  # $0.001 a token


@pytest.fixture
async def gateway() -> AsyncIterator[str]:
    script = MockScript(default=MockReply.text("a", "b", input_tokens=3))
    deployment = Deployment(
        name="tiny",
        model="tiny-local-model",
        runtime=RuntimeKind.TRANSFORMERS,
        runtime_config=TransformersConfig(),
        pricing=PRICE,
        budget=Budget(max_spend_per_hour=0.03),
    )
    config = Config(
        cluster=ClusterConfig(admin_api_key=SecretRef.inline(ADMIN, warn=False)),
        deployments=(deployment,),
    )
    topology = Topology(
        config, runners={RuntimeKind.TRANSFORMERS: lambda _: MockRunner(script, price=PRICE)}
    )
    async with serving(topology.gateway) as base:
        yield base


async def test_a_spent_local_budget_refuses_and_the_spend_is_reported(
    gateway: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    answered = 0
    refused: openai.RateLimitError | None = None
    for _ in range(50):
        try:
            await client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
        except openai.RateLimitError as error:
            refused = error
            break
        answered += 1
    await client.close()
    # Each answer costs 5 tokens ($0.005); each reservation holds prompt + max_tokens.
    assert refused is not None
    assert 3 <= answered <= 6
    error = refused.body
    assert isinstance(error, dict)
    assert error["code"] == "budget_exceeded"

    monkeypatch.setenv("RAKKA_ADMIN_KEY", ADMIN)
    code = await asyncio.to_thread(main, ["cost-report", "--url", gateway, "--window", "1h"])
    assert code == 0
    out = capsys.readouterr().out
    row = rf"tiny\s+tiny-local-model\s+{answered}\s+{answered * 0.005:.6f}"
    assert re.search(row, out), out
