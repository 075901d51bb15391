"""One streamed answer as the Responses API's event stream, sans I/O.

:class:`ResponseStreamRenderer` turns the core's :class:`TokenChunk` stream into OpenAI's
Responses events, each framed ``event: <type>\\ndata: <json>\\n\\n`` and numbered by
``sequence_number`` from 0:

- ``response.created`` and ``response.in_progress``, the response with no output yet;
- when the request asked for reasoning, per run of thinking a ``reasoning`` item:
  ``response.output_item.added``, ``response.reasoning_text.delta``...,
  ``response.reasoning_text.done``, ``response.output_item.done`` (whose item carries the
  ``encrypted_content`` a client sends back: take it from there, not from the added one);
- per text run, a ``message`` item: ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta``...,
  ``response.output_text.done``, ``response.content_part.done``,
  ``response.output_item.done``;
- per tool call, a ``function_call`` item: ``response.output_item.added`` (once its id
  and name are known), ``response.function_call_arguments.delta``...,
  ``response.function_call_arguments.done``, ``response.output_item.done``;
- ``response.completed`` (or ``response.incomplete``, when the output was cut), the
  whole response with its usage.

One item is open at a time: an item is done when the next one begins or the answer ends.
Parallel tool calls whose fragments interleave (no provider we know streams them so) send
a late fragment as a delta of its own, already done, item: the SDK accumulates by output
index, and ``response.completed`` carries every call whole.

A failure after the first byte sends OpenAI's ``error`` event (``code``, ``message``,
``param``: flat, as the API documents it, so the SDK yields it as a
``ResponseErrorEvent``), then ``response.failed``, whose response holds the output so far
and an ``error`` with code ``rate_limit_exceeded`` (a 429) or ``server_error``; the
stream ends there. Item shapes, ids and statuses are those of
:mod:`~rakka_inference.api.openai_responses_response`.

Speed: a text delta is the item's constant head, serialized once per item, the text and
the sequence number; only the text goes through orjson.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from rakka_inference.api.openai_reasoning import reasoning_item
from rakka_inference.api.openai_responses_request import ResponsesCall
from rakka_inference.api.openai_responses_response import (
    ItemStatus,
    ResponseStatus,
    function_call_item,
    item_id,
    message_item,
    output_status,
    output_text,
    response_envelope,
    responses_usage_json,
)
from rakka_inference.core.errors import InferenceError, ProtocolError
from rakka_inference.core.stream import (
    ChunkAggregator,
    FinishReason,
    PartialToolCall,
    TokenChunk,
    ToolCallDelta,
    until_named,
)
from rakka_inference.core.usage import Usage

__all__ = ["ResponseStreamRenderer"]

_TEXT_TAIL = b',"logprobs":[],"sequence_number":%d}\n\n'


class _Item:
    """An output item being streamed: its kind, id, place, and its text or arguments (and
    for reasoning, its thinking blocks)."""

    __slots__ = ("call_id", "id", "index", "kind", "name", "parts", "status", "thinking")

    def __init__(
        self,
        kind: Literal["message", "function_call", "reasoning"],
        identifier: str,
        index: int,
        *,
        call_id: str = "",
        name: str = "",
    ) -> None:
        self.kind = kind
        self.id = identifier
        self.index = index
        self.call_id = call_id
        self.name = name
        self.parts: list[str] = []
        self.status: ItemStatus = "in_progress"
        # Only a reasoning item assembles thinking blocks: text and calls need no aggregator.
        self.thinking = ChunkAggregator() if kind == "reasoning" else None

    def json(self, status: ItemStatus | None = None) -> dict[str, Any]:
        status = status or self.status
        if self.kind == "message":
            return message_item(self.id, "".join(self.parts), status)
        if self.kind == "reasoning":
            assert self.thinking is not None  # made with every reasoning item
            blocks = self.thinking.result().reasoning_blocks
            return reasoning_item(self.id, "".join(self.parts), blocks, status)
        return function_call_item(self.id, self.call_id, self.name, "".join(self.parts), status)


class ResponseStreamRenderer:
    """Renders one streamed answer as Responses API events. Belongs to one stream.

    Call :meth:`render` per chunk and :meth:`first` once (before or after rendering the
    chunks held back until the first visible one: its two events are numbered 0 and 1
    whatever comes first, and its bytes go first on the wire), then :meth:`final` on
    success or :meth:`error` on a failure after the first byte. :meth:`final` raises
    :class:`~rakka_inference.core.errors.ProtocolError` if a tool call never received an
    id or a name.
    """

    __slots__ = (
        "_call",
        "_calls",
        "_created_at",
        "_finish",
        "_include_reasoning",
        "_items",
        "_open",
        "_pending",
        "_request_id",
        "_sequence",
        "_text_head",
        "_usage",
    )

    def __init__(self, call: ResponsesCall, request_id: str, created_at: int) -> None:
        self._call = call
        self._request_id = request_id
        self._created_at = created_at
        self._sequence = 2
        """The next event's number: 0 and 1 are :meth:`first`'s."""
        self._usage: Usage | None = None
        self._finish: FinishReason | None = None
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        """Tool-call stream index → its function_call item."""
        self._pending: dict[int, PartialToolCall] = {}
        self._text_head = b""
        """The bytes before a text delta's JSON string, for the open message item."""
        self._include_reasoning = call.request.sampling.thinks

    @property
    def usage(self) -> Usage | None:
        """The usage summed so far; ``None`` while no chunk has reported any."""
        return self._usage

    def first(self) -> bytes:
        """``response.created`` and ``response.in_progress``."""
        response = self._envelope("in_progress")
        return _frame("response.created", {"response": response}, 0) + _frame(
            "response.in_progress", {"response": response}, 1
        )

    def render(self, chunk: TokenChunk) -> bytes:
        """The events for ``chunk``, or ``b""`` when it has nothing to send yet."""
        if chunk.usage is not None:
            self._usage = chunk.usage if self._usage is None else self._usage + chunk.usage
        if chunk.choice:
            return b""  # a request of this dialect asks for one choice: no other is shown
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        out: list[bytes] = []
        if self._include_reasoning and (
            chunk.reasoning or chunk.reasoning_signature or chunk.reasoning_redacted
        ):
            self._reasoning(chunk, out)
        if chunk.text:
            item = self._open
            if item is None or item.kind != "message":
                item = self._start_message(out)
            item.parts.append(chunk.text)
            sequence = self._next()
            out.append(self._text_head + orjson.dumps(chunk.text) + _TEXT_TAIL % sequence)
        for call in chunk.tool_calls:
            self._tool(call, out)
        return b"".join(out)

    def final(self) -> bytes:
        """The open item's closing events, then ``response.completed`` or
        ``response.incomplete`` with the whole response."""
        if self._pending:
            index = min(self._pending)
            missing = "an id" if self._pending[index].id is None else "a name"
            raise ProtocolError(f"streamed tool call at index {index} never received {missing}")
        status, incomplete = output_status(self._finish)
        out: list[bytes] = []
        self._close(out, status)
        response = self._envelope(status)
        response["incomplete_details"] = incomplete
        response["output"] = [item.json() for item in self._items]
        response["usage"] = responses_usage_json(self._usage)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._event(kind, {"response": response}))
        return b"".join(out)

    def error(self, error: InferenceError) -> bytes:
        """The ``error`` event for ``error``, then ``response.failed``; the stream ends."""
        event = {
            "code": error.openai_code or error.openai_type,
            "message": error.message,
            "param": error.param,
        }
        response = self._envelope("failed")
        response["error"] = {
            "code": "rate_limit_exceeded" if error.http_status == 429 else "server_error",
            "message": error.message,
        }
        # An item still open was cut short.
        response["output"] = [
            item.json("incomplete" if item.status == "in_progress" else item.status)
            for item in self._items
        ]
        response["usage"] = responses_usage_json(self._usage)
        return self._event("error", event) + self._event("response.failed", {"response": response})

    # ------------------------------------------------------------------ items

    def _envelope(self, status: ResponseStatus) -> dict[str, Any]:
        return response_envelope(
            self._call, request_id=self._request_id, created_at=self._created_at, status=status
        )

    def _next(self) -> int:
        sequence = self._sequence
        self._sequence += 1
        return sequence

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        return _frame(kind, fields, self._next())

    def _begin(self, item: _Item, out: list[bytes]) -> None:
        """Close the open item and open ``item``, announcing it."""
        self._close(out, "completed")
        self._items.append(item)
        self._open = item
        announced = (
            message_item(item.id, None, "in_progress") if item.kind == "message" else item.json()
        )
        if item.kind == "reasoning":
            announced.pop("encrypted_content", None)  # it is whole only when the item is done
        added = {"output_index": item.index, "item": announced}
        out.append(self._event("response.output_item.added", added))

    def _close(self, out: list[bytes], status: ItemStatus) -> None:
        item = self._open
        if item is None:
            return
        self._open = None
        item.status = status
        where = {"item_id": item.id, "output_index": item.index}
        whole = "".join(item.parts)
        if item.kind == "message":
            done = {**where, "content_index": 0, "text": whole, "logprobs": []}
            out.append(self._event("response.output_text.done", done))
            part = {**where, "content_index": 0, "part": output_text(whole)}
            out.append(self._event("response.content_part.done", part))
        elif item.kind == "reasoning":
            if whole:
                done = {**where, "content_index": 0, "text": whole}
                out.append(self._event("response.reasoning_text.done", done))
        else:
            done = {**where, "arguments": whole}
            out.append(self._event("response.function_call_arguments.done", done))
        item_done = {"output_index": item.index, "item": item.json()}
        out.append(self._event("response.output_item.done", item_done))

    def _reasoning(self, chunk: TokenChunk, out: list[bytes]) -> None:
        item = self._open
        if item is None or item.kind != "reasoning":
            index = len(self._items)
            item = _Item("reasoning", item_id("rs", self._request_id, index), index)
            self._begin(item, out)
        assert item.thinking is not None  # a reasoning item's
        item.thinking.add(chunk)
        if chunk.reasoning:
            item.parts.append(chunk.reasoning)
            where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
            delta = {**where, "delta": chunk.reasoning}
            out.append(self._event("response.reasoning_text.delta", delta))

    def _start_message(self, out: list[bytes]) -> _Item:
        index = len(self._items)
        item = _Item("message", item_id("msg", self._request_id, index), index)
        self._begin(item, out)
        part = {"item_id": item.id, "output_index": index, "content_index": 0}
        out.append(self._event("response.content_part.added", {**part, "part": output_text("")}))
        self._text_head = (
            b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"item_id":' + orjson.dumps(item.id) + b',"output_index":%d,"content_index":0,'
            b'"delta":' % index
        )
        return item

    def _tool(self, delta: ToolCallDelta, out: list[bytes]) -> None:
        item = self._calls.get(delta.index)
        if item is not None:
            if delta.arguments:
                self._arguments(item, delta.arguments, out)
            return
        named = until_named(self._pending, delta)
        if named is None:
            return
        call_id, name, arguments = named
        index = len(self._items)
        identifier = item_id("fc", self._request_id, index)
        item = _Item("function_call", identifier, index, call_id=call_id, name=name)
        self._calls[delta.index] = item
        self._begin(item, out)
        if arguments:
            self._arguments(item, arguments, out)

    def _arguments(self, item: _Item, fragment: str, out: list[bytes]) -> None:
        item.parts.append(fragment)
        fields = {"item_id": item.id, "output_index": item.index, "delta": fragment}
        out.append(self._event("response.function_call_arguments.delta", fields))


def _frame(kind: str, fields: dict[str, Any], sequence: int) -> bytes:
    payload = {"type": kind, **fields, "sequence_number": sequence}
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
