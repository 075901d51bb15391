"""A LiteLLM proxy: the OpenAI wire format, with LiteLLM's metadata and tags passed through.

The proxy speaks OpenAI chat completions, so this adapter is the OpenAI adapter pointed at
the proxy's ``endpoint`` with the proxy's own key, plus two things:

- the deployment's ``metadata`` and the request's metadata go in the body's ``metadata``
  object, and the deployment's ``tags`` in ``metadata.tags`` (LiteLLM uses them for spend
  tracking and routing);
- its runtime kind is ``litellm``, whose default retry policy retries less
  (``max_retries = 1``), because the proxy retries on its own.
"""

from __future__ import annotations

from typing import Any

import orjson

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import PriceTable
from rakka_inference.core.runtimes import LiteLLMConfig, OpenAIConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.providers.base import AdapterState
from rakka_inference.providers.openai import OpenAIAdapter, OpenAIStreamParser
from rakka_inference.wire.http import HttpRequest

__all__ = ["LiteLLMAdapter"]


class LiteLLMAdapter(AdapterState[LiteLLMConfig]):
    """The OpenAI format aimed at a LiteLLM proxy."""

    def __init__(
        self,
        config: LiteLLMConfig,
        model: str,
        *,
        provider: str | None = None,
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        super().__init__(
            config, model, provider=provider, price_override=price_override, prices=prices
        )
        self._openai = OpenAIAdapter(
            OpenAIConfig(
                endpoint=config.endpoint,
                api_key=config.api_key,
                http2=config.http2,
                rate_limits=config.rate_limits,
                retry=config.retry,
                circuit_breaker=config.circuit_breaker,
                timeouts=config.timeouts,
            ),
            model,
            provider=self._provider,
            price_override=self._price,
            prices=prices,
            accepts_top_k=True,  # LiteLLM passes it on to the providers that take it
        )

    @property
    def endpoint(self) -> str:
        return self._openai.endpoint

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        body = self._openai.request_body(request)
        metadata: dict[str, Any] = {**self.config.metadata, **request.metadata}
        if self.config.tags:
            metadata["tags"] = list(self.config.tags)
        if metadata:
            body["metadata"] = metadata
        return body

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        base = self._openai.build_request(request, credential)
        return HttpRequest(
            base.method, base.url, base.headers, orjson.dumps(self.request_body(request))
        )

    def build_embedding_request(self, request: EmbeddingRequest, credential: Secret) -> HttpRequest:
        return self._openai.build_embedding_request(request, credential)

    def parse_response(self, body: bytes) -> list[TokenChunk]:
        return self._openai.parse_response(body)

    def parse_embedding_response(self, body: bytes, request: EmbeddingRequest) -> EmbeddingResult:
        return self._openai.parse_embedding_response(body, request)

    def stream_parser(self, choices: int = 1) -> OpenAIStreamParser:
        return self._openai.stream_parser(choices)

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError:
        return self._openai.refine_error(error, body)
