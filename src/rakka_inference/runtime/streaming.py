"""One streamed answer on the wire, whatever its dialect.

:func:`send_stream` holds the answer back until the first visible chunk
(:attr:`~rakka_inference.core.stream.TokenChunk.visible`): a failure before it is a plain
JSON error with its own status, raised to the gateway (after every fallback was tried).
Then it sends the SSE head, the dialect's opening event with the held chunks, every chunk
as it comes (observing the gap between tokens), and the closing events. A failure after
the first byte keeps the partial answer and ends it with the dialect's error event.

The same holds when the stream is cut (the server's grace period ran out): the task that
writes it is cancelled, and ``cut_reason`` names the error the client is told; the
cancellation of a client that went away (no reason) is passed on as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol

from rakka_inference.core.errors import InferenceError
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.report import RequestRecord
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.runtime.asgi import Send
from rakka_inference.runtime.request import RequestActor

__all__ = ["StreamRenderer", "send_stream"]


class StreamRenderer(Protocol):
    """One streamed answer in a wire format (OpenAI's ChunkRenderer, Anthropic's)."""

    def first(self) -> bytes: ...

    def render(self, chunk: TokenChunk) -> bytes: ...

    def final(self) -> bytes: ...

    def error(self, error: InferenceError) -> bytes: ...


async def send_stream(
    renderer: StreamRenderer,
    actor: RequestActor,
    send: Send,
    request_id: str,
    *,
    clock: Callable[[], float],
    metrics: InferenceMetrics | None,
    providers: Mapping[str, str],
    cut_reason: Callable[[], InferenceError | None] = lambda: None,
) -> None:
    """Stream ``actor``'s answer to the client through ``renderer`` (module docstring).

    ``providers`` names each deployment's provider, for the inter-token metric;
    ``cut_reason`` says why a cancellation came, when it is a cut.
    """
    chunks = actor.chunks()
    # Usage-only chunks before the first visible one are held back with it.
    held: list[TokenChunk] = []
    async for chunk in chunks:
        held.append(chunk)
        if chunk.visible:
            break
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    try:
        await _write_stream(
            renderer,
            held,
            chunks,
            send,
            record=actor.record,
            clock=clock,
            metrics=metrics,
            providers=providers,
            cut_reason=cut_reason,
        )
    finally:
        await chunks.aclose()


async def _write_stream(
    renderer: StreamRenderer,
    held: list[TokenChunk],
    chunks: AsyncIterator[TokenChunk],
    send: Send,
    *,
    record: RequestRecord,
    clock: Callable[[], float],
    metrics: InferenceMetrics | None,
    providers: Mapping[str, str],
    cut_reason: Callable[[], InferenceError | None],
) -> None:
    # The held chunks are rendered before the opening event is built, so an Anthropic
    # message_start can report the prompt usage an upstream sent ahead of the content.
    opening = b"".join(renderer.render(chunk) for chunk in held)
    body = renderer.first() + opening
    await send({"type": "http.response.body", "body": body, "more_body": True})
    deployment = record.deployment or ""
    provider = providers.get(deployment, "")
    last = clock()
    try:
        async for chunk in chunks:
            data = renderer.render(chunk)
            if data:
                if metrics is not None:
                    now = clock()
                    metrics.observe_inter_token(deployment, provider, now - last)
                    last = now
                await send({"type": "http.response.body", "body": data, "more_body": True})
        tail = renderer.final()
    except InferenceError as error:
        # After the first byte: the partial answer stands; an error event ends it.
        tail = renderer.error(error)
    except asyncio.CancelledError:
        cut = cut_reason()
        if cut is None:
            raise  # the client went away: nobody to tell
        # Cut mid-stream: the client hears why before the connection closes.
        tail = renderer.error(cut)
    await send({"type": "http.response.body", "body": tail, "more_body": False})
