"""Several choices and log probabilities from the OpenAI and Gemini mocks, read by each
provider's official SDK (fidelity), and the shared rules of
:mod:`rakka_inference.testkit.mock_choices`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator

import httpx
import openai
import orjson
import pytest
from google import genai
from google.genai import types

from rakka_inference.testkit.faults import FaultPlan, ReplyScript, ScriptedToolCall
from rakka_inference.testkit.mock_choices import choice_text, token_logprob, tokens
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import OpenAIMock

KEY = "sk-mock-choices-0001"
MODEL = "gemini-2.5-flash"
TEXT = "Sun and wind"
AZURE_CHAT = "/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21"
sdk = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning:google.genai._api_client"
)


def test_tokens_rebuild_the_text_and_choices_differ() -> None:
    for text in ("You said: hi", "  lead", "trail  ", "", "one"):
        assert "".join(tokens(text)) == text
    assert tokens("You said: hi") == ["You", " said:", " hi"]
    assert choice_text("a", 0) == "a"
    assert choice_text("a", 2) == "a (3)"
    assert choice_text('{"a": 1}', 2, structured=True) == '{"a": 1}'
    assert [token_logprob(i) for i in range(5)] == [-0.125, -0.25, -0.375, -0.5, -0.125]


# ---------------------------------------------------------------- OpenAI


@pytest.fixture
async def gpt() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(faults=FaultPlan(valid_keys={KEY}), reply=ReplyScript(text=TEXT)) as m:
        yield m


@pytest.fixture
async def client(gpt: OpenAIMock) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=gpt.openai_base_url, api_key=KEY) as sdk_client:
        yield sdk_client


QUESTION: list[dict[str, str]] = [{"role": "user", "content": "weather?"}]


async def test_openai_choices_with_logprobs(client: openai.AsyncOpenAI) -> None:
    answer = await client.chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,  # type: ignore[arg-type]
        n=2,
        logprobs=True,
        top_logprobs=3,
        max_tokens=3,
    )
    assert [(c.index, c.message.content, c.finish_reason) for c in answer.choices] == [
        (0, TEXT, "stop"),
        (1, "Sun and wind", "length"),  # "Sun and wind (2)" cut at three words
    ]
    first = answer.choices[0].logprobs
    assert first is not None
    assert first.content is not None
    assert [t.token for t in first.content] == ["Sun", " and", " wind"]
    assert next([a.token for a in t.top_logprobs] for t in first.content) == ["Sun", "alt1", "alt2"]
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 6
    plain = await client.chat.completions.create(model="gpt-4o", messages=QUESTION)  # type: ignore[arg-type]
    assert [c.logprobs for c in plain.choices] == [None]


async def test_openai_streamed_choices_call_tools_with_ids_of_their_own(
    client: openai.AsyncOpenAI, gpt: OpenAIMock
) -> None:
    gpt.reply = ReplyScript(tool_calls=(ScriptedToolCall("get_time", {"zone": "CET"}),))
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=QUESTION,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        n=2,
        stream=True,
    )
    ids: dict[int, str] = {}
    finishes: dict[int, str] = {}
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                if call.id:
                    ids[choice.index] = call.id
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert finishes == {0: "tool_calls", 1: "tool_calls"}
    assert len(set(ids.values())) == 2


async def test_azure_choices_each_carry_their_filter_results(gpt: OpenAIMock) -> None:
    async with httpx.AsyncClient(base_url=gpt.url) as http:
        response = await http.post(
            AZURE_CHAT,
            headers={"api-key": KEY},
            json={"messages": QUESTION, "n": 2, "response_format": {"type": "json_object"}},
        )
    document = orjson.loads(response.content)
    assert [c["message"]["content"] for c in document["choices"]] == [TEXT, TEXT]  # structured
    assert all("content_filter_results" in c for c in document["choices"])


# ---------------------------------------------------------------- Gemini


@pytest.fixture
async def gemini() -> AsyncIterator[GeminiMock]:
    async with GeminiMock(faults=FaultPlan(valid_keys={KEY}), reply=ReplyScript(text=TEXT)) as m:
        yield m
    assert not m.server.errors


@pytest.fixture
async def google(gemini: GeminiMock) -> AsyncIterator[genai.client.AsyncClient]:
    sync = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=gemini.url))
    try:
        yield sync.aio
    finally:
        await sync.aio.aclose()
        sync.close()


LOGPROBS = types.GenerateContentConfig(candidate_count=2, response_logprobs=True, logprobs=2)


@sdk
async def test_gemini_candidates_with_logprobs(google: genai.client.AsyncClient) -> None:
    response = await google.models.generate_content(
        model=MODEL, contents="weather?", config=LOGPROBS
    )
    assert response.candidates is not None
    texts = [c.content.parts[0].text for c in response.candidates]  # type: ignore[union-attr,index]
    assert texts == [TEXT, f"{TEXT} (2)"]
    result = response.candidates[1].logprobs_result
    assert result is not None
    assert result.chosen_candidates is not None
    assert [c.token for c in result.chosen_candidates] == ["Sun", " and", " wind", " (2)"]
    assert [c.log_probability for c in result.chosen_candidates] == [-0.125, -0.25, -0.375, -0.5]
    assert result.top_candidates is not None
    assert [c.token for c in result.top_candidates[0].candidates or ()] == ["Sun", "alt1"]
    usage = response.usage_metadata
    assert usage is not None
    assert usage.candidates_token_count == 3 + 4


@sdk
async def test_gemini_streamed_candidates_finish_apart(google: genai.client.AsyncClient) -> None:
    stream = await google.models.generate_content_stream(
        model=MODEL, contents="weather?", config=LOGPROBS
    )
    texts: dict[int, str] = defaultdict(str)
    finished_at: dict[int, int] = {}
    events = 0
    async for event in stream:
        for candidate in event.candidates or ():
            index = candidate.index or 0
            texts[index] += "".join(p.text or "" for p in candidate.content.parts or ())  # type: ignore[union-attr]
            assert candidate.logprobs_result is not None
            if candidate.finish_reason is not None:
                finished_at[index] = events
        events += 1
    assert dict(texts) == {0: TEXT, 1: f"{TEXT} (2)"}
    assert finished_at == {0: 2, 1: 3}  # a token per event: candidate 1 has one more


async def test_gemini_logprobs_without_alternatives(gemini: GeminiMock) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"responseLogprobs": True},
    }
    async with httpx.AsyncClient(base_url=gemini.url) as http:
        response = await http.post(
            f"/v1beta/models/{MODEL}:generateContent", headers={"x-goog-api-key": KEY}, json=body
        )
    [candidate] = orjson.loads(response.content)["candidates"]
    result = candidate["logprobsResult"]
    assert [c["token"] for c in result["chosenCandidates"]] == ["Sun", " and", " wind"]
    assert result["logProbabilitySum"] == -0.75
    assert "topCandidates" not in result


async def test_gemini_candidates_think_and_call_alike(gemini: GeminiMock) -> None:
    gemini.thoughts = "Hmm"
    gemini.reply = ReplyScript(tool_calls=(ScriptedToolCall("get_time", {}),))
    body = {
        "contents": [{"role": "user", "parts": [{"text": "time?"}]}],
        "tools": [{"functionDeclarations": [{"name": "get_time"}]}],
        "generationConfig": {
            "candidateCount": 2,
            "thinkingConfig": {"includeThoughts": True},
            "responseLogprobs": True,
        },
    }
    async with httpx.AsyncClient(base_url=gemini.url) as http:
        response = await http.post(
            f"/v1beta/models/{MODEL}:generateContent", headers={"x-goog-api-key": KEY}, json=body
        )
    document = orjson.loads(response.content)
    for index, candidate in enumerate(document["candidates"]):
        assert candidate["index"] == index
        [thought, call] = candidate["content"]["parts"]
        assert (thought["thought"], call["functionCall"]["name"]) == (True, "get_time")
        assert "logprobsResult" not in candidate  # calls carry no token log probabilities
    assert document["usageMetadata"]["thoughtsTokenCount"] == 2  # each candidate thought


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        ({"n": 129}, "Invalid 'n': integer above maximum value. Expected a value <= 128", None),
        ({"n": 0}, "Expected a value >= 1, but got 0 instead.", "integer_below_min_value"),
        ({"n": "2"}, "Invalid type for 'n': expected an integer, but got a string", None),
        ({"logprobs": True, "top_logprobs": 21}, "Expected a value <= 20", None),
        ({"top_logprobs": [1]}, "but got an array instead", "invalid_type"),
        ({"top_logprobs": 1.5}, "but got a decimal instead", None),
        ({"top_logprobs": True}, "but got a boolean instead", None),
        ({"top_logprobs": {}}, "but got an object instead", None),
    ],
)
async def test_openai_bounds_choices_and_alternatives(
    gpt: OpenAIMock, extra: dict[str, object], message: str, code: str | None
) -> None:
    async with httpx.AsyncClient(base_url=gpt.openai_base_url) as http:
        response = await http.post(
            "/chat/completions",
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "gpt-4o", "messages": QUESTION, **extra},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert error["param"] == ("n" if "n" in extra else "top_logprobs")
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize(
    "generation",
    [{"candidateCount": 9}, {"candidateCount": 0}, {"logprobs": 21}, {"candidateCount": "2"}],
)
async def test_gemini_bounds_candidates_and_alternatives(
    gemini: GeminiMock, generation: dict[str, object]
) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": generation,
    }
    async with httpx.AsyncClient(base_url=gemini.url) as http:
        response = await http.post(
            f"/v1beta/models/{MODEL}:generateContent", headers={"x-goog-api-key": KEY}, json=body
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    [name] = generation
    assert f"has a {name} value of" in error["message"]
    assert "supported range is from" in error["message"]
