"""Hostile requests as a client sends them: the official ``openai`` and ``anthropic`` SDKs,
over real HTTP, against a gateway in front of the testkit's mocks.

- JSON held in a string (a tool call's ``arguments``) nested too deep is a 400 naming the
  string, in each dialect, whichever provider serves the model (it was a 500 where the
  provider takes the arguments structured: Claude, Gemini); an integer past 64 bits in it
  is served.
- Every number past its bound is a 400 naming it, through each SDK.
- The sandbox answers a schema that asks for a huge example (``minItems`` of a billion) with
  a small one.
- A 429 that no retry can cure — a request whose own maximum cost passes its deployment's
  budget, or whose tokens pass its rate limit; a spent upstream quota — says
  ``x-should-retry: false`` and no ``Retry-After``, and the SDKs (which retry a 429 twice by
  default) send it once; a spent budget's 429 says when it has room again.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from rakka_inference.apps.sandbox import Sandbox, sandbox_config
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.messages import (
    MAX_OUTPUT_TOKENS,
    MAX_TOOLS,
    MAX_TOP_K,
    MAX_USER_LENGTH,
)
from rakka_inference.core.policies import Budget, ModelPrice, RateLimits, RetryPolicy
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.http_script import RecordedRequest, ScriptedResponse
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.openai_render import error_response
from rakka_inference.testkit.serving import serving

DEEP = '{"a":' * 300 + "{}" + "}" * 300
"""JSON text nested 301 levels deep: orjson writes at most 254."""
UPSTREAM_KEY = "sk-upstream-hostile-0001"


@dataclass
class Clients:
    """The SDKs against one gateway (retrying as they do by default), and the path of
    every request they sent, retries included."""

    openai: openai.AsyncOpenAI
    anthropic: anthropic.AsyncAnthropic
    sent: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def clients_of(topology: Topology) -> AsyncIterator[Clients]:
    async with serving(topology.gateway) as base:
        sent: list[str] = []

        async def count(request: httpx.Request | httpx2.Request) -> None:
            sent.append(request.url.path)

        hooks = {"request": [count]}
        async with (
            httpx.AsyncClient(event_hooks=hooks) as for_openai,
            httpx2.AsyncClient(event_hooks=hooks) as for_anthropic,  # the SDK's own httpx
        ):
            yield Clients(
                openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="k", http_client=for_openai),
                anthropic.AsyncAnthropic(base_url=base, api_key="k", http_client=for_anthropic),
                sent,
            )


@pytest.fixture
async def sandbox() -> AsyncIterator[Clients]:
    """The sandbox (``rakka serve`` with no config): its mocks, and a gateway before them."""
    mocks = Sandbox()
    await mocks.start()
    try:
        topology = Topology(sandbox_config(mocks, bind="127.0.0.1:0", environ={}))
        async with clients_of(topology) as clients:
            yield clients
    finally:
        await mocks.stop()


def exchange(arguments: str) -> list[Any]:
    return [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]


# --------------------------------------------------------------------------- JSON in a string


@pytest.mark.parametrize("model", ["sandbox-gpt", "sandbox-claude", "sandbox-gemini"])
async def test_tool_call_arguments_nested_too_deep_are_a_400(sandbox: Clients, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sandbox.openai.chat.completions.create(model=model, messages=exchange(DEEP))
    assert refused.value.param == "messages[1].tool_calls[0].function.arguments"
    assert refused.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as refused:
        await sandbox.openai.responses.create(
            model=model,
            input=[
                {"role": "user", "content": "weather?"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": DEEP},
                {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            ],
        )
    assert refused.value.param == "input[1].arguments"


@pytest.mark.parametrize("model", ["sandbox-claude", "sandbox-gemini"])
async def test_tool_call_arguments_with_an_integer_past_64_bits_are_served(
    sandbox: Clients, model: str
) -> None:
    arguments = '{"big": 123456789012345678901234567890}'
    answer = await sandbox.openai.chat.completions.create(model=model, messages=exchange(arguments))
    assert answer.choices[0].message.content


# --------------------------------------------------------------------------- numeric bounds


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": MAX_OUTPUT_TOKENS + 1}, "max_tokens"),
        ({"max_tokens": 2**63}, "max_tokens"),
        ({"max_completion_tokens": 2**64 - 1}, "max_completion_tokens"),
        ({"seed": 2**63}, "seed"),
        ({"user": "u" * (MAX_USER_LENGTH + 1)}, "user"),
        ({"stop": ["x" * 5000]}, "stop[0]"),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": f"f{i}"}}
                    for i in range(MAX_TOOLS + 1)
                ]
            },
            "tools",
        ),
    ],
)
async def test_a_chat_number_past_its_bound_is_a_400(
    sandbox: Clients, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sandbox.openai.chat.completions.create(
            model="sandbox-gpt", messages=[{"role": "user", "content": "hi"}], **fields
        )
    assert refused.value.param == param
    assert sandbox.sent == ["/v1/chat/completions"]  # a 400: the SDK does not retry


async def test_a_responses_output_cap_past_its_bound_is_a_400(sandbox: Clients) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await sandbox.openai.responses.create(
            model="sandbox-claude", input="hi", max_output_tokens=MAX_OUTPUT_TOKENS + 1
        )
    assert refused.value.param == "max_output_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"max_tokens": MAX_OUTPUT_TOKENS + 1}, "max_tokens"),
        ({"max_tokens": 16, "extra_body": {"top_k": MAX_TOP_K + 1}}, "top_k"),
        ({"max_tokens": 16, "metadata": {"user_id": "u" * 300}}, "metadata.user_id"),
        ({"max_tokens": 16, "stop_sequences": ["x" * 5000]}, "stop_sequences.0"),
    ],
)
async def test_a_messages_number_past_its_bound_is_a_400(
    sandbox: Clients, fields: dict[str, Any], param: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await sandbox.anthropic.messages.create(
            model="sandbox-claude",
            messages=[{"role": "user", "content": "hi"}],
            timeout=30,  # else the SDK itself refuses a huge max_tokens unstreamed
            **fields,
        )
    body = refused.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(f"{param}: ")


# --------------------------------------------------------------------------- request ids


@pytest.mark.parametrize(
    "client_id",
    ["trace-7f3a.b:c_d", "x" * 129, "<script>alert(1)</script>", "a b", "x;y=1"],
)
async def test_a_client_request_id_never_becomes_the_answers_id(
    sandbox: Clients, client_id: str
) -> None:
    echoed = client_id == "trace-7f3a.b:c_d"  # short and plain: echoed, not trusted
    chat = await sandbox.openai.chat.completions.with_raw_response.create(
        model="sandbox-gpt",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": client_id},
    )
    message = await sandbox.anthropic.messages.with_raw_response.create(
        model="sandbox-claude",
        max_tokens=16,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": client_id},
    )
    for raw, answer_id, prefix in (
        (chat, chat.parse().id, "chatcmpl-"),
        (message, (await message.parse()).id, "msg_"),  # the anthropic SDK's parse awaits
    ):
        assert re.fullmatch(prefix + "[0-9a-f]{32}", answer_id), answer_id
        header = raw.headers["x-request-id"]
        if echoed:
            assert header == client_id
        else:
            assert header == "req_" + answer_id.removeprefix(prefix)


# --------------------------------------------------------------------------- the sandbox


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "array", "minItems": 10**9, "items": {"type": "string"}},
        {"type": "string", "minLength": 10**9},
        {
            "$defs": {
                "a": {
                    "type": "object",
                    "properties": {f"p{i}": {"$ref": "#/$defs/b"} for i in range(100)},
                },
                "b": {
                    "type": "object",
                    "properties": {f"q{i}": {"$ref": "#/$defs/c"} for i in range(100)},
                },
                "c": {
                    "type": "object",
                    "properties": {f"r{i}": {"type": "string"} for i in range(100)},
                },
            },
            "$ref": "#/$defs/a",
        },
    ],
    ids=["a-billion-items", "a-billion-characters", "a-million-properties"],
)
async def test_the_sandbox_answers_an_amplifying_schema_with_a_small_example(
    sandbox: Clients, schema: dict[str, Any]
) -> None:
    # Before, 2M items were 24 MB and 3 s of one request; a billion, a gateway gone.
    answer = await sandbox.openai.chat.completions.with_raw_response.create(
        model="sandbox-gpt",
        messages=[{"role": "user", "content": "hi"}],
        response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
    )
    assert answer.status_code == 200
    assert len(answer.content) < 256 * 1024


# --------------------------------------------------------------------------- 429s


class QuotaSpentMock(OpenAIMock):
    """OpenAI's answer once an account's credit is gone: a 429 ``insufficient_quota``."""

    def respond(self, request: RecordedRequest) -> ScriptedResponse:
        return error_response(
            0,
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            kind="insufficient_quota",
            code="insufficient_quota",
        )


DOLLAR_A_TOKEN = ModelPrice(input_per_mtok=0.0, output_per_mtok=1_000_000.0)


def deployment(mock: OpenAIMock, name: str, model: str, **fields: Any) -> Deployment:
    limits = fields.pop("rate_limits", RateLimits())
    return Deployment(
        name=name,
        model=model,
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url,
            api_key=SecretRef.inline(UPSTREAM_KEY, warn=False),
            retry=RetryPolicy(max_retries=0),
            rate_limits=limits,
        ),
        **fields,
    )


@pytest.fixture
async def limited() -> AsyncIterator[tuple[Clients, OpenAIMock, OpenAIMock]]:
    """Deployments with a $1-an-hour budget at $1 a token, a 10-token-a-minute limit, and
    one whose upstream's quota is spent."""
    mock = OpenAIMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=ReplyScript(text="ok"))
    spent = QuotaSpentMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}))
    async with mock, spent:
        config = Config(
            cluster=ClusterConfig(),
            deployments=(
                deployment(
                    mock,
                    "budgeted",
                    "gpt-4o",
                    budget=Budget(max_spend_per_hour=1.0),
                    pricing=DOLLAR_A_TOKEN,
                ),
                # Another model: a limiter of its own (one key, one set of limits).
                deployment(
                    mock, "narrow", "gpt-4o-mini", rate_limits=RateLimits(tokens_per_minute=10)
                ),
                deployment(spent, "broke", "gpt-4o"),
            ),
        )
        async with clients_of(Topology(config)) as clients:
            yield clients, mock, spent


def says_never_retry(headers: httpx.Headers) -> None:
    assert "retry-after" not in headers
    assert headers["x-should-retry"] == "false"


async def test_a_request_that_alone_passes_the_budget_is_not_retried(
    limited: tuple[Clients, OpenAIMock, OpenAIMock],
) -> None:
    clients, mock, _ = limited
    # Its maximum cost ($2: two tokens) passes the $1 limit: no wait lets it in.
    with pytest.raises(openai.RateLimitError) as refused:
        await clients.openai.chat.completions.create(
            model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    says_never_retry(refused.value.response.headers)
    assert refused.value.code == "budget_exceeded"
    assert clients.sent == ["/v1/chat/completions"]  # once: the SDK obeyed
    assert mock.requests == []
    with pytest.raises(anthropic.RateLimitError) as refused_too:
        await clients.anthropic.messages.create(
            model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    says_never_retry(refused_too.value.response.headers)
    assert clients.sent == ["/v1/chat/completions", "/v1/messages"]


async def test_a_spent_budget_says_when_it_has_room_again(
    limited: tuple[Clients, OpenAIMock, OpenAIMock],
) -> None:
    clients, mock, _ = limited
    # One token reserved, the answer's tokens settled: spend passes the $1 an hour.
    await clients.openai.chat.completions.create(
        model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    openai_once = clients.openai.with_options(max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        await openai_once.chat.completions.create(
            model="budgeted", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    headers = refused.value.response.headers
    assert "x-should-retry" not in headers
    # The spend leaves the hour between 60 and 61 minutes after it was made.
    assert 3500 <= int(headers["retry-after"]) <= 3660
    assert len(mock.requests) == 1


async def test_a_request_that_alone_passes_a_rate_limit_is_not_retried(
    limited: tuple[Clients, OpenAIMock, OpenAIMock],
) -> None:
    clients, mock, _ = limited
    with pytest.raises(openai.RateLimitError) as refused:
        await clients.openai.chat.completions.create(
            model="narrow", messages=[{"role": "user", "content": "hi"}], max_tokens=100
        )
    says_never_retry(refused.value.response.headers)
    assert refused.value.code == "rate_limit_exceeded"
    assert clients.sent == ["/v1/chat/completions"]
    assert mock.requests == []


async def test_a_spent_upstream_quota_is_not_retried(
    limited: tuple[Clients, OpenAIMock, OpenAIMock],
) -> None:
    clients, _, spent = limited
    with pytest.raises(openai.RateLimitError) as refused:
        await clients.openai.chat.completions.create(
            model="broke", messages=[{"role": "user", "content": "hi"}]
        )
    says_never_retry(refused.value.response.headers)
    assert refused.value.code == "insufficient_quota"
    assert clients.sent == ["/v1/chat/completions"]
    assert len(spent.requests) == 1
    with pytest.raises(anthropic.RateLimitError) as refused_too:
        await clients.anthropic.messages.create(
            model="broke", messages=[{"role": "user", "content": "hi"}], max_tokens=8
        )
    says_never_retry(refused_too.value.response.headers)
    body = refused_too.value.body
    assert isinstance(body, dict)
    assert body["error"]["type"] == "billing_error"
    assert len(spent.requests) == 2
