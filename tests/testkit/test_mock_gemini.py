"""The Gemini mock: the official ``google-genai`` SDK as its client, then the wire itself.

The SDK builds its own aiohttp session by subclassing ``aiohttp.ClientSession``, which
aiohttp answers with a DeprecationWarning at class creation. Passing our own session
(``HttpOptions.aiohttp_client``) would avoid it, but then the SDK would not run its
default transport, which is the one to prove; so the SDK tests ignore exactly that
warning, raised from ``google.genai._api_client``, and nothing else.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.genai import errors, types
from google.oauth2 import service_account

from rakka_inference.testkit.faults import (
    FAULT_HEADER,
    Fault,
    FaultPlan,
    ReplyScript,
    ScriptedToolCall,
    count_tokens,
)
from rakka_inference.testkit.mock_gemini import JWT_BEARER_GRANT, GeminiMock

KEY = "AIzaSy-mock-valid-0001"
MODEL = "gemini-2.5-flash"
STUDIO = f"/v1beta/models/{MODEL}"
VERTEX = f"/v1/projects/proj/locations/us-central1/publishers/google/models/{MODEL}"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="The weather in a city.",
    parameters=types.Schema(
        type=types.Type.OBJECT,
        properties={"city": types.Schema(type=types.Type.STRING)},
        required=["city"],
    ),
)
TIME = types.FunctionDeclaration(name="get_time", description="The time in a city.")
TOKEN_FORM = {"grant_type": JWT_BEARER_GRANT, "assertion": "h.c.s"}

sdk = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning:google.genai._api_client"
)


@pytest.fixture
async def mock() -> AsyncIterator[GeminiMock]:
    async with GeminiMock(faults=FaultPlan(valid_keys={KEY}), reply=ReplyScript(chunks=3)) as m:
        yield m
    assert not m.server.errors  # the mock itself never failed


@pytest.fixture
async def client(mock: GeminiMock) -> AsyncIterator[genai.client.AsyncClient]:
    sync = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=mock.url))
    try:
        yield sync.aio
    finally:
        await sync.aio.aclose()
        sync.close()


@pytest.fixture
async def http(mock: GeminiMock) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock.url, timeout=2.0) as raw:
        yield raw


# ---------------------------------------------------------------- the official SDK


@sdk
async def test_sdk_generates(client: genai.client.AsyncClient, mock: GeminiMock) -> None:
    config = types.GenerateContentConfig(system_instruction="Be brief.")
    response = await client.models.generate_content(
        model=MODEL, contents="hello there", config=config
    )
    assert response.text == "You said: hello there"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason is types.FinishReason.STOP
    assert response.model_version == MODEL
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == count_tokens(["Be brief.", "hello there"]) == 4
    assert usage.candidates_token_count == 4
    assert usage.total_token_count == 8
    [sent] = mock.requests
    assert sent.path == f"/v1/models/{MODEL}:generateContent"  # the SDK's default version
    assert sent.headers["x-goog-api-key"] == KEY
    assert KEY not in sent.query


@sdk
async def test_sdk_streams_running_usage(client: genai.client.AsyncClient) -> None:
    stream = await client.models.generate_content_stream(model=MODEL, contents="one two three")
    chunks = [chunk async for chunk in stream]
    assert "".join(chunk.text or "" for chunk in chunks) == "You said: one two three"
    assert len(chunks) == 3
    counts = [
        chunk.usage_metadata and chunk.usage_metadata.candidates_token_count for chunk in chunks
    ]
    # "You said", ": one tw", "o three": each event has the words begun so far
    assert counts == [2, 4, 5]
    final = chunks[-1].usage_metadata
    assert final is not None
    assert (final.prompt_token_count, final.candidates_token_count) == (3, 5)
    assert final.total_token_count == 8  # not the sum over the events
    finishes = [chunk.candidates[0].finish_reason for chunk in chunks]  # type: ignore[index]
    assert finishes == [None, None, types.FinishReason.STOP]


@sdk
async def test_sdk_function_calling_round_trip(
    client: genai.client.AsyncClient, mock: GeminiMock
) -> None:
    mock.reply = ReplyScript(tool_calls=[ScriptedToolCall("get_weather", {"city": "Paris"})])
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    question = types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])
    first = await client.models.generate_content(model=MODEL, contents=[question], config=config)
    [call] = first.function_calls or []
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    assert first.candidates is not None
    answer = types.Part.from_function_response(name="get_weather", response={"temp_c": 21})
    second = await client.models.generate_content(
        model=MODEL,
        contents=[
            question,
            first.candidates[0].content,
            types.Content(role="user", parts=[answer]),
        ],
        config=config,
    )
    assert second.function_calls is None
    assert second.text == 'You said: get_weather returned {"temp_c":21}'
    history = mock.requests[1].json()["contents"]
    assert [content["role"] for content in history] == ["user", "model", "user"]
    assert history[1]["parts"][0]["functionCall"]["name"] == "get_weather"


@sdk
async def test_sdk_parallel_calls_unary_and_streamed(
    client: genai.client.AsyncClient, mock: GeminiMock
) -> None:
    mock.reply = ReplyScript(
        tool_calls=[
            ScriptedToolCall("get_weather", {"city": "Oslo"}),
            ScriptedToolCall("get_time", {"city": "Oslo"}),
        ]
    )
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER, TIME])])
    unary = await client.models.generate_content(model=MODEL, contents="Oslo?", config=config)
    assert [c.name for c in unary.function_calls or []] == ["get_weather", "get_time"]
    stream = await client.models.generate_content_stream(
        model=MODEL, contents="Oslo?", config=config
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 1  # calls come whole, in one event
    assert [c.args for c in chunks[0].function_calls or []] == [{"city": "Oslo"}] * 2


@sdk
async def test_sdk_thoughts_and_cached_tokens() -> None:
    async with GeminiMock(thoughts="Let me think it over", cached_tokens=2) as mock:
        sync = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=mock.url))
        try:
            thinking = types.ThinkingConfig(include_thoughts=True)
            response = await sync.aio.models.generate_content(
                model=MODEL,
                contents="why is the sky blue",
                config=types.GenerateContentConfig(thinking_config=thinking),
            )
        finally:
            await sync.aio.aclose()
            sync.close()
    assert response.candidates is not None
    content = response.candidates[0].content
    assert content is not None
    parts = content.parts or []
    assert [(p.thought, p.text) for p in parts] == [
        (True, "Let me think it over"),
        (None, "You said: why is the sky blue"),
    ]
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.thoughts_token_count, usage.cached_content_token_count) == (5, 2)
    assert usage.total_token_count == 5 + 7 + 5


@sdk
async def test_sdk_count_tokens(client: genai.client.AsyncClient) -> None:
    counted = await client.models.count_tokens(model=MODEL, contents="three little words")
    assert counted.total_tokens == 3


@sdk
async def test_sdk_raises_its_errors(client: genai.client.AsyncClient, mock: GeminiMock) -> None:
    bad = genai.Client(api_key="AIza-wrong", http_options=types.HttpOptions(base_url=mock.url))
    try:
        with pytest.raises(errors.ClientError) as refused:
            await bad.aio.models.generate_content(model=MODEL, contents="hi")
    finally:
        await bad.aio.aclose()
        bad.close()
    assert (refused.value.code, refused.value.status) == (400, "INVALID_ARGUMENT")
    assert refused.value.message == "API key not valid. Please pass a valid API key."
    assert refused.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"

    mock.faults.next(Fault.rate_limit(0.5), Fault.overloaded())
    with pytest.raises(errors.ClientError) as limited:
        await client.models.generate_content(model=MODEL, contents="hi")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    retry = limited.value.details["error"]["details"][-1]
    assert retry == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}
    stream = await client.models.generate_content_stream(model=MODEL, contents="hi")
    with pytest.raises(errors.ServerError) as overloaded:
        await anext(stream)  # the SDK sends the request on the first read
    assert (overloaded.value.code, overloaded.value.status) == (503, "UNAVAILABLE")
    assert overloaded.value.message == "The model is overloaded. Please try again later."


def service_account_file(tmp_path: Path, token_uri: str) -> tuple[Path, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = tmp_path / "sa.json"
    info = {
        "type": "service_account",
        "project_id": "proj",
        "client_email": "mock@proj.iam.gserviceaccount.com",
        "private_key": pem,
        "private_key_id": "kid-1",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info))
    return path, info


@sdk
async def test_sdk_vertex_with_a_service_account(tmp_path: Path) -> None:
    async with GeminiMock(faults=FaultPlan(valid_keys=set())) as mock:
        _, info = service_account_file(tmp_path, mock.token_url)
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        sync = genai.Client(
            vertexai=True,
            project="proj",
            location="us-central1",
            credentials=credentials,
            http_options=types.HttpOptions(base_url=mock.url),
        )
        try:
            response = await sync.aio.models.generate_content(model=MODEL, contents="hi")
        finally:
            await sync.aio.aclose()
            sync.close()
    assert response.text == "You said: hi"
    token_call, model_call = mock.requests
    assert token_call.path == "/token"
    assert model_call.path.startswith("/v1beta1/projects/proj/locations/us-central1/")
    assert model_call.headers["authorization"] == "Bearer ya29.mock-1"


# ---------------------------------------------------------------- the wire: answers


def request_body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


async def post(
    http: httpx.AsyncClient,
    path: str,
    body: Any = None,
    *,
    key: str | None = KEY,
    bearer: str | None = None,
    fault: str | None = None,
    sse: bool = True,
) -> httpx.Response:
    headers = {}
    if bearer is not None:
        headers["authorization"] = f"Bearer {bearer}"
    elif key is not None:
        headers["x-goog-api-key"] = key
    if fault is not None:
        headers[FAULT_HEADER] = fault
    params = {"alt": "sse"} if sse and path.endswith(":streamGenerateContent") else None
    content = body if isinstance(body, bytes) else orjson.dumps(body or request_body())
    return await http.post(path, content=content, headers=headers, params=params)


def events(raw: bytes) -> list[Any]:
    frames = raw.split(b"\r\n\r\n")
    assert frames[-1] == b""  # every event ends with a blank line, CRLF-framed
    assert all(frame.startswith(b"data: ") for frame in frames[:-1])
    return [orjson.loads(frame[6:]) for frame in frames[:-1]]


def error_of(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert isinstance(error, dict)
    assert error["code"] == response.status_code
    return error


async def test_unary_answer_shape(http: httpx.AsyncClient) -> None:
    response = await post(http, f"{STUDIO}:generateContent")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    document = response.json()
    assert document["candidates"] == [
        {
            "content": {"parts": [{"text": "You said: hello there"}], "role": "model"},
            "index": 0,
            "finishReason": "STOP",
        }
    ]
    assert document["usageMetadata"] == {
        "promptTokenCount": 2,
        "candidatesTokenCount": 4,
        "totalTokenCount": 6,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 2}],
    }
    assert document["modelVersion"] == MODEL


async def test_stream_events_and_running_usage(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.reply = ReplyScript(text="alpha beta gamma delta", chunks=4, chunk_delay_s=0.005)
    response = await post(http, f"{STUDIO}:streamGenerateContent")
    assert response.headers["content-type"] == "text/event-stream"
    documents = events(response.content)
    texts = [d["candidates"][0]["content"]["parts"][0]["text"] for d in documents]
    assert "".join(texts) == "alpha beta gamma delta"
    running = [d["usageMetadata"].get("candidatesTokenCount", 0) for d in documents]
    # "alpha ", "beta g", "amma ", "delta": the words begun so far, a running total
    assert running == [1, 3, 3, 4]
    assert [d["usageMetadata"]["totalTokenCount"] for d in documents] == [3, 5, 5, 6]
    assert ["finishReason" in d["candidates"][0] for d in documents] == [False] * 3 + [True]
    assert len({d["responseId"] for d in documents}) == 1  # one answer, one id


async def test_stream_without_sse_is_a_json_array(http: httpx.AsyncClient) -> None:
    response = await post(http, f"{STUDIO}:streamGenerateContent", sse=False)
    documents = response.json()
    assert isinstance(documents, list)
    assert len(documents) == 3
    refused = await post(http, f"{STUDIO}:streamGenerateContent", key="wrong", sse=False)
    assert refused.json()[0]["error"]["status"] == "INVALID_ARGUMENT"


async def test_prompt_tokens_count_system_and_function_parts(http: httpx.AsyncClient) -> None:
    body = {
        "system_instruction": {"parts": [{"text": "be kind"}]},  # snake_case works too
        "contents": [
            {"role": "user", "parts": [{"text": "weather in Rome"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "w", "args": {"c": 1}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "w", "response": {"t": 2}}}]},
        ],
    }
    document = (await post(http, f"{STUDIO}:generateContent", body)).json()
    assert document["usageMetadata"]["promptTokenCount"] == 2 + 3 + 2 + 2
    text = document["candidates"][0]["content"]["parts"][0]["text"]
    assert text == 'You said: w returned {"t":2}'


async def test_the_echo_answers_the_last_user_turn(http: httpx.AsyncClient) -> None:
    def answer_to(*turns: tuple[str, str]) -> list[dict[str, Any]]:
        return [{"role": role, "parts": [{"text": text}]} for role, text in turns]

    path = f"{STUDIO}:generateContent"
    prefilled = {"contents": answer_to(("user", "first"), ("model", "Sure:"))}
    document = (await post(http, path, prefilled)).json()
    assert document["candidates"][0]["content"]["parts"][0]["text"] == "You said: first"
    only_model = {"contents": answer_to(("model", "hello"))}
    document = (await post(http, path, only_model)).json()
    assert document["candidates"][0]["content"]["parts"][0]["text"] == "You said: "


async def test_max_output_tokens_cuts_the_answer(http: httpx.AsyncClient) -> None:
    body = request_body("a b c d e", generationConfig={"maxOutputTokens": 3})
    document = (await post(http, f"{STUDIO}:generateContent", body)).json()
    candidate = document["candidates"][0]
    assert candidate["content"]["parts"][0]["text"] == "You said: a"
    assert candidate["finishReason"] == "MAX_TOKENS"
    assert document["usageMetadata"]["candidatesTokenCount"] == 3
    nothing = request_body(generationConfig={"maxOutputTokens": 0})
    document = (await post(http, f"{STUDIO}:generateContent", nothing)).json()
    assert "candidatesTokenCount" not in document["usageMetadata"]


async def test_thoughts_stream_first_and_count_anyway(http: httpx.AsyncClient) -> None:
    async with GeminiMock(thoughts="hmm") as mock, httpx.AsyncClient(base_url=mock.url) as raw:
        thinking = {"thinkingConfig": {"includeThoughts": True}}
        shown = await post(
            raw, f"{STUDIO}:streamGenerateContent", request_body(generationConfig=thinking)
        )
        hidden = await post(raw, f"{STUDIO}:generateContent")
    first, *rest = events(shown.content)
    assert first["candidates"][0]["content"]["parts"] == [{"text": "hmm", "thought": True}]
    assert first["usageMetadata"]["thoughtsTokenCount"] == 1
    assert "candidatesTokenCount" not in first["usageMetadata"]
    assert len(rest) == 4
    parts = hidden.json()["candidates"][0]["content"]["parts"]
    assert parts == [{"text": "You said: hello there"}]
    assert hidden.json()["usageMetadata"]["thoughtsTokenCount"] == 1


def tools_body(*names: str, mode: str | None = None, **config: Any) -> dict[str, Any]:
    body = request_body(
        tools=[{"functionDeclarations": [{"name": n} for n in names]}],
    )
    if mode is not None:
        body["toolConfig"] = {"functionCallingConfig": {"mode": mode, **config}}
    return body


def calls_of(response: httpx.Response) -> list[dict[str, Any]]:
    parts = response.json()["candidates"][0]["content"]["parts"]
    return [part["functionCall"] for part in parts if "functionCall" in part]


async def test_tool_config_modes(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    path = f"{STUDIO}:generateContent"
    assert calls_of(await post(http, path, tools_body("f"))) == []  # nothing scripted
    forced = await post(http, path, tools_body("f", "g", mode="ANY"))
    assert calls_of(forced) == [{"name": "f", "args": {}}]
    mock.reply = ReplyScript(tool_calls=[ScriptedToolCall("g", {"x": 1})])
    assert calls_of(await post(http, path, tools_body("f", "g"))) == [
        {"name": "g", "args": {"x": 1}}
    ]
    assert calls_of(await post(http, path, tools_body("f", "g", mode="NONE"))) == []
    assert calls_of(await post(http, path, tools_body("f"))) == []  # g is not declared
    allowed = tools_body("f", "g", mode="ANY", allowedFunctionNames=["f"])
    assert calls_of(await post(http, path, allowed)) == [{"name": "f", "args": {}}]
    assert calls_of(await post(http, path, request_body())) == []  # no tools offered
    called = await post(http, path, tools_body("g"))
    usage = called.json()["usageMetadata"]
    assert usage["candidatesTokenCount"] == count_tokens(['g {"x":1}'])
    assert called.json()["candidates"][0]["finishReason"] == "STOP"


async def test_invalid_requests_get_the_apis_400(http: httpx.AsyncClient) -> None:
    path = f"{STUDIO}:generateContent"
    cases = [
        (b"{not json", "Invalid JSON payload received. Unexpected token."),
        (b"[1]", "Invalid JSON payload received. Expected an object."),
        (orjson.dumps(request_body(temperature=1)), 'Unknown name "temperature"'),
        (orjson.dumps({"contents": []}), "contents is not specified"),
        (orjson.dumps({"contents": [{"role": "user", "parts": []}]}), "must not be empty"),
        (
            orjson.dumps({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}),
            "Please use a valid role: user, model.",
        ),
    ]
    for raw, message in cases:
        response = await post(http, path, raw)
        assert response.status_code == 400, raw
        error = error_of(response)
        assert error["status"] == "INVALID_ARGUMENT"
        assert message in error["message"]


async def test_unknown_routes_are_not_found(http: httpx.AsyncClient) -> None:
    for method, path in [
        ("GET", f"{STUDIO}:generateContent"),
        ("POST", f"{STUDIO}:embedContent"),
        ("POST", "/v1beta/files"),
    ]:
        response = await http.request(method, path, headers={"x-goog-api-key": KEY})
        assert response.status_code == 404
        assert error_of(response)["status"] == "NOT_FOUND"


# ---------------------------------------------------------------- the wire: credentials


async def test_ai_studio_keys(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    path = f"{STUDIO}:generateContent"
    missing = await post(http, path, key=None)
    assert (missing.status_code, error_of(missing)["status"]) == (403, "PERMISSION_DENIED")
    wrong = await post(http, path, key="AIza-wrong")
    error = error_of(wrong)
    assert (wrong.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"] == "API key not valid. Please pass a valid API key."
    assert error["details"][0]["reason"] == "API_KEY_INVALID"
    by_query = await http.post(path, params={"key": KEY}, content=orjson.dumps(request_body()))
    assert by_query.status_code == 200  # the real API takes ?key= too
    mock.faults.rotate_key(KEY, "AIza-new")
    assert (await post(http, path)).status_code == 400
    assert (await post(http, path, key="AIza-new")).status_code == 200
    counted = await http.post(
        f"{STUDIO}:countTokens",
        headers={"x-goog-api-key": "AIza-new"},
        content=orjson.dumps({"generateContentRequest": request_body("a b c")}),
    )
    assert counted.json()["totalTokens"] == 3


async def test_vertex_url_style_and_bearer(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.valid_keys = {"ya29.good"}
    ok = await post(http, f"{VERTEX}:streamGenerateContent", bearer="ya29.good")
    assert "".join(
        d["candidates"][0]["content"]["parts"][0]["text"] for d in events(ok.content)
    ) == ("You said: hello there")
    assert mock.requests[-1].path == f"{VERTEX}:streamGenerateContent"
    missing = await post(http, f"{VERTEX}:generateContent", key=None)
    wrong = await post(http, f"{VERTEX}:generateContent", bearer="ya29.bad")
    studio_key = await post(http, f"{VERTEX}:generateContent", key=KEY)  # not a bearer
    for response, reason in [
        (missing, "CREDENTIALS_MISSING"),
        (wrong, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
        (studio_key, "CREDENTIALS_MISSING"),
    ]:
        error = error_of(response)
        assert (response.status_code, error["status"]) == (401, "UNAUTHENTICATED")
        assert error["details"][0]["reason"] == reason
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert "GenerateContent" in error_of(wrong)["details"][0]["metadata"]["method"]


async def test_token_endpoint(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.valid_keys = set()
    form = TOKEN_FORM
    issued = (await http.post("/token", data=form)).json()
    assert issued == {"access_token": "ya29.mock-1", "expires_in": 3600, "token_type": "Bearer"}
    assert mock.faults.valid_keys == {"ya29.mock-1"}
    assert (await post(http, f"{VERTEX}:generateContent", bearer="ya29.mock-1")).status_code == 200
    mock.faults.valid_keys.clear()  # revoked
    assert (await post(http, f"{VERTEX}:generateContent", bearer="ya29.mock-1")).status_code == 401
    bad_grant = await http.post("/token", data={**form, "grant_type": "password"})
    assert bad_grant.json()["error"] == "unsupported_grant_type"
    bad_jwt = await http.post("/token", data={**form, "assertion": "nope"})
    assert (bad_jwt.status_code, bad_jwt.json()["error"]) == (400, "invalid_grant")
    assert mock.issued_tokens == ["ya29.mock-1"]


# ---------------------------------------------------------------- the wire: faults


async def test_rate_limit(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.next(Fault.rate_limit(0.5))
    response = await post(http, f"{STUDIO}:generateContent")
    error = error_of(response)
    assert (response.status_code, error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert response.headers["retry-after"] == "0.5"
    types_ = [detail["@type"].rsplit(".", 1)[-1] for detail in error["details"]]
    assert types_ == ["QuotaFailure", "Help", "RetryInfo"]
    assert error["details"][-1]["retryDelay"] == "0.5s"
    vertex = await post(http, f"{VERTEX}:generateContent", bearer=KEY, fault="rate_limit")
    assert error_of(vertex)["details"][-1]["retryDelay"] == "1s"
    assert "aiplatform" in error_of(vertex)["details"][0]["violations"][0]["quotaMetric"]


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (500, "INTERNAL"),
        (501, "UNIMPLEMENTED"),
        (502, "UNAVAILABLE"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
        (599, "UNKNOWN"),
    ],
)
async def test_server_errors(http: httpx.AsyncClient, status: int, name: str) -> None:
    response = await post(
        http, f"{STUDIO}:streamGenerateContent", fault=f"server_error;status={status}"
    )
    assert (response.status_code, error_of(response)["status"]) == (status, name)


async def test_overloaded(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.for_key(KEY, Fault.overloaded(), times=2)
    for _ in range(2):
        response = await post(http, f"{STUDIO}:generateContent")
        assert response.status_code == 503
        assert error_of(response)["message"] == "The model is overloaded. Please try again later."
    assert (await post(http, f"{STUDIO}:generateContent")).status_code == 200


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent"])
async def test_content_filter(http: httpx.AsyncClient, mock: GeminiMock, method: str) -> None:
    mock.faults.next(Fault.content_filter())
    response = await post(http, f"{STUDIO}:{method}")
    assert response.status_code == 200
    [document] = events(response.content) if method.startswith("stream") else [response.json()]
    [candidate] = document["candidates"]
    assert candidate["finishReason"] == "SAFETY"
    assert "content" not in candidate
    blocked = [r["category"] for r in candidate["safetyRatings"] if r.get("blocked")]
    assert blocked == ["HARM_CATEGORY_DANGEROUS_CONTENT"]
    assert document["usageMetadata"]["totalTokenCount"] == 2


async def test_context_length(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.next(Fault.context_length())
    response = await post(http, f"{STUDIO}:generateContent")
    assert response.status_code == 400
    assert error_of(response)["message"] == (
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576)."
    )
    mock.max_input_tokens = 3
    real = await post(http, f"{STUDIO}:generateContent", request_body("one two three four"))
    assert error_of(real)["message"].startswith("The input token count (4) exceeds")


async def test_unauthorized_fault_in_both_styles(http: httpx.AsyncClient) -> None:
    studio = await post(http, f"{STUDIO}:generateContent", fault="unauthorized")
    assert error_of(studio)["details"][0]["reason"] == "API_KEY_INVALID"
    vertex = await post(http, f"{VERTEX}:generateContent", bearer=KEY, fault="unauthorized")
    assert (vertex.status_code, error_of(vertex)["status"]) == (401, "UNAUTHENTICATED")


async def test_a_bad_fault_header(http: httpx.AsyncClient) -> None:
    response = await post(http, f"{STUDIO}:generateContent", fault="meteor")
    assert response.status_code == 400
    assert FAULT_HEADER in error_of(response)["message"]


async def test_slow_first_byte(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.faults.next(Fault.slow_first_byte(0.05))
    started = time.monotonic()
    response = await post(http, f"{STUDIO}:generateContent")
    assert time.monotonic() - started >= 0.045  # never before the scripted delay
    assert response.json()["candidates"][0]["finishReason"] == "STOP"


async def read_events_until_failure(
    http: httpx.AsyncClient, path: str, *, read_timeout: float = 2.0
) -> tuple[list[bytes], BaseException | None]:
    received: list[bytes] = []
    timeout = httpx.Timeout(2.0, read=read_timeout)
    headers = {"x-goog-api-key": KEY}
    params = {"alt": "sse"} if path.endswith(":streamGenerateContent") else None
    body = orjson.dumps(request_body("one two three four five"))
    try:
        async with http.stream(
            "POST", path, content=body, headers=headers, params=params, timeout=timeout
        ) as response:
            async for raw in response.aiter_raw():
                received.append(raw)  # noqa: PERF401 - what came before the failure is kept
    except httpx.TransportError as failure:
        return received, failure
    return received, None


async def test_stall_mid_stream(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.reply = ReplyScript(chunks=4)
    mock.faults.next(Fault.stall(after_chunks=2))
    received, failure = await read_events_until_failure(
        http, f"{STUDIO}:streamGenerateContent", read_timeout=0.03
    )
    assert isinstance(failure, httpx.ReadTimeout)
    assert len(events(b"".join(received))) == 2
    [abort] = await asyncio.wait_for(mock.server.wait_client_aborts(1), 2)
    assert abort.chunks_sent == 2


async def test_reset_mid_stream(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.reply = ReplyScript(chunks=4)
    mock.faults.next(Fault.reset(after_chunks=1))
    received, failure = await read_events_until_failure(http, f"{STUDIO}:streamGenerateContent")
    assert isinstance(failure, httpx.ReadError | httpx.RemoteProtocolError)
    assert len(events(b"".join(received))) == 1


async def test_stall_and_reset_on_a_unary_answer_strike_after_the_head(
    http: httpx.AsyncClient, mock: GeminiMock
) -> None:
    mock.faults.next(Fault.reset(after_chunks=3), Fault.stall(after_chunks=3))
    received, failure = await read_events_until_failure(http, f"{STUDIO}:generateContent")
    assert isinstance(failure, httpx.ReadError | httpx.RemoteProtocolError)
    received, failure = await read_events_until_failure(
        http, f"{STUDIO}:generateContent", read_timeout=0.03
    )
    assert (received, type(failure)) == ([], httpx.ReadTimeout)


async def test_a_fault_past_the_last_event_comes_after_all_of_them(
    http: httpx.AsyncClient, mock: GeminiMock
) -> None:
    mock.reply = ReplyScript(chunks=2)
    mock.faults.next(Fault.reset(after_chunks=9))
    received, failure = await read_events_until_failure(http, f"{STUDIO}:streamGenerateContent")
    assert failure is not None  # the stream never ends cleanly
    assert len(events(b"".join(received))) == 2


async def test_malformed_chunk(http: httpx.AsyncClient, mock: GeminiMock) -> None:
    mock.reply = ReplyScript(chunks=3)
    mock.faults.next(Fault.malformed_chunk(after_chunks=1), Fault.malformed_chunk(after_chunks=7))
    response = await post(http, f"{STUDIO}:streamGenerateContent")
    frames = response.content.split(b"\r\n\r\n")[:-1]
    assert len(frames) == 3
    orjson.loads(frames[0][6:])
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(frames[1][6:])
    orjson.loads(frames[2][6:])  # the stream goes on after the broken event
    last = (await post(http, f"{STUDIO}:streamGenerateContent")).content.split(b"\r\n\r\n")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(last[2][6:])  # at most the last event
    mock.faults.next(Fault.malformed_chunk())
    unary = await post(http, f"{STUDIO}:generateContent")
    assert unary.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        unary.json()


async def test_start_and_stop_outside_a_context_manager() -> None:
    mock = GeminiMock()
    await mock.start()
    try:
        assert mock.url.startswith("http://127.0.0.1:")
        assert mock.token_url == f"{mock.url}/token"
        async with httpx.AsyncClient() as raw:
            response = await raw.post(
                f"{mock.url}{STUDIO}:generateContent",
                headers={"x-goog-api-key": "any key is fine"},
                content=orjson.dumps(request_body()),
            )
            assert response.status_code == 200
            token = await raw.post(mock.token_url, data=TOKEN_FORM)
            assert token.json()["access_token"] == "ya29.mock-1"
        assert mock.faults.valid_keys is None  # any key was valid, and still is
    finally:
        await mock.stop()
    assert len(mock.requests) == 2
