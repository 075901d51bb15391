"""The sandbox behaves like a model: a newcomer's first structured-output script and first
tool loop, with the official openai SDK against the embedded default through the real
gateway, work as they would against a provider."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import openai
import pytest
from pydantic import BaseModel

from rakka_inference.apps.sandbox import Sandbox, sandbox_config
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.serving import serving


class Person(BaseModel):
    name: str
    age: int
    languages: list[str]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    sandbox = Sandbox()
    await sandbox.start()
    try:
        topology = Topology(sandbox_config(sandbox, bind="127.0.0.1:0", environ={}))
        async with serving(topology.gateway) as base:
            sdk = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            try:
                yield sdk
            finally:
                await sdk.close()
    finally:
        await sandbox.stop()


@pytest.mark.parametrize("model", ["sandbox", "sandbox-claude", "sandbox-gemini"])
async def test_structured_output_parses(client: openai.AsyncOpenAI, model: str) -> None:
    answer = await client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Who are you?"}],
        response_format=Person,
    )
    person = answer.choices[0].message.parsed
    assert isinstance(person, Person)
    assert person.languages


@pytest.mark.parametrize("model", ["sandbox", "sandbox-claude", "sandbox-gemini"])
async def test_a_tool_loop_runs_to_an_answer(client: openai.AsyncOpenAI, model: str) -> None:
    messages: list[dict[str, object]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = await client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    [call] = first.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("c", "f")
    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21"},
    ]
    final = await client.chat.completions.create(
        model=model,
        messages=messages,
        tools=[WEATHER],  # type: ignore[arg-type, list-item]
    )
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content
