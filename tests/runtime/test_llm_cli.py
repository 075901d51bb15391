"""Simon Willison's ``llm`` (CLI and Python API) as a client of the gateway's
``/v1/chat/completions``.

The gateway is registered the way llm documents OpenAI-compatible servers: an
``extra-openai-models.yaml`` in llm's user directory, one entry per deployment (``api_base``
= the gateway's ``/v1``, ``api_key_name`` naming a key stored with ``llm keys set``,
``supports_tools``). That directory is a fresh temporary one per test (``LLM_USER_PATH``),
so nothing of the user's own llm setup is read or written. The CLI runs as the real
``llm`` program in a child process, exactly as a user runs it; the Python API runs in the
test's process, on llm's sync models in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llm
import openai
import pytest
import yaml
from mock_gateway import gateway_config, last_body, on_mock

from rakka_inference.core.policies import Jitter, RetryPolicy
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

UPSTREAM_KEY = "sk-llm-upstream-0001"
CLIENT_KEY = "rk-llm-client-0001"
KEY_NAME = "rakka"
RETRY = RetryPolicy(max_retries=1, initial_backoff_ms=1, max_backoff_ms=2, jitter=Jitter.NONE)
BACKENDS = ("gpt", "claude")
"""The OpenAI-backed and the Anthropic-backed deployment."""
CLI_TIMEOUT_S = 60.0
WEATHER_FUNCTION = """
def get_weather(city: str) -> str:
    "The weather in a city."
    return f"sunny in {city}"
"""


@dataclass
class Live:
    gpt: OpenAIMock
    claude: AnthropicMock
    base: str
    user_path: Path
    records: list[RequestRecord]

    def mock(self, deployment: str) -> OpenAIMock | AnthropicMock:
        return self.gpt if deployment == "gpt" else self.claude

    def sent(self, deployment: str) -> dict[str, Any]:
        """The body the deployment's provider last received."""
        return last_body(self.mock(deployment))

    async def llm(self, *args: str) -> tuple[str, str]:
        """Run the ``llm`` program with ``args``; its standard output and error (it must
        succeed)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llm",
            *args,
            env={**os.environ, "LLM_USER_PATH": str(self.user_path)},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
        assert process.returncode == 0, err.decode()
        return out.decode(), err.decode()


@pytest.fixture
async def live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Live]:
    reply = ReplyScript(text="Hello from the model", chunks=4)
    async with (
        OpenAIMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as gpt,
        AnthropicMock(faults=FaultPlan(valid_keys={UPSTREAM_KEY}), reply=reply) as claude,
    ):
        config = gateway_config(
            on_mock("gpt", gpt, UPSTREAM_KEY, retry=RETRY),
            on_mock("claude", claude, UPSTREAM_KEY, retry=RETRY),
            client_key=CLIENT_KEY,
        )
        records: list[RequestRecord] = []
        async with serving(Topology(config, on_record=records.append).gateway) as base:
            user_path = tmp_path / "llm"
            user_path.mkdir()
            models = [
                {
                    "model_id": f"rakka-{name}",
                    "model_name": name,
                    "api_base": f"{base}/v1",
                    "api_key_name": KEY_NAME,
                    "supports_tools": True,
                }
                for name in BACKENDS
            ]
            (user_path / "extra-openai-models.yaml").write_text(yaml.safe_dump(models))
            monkeypatch.setenv("LLM_USER_PATH", str(user_path))
            # What `llm keys set rakka` writes.
            (user_path / "keys.json").write_text(json.dumps({KEY_NAME: CLIENT_KEY}))
            yield Live(gpt, claude, base, user_path, records)


# ---------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_the_cli_streams_a_prompt(live: Live, deployment: str) -> None:
    out, _ = await live.llm("-m", f"rakka-{deployment}", "-s", "Be brief.", "say hello")

    assert out == "Hello from the model\n"
    record = live.records[-1]
    assert (record.deployment, record.outcome) == (deployment, "ok")
    sent = live.sent(deployment)
    assert sent["stream"] is True
    if deployment == "claude":
        assert sent["system"] == "Be brief."
        assert sent["messages"] == [
            {"role": "user", "content": [{"type": "text", "text": "say hello"}]}
        ]
    else:
        assert sent["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "say hello"},
        ]


async def test_the_cli_without_streaming_logs_the_exchange(live: Live) -> None:
    out, _ = await live.llm("-m", "rakka-claude", "--no-stream", "say hello")

    assert out == "Hello from the model\n"
    assert "stream" not in live.sent("claude")
    # llm logged the answer and the usage the gateway reported.
    [logged] = json.loads((await live.llm("logs", "-n", "1", "--json"))[0])
    record = live.records[-1]
    assert logged["model"] == "rakka-claude"
    assert logged["prompt"] == "say hello"
    assert logged["response"] == "Hello from the model"
    assert logged["input_tokens"] == record.usage.input_tokens > 0
    assert logged["output_tokens"] == record.usage.output_tokens > 0
    assert logged["response_json"]["model"] == "claude"
    assert logged["response_json"]["choices"][0]["finish_reason"] == "stop"


async def test_the_cli_runs_a_tool_the_model_calls(live: Live) -> None:
    # Asked with tools, the mock calls get_weather; given the tool's result, it answers
    # "You said: <the result>", so the output shows that the result went back upstream.
    live.claude.reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Paris"}),)
    )

    out, err = await live.llm(
        "-m", "rakka-claude", "--functions", WEATHER_FUNCTION, "--td", "weather in Paris?"
    )

    assert out == "You said: sunny in Paris\n"
    # --td (tools debug) shows the call llm ran and what the tool gave back.
    assert "Tool call: get_weather({'city': 'Paris'})\n  sunny in Paris" in err
    first, second = (request.json() for request in live.claude.requests)
    assert [tool["name"] for tool in first["tools"]] == ["get_weather"]
    [use] = second["messages"][1]["content"]
    assert (use["type"], use["name"], use["input"]) == (
        "tool_use",
        "get_weather",
        {"city": "Paris"},
    )
    assert second["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny in Paris"}
    ]


# ---------------------------------------------------------------------- the Python API
# llm's sync models, in a worker thread while the test's loop serves the gateway. (Its async
# models open a new OpenAI client for every prompt and never close it.)


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_the_python_api_prompts_and_streams(live: Live, deployment: str) -> None:
    model = llm.get_model(f"rakka-{deployment}")

    def prompt() -> tuple[str, llm.Usage, list[str]]:
        response = model.prompt("say hello", system="Be brief.", stream=False)
        text = response.text()
        return text, response.usage(), list(model.prompt("say hello"))

    text, usage, pieces = await asyncio.to_thread(prompt)

    assert text == "Hello from the model"
    assert usage.input == live.records[0].usage.input_tokens > 0
    assert usage.output == live.records[0].usage.output_tokens > 0
    assert len(pieces) > 1
    assert "".join(pieces) == "Hello from the model"
    first, second = (request.json() for request in live.mock(deployment).requests)
    assert "stream" not in first
    assert second["stream"] is True
    if deployment == "claude":
        assert first["system"] == "Be brief."
    else:
        assert first["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("deployment", BACKENDS)
async def test_the_python_api_chains_a_tool_call(live: Live, deployment: str) -> None:
    live.mock(deployment).reply = ReplyScript(
        tool_calls=(ScriptedToolCall("get_weather", {"city": "Oslo"}),)
    )
    asked: list[str] = []

    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    model = llm.get_model(f"rakka-{deployment}")
    chain = model.chain("weather in Oslo?", tools=[get_weather])

    assert await asyncio.to_thread(chain.text) == "You said: sunny in Oslo"
    assert asked == ["Oslo"]
    first, second = (request.json() for request in live.mock(deployment).requests)
    if deployment == "claude":
        assert [tool["name"] for tool in first["tools"]] == ["get_weather"]
        [use] = second["messages"][1]["content"]
        assert second["messages"][2]["content"] == [
            {"type": "tool_result", "tool_use_id": use["id"], "content": "sunny in Oslo"}
        ]
    else:
        assert [tool["function"]["name"] for tool in first["tools"]] == ["get_weather"]
        [call] = second["messages"][1]["tool_calls"]
        assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
        assert second["messages"][2] == {
            "role": "tool",
            "tool_call_id": call["id"],
            "content": "sunny in Oslo",
        }


async def test_a_wrong_key_is_the_gateways_401(live: Live) -> None:
    model = llm.get_model("rakka-gpt")

    with pytest.raises(openai.AuthenticationError) as caught:
        await asyncio.to_thread(lambda: model.prompt("hi", key="rk-wrong-key-0001").text())

    assert caught.value.status_code == 401
    assert "rk-wrong-key-0001" not in str(caught.value)
    assert not live.gpt.requests
