"""orjson against msgspec on the gateway's own JSON, for ``bench/server_choice.py``.

Four payloads, each taken from the code that produces or consumes it:

- a chat request body (system, user, an assistant tool call, two tool results, two tools
  with JSON-schema parameters, stream options), which the gateway decodes per request;
- the ``chat.completion`` the gateway sends for a text answer (``completion_json``);
- a ``chat.completion.chunk`` (``ChunkRenderer.render``), 20 per stream: the whole object,
  and, as the gateway encodes it, only the delta between prebuilt head and tail bytes;
- an upstream OpenAI chunk event's payload (``bench/gateway.py``'s mock upstream), which
  the OpenAI adapter decodes per chunk.

Variants: ``orjson`` (the baseline), ``msgspec`` untyped (``msgspec.json.decode`` /
``encode`` on the same dicts), and ``msgspec`` typed (``msgspec.json.Decoder(type)`` /
``Encoder`` on Structs that mirror the payload). A typed decode also checks the shape,
which the gateway does afterwards in Python for the other two (``parse_chat_request``,
shown beside them as what today's path costs in all). Every variant is checked to give
the same document before it is timed.

Timing is ``timeit`` on a statement string (no Python call per loop beyond the one
measured), variants interleaved, best of ``repeat`` runs, in ns per operation.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

import gateway as gw
from rakka_inference.api.openai_request import parse_chat_request
from rakka_inference.api.openai_response import ChunkRenderer, completion_json
from rakka_inference.core.stream import ChatCompletion, FinishReason, TokenChunk
from rakka_inference.core.usage import Usage

# ---------------------------------------------------------------------- typed shapes


class FunctionCall(msgspec.Struct):
    name: str
    arguments: str


class ToolCall(msgspec.Struct):
    id: str
    type: str
    function: FunctionCall


class Message(msgspec.Struct, omit_defaults=True):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class Function(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(msgspec.Struct):
    type: str
    function: Function


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatBody(msgspec.Struct, omit_defaults=True):
    model: str
    messages: list[Message]
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class PromptDetails(msgspec.Struct):
    cached_tokens: int


class CompletionDetails(msgspec.Struct):
    reasoning_tokens: int


class UsageOut(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails
    completion_tokens_details: CompletionDetails


class AnswerMessage(msgspec.Struct):
    role: str
    content: str | None


class CompletionChoice(msgspec.Struct):
    index: int
    message: AnswerMessage
    finish_reason: str
    logprobs: None


class Completion(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageOut


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: str | None


class Chunk(msgspec.Struct):
    id: str
    object: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: UsageOut | None


class UpstreamDelta(msgspec.Struct):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class UpstreamChoice(msgspec.Struct):
    index: int
    delta: UpstreamDelta
    finish_reason: str | None = None


class UpstreamUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class UpstreamChunk(msgspec.Struct):
    choices: list[UpstreamChoice]
    id: str = ""
    model: str = ""
    usage: UpstreamUsage | None = None


# ---------------------------------------------------------------------- payloads

_WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city"],
    "additionalProperties": False,
}
_SEARCH = {
    "type": "object",
    "properties": {
        "query": {"type": "string"},
        "top_k": {"type": "integer", "default": 5},
        "sites": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["query"],
}


def request_body() -> bytes:
    """A chat request with tools, mid-conversation, as the official SDK sends it."""
    calls = [
        {
            "id": f"call_{city.lower()}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"city":"{city}"}}'},
        }
        for city in ("Paris", "Berlin")
    ]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a concise assistant. Use the tools when needed."},
        {"role": "user", "content": "What is the weather in Paris and in Berlin today?"},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_paris", "content": '{"temp_c":18,"sky":"clear"}'},
        {"role": "tool", "tool_call_id": "call_berlin", "content": '{"temp_c":14,"sky":"rain"}'},
        {"role": "user", "content": "And what should I pack for a two-day trip to both?"},
    ]
    tools = [
        {
            "type": "function",
            "function": {"name": name, "description": text, "parameters": schema},
        }
        for name, text, schema in (
            ("get_weather", "Current weather and forecast for a city.", _WEATHER),
            ("search_web", "Search the web and return the top results.", _SEARCH),
        )
    ]
    return orjson.dumps(
        {
            "model": "bench",
            "messages": messages,
            "tools": tools,
            "tool_choice": "auto",
            "temperature": 0.7,
            "max_tokens": 512,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )


def completion_document() -> dict[str, Any]:
    """The ``chat.completion`` the gateway sends for a short text answer, as a dict."""
    text = (
        "Pack layers: a light jacket and sunglasses for Paris, where it is clear and 18 C, "
        "and a waterproof coat and umbrella for Berlin, where it rains at 14 C. Comfortable "
        "walking shoes work for both."
    )
    result = ChatCompletion(
        text=text,
        finish_reason=FinishReason.STOP,
        usage=Usage(input_tokens=212, output_tokens=48),
    )
    body = completion_json(result, request_id="req_0123456789abcdef", model="bench", created=1)
    return orjson.loads(body)  # type: ignore[no-any-return]


def chunk_document() -> tuple[dict[str, Any], bytes, bytes]:
    """(a text ``chat.completion.chunk`` as a dict, the head and tail around its delta)."""
    renderer = ChunkRenderer(
        request_id="req_0123456789abcdef", model="bench", created=1, include_usage=True
    )
    event = renderer.render(TokenChunk(text=" token"))
    document = orjson.loads(event.removeprefix(b"data: "))
    delta = orjson.dumps(document["choices"][0]["delta"])
    head, tail = event.split(delta)
    return document, head, tail


def upstream_event() -> bytes:
    """One upstream OpenAI text chunk's JSON (the mock upstream's, without SSE framing)."""
    event = gw._event({"content": " token7"}, None)
    data = event.split(b"\r\n", 1)[1]
    return data.removeprefix(b"data: ").split(b"\n\n", 1)[0]


# ---------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Variant:
    label: str
    stmt: str
    namespace: dict[str, Any]


@dataclass(frozen=True)
class JsonCase:
    key: str  # request, completion, chunk, chunk_rendered, upstream_chunk
    title: str
    variants: tuple[Variant, ...]  # the first is orjson, the baseline
    reference: Variant | None = None  # shown beside, not a contender


def cases() -> list[JsonCase]:
    """Every case, after checking that each variant gives the same document."""
    body = request_body()
    decode_body = msgspec.json.Decoder(ChatBody)
    typed_body = decode_body.decode(body)
    document = orjson.loads(body)
    assert msgspec.json.decode(body) == document
    assert msgspec.to_builtins(typed_body.tools) == document["tools"]
    calls = typed_body.messages[2].tool_calls
    assert calls is not None
    assert msgspec.to_builtins(calls) == document["messages"][2]["tool_calls"]
    assert len(typed_body.messages) == len(document["messages"])

    completion = completion_document()
    typed_completion = msgspec.convert(completion, Completion)
    encoder = msgspec.json.Encoder()
    assert orjson.dumps(completion) == msgspec.json.encode(completion)
    assert orjson.dumps(completion) == encoder.encode(typed_completion)

    chunk, head, tail = chunk_document()
    typed_chunk = msgspec.convert(chunk, Chunk)
    assert orjson.dumps(chunk) == msgspec.json.encode(chunk) == encoder.encode(typed_chunk)
    text = chunk["choices"][0]["delta"]["content"]
    gateway_event = head + orjson.dumps({"content": text}) + tail
    assert gateway_event == head + encoder.encode(Delta(content=text)) + tail
    assert gateway_event == head + msgspec.json.encode({"content": text}) + tail

    upstream = upstream_event()
    decode_upstream = msgspec.json.Decoder(UpstreamChunk)
    typed_upstream = decode_upstream.decode(upstream)
    assert (
        typed_upstream.choices[0].delta.content
        == orjson.loads(upstream)["choices"][0]["delta"]["content"]
    )
    assert msgspec.json.decode(upstream) == orjson.loads(upstream)

    decode = {"loads": orjson.loads, "decode": msgspec.json.decode}
    encode = {"dumps": orjson.dumps, "encode": msgspec.json.encode, "enc": encoder}
    concat = {"head": head, "tail": tail, "text": text, "Delta": Delta}
    return [
        JsonCase(
            "request",
            f"decode chat request ({len(body)} B, messages + tools)",
            (
                Variant("orjson.loads", "loads(body)", decode | {"body": body}),
                Variant("msgspec untyped", "decode(body)", decode | {"body": body}),
                Variant(
                    "msgspec typed", "typed(body)", {"typed": decode_body.decode, "body": body}
                ),
            ),
            Variant(
                "orjson + parse_chat_request (today)",
                "parse(body, request_id='req_1')",
                {"parse": parse_chat_request, "body": body},
            ),
        ),
        JsonCase(
            "completion",
            f"encode chat.completion ({len(orjson.dumps(completion))} B)",
            (
                Variant("orjson.dumps", "dumps(doc)", encode | {"doc": completion}),
                Variant("msgspec untyped", "encode(doc)", encode | {"doc": completion}),
                Variant("msgspec typed", "enc.encode(doc)", encode | {"doc": typed_completion}),
            ),
        ),
        JsonCase(
            "chunk",
            f"encode chat.completion.chunk, whole ({len(orjson.dumps(chunk))} B)",
            (
                Variant("orjson.dumps", "dumps(doc)", encode | {"doc": chunk}),
                Variant("msgspec untyped", "encode(doc)", encode | {"doc": chunk}),
                Variant("msgspec typed", "enc.encode(doc)", encode | {"doc": typed_chunk}),
            ),
        ),
        JsonCase(
            "chunk_rendered",
            "chunk as the gateway renders it: head + delta + tail",
            (
                Variant(
                    "orjson.dumps",
                    "head + dumps({'content': text}) + tail",
                    encode | concat,
                ),
                Variant(
                    "msgspec untyped",
                    "head + encode({'content': text}) + tail",
                    encode | concat,
                ),
                Variant(
                    "msgspec typed",
                    "head + enc.encode(Delta(content=text)) + tail",
                    encode | concat,
                ),
            ),
        ),
        JsonCase(
            "upstream_chunk",
            f"decode upstream OpenAI chunk ({len(upstream)} B)",
            (
                Variant("orjson.loads", "loads(data)", decode | {"data": upstream}),
                Variant("msgspec untyped", "decode(data)", decode | {"data": upstream}),
                Variant(
                    "msgspec typed",
                    "typed(data)",
                    {"typed": decode_upstream.decode, "data": upstream},
                ),
            ),
        ),
    ]


def measure(case: JsonCase, *, repeat: int, target_s: float) -> dict[str, float]:
    """ns per operation of each variant (and the reference): best of ``repeat``, interleaved."""
    variants = [*case.variants, *([case.reference] if case.reference else [])]
    timers = [timeit.Timer(v.stmt, globals=v.namespace) for v in variants]
    numbers = []
    for timer in timers:
        number, elapsed = timer.autorange()
        numbers.append(max(1, int(number * target_s / elapsed)))
    best = [float("inf")] * len(timers)
    for _ in range(repeat):
        for i, (timer, number) in enumerate(zip(timers, numbers, strict=True)):
            best[i] = min(best[i], timer.timeit(number) / number * 1e9)
    return {v.label: ns for v, ns in zip(variants, best, strict=True)}
