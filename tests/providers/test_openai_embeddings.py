"""OpenAI-format embeddings: the request (OpenAI, Azure, LiteLLM) and a checked answer."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest

from rakka_inference.core.errors import ProtocolError
from rakka_inference.core.messages import EmbeddingRequest
from rakka_inference.core.runtimes import AnthropicConfig, LiteLLMConfig, OpenAIConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.base import supports_embeddings
from rakka_inference.providers.litellm import LiteLLMAdapter
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.providers.openai_embed import parse_embeddings

KEY = Secret("sk-embeddings-test-1234")
REQUEST = EmbeddingRequest(model="e", inputs=("a", "bb"), dimensions=3, user="u-1")


def _b64(*values: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _answer(data: object, usage: object = None) -> bytes:
    return orjson.dumps({"object": "list", "data": data, "usage": usage})


def test_the_openai_request_asks_for_base64_with_the_key_in_a_header() -> None:
    adapter = OpenAIAdapter(OpenAIConfig(endpoint="http://h/v1/"), "text-embedding-3-small")
    request = adapter.build_embedding_request(REQUEST, KEY)
    assert (request.method, request.url) == ("POST", "http://h/v1/embeddings")
    assert request.headers["authorization"] == "Bearer sk-embeddings-test-1234"
    assert orjson.loads(request.body) == {
        "model": "text-embedding-3-small",
        "input": ["a", "bb"],
        "encoding_format": "base64",
        "dimensions": 3,
        "user": "u-1",
    }
    assert "sk-embeddings" not in repr(request)


def test_azure_embeddings_go_to_the_deployment_with_the_api_key_header() -> None:
    config = OpenAIConfig(
        variant="azure", resource="contoso", deployment="embed-prod", api_version="2024-10-21"
    )
    request = OpenAIAdapter(config, "text-embedding-3-small").build_embedding_request(
        EmbeddingRequest(model="e", inputs=("x",)), KEY
    )
    assert request.url == (
        "https://contoso.openai.azure.com/openai/deployments/embed-prod/embeddings"
        "?api-version=2024-10-21"
    )
    assert request.headers["api-key"] == KEY.expose()
    assert "dimensions" not in orjson.loads(request.body)


def test_litellm_and_openai_serve_embeddings_anthropic_does_not() -> None:
    litellm = LiteLLMAdapter(LiteLLMConfig(endpoint="http://proxy:4000"), "embed-model")
    request = litellm.build_embedding_request(REQUEST, KEY)
    assert request.url == "http://proxy:4000/embeddings"
    answer = _answer([{"index": 0, "embedding": [1, 0]}, {"index": 1, "embedding": [0, 1]}])
    assert litellm.parse_embedding_response(answer, REQUEST).vectors == ((1.0, 0.0), (0.0, 1.0))
    assert supports_embeddings(litellm)
    assert supports_embeddings(OpenAIAdapter(OpenAIConfig(), "m"))
    assert not supports_embeddings(AnthropicAdapter(AnthropicConfig(), "claude-haiku-4-5"))


def test_vectors_are_put_in_input_order_and_usage_is_read() -> None:
    body = _answer(
        [{"index": 1, "embedding": _b64(0.5, 0.25)}, {"index": 0, "embedding": _b64(1.0, 2.0)}],
        {"prompt_tokens": 7, "total_tokens": 7},
    )
    result = parse_embeddings(body, REQUEST, "openai")
    assert result.vectors == ((1.0, 2.0), (0.5, 0.25))
    assert result.usage.input_tokens == 7


def test_missing_usage_falls_back_to_the_estimate() -> None:
    body = _answer([{"embedding": [0.1]}, {"embedding": [0.2]}])
    result = parse_embeddings(body, REQUEST, "openai")
    assert result.usage.input_tokens == REQUEST.estimated_prompt_tokens()


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "malformed JSON"),
        (_answer([{"index": 0, "embedding": [1.0]}]), "1 vectors for 2 inputs"),
        (_answer(None), "0 vectors for 2 inputs"),
        (_answer(["x", "y"]), "not an object"),
        (_answer([{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]), "index 0"),
        (_answer([{"index": 5, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]), "index 5"),
        (_answer([{"embedding": "%%%"}, {"embedding": "%%%"}]), "not valid base64"),
        (_answer([{"embedding": "AAA="}, {"embedding": "AAA="}]), "not a float32 array"),
        (_answer([{"embedding": []}, {"embedding": [1.0]}]), "neither base64 nor"),
        (_answer([{"embedding": [True]}, {"embedding": [1.0]}]), "neither base64 nor"),
        (_answer([{"embedding": [1.0, 2.0]}, {"embedding": [1.0]}]), "mixes vector lengths"),
    ],
)
def test_a_malformed_answer_is_a_protocol_error(body: bytes, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        parse_embeddings(body, REQUEST, "openai")
