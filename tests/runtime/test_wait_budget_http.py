"""End to end over real HTTP: a long Retry-After meets the request's wait budget.

The official openai SDK (its own retries off) → uvicorn → the gateway → the remote engine
→ the OpenAI mock answering 429 with ``Retry-After: 30``. The default budget (10 s) is
shorter than the wait asked for, so the gateway answers at once — no sleep is ever started
— with a 429 whose ``Retry-After`` is the upstream's 30 s, which the client's own retry
logic can act on; and a deployment with a fallback sends the request there instead. The
429 blocks the rate-limit key for those 30 s, and a request that arrives meanwhile is
answered at once too, with what is left of them, rather than held for a permit.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.remote.factory import RemoteServices
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

PRIMARY_KEY = "sk-primary-wait-0001"
BACKUP_KEY = "sk-backup-wait-0002"
GUARD_S = 5.0
"""Only a guard against a hang: the request would otherwise be held for 30 s."""


@dataclass
class Live:
    mock: OpenAIMock
    client: openai.AsyncOpenAI
    records: list[RequestRecord]
    sleeps: list[float]
    """Every wait the engines started (the retry backoffs and Retry-Afters)."""


def _deployment(
    mock: OpenAIMock, name: str, key: str, fallbacks: tuple[str, ...] = ()
) -> Deployment:
    config = OpenAIConfig(
        endpoint=mock.openai_base_url,
        api_key=SecretRef.inline(key, warn=False),
        retry=RetryPolicy(initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE),
    )
    return Deployment(
        name=name,
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=config,
        fallbacks=fallbacks,
    )


def _recording(sleeps: list[float]) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await asyncio.sleep(seconds)

    return sleep


@pytest.fixture
async def live() -> AsyncIterator[Live]:
    async with OpenAIMock(reply=ReplyScript(text="from the backup")) as mock:
        config = Config(
            cluster=ClusterConfig(),
            deployments=(
                _deployment(mock, "alone", PRIMARY_KEY),
                _deployment(mock, "primary", PRIMARY_KEY, fallbacks=("backup",)),
                _deployment(mock, "backup", BACKUP_KEY),
            ),
        )
        records: list[RequestRecord] = []
        sleeps: list[float] = []
        services = RemoteServices(sleep=_recording(sleeps))
        topology = Topology(config, services=services, on_record=records.append)
        async with serving(topology.gateway) as base:
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield Live(mock, client, records, sleeps)
            finally:
                await client.close()


async def test_a_long_retry_after_reaches_the_client_at_once(live: Live) -> None:
    live.mock.faults.for_key(PRIMARY_KEY, Fault.rate_limit(30))
    call = live.client.chat.completions.create(
        model="alone", messages=[{"role": "user", "content": "hi"}]
    )
    with pytest.raises(openai.RateLimitError) as limited:
        await asyncio.wait_for(call, GUARD_S)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "30"
    assert limited.value.code == "rate_limit_exceeded"
    assert "wait budget" in limited.value.message
    assert live.sleeps == []  # not one wait was started
    assert len(live.mock.requests) == 1
    [record] = live.records
    assert (record.outcome, record.attempts) == ("rate_limit_exceeded", 1)


async def test_a_request_meeting_the_blocked_key_is_answered_at_once(live: Live) -> None:
    live.mock.faults.for_key(PRIMARY_KEY, Fault.rate_limit(30))
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError):
        await asyncio.wait_for(
            live.client.chat.completions.create(model="alone", messages=messages), GUARD_S
        )
    # The key is blocked for the 30 s: the next request would wait for its permit up to
    # the queue timeout (30 s). Its 10 s budget does not cover the block: a 429 at once.
    call = live.client.chat.completions.create(model="alone", messages=messages)
    with pytest.raises(openai.RateLimitError) as limited:
        await asyncio.wait_for(call, GUARD_S)
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] in {"29", "30"}  # what is left
    assert limited.value.code == "rate_limit_exceeded"
    assert "wait budget" in limited.value.message
    assert len(live.mock.requests) == 1  # it never reached the upstream
    assert live.sleeps == []
    _, second = live.records
    assert (second.outcome, second.attempts) == ("rate_limit_exceeded", 0)
    # Before the first byte, a deployment with a fallback still sends it there.
    answer = await asyncio.wait_for(
        live.client.chat.completions.create(model="primary", messages=messages), GUARD_S
    )
    assert answer.choices[0].message.content == "from the backup"
    assert len(live.mock.requests) == 2  # the backup's key; the blocked one was not tried
    assert live.records[-1].tried == ["primary", "backup"]


async def test_a_spent_wait_budget_still_falls_back(live: Live) -> None:
    live.mock.faults.for_key(PRIMARY_KEY, Fault.rate_limit(30))
    call = live.client.chat.completions.create(
        model="primary", messages=[{"role": "user", "content": "hi"}]
    )
    answer = await asyncio.wait_for(call, GUARD_S)
    assert answer.choices[0].message.content == "from the backup"
    assert live.sleeps == []
    [record] = live.records
    assert (record.tried, record.outcome) == (["primary", "backup"], "ok")


async def test_a_client_shortens_its_wait_budget_with_a_header(live: Live) -> None:
    # Retry-After 1 s fits the deployment's 10 s budget: the gateway would wait and retry.
    # A client that will not wait sends x-rakka-max-wait-ms: 0 and gets the 429 at once.
    live.mock.faults.for_key(PRIMARY_KEY, Fault.rate_limit(1))
    call = live.client.chat.completions.create(
        model="alone",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-rakka-max-wait-ms": "0"},
    )
    with pytest.raises(openai.RateLimitError) as limited:
        await asyncio.wait_for(call, GUARD_S)
    assert limited.value.response.headers["retry-after"] == "1"
    assert live.sleeps == []
    with pytest.raises(openai.BadRequestError) as refused:
        await live.client.chat.completions.create(
            model="alone",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-rakka-max-wait-ms": "soon"},
        )
    assert refused.value.body["param"] == "x-rakka-max-wait-ms"  # type: ignore[index]
