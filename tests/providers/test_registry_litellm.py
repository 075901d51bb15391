"""The adapter registry and the LiteLLM adapter."""

from __future__ import annotations

import orjson
import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ServerError
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RuntimeKind,
    VllmConfig,
)
from rakka_inference.core.secrets import Secret
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.gemini import GeminiAdapter
from rakka_inference.providers.litellm import LiteLLMAdapter
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.providers.registry import adapter_for, remote_runtimes
from rakka_inference.wire.sse import SseDecoder


def deployment(runtime: RuntimeKind, config: object, model: str = "m") -> Deployment:
    return Deployment(name="d", model=model, runtime=runtime, runtime_config=config)  # type: ignore[arg-type]


def test_registry_maps_each_remote_runtime_to_its_adapter() -> None:
    assert remote_runtimes() == {
        RuntimeKind.OPENAI,
        RuntimeKind.ANTHROPIC,
        RuntimeKind.GEMINI,
        RuntimeKind.LITELLM,
    }
    cases = [
        (RuntimeKind.OPENAI, OpenAIConfig(), OpenAIAdapter),
        (RuntimeKind.ANTHROPIC, AnthropicConfig(), AnthropicAdapter),
        (RuntimeKind.GEMINI, GeminiConfig(), GeminiAdapter),
        (RuntimeKind.LITELLM, LiteLLMConfig(endpoint="http://127.0.0.1:4000"), LiteLLMAdapter),
    ]
    for runtime, config, kind in cases:
        assert isinstance(adapter_for(deployment(runtime, config)), kind)


def test_registry_uses_the_upstream_model_name() -> None:
    adapter = adapter_for(deployment(RuntimeKind.OPENAI, OpenAIConfig(), "openai/gpt-4o"))
    assert isinstance(adapter, OpenAIAdapter)
    assert adapter.model == "gpt-4o"


def test_local_runtimes_have_no_adapter() -> None:
    with pytest.raises(ConfigError, match="is local"):
        adapter_for(deployment(RuntimeKind.VLLM, VllmConfig()))


def test_litellm_passes_metadata_and_tags_through() -> None:
    config = LiteLLMConfig(
        endpoint="http://127.0.0.1:4000", metadata={"team": "search"}, tags=("prod", "rag")
    )
    adapter = LiteLLMAdapter(config, "mixtral-8x7b")
    request = ChatRequest(
        model="mixtral",
        messages=(ChatMessage.user("hi"),),
        metadata={"trace": "t-1"},
        stream=True,
    )
    http = adapter.build_request(request, Secret("sk-litellm"))
    assert http.url == "http://127.0.0.1:4000/chat/completions"
    assert http.headers["authorization"] == "Bearer sk-litellm"
    body = orjson.loads(http.body)
    assert body["metadata"] == {"team": "search", "trace": "t-1", "tags": ["prod", "rag"]}
    assert body["model"] == "mixtral-8x7b"
    assert body["stream_options"] == {"include_usage": True}
    assert adapter.provider == "litellm"
    assert adapter.endpoint == "http://127.0.0.1:4000/chat/completions"
    assert adapter.runtime_config is config
    assert adapter.price() is None


def test_litellm_retries_less_by_default_and_parses_like_openai() -> None:
    assert LiteLLMConfig().retry.max_retries == 1
    adapter = LiteLLMAdapter(LiteLLMConfig(endpoint="http://127.0.0.1:4000"), "m")
    plain = ChatRequest(model="m", messages=(ChatMessage.user("hi"),))
    assert "metadata" not in adapter.request_body(plain)
    [chunk] = adapter.parse_response(
        b'{"choices":[{"index":0,"message":{"content":"ok"},"finish_reason":"stop"}]}'
    )
    assert chunk.text == "ok"
    parser = adapter.stream_parser()
    for event in SseDecoder().feed(b"data: [DONE]\n\n"):
        parser.feed(event)
    assert parser.done
    error = ServerError("500")
    assert adapter.refine_error(error, b"") is error


def test_gemini_safety_settings_come_from_the_config() -> None:
    from rakka_inference.core.config import parse_config

    config = parse_config(
        """
[[deployment]]
name = "gem"
model = "gemini-2.5-flash"
runtime = "gemini"
[deployment.runtime_config]
api_key = { from_env = "GEMINI_API_KEY" }
safety_settings = [
  { category = "HARM_CATEGORY_HATE_SPEECH", threshold = "BLOCK_ONLY_HIGH" },
]
""",
        environ={},
    )
    adapter = adapter_for(config.deployment("gem"))
    assert isinstance(adapter, GeminiAdapter)
    request = ChatRequest(model="gem", messages=(ChatMessage.user("hi"),))
    body = adapter.request_body(request)
    assert body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_ONLY_HIGH"}
    ]
