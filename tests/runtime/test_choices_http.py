"""``n`` and ``logprobs`` / ``top_logprobs`` on ``/v1/chat/completions``, end to end with the
official openai SDK: forwarded to an OpenAI deployment, translated for a Gemini one (the
mocks answer in each provider's real wire format), unary and streamed; a clear 400 naming
the parameter from an Anthropic deployment; and a local engine's interleaved choices
streamed whole, each finishing on its own."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from mock_gateway import on_mock

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import (
    RuntimeKind,
    TransformersConfig,
)
from rakka_inference.core.stream import FinishReason, TokenChunk
from rakka_inference.core.usage import Usage
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.http_script import RecordedRequest
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.mock_runner import MockReply, MockRunner, MockScript
from rakka_inference.testkit.serving import serving

KEY = "sk-choices-upstream-01"
TEXT = "Bright clear day"
"""Choice 0's answer; choice 1's is ``TEXT + " (2)"`` (see testkit.mock_choices)."""
TEXTS = [TEXT, f"{TEXT} (2)"]
TOKENS = [["Bright", " clear", " day"], ["Bright", " clear", " day", " (2)"]]
LOGPROBS = [-0.125, -0.25, -0.375, -0.5]
"""The mocks' log probability of token 0, 1, 2, 3 of an answer."""
QUESTION = [{"role": "user", "content": "weather?"}]


@dataclass
class Live:
    openai_mock: OpenAIMock
    gemini_mock: GeminiMock
    client: openai.AsyncOpenAI
    script: MockScript


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    plan = FaultPlan(valid_keys={KEY})
    reply = ReplyScript(text=TEXT, chunks=2)
    script = MockScript()
    async with (
        OpenAIMock(faults=plan, reply=reply) as gpt,
        GeminiMock(faults=plan, reply=reply) as gemini,
        AnthropicMock(faults=plan, reply=reply) as claude,
    ):
        deployments = (
            on_mock("gpt", gpt, KEY),
            on_mock("gemini", gemini, KEY),
            on_mock("claude", claude, KEY),
            Deployment(
                name="local",
                model="tiny",
                runtime=RuntimeKind.TRANSFORMERS,
                runtime_config=TransformersConfig(),
            ),
        )
        topology = Topology(
            Config(cluster=ClusterConfig(), deployments=deployments),
            runners={RuntimeKind.TRANSFORMERS: lambda _d: MockRunner(script)},
        )
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(gpt, gemini, client, script)
            finally:
                await client.close()


def sent(requests: list[RecordedRequest]) -> dict[str, Any]:
    body: dict[str, Any] = requests[-1].json()
    return body


def check_tokens(content: Any, choice: int) -> None:
    """The log probabilities of choice ``choice``'s answer, two alternatives each."""
    assert content is not None
    assert [item.token for item in content] == TOKENS[choice]
    assert [item.logprob for item in content] == LOGPROBS[: len(TOKENS[choice])]
    for item in content:
        assert item.bytes == list(item.token.encode())
        assert [other.token for other in item.top_logprobs] == [item.token, "alt1"]
        assert item.top_logprobs[1].logprob == item.logprob - 1


@pytest.mark.parametrize("model", ["gpt", "gemini"])
async def test_two_choices_with_logprobs_unary(live: Live, model: str) -> None:
    answer = await live.client.chat.completions.create(
        model=model, messages=QUESTION, n=2, logprobs=True, top_logprobs=2
    )
    if model == "gpt":
        body = sent(live.openai_mock.requests)
        assert (body["n"], body["logprobs"], body["top_logprobs"]) == (2, True, 2)
    else:
        config = sent(live.gemini_mock.requests)["generationConfig"]
        assert (config["candidateCount"], config["responseLogprobs"], config["logprobs"]) == (
            2,
            True,
            2,
        )
    assert [choice.index for choice in answer.choices] == [0, 1]
    assert [choice.message.content for choice in answer.choices] == TEXTS
    assert [choice.finish_reason for choice in answer.choices] == ["stop", "stop"]
    for index, choice in enumerate(answer.choices):
        assert choice.logprobs is not None
        check_tokens(choice.logprobs.content, index)
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3 + 4  # both choices' tokens


@pytest.mark.parametrize("model", ["gpt", "gemini"])
async def test_two_choices_with_logprobs_streamed(live: Live, model: str) -> None:
    stream = await live.client.chat.completions.create(
        model=model,
        messages=QUESTION,
        n=2,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = defaultdict(str)
    records: dict[int, list[Any]] = defaultdict(list)
    finishes: dict[int, str] = {}
    order: list[int] = []
    usage_last = False
    async for chunk in stream:
        usage_last = chunk.usage is not None
        for choice in chunk.choices:
            if choice.delta.content:
                order.append(choice.index)
            texts[choice.index] += choice.delta.content or ""
            if choice.logprobs is not None and choice.logprobs.content:
                records[choice.index].extend(choice.logprobs.content)
            if choice.finish_reason is not None:
                assert choice.index not in finishes  # one finish per choice
                finishes[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == TEXTS
    assert finishes == {0: "stop", 1: "stop"}
    check_tokens(records[0], 0)
    check_tokens(records[1], 1)
    assert usage_last  # the usage chunk comes after every choice's finish
    # The choices interleave: choice 1 speaks before choice 0 has finished.
    assert order.index(1) < max(i for i, index in enumerate(order) if index == 0)


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": True, "top_logprobs": 1}, "top_logprobs"),
    ],
)
async def test_anthropic_refuses_them_naming_the_parameter(
    live: Live, options: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await live.client.chat.completions.create(model="claude", messages=QUESTION, **options)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["param"] == param
    assert body["message"].startswith("Anthropic ")


async def test_a_local_engines_interleaved_choices_each_finish_on_their_own(live: Live) -> None:
    # Choice 0 finishes first; choice 1 goes on after it, and the usage comes last.
    reply = MockReply(
        chunks=(
            TokenChunk(text="a"),
            TokenChunk(text="x", choice=1),
            TokenChunk(finish_reason=FinishReason.STOP),
            TokenChunk(text="y", choice=1),
            TokenChunk(finish_reason=FinishReason.LENGTH, choice=1),
            TokenChunk(usage=Usage(input_tokens=2, output_tokens=3)),
        )
    )
    live.script.add(reply, reply)
    stream = await live.client.chat.completions.create(
        model="local", messages=QUESTION, n=2, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = defaultdict(str)
    finishes: dict[int, str] = {}
    usage = None
    async for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert dict(texts) == {0: "a", 1: "xy"}
    assert finishes == {0: "stop", 1: "length"}
    assert usage is not None
    assert usage.completion_tokens == 3
    answer = await live.client.chat.completions.create(model="local", messages=QUESTION, n=2)
    assert [(c.index, c.message.content, c.finish_reason) for c in answer.choices] == [
        (0, "a", "stop"),
        (1, "xy", "length"),
    ]
    assert [request.sampling.n for request in live.script.requests] == [2, 2]  # type: ignore[union-attr]
