"""The one protocol every provider adapter implements.

An adapter knows one wire format and nothing else: no sockets, no retries, no limits. The
remote engine calls it inline on the hot path:

1. :meth:`ProviderAdapter.build_request` turns a provider-neutral
   :class:`~rakka_inference.core.messages.ChatRequest` and the current credential into an
   :class:`~rakka_inference.wire.http.HttpRequest` (URL, headers, body). Keys go in
   headers, never in the URL.
2. For a unary answer, :meth:`ProviderAdapter.parse_response` turns the body into chunks.
3. For a stream, :meth:`ProviderAdapter.stream_parser` gives a fresh, stateful
   :class:`StreamParser` that turns SSE events into chunks, and says when the provider's
   end-of-stream marker arrived.
4. :meth:`ProviderAdapter.refine_error` sharpens the generic HTTP classification with what
   the provider's error body says (a context-length error, a content filter, a quota).
5. It holds its runtime config and its price table (the state every adapter shares:
   :class:`AdapterState`).

An adapter whose provider serves embeddings also implements :class:`EmbeddingAdapter`:
:meth:`~EmbeddingAdapter.build_embedding_request` and
:meth:`~EmbeddingAdapter.parse_embedding_response`. The gateway routes ``/v1/embeddings``
only to deployments whose adapter does (:func:`supports_embeddings`).

Chunks follow :mod:`rakka_inference.core.stream`: ``usage`` is an increment, tool calls
arrive as indexed fragments. An event type an adapter does not know is skipped (and logged
at debug level), never a crash; a malformed event is a
:class:`~rakka_inference.core.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import orjson

from rakka_inference.core.errors import InferenceError, NetworkError, ProtocolError
from rakka_inference.core.messages import (
    ChatMessage,
    ChatRequest,
    EmbeddingRequest,
    EmbeddingResult,
    Role,
)
from rakka_inference.core.policies import ModelPrice
from rakka_inference.core.pricing import PriceTable, resolve_price
from rakka_inference.core.runtimes import RemoteRuntimeConfig
from rakka_inference.core.secrets import Secret
from rakka_inference.core.stream import TokenChunk
from rakka_inference.wire.http import HttpRequest, HttpResponse
from rakka_inference.wire.sse import SseDecoder, SseEvent

__all__ = [
    "AdapterState",
    "EmbeddingAdapter",
    "ProviderAdapter",
    "StreamParser",
    "TokenCounter",
    "TokenCredential",
    "alternating_turns",
    "answer_chunks",
    "count_field",
    "load_json_object",
    "supports_embeddings",
]

ConfigT = TypeVar("ConfigT", bound=RemoteRuntimeConfig)


class StreamParser(Protocol):
    """Per-stream state: SSE events in, chunks out."""

    @property
    def done(self) -> bool:
        """Whether the provider's end-of-stream marker has arrived."""
        ...

    def feed(self, event: SseEvent) -> list[TokenChunk]:
        """The chunks one event carries (often one, sometimes none)."""
        ...


class ProviderAdapter(Protocol):
    """One provider's wire format."""

    @property
    def provider(self) -> str:
        """The provider's name, for errors, metrics and the circuit breaker key."""
        ...

    @property
    def endpoint(self) -> str:
        """The base URL; with ``provider`` it keys the circuit breaker."""
        ...

    def build_request(self, request: ChatRequest, credential: Secret) -> HttpRequest: ...

    def parse_response(self, body: bytes) -> list[TokenChunk]: ...

    def stream_parser(self, choices: int = 1) -> StreamParser:
        """A fresh parser for one stream of a request for ``choices`` choices (its ``n``):
        a provider whose stream has no end marker of its own ends it when every choice has
        finished."""
        ...

    def refine_error(self, error: InferenceError, body: bytes) -> InferenceError: ...

    def price(self) -> ModelPrice | None:
        """The price of the deployment's model: the override, else the table's, else None."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """An adapter whose provider counts a prompt's tokens (Anthropic's ``count_tokens``,
    Gemini's ``countTokens``)."""

    def build_count_request(self, request: ChatRequest, credential: Secret) -> HttpRequest:
        """The request that counts ``request``'s prompt."""
        ...

    def parse_count_response(self, body: bytes) -> int:
        """The prompt's input tokens from the provider's answer."""
        ...


@runtime_checkable
class EmbeddingAdapter(Protocol):
    """The embeddings half of a provider's wire format (OpenAI, Azure, Gemini, LiteLLM)."""

    def build_embedding_request(
        self, request: EmbeddingRequest, credential: Secret
    ) -> HttpRequest: ...

    def parse_embedding_response(self, body: bytes, request: EmbeddingRequest) -> EmbeddingResult:
        """The vectors in input order, and the input tokens the provider reports (or, where
        it reports none, the request's estimate)."""
        ...


class AdapterState(Generic[ConfigT]):
    """The state every adapter holds, and its accessors: the deployment's runtime config
    (typed precisely, ``ConfigT``), the model, the provider's name and the model's price.

    ``provider`` defaults to the config's :attr:`~RemoteRuntimeConfig.provider_label`; the
    price is :func:`~rakka_inference.core.pricing.resolve_price` of the model, the
    override and the table. Each adapter adds its own endpoint and wire format.
    """

    def __init__(
        self,
        config: ConfigT,
        model: str,
        *,
        provider: str | None = None,
        price_override: ModelPrice | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self._provider = provider or config.provider_label
        self._price = resolve_price(model, price_override, prices)

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def runtime_config(self) -> ConfigT:
        return self.config

    def price(self) -> ModelPrice | None:
        return self._price


class TokenCredential(Protocol):
    """A credential a provider obtains by exchanging the configured secret for a token
    (Vertex AI's service-account OAuth), renewed before it expires. It matches the remote
    session's credential-provider protocol, plus ``aclose``."""

    async def credential(self) -> Secret:
        """The current token; cached, fetched only when none is usable."""
        ...

    async def refresh(self) -> None:
        """Re-read the secret and fetch a new token now."""
        ...

    def describe(self) -> str:
        """Where the credential comes from. Never the value."""
        ...

    async def aclose(self) -> None:
        """Cancel a fetch in flight."""
        ...


async def answer_chunks(
    adapter: ProviderAdapter, response: HttpResponse, *, stream: bool, choices: int = 1
) -> AsyncGenerator[TokenChunk, None]:
    """The chunks of a successful answer: the unary body through the adapter, or the SSE
    stream through :class:`~rakka_inference.wire.sse.SseDecoder` and the adapter's stream
    parser (for ``choices`` choices), up to its end-of-stream marker. A stream that ends
    before the marker raises :class:`NetworkError` (the connection was lost: nothing says
    the answer was whole)."""
    if not stream:
        for chunk in adapter.parse_response(await response.read()):
            yield chunk
        return
    decoder = SseDecoder()
    parser = adapter.stream_parser(choices)
    async for data in response.iter_bytes():
        for event in decoder.feed(data):
            for chunk in parser.feed(event):
                yield chunk
        if parser.done:
            return
    raise NetworkError(
        "the stream ended before the provider's end-of-stream marker", provider=adapter.provider
    )


def count_field(body: bytes, name: str, provider: str) -> int:
    """The non-negative integer ``name`` of a JSON answer (a token count)."""
    value = load_json_object(body, provider).get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"the token count answer has no {name}", provider=provider)
    return value


def supports_embeddings(adapter: object) -> bool:
    """Whether ``adapter`` can serve ``/v1/embeddings``."""
    return isinstance(adapter, EmbeddingAdapter)


def load_json_object(raw: bytes, provider: str) -> dict[str, Any]:
    """Parse an upstream JSON object (a body or one event's payload) or raise ProtocolError."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(
            f"malformed JSON from upstream ({len(raw)} bytes)", provider=provider
        ) from None
    if not isinstance(document, dict):
        raise ProtocolError("upstream JSON is not an object", provider=provider)
    return document


def alternating_turns(
    messages: Sequence[ChatMessage],
    blocks: Callable[[ChatMessage, int], list[dict[str, Any]]],
    *,
    assistant: str,
    content: str,
) -> tuple[list[str], list[dict[str, Any]]]:
    """``(system texts, turns)`` for an API that takes its instructions apart from the turns
    and wants the turns to alternate (Anthropic's, Gemini's).

    System and developer messages are hoisted out (their text, where they have any). Every
    other message becomes ``blocks(message, position)``, a turn of role ``assistant`` for the
    assistant's messages and ``"user"`` for the rest (tool results included), its blocks under
    the key ``content``; a message without blocks is dropped, and one of the same role as the
    turn before joins that turn.
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for position, message in enumerate(messages):
        if message.role in (Role.SYSTEM, Role.DEVELOPER):
            if message.text:
                system.append(message.text)
            continue
        role = assistant if message.role is Role.ASSISTANT else "user"
        added = blocks(message, position)
        if not added:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1][content].extend(added)
        else:
            turns.append({"role": role, content: added})
    return system, turns
