"""The gateway's inference routes, one per client dialect: chat completions, messages,
responses, embeddings.

Each route reads the body, parses it with its dialect's parser
(:mod:`rakka_inference.api`), has the gateway start a
:class:`~rakka_inference.runtime.request.RequestActor` for it, and answers in its
dialect: a JSON body, or a stream through :func:`~rakka_inference.runtime.streaming.
send_stream`. What every route shares — the body limit, the in-flight limit and deadline,
the watch for a client going away, the overhead metric — is the gateway's, reached
through :class:`Serving`. Errors are raised to the gateway, which renders them in the
route's format.

A route gets the request's :class:`~rakka_inference.runtime.asgi.RequestIds`: the answer's
id is made from ``ids.own`` (always the gateway's), and ``ids.header`` is the response's
``x-request-id``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from rakka_inference.api.anthropic_request import parse_messages_request
from rakka_inference.api.anthropic_response import MessageStreamRenderer, message_json
from rakka_inference.api.openai_embeddings import parse_embedding_request
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.api.openai_response import ChunkRenderer, completion_json, embeddings_json
from rakka_inference.api.openai_responses_request import (
    CORE_PARAM_NAMES,
    parse_responses_request,
)
from rakka_inference.api.openai_responses_response import response_json
from rakka_inference.api.openai_responses_stream import ResponseStreamRenderer
from rakka_inference.core.errors import BadRequest
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest
from rakka_inference.core.stream import ChatCompletion
from rakka_inference.runtime.asgi import Receive, RequestIds, Scope, Send, send_json
from rakka_inference.runtime.request import RequestActor
from rakka_inference.runtime.streaming import StreamRenderer

__all__ = ["Serving", "chat", "embeddings", "messages", "responses"]


class Serving(Protocol):
    """What a route asks of the gateway (:class:`~rakka_inference.runtime.gateway.ApiGateway`)."""

    async def read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, within the gateway's size limit."""
        ...

    def actor(self, request: ChatRequest | EmbeddingRequest, scope: Scope) -> RequestActor:
        """A request actor for ``request``, within the in-flight limit, with its deadline."""
        ...

    async def serve(
        self, actor: RequestActor, answer: Coroutine[Any, Any, None], receive: Receive
    ) -> None:
        """Run ``answer``, cancelled if the client goes away; observe the overhead."""
        ...

    async def stream(
        self, renderer: StreamRenderer, actor: RequestActor, send: Send, ids: RequestIds
    ) -> None:
        """Stream ``actor``'s answer through ``renderer``."""
        ...


async def chat(
    gateway: Serving, scope: Scope, receive: Receive, send: Send, ids: RequestIds
) -> None:
    """``POST /v1/chat/completions``: OpenAI's chat format in and out."""
    request = parse_chat_request(await gateway.read_body(scope, receive), request_id=ids.own)

    # A client that asked for reasoning sees it, as reasoning_content (vLLM's and
    # DeepSeek's field): Claude's thinking blocks, Gemini's thoughts, an engine's reasoning.
    reasoning = request.sampling.thinks

    def renderer() -> StreamRenderer:
        return ChunkRenderer(
            request_id=ids.own,
            model=request.model,
            created=int(time.time()),
            include_usage=request.include_usage,
            include_reasoning=reasoning,
            choices=request.sampling.n,
        )

    def body(result: ChatCompletion) -> bytes:
        return completion_json(
            result,
            request_id=ids.own,
            model=request.model,
            created=int(time.time()),
            include_reasoning=reasoning,
            logprobs=request.sampling.logprobs,
        )

    await _answer_chat(
        gateway, request, scope, receive, send, ids=ids, renderer=renderer, body=body
    )


async def messages(
    gateway: Serving, scope: Scope, receive: Receive, send: Send, ids: RequestIds
) -> None:
    """``POST /v1/messages``: Anthropic's Messages format in and out."""
    body = await gateway.read_body(scope, receive)
    request = parse_messages_request(body, request_id=ids.own)
    shown = request.sampling.thinks  # a client that enabled thinking sees it
    await _answer_chat(
        gateway,
        request,
        scope,
        receive,
        send,
        ids=ids,
        renderer=lambda: MessageStreamRenderer(ids.own, request.model, include_reasoning=shown),
        body=lambda result: message_json(
            result, request_id=ids.own, model=request.model, include_reasoning=shown
        ),
    )


async def responses(
    gateway: Serving, scope: Scope, receive: Receive, send: Send, ids: RequestIds
) -> None:
    """``POST /v1/responses``: OpenAI's Responses format in and out; nothing is stored.

    A refusal after parsing that names a field as chat names it (``reasoning_effort``) is
    told with the Responses API's name for it (``reasoning.effort``)."""
    body = await gateway.read_body(scope, receive)
    call = parse_responses_request(body, request_id=ids.own)
    created_at = int(time.time())
    try:
        await _answer_chat(
            gateway,
            call.request,
            scope,
            receive,
            send,
            ids=ids,
            renderer=lambda: ResponseStreamRenderer(call, ids.own, created_at),
            body=lambda result: response_json(
                call, result, request_id=ids.own, created_at=created_at
            ),
        )
    except BadRequest as error:
        if error.param is not None:
            error.param = CORE_PARAM_NAMES.get(error.param, error.param)
        raise


async def _answer_chat(
    gateway: Serving,
    request: ChatRequest,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    ids: RequestIds,
    renderer: Callable[[], StreamRenderer],
    body: Callable[[ChatCompletion], bytes],
) -> None:
    """Answer a parsed chat request in its route's dialect: streamed through
    ``renderer()``, or whole as ``body(completion)``."""
    actor = gateway.actor(request, scope)

    async def answer() -> None:
        if request.stream:
            await gateway.stream(renderer(), actor, send, ids)
            return
        result = await actor.completion()
        await send_json(send, 200, body(result), ids.header)

    await gateway.serve(actor, answer(), receive)


async def embeddings(
    gateway: Serving, scope: Scope, receive: Receive, send: Send, ids: RequestIds
) -> None:
    """``POST /v1/embeddings``: OpenAI's embeddings format in and out."""
    body = await gateway.read_body(scope, receive)
    call = parse_embedding_request(body, request_id=ids.own)
    actor = gateway.actor(call.request, scope)

    async def answer() -> None:
        result = await actor.embedding()
        payload = embeddings_json(
            result, model=call.request.model, encoding_format=call.encoding_format
        )
        await send_json(send, 200, payload, ids.header)

    await gateway.serve(actor, answer(), receive)
