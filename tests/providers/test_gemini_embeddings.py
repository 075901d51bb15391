"""Gemini embeddings: the adapter's ``batchEmbedContents`` (AI Studio) and ``predict``
(Vertex) requests and answers, then the adapter against the Gemini mock over loopback HTTP,
faults and bad credentials included, and the official ``google-genai`` SDK against the
mock's embeddings routes.

Fixtures follow the shapes of the Gemini API and Vertex text-embedding references; the
values are ours.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import orjson
import pytest
from google import genai
from google.genai import types
from google.oauth2.credentials import Credentials

from rakka_inference.core.errors import (
    BadRequest,
    InferenceError,
    ProtocolError,
    RateLimited,
    ServerError,
    Timeout,
    Unauthorized,
    UpstreamNotFound,
)
from rakka_inference.core.messages import EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import Timeouts
from rakka_inference.core.runtimes import GeminiConfig
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.core.usage import Usage
from rakka_inference.providers.base import EmbeddingAdapter, supports_embeddings
from rakka_inference.providers.gemini import GeminiAdapter
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.testkit.faults import FAULT_HEADER, Fault, FaultPlan
from rakka_inference.testkit.gemini_embed_wire import (
    MAX_BATCH_REQUESTS,
    MAX_INPUT_TOKENS,
    embedding_tokens,
)
from rakka_inference.testkit.mock_gemini import GeminiMock
from rakka_inference.testkit.mock_openai import EMBEDDING_DIMENSIONS, embedding_vector
from rakka_inference.wire.classify import classify_http_error
from rakka_inference.wire.http import HttpRequest, HttpTransport

KEY = Secret("AIzaSy-embed-test-0123456789")
TOKEN = Secret("ya29.embed-test-access-token")
MODEL = "gemini-embedding-001"
TEXTS = ("The quick brown fox", "jumps over the lazy dog", "héllo wörld")
STUDIO_URL = "https://generativelanguage.googleapis.com/v1beta/models/gemini-embedding-001"
VERTEX_URL = (
    "https://us-central1-aiplatform.googleapis.com/v1/projects/my-project/locations"
    "/us-central1/publishers/google/models/gemini-embedding-001"
)
VERTEX = {
    "variant": "vertex",
    "project": "my-project",
    "region": "us-central1",
    "credentials": SecretRef.from_file("sa.json"),
}
TIMEOUTS = Timeouts(connect_timeout_ms=1000, request_timeout_ms=2000, read_timeout_ms=2000)

sdk = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession from ClientSession is discouraged"
    ":DeprecationWarning:google.genai._api_client"
)


def studio(model: str = MODEL, **config: object) -> GeminiAdapter:
    return GeminiAdapter(GeminiConfig(**config), model)  # type: ignore[arg-type]


def vertex(model: str = MODEL, **config: object) -> GeminiAdapter:
    return GeminiAdapter(GeminiConfig(**{**VERTEX, **config}), model)  # type: ignore[arg-type]


def embed_request(*texts: str, dimensions: int | None = None) -> EmbeddingRequest:
    return EmbeddingRequest(model=MODEL, inputs=texts or TEXTS, dimensions=dimensions)


def body_of(http: HttpRequest) -> Any:
    return orjson.loads(http.body)


# ---------------------------------------------------------------------- requests


def test_gemini_adapter_serves_embeddings() -> None:
    assert supports_embeddings(studio())
    assert isinstance(vertex(), EmbeddingAdapter)


def test_ai_studio_request_batches_every_input_with_the_key_in_a_header() -> None:
    http = studio().build_embedding_request(embed_request(), KEY)
    assert http.method == "POST"
    assert http.url == f"{STUDIO_URL}:batchEmbedContents"
    assert http.headers == {"content-type": "application/json", "x-goog-api-key": KEY.expose()}
    assert body_of(http) == {
        "requests": [
            {"model": f"models/{MODEL}", "content": {"parts": [{"text": text}]}} for text in TEXTS
        ]
    }
    assert KEY.expose() not in http.url
    assert KEY.expose() not in repr(http)


def test_ai_studio_dimensions_go_on_every_request() -> None:
    http = studio().build_embedding_request(embed_request("a", "b", dimensions=256), KEY)
    requests = body_of(http)["requests"]
    assert [request["outputDimensionality"] for request in requests] == [256, 256]
    assert [request["content"]["parts"][0]["text"] for request in requests] == ["a", "b"]


def test_token_id_inputs_are_refused_naming_input() -> None:
    ids = EmbeddingRequest(model=MODEL, token_ids=((1, 2),))
    for adapter in (studio(), vertex()):
        with pytest.raises(BadRequest, match="takes text input only") as refused:
            adapter.build_embedding_request(ids, KEY)
        assert refused.value.param == "input"


def test_vertex_request_predicts_with_a_bearer_token() -> None:
    http = vertex().build_embedding_request(embed_request(), TOKEN)
    assert http.url == f"{VERTEX_URL}:predict"
    assert http.headers == {
        "content-type": "application/json",
        "authorization": f"Bearer {TOKEN.expose()}",
    }
    assert body_of(http) == {"instances": [{"content": text} for text in TEXTS]}
    assert TOKEN.expose() not in repr(http)


def test_vertex_dimensions_are_a_parameter() -> None:
    http = vertex().build_embedding_request(embed_request("a", dimensions=768), TOKEN)
    assert body_of(http) == {
        "instances": [{"content": "a"}],
        "parameters": {"outputDimensionality": 768},
    }


def test_vertex_global_region_and_endpoint_override() -> None:
    http = vertex(region="global").build_embedding_request(embed_request("a"), TOKEN)
    assert http.url.startswith("https://aiplatform.googleapis.com/v1/projects/my-project/")
    assert http.url.endswith(
        "/locations/global/publishers/google/models/gemini-embedding-001:predict"
    )
    http = studio(endpoint="http://127.0.0.1:9/v1beta").build_embedding_request(
        embed_request("a"), KEY
    )
    assert http.url == "http://127.0.0.1:9/v1beta/models/gemini-embedding-001:batchEmbedContents"


@pytest.mark.parametrize("model", ["models/text-embedding-004", "google/text-embedding-004"])
def test_routing_prefix_is_dropped_from_url_and_body(model: str) -> None:
    http = studio(model).build_embedding_request(embed_request("a"), KEY)
    assert http.url.endswith("/v1beta/models/text-embedding-004:batchEmbedContents")
    assert body_of(http)["requests"][0]["model"] == "models/text-embedding-004"


# ---------------------------------------------------------------------- answers


def test_ai_studio_answer_in_input_order_with_estimated_usage() -> None:
    request = embed_request()
    answer = {
        "embeddings": [
            {"values": [0.5, -1, 0.25]},
            {"values": [1, 2, 3]},
            {"values": [0, 0.0, 1e-3]},
        ]
    }
    result = studio().parse_embedding_response(orjson.dumps(answer), request)
    assert result == EmbeddingResult(
        vectors=((0.5, -1.0, 0.25), (1.0, 2.0, 3.0), (0.0, 0.0, 0.001)),
        usage=Usage(input_tokens=request.estimated_prompt_tokens()),
    )
    assert all(type(value) is float for vector in result.vectors for value in vector)


def test_ai_studio_usage_metadata_is_read_when_present() -> None:
    answer = {"embeddings": [{"values": [1.0]}], "usageMetadata": {"promptTokenCount": 7}}
    result = studio().parse_embedding_response(orjson.dumps(answer), embed_request("a"))
    assert result.usage.input_tokens == 7


def test_vertex_answer_sums_the_token_counts() -> None:
    answer = {
        "predictions": [
            {
                "embeddings": {
                    "values": [0.1, 0.2],
                    "statistics": {"token_count": 4, "truncated": False},
                }
            },
            {
                "embeddings": {
                    "statistics": {"tokenCount": 6.0, "truncated": True},
                    "values": [0.3, 0.4],
                }
            },
        ],
        "metadata": {"billableCharacterCount": 30},
    }
    result = vertex().parse_embedding_response(orjson.dumps(answer), embed_request("a", "b"))
    assert result.vectors == ((0.1, 0.2), (0.3, 0.4))
    assert result.usage.input_tokens == 10


def test_vertex_answer_without_statistics_uses_the_estimate() -> None:
    request = embed_request("a", "b")
    answer = {
        "predictions": [
            {"embeddings": {"values": [0.1], "statistics": {"token_count": 40}}},
            {"embeddings": {"values": [0.3]}},
        ]
    }
    result = vertex().parse_embedding_response(orjson.dumps(answer), request)
    assert result.usage.input_tokens == request.estimated_prompt_tokens() == 2


def studio_answer(*vectors: object) -> bytes:
    return orjson.dumps({"embeddings": [{"values": vector} for vector in vectors]})


def vertex_answer(*embeddings: object) -> bytes:
    return orjson.dumps({"predictions": [{"embeddings": item} for item in embeddings]})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>502 Bad Gateway</html>", id="not-json"),
        pytest.param(b'{"embeddings": [', id="cut-short"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"{}", id="no-embeddings"),
        pytest.param(b'{"embeddings": {"values": [1]}}', id="embeddings-not-a-list"),
        pytest.param(b'{"predictions": [{"embeddings": {"values": [1]}}]}', id="vertex-shape"),
        pytest.param(studio_answer([1.0]), id="too-few"),
        pytest.param(studio_answer([1.0], [2.0], [3.0]), id="too-many"),
        pytest.param(b'{"embeddings": [{"values": [1]}, 7]}', id="item-not-an-object"),
        pytest.param(b'{"embeddings": [{"values": [1]}, {}]}', id="no-values"),
        pytest.param(studio_answer([1.0], []), id="empty-values"),
        pytest.param(studio_answer([1.0], "0.5"), id="values-not-a-list"),
        pytest.param(studio_answer([1.0], [0.5, "0.5"]), id="string-value"),
        pytest.param(studio_answer([1.0], [True]), id="bool-value"),
        pytest.param(studio_answer([1.0], [None]), id="null-value"),
        pytest.param(studio_answer([1.0], [1.0, 2.0]), id="different-sizes"),
    ],
)
def test_malformed_ai_studio_answers_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        studio().parse_embedding_response(body, embed_request("a", "b"))
    assert caught.value.provider == "gemini"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"null", id="null"),
        pytest.param(b'{"embeddings": [{"values": [1]}, {"values": [2]}]}', id="studio-shape"),
        pytest.param(b'{"predictions": [{"embeddings": {"values": [1]}}]}', id="too-few"),
        pytest.param(b'{"predictions": [{"values": [1]}, {"values": [2]}]}', id="no-embeddings"),
        pytest.param(vertex_answer({"values": [1]}, [2.0]), id="embeddings-not-an-object"),
        pytest.param(vertex_answer({"values": [1]}, {"values": ["x"]}), id="string-value"),
        pytest.param(vertex_answer({"values": [1]}, {"statistics": {}}), id="no-values"),
        pytest.param(
            vertex_answer({"values": [1]}, {"values": [2], "statistics": {"token_count": "3"}}),
            id="token-count-text",
        ),
        pytest.param(
            vertex_answer({"values": [1]}, {"values": [2], "statistics": {"token_count": -1}}),
            id="token-count-negative",
        ),
        pytest.param(
            vertex_answer({"values": [1]}, {"values": [2], "statistics": {"token_count": 1.5}}),
            id="token-count-fraction",
        ),
        pytest.param(
            vertex_answer({"values": [1]}, {"values": [2], "statistics": {"truncated": False}}),
            id="statistics-without-count",
        ),
        pytest.param(
            vertex_answer({"values": [1]}, {"values": [2], "statistics": [3]}),
            id="statistics-not-an-object",
        ),
    ],
)
def test_malformed_vertex_answers_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        vertex().parse_embedding_response(body, embed_request("a", "b"))


def test_error_object_in_a_200_answer_raises_its_typed_error() -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": 429,
                "message": "Resource has been exhausted",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
                ],
            }
        }
    )
    with pytest.raises(RateLimited) as caught:
        studio().parse_embedding_response(body, embed_request("a"))
    assert caught.value.retry_after == 2.0


# ---------------------------------------------------------------------- over loopback HTTP


@pytest.fixture
async def mock() -> AsyncIterator[GeminiMock]:
    plan = FaultPlan(valid_keys={KEY.expose(), TOKEN.expose()})
    async with GeminiMock(faults=plan) as m:
        yield m
    assert not m.server.errors  # the mock itself never failed


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    client = create_transport()
    try:
        yield client
    finally:
        await client.aclose()


def aimed_at(mock: GeminiMock, variant: str) -> tuple[GeminiAdapter, Secret]:
    if variant == "vertex":
        return vertex(endpoint=mock.url), TOKEN
    return studio(endpoint=mock.url), KEY


async def embed(
    transport: HttpTransport,
    adapter: GeminiAdapter,
    request: EmbeddingRequest,
    credential: Secret,
    *,
    fault: str | None = None,
) -> EmbeddingResult:
    """One call as the remote runner makes it: send, classify a status >= 400, parse."""
    http = adapter.build_embedding_request(request, credential)
    if fault is not None:
        http = replace(http, headers={**http.headers, FAULT_HEADER: fault})
    response = await transport.send(http, TIMEOUTS, stream=False)
    try:
        body = await response.read()
        if response.status >= 400:
            error = classify_http_error(
                response.status, response.headers, body, provider=adapter.provider, now=0.0
            )
            raise adapter.refine_error(error, body)
        return adapter.parse_embedding_response(body, request)
    finally:
        await response.aclose()


async def test_ai_studio_through_the_mock(mock: GeminiMock, transport: HttpTransport) -> None:
    adapter, key = aimed_at(mock, "ai_studio")
    request = embed_request()
    result = await embed(transport, adapter, request, key)
    assert result.vectors == tuple(tuple(embedding_vector(text)) for text in TEXTS)
    assert all(len(vector) == EMBEDDING_DIMENSIONS for vector in result.vectors)
    assert result.usage.input_tokens == request.estimated_prompt_tokens()
    [sent] = mock.requests
    assert sent.path == f"/v1beta/models/{MODEL}:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == KEY.expose()
    assert KEY.expose() not in sent.query


async def test_vertex_through_the_mock(mock: GeminiMock, transport: HttpTransport) -> None:
    adapter, token = aimed_at(mock, "vertex")
    result = await embed(transport, adapter, embed_request(), token)
    assert result.vectors == tuple(tuple(embedding_vector(text)) for text in TEXTS)
    # "héllo wörld" is 13 UTF-8 bytes: 4 tokens; the others 19 and 23 bytes: 5 and 6.
    assert result.usage.input_tokens == sum(map(embedding_tokens, TEXTS)) == 15
    [sent] = mock.requests
    assert sent.path == (
        f"/v1/projects/my-project/locations/us-central1/publishers/google/models/{MODEL}:predict"
    )
    assert sent.headers["authorization"] == f"Bearer {TOKEN.expose()}"


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
async def test_dimensions_give_shorter_unit_vectors(
    mock: GeminiMock, transport: HttpTransport, variant: str
) -> None:
    adapter, credential = aimed_at(mock, variant)
    result = await embed(transport, adapter, embed_request(dimensions=3), credential)
    assert result.vectors == tuple(tuple(embedding_vector(text, 3)) for text in TEXTS)
    for vector, text in zip(result.vectors, TEXTS, strict=True):
        assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-6)
        full = embedding_vector(text, 16)  # the same hash stream, read further
        norm = math.hypot(*full[:3])
        assert all(
            math.isclose(a, b / norm, rel_tol=1e-5) for a, b in zip(vector, full, strict=False)
        )


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
async def test_queued_rate_limit_is_rate_limited_with_its_delay(
    mock: GeminiMock, transport: HttpTransport, variant: str
) -> None:
    adapter, credential = aimed_at(mock, variant)
    mock.faults.next(Fault.rate_limit(0.5))
    with pytest.raises(RateLimited) as caught:
        await embed(transport, adapter, embed_request(), credential)
    assert caught.value.retry_after == 0.5
    assert caught.value.upstream_status == 429
    # The fault was used up: the next call succeeds.
    assert len((await embed(transport, adapter, embed_request(), credential)).vectors) == 3


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
@pytest.mark.parametrize(
    ("fault", "kind", "status"),
    [
        ("server_error;status=500", ServerError, 500),
        ("overloaded", ServerError, 503),
        ("server_error;status=504", Timeout, 504),
        ("context_length", BadRequest, 400),
        ("malformed_chunk", ProtocolError, None),
    ],
)
async def test_header_faults_become_typed_errors(
    mock: GeminiMock,
    transport: HttpTransport,
    variant: str,
    fault: str,
    kind: type[InferenceError],
    status: int | None,
) -> None:
    adapter, credential = aimed_at(mock, variant)
    with pytest.raises(kind) as caught:
        await embed(transport, adapter, embed_request(), credential, fault=fault)
    assert caught.value.upstream_status == status
    assert caught.value.provider == "gemini"


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
async def test_content_filter_fault_does_not_touch_embeddings(
    mock: GeminiMock, transport: HttpTransport, variant: str
) -> None:
    adapter, credential = aimed_at(mock, variant)
    result = await embed(transport, adapter, embed_request(), credential, fault="content_filter")
    assert len(result.vectors) == 3


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
async def test_a_wrong_credential_is_unauthorized_and_never_quoted(
    mock: GeminiMock, transport: HttpTransport, variant: str
) -> None:
    adapter, _ = aimed_at(mock, variant)
    wrong = Secret("AIzaSy-wrong-9999999999" if variant == "ai_studio" else "ya29.revoked")
    with pytest.raises(Unauthorized) as caught:
        await embed(transport, adapter, embed_request(), wrong)
    # AI Studio refuses a bad key with a 400 whose ErrorInfo says API_KEY_INVALID.
    assert caught.value.upstream_status == (400 if variant == "ai_studio" else 401)
    assert wrong.expose() not in str(caught.value)
    assert wrong.expose() not in repr(caught.value)


async def test_unauthorized_fault_is_the_wrong_credential_answer(
    mock: GeminiMock, transport: HttpTransport
) -> None:
    adapter, credential = aimed_at(mock, "vertex")
    mock.faults.for_key(TOKEN.expose(), Fault.unauthorized(), times=1)
    with pytest.raises(Unauthorized):
        await embed(transport, adapter, embed_request(), credential)
    assert len((await embed(transport, adapter, embed_request(), credential)).vectors) == 3


@pytest.mark.parametrize("variant", ["ai_studio", "vertex"])
async def test_mock_refuses_what_the_api_refuses(
    mock: GeminiMock, transport: HttpTransport, variant: str
) -> None:
    adapter, credential = aimed_at(mock, variant)
    with pytest.raises(BadRequest) as caught:
        await embed(transport, adapter, embed_request(dimensions=3073), credential)
    assert "outputDimensionality" in caught.value.message
    # A refused request uses up no fault.
    mock.faults.next(Fault.server_error(500))
    with pytest.raises(BadRequest):
        await embed(transport, adapter, embed_request(dimensions=4000), credential)
    with pytest.raises(ServerError):
        await embed(transport, adapter, embed_request(), credential)


async def test_ai_studio_batches_hold_at_most_a_hundred_requests(
    mock: GeminiMock, transport: HttpTransport
) -> None:
    adapter, key = aimed_at(mock, "ai_studio")
    texts = tuple(f"text {n}" for n in range(MAX_BATCH_REQUESTS + 1))
    with pytest.raises(BadRequest) as caught:
        await embed(transport, adapter, embed_request(*texts), key)
    assert "at most 100 requests" in caught.value.message
    result = await embed(transport, adapter, embed_request(*texts[:-1]), key)
    assert len(result.vectors) == MAX_BATCH_REQUESTS


async def post(
    transport: HttpTransport, mock: GeminiMock, path: str, body: object, **headers: str
) -> tuple[int, Any]:
    http = HttpRequest("POST", f"{mock.url}{path}", headers, orjson.dumps(body))
    response = await transport.send(http, TIMEOUTS, stream=False)
    try:
        return response.status, orjson.loads(await response.read())
    finally:
        await response.aclose()


VERTEX_PATH = f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}"


async def test_vertex_long_inputs_are_truncated_unless_asked_not_to(
    mock: GeminiMock, transport: HttpTransport
) -> None:
    bearer = {"authorization": f"Bearer {TOKEN.expose()}"}
    long_text = "word " * (MAX_INPUT_TOKENS * 2)
    status, answer = await post(
        transport, mock, f"{VERTEX_PATH}:predict", {"instances": [{"content": long_text}]}, **bearer
    )
    assert status == 200
    statistics = answer["predictions"][0]["embeddings"]["statistics"]
    assert statistics == {"truncated": True, "token_count": MAX_INPUT_TOKENS}
    refused = {"instances": [{"content": long_text}], "parameters": {"autoTruncate": False}}
    status, answer = await post(transport, mock, f"{VERTEX_PATH}:predict", refused, **bearer)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"


async def test_each_variant_has_its_own_method(mock: GeminiMock, transport: HttpTransport) -> None:
    bearer = {"authorization": f"Bearer {TOKEN.expose()}"}
    body = {"requests": [{"content": {"parts": [{"text": "a"}]}}]}
    status, answer = await post(
        transport, mock, f"{VERTEX_PATH}:batchEmbedContents", body, **bearer
    )
    assert (status, answer["error"]["status"]) == (404, "NOT_FOUND")
    keyed = {"x-goog-api-key": KEY.expose()}
    status, answer = await post(
        transport, mock, f"/v1beta/models/{MODEL}:predict", {"instances": []}, **keyed
    )
    assert status == 404
    # Through the adapter: a model the mock's routes do not know is UpstreamNotFound.
    adapter = studio(endpoint=f"{mock.url}/v1beta/tuned")
    with pytest.raises(UpstreamNotFound):
        await embed(transport, adapter, embed_request("a"), KEY)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (f"/v1beta/models/{MODEL}:batchEmbedContents", b"{", "Invalid JSON payload"),
        (f"/v1beta/models/{MODEL}:batchEmbedContents", {"requests": []}, "requests"),
        (
            f"/v1beta/models/{MODEL}:batchEmbedContents",
            {"requests": [{"content": {"parts": [{"text": "a"}]}}], "extra": 1},
            'Unknown name "extra"',
        ),
        (
            f"/v1beta/models/{MODEL}:batchEmbedContents",
            {"requests": [{"model": "models/other", "content": {"parts": [{"text": "a"}]}}]},
            "models/gemini-embedding-001",
        ),
        (
            f"/v1beta/models/{MODEL}:batchEmbedContents",
            {"requests": [{"content": {"parts": []}}]},
            "parts must not be empty",
        ),
        (
            f"/v1beta/models/{MODEL}:batchEmbedContents",
            {"requests": [{"content": {"parts": [{"inlineData": {}}]}}]},
            "only text parts",
        ),
        (f"{VERTEX_PATH}:predict", {"instances": [{"text": "a"}]}, "content must be a string"),
        (f"{VERTEX_PATH}:predict", {"instances": [{"content": "a"}], "parameters": 3}, "object"),
    ],
)
async def test_mock_refuses_malformed_bodies(
    mock: GeminiMock, transport: HttpTransport, path: str, body: object, message: str
) -> None:
    headers = {"x-goog-api-key": KEY.expose(), "authorization": f"Bearer {TOKEN.expose()}"}
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    http = HttpRequest("POST", f"{mock.url}{path}", headers, raw)
    response = await transport.send(http, TIMEOUTS, stream=False)
    try:
        assert response.status == 400
        error = orjson.loads(await response.read())["error"]
    finally:
        await response.aclose()
    assert error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"]


async def test_snake_case_and_embed_content_config_are_accepted(
    mock: GeminiMock, transport: HttpTransport
) -> None:
    keyed = {"x-goog-api-key": KEY.expose()}
    body = {
        "requests": [
            {
                "content": {"parts": [{"text": "a"}]},
                "embed_content_config": {"output_dimensionality": 2},
            },
            {
                "content": {"parts": [{"text": "b"}, {"text": "c"}]},
                "output_dimensionality": 2,
                "task_type": "RETRIEVAL_QUERY",
            },
        ]
    }
    status, answer = await post(
        transport, mock, f"/v1beta/models/{MODEL}:batchEmbedContents", body, **keyed
    )
    assert status == 200
    assert answer == {
        "embeddings": [{"values": embedding_vector("a", 2)}, {"values": embedding_vector("bc", 2)}]
    }


# ---------------------------------------------------------------------- the official SDK


@sdk
async def test_sdk_embeds_through_ai_studio(mock: GeminiMock) -> None:
    client = genai.Client(api_key=KEY.expose(), http_options=types.HttpOptions(base_url=mock.url))
    try:
        response = await client.aio.models.embed_content(
            model=MODEL,
            contents=list(TEXTS),
            config=types.EmbedContentConfig(output_dimensionality=4),
        )
    finally:
        await client.aio.aclose()
        client.close()
    assert response.embeddings is not None
    assert [e.values for e in response.embeddings] == [embedding_vector(t, 4) for t in TEXTS]
    [sent] = mock.requests
    assert sent.path.endswith(f"/models/{MODEL}:batchEmbedContents")


@sdk
async def test_sdk_embeds_through_vertex_predict(mock: GeminiMock) -> None:
    # text-embedding-* models go through :predict (the SDK sends gemini-* ones elsewhere).
    model = "text-embedding-005"
    client = genai.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=Credentials(token=TOKEN.expose()),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=mock.url),
    )
    try:
        response = await client.aio.models.embed_content(model=model, contents=list(TEXTS))
    finally:
        await client.aio.aclose()
        client.close()
    assert response.embeddings is not None
    assert [e.values for e in response.embeddings] == [embedding_vector(t) for t in TEXTS]
    counts = [e.statistics.token_count for e in response.embeddings if e.statistics]
    assert counts == [embedding_tokens(text) for text in TEXTS]
    [sent] = mock.requests
    assert sent.path.endswith(f"/models/{model}:predict")
