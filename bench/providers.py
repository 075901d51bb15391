"""Cost of translating one 20-chunk stream, per provider: SSE bytes in, TokenChunks out.

    python bench/providers.py [--streams N]

Each provider's stream is the wire format its API sends for a 20-piece text answer (with
usage), fed to :class:`~rakka_inference.wire.sse.SseDecoder` one network read per event
and then to the adapter's stream parser — exactly what the remote runner does per chunk.
The baseline, in the same run, is the least any consumer must do with the same bytes:
``orjson.loads`` of every event's payload. Reported: microseconds per stream and the
ratio to that baseline (pinned to one core).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import orjson

from rakka_inference.core.runtimes import AnthropicConfig, GeminiConfig, OpenAIConfig
from rakka_inference.providers.anthropic import AnthropicAdapter
from rakka_inference.providers.base import ProviderAdapter
from rakka_inference.providers.gemini import GeminiAdapter
from rakka_inference.providers.openai import OpenAIAdapter
from rakka_inference.wire.sse import SseDecoder

PIECES = [f" word{i}" for i in range(20)]


def _data(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_stream() -> list[bytes]:
    chunks = [
        _data(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": "gpt-4o",
                "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
            }
        )
        for p in PIECES
    ]
    chunks.append(_data({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    chunks.append(_data({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 20}}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def anthropic_stream() -> list[bytes]:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 9, "output_tokens": 1},
        },
    }
    chunks = [
        _data(start, "message_start"),
        _data(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            "content_block_start",
        ),
    ]
    chunks += [
        _data(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
            "content_block_delta",
        )
        for p in PIECES
    ]
    chunks += [
        _data({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        _data(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 20},
            },
            "message_delta",
        ),
        _data({"type": "message_stop"}, "message_stop"),
    ]
    return chunks


def gemini_stream() -> list[bytes]:
    chunks = []
    for index, piece in enumerate(PIECES):
        candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": piece}]}}
        if index == len(PIECES) - 1:
            candidate["finishReason"] = "STOP"
        chunks.append(
            _data(
                {
                    "candidates": [candidate],
                    "usageMetadata": {
                        "promptTokenCount": 9,
                        "candidatesTokenCount": index + 1,
                        "totalTokenCount": 10 + index,
                    },
                }
            )
        )
    return chunks


def translate(adapter: ProviderAdapter, chunks: list[bytes]) -> int:
    decoder = SseDecoder()
    parser = adapter.stream_parser()
    produced = 0
    for data in chunks:
        for event in decoder.feed(data):
            produced += len(parser.feed(event))
    assert parser.done
    return produced


def baseline(chunks: list[bytes]) -> int:
    parsed = 0
    for data in chunks:
        payload = data[data.index(b"data: ") + 6 : -2]
        if payload != b"[DONE]":
            orjson.loads(payload)
            parsed += 1
    return parsed


def per_stream_us(fn: Callable[[], int], streams: int) -> float:
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(streams):
            fn()
        runs.append((time.perf_counter() - start) / streams * 1e6)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cases: list[tuple[str, ProviderAdapter, list[bytes]]] = [
        ("openai", OpenAIAdapter(OpenAIConfig(), "gpt-4o"), openai_stream()),
        ("anthropic", AnthropicAdapter(AnthropicConfig(), "claude-sonnet-4-5"), anthropic_stream()),
        ("gemini", GeminiAdapter(GeminiConfig(), "gemini-2.5-flash"), gemini_stream()),
    ]
    print(f"one 20-chunk stream, median of 5 x {args.streams} streams, one core")
    print(f"{'provider':10} {'translate':>11} {'json only':>11} {'ratio':>7}")
    for name, adapter, chunks in cases:
        translate(adapter, chunks)  # warm up, and check it completes
        ours = per_stream_us(lambda a=adapter, c=chunks: translate(a, c), args.streams)
        base = per_stream_us(lambda c=chunks: baseline(c), args.streams)
        print(f"{name:10} {ours:9.1f}us {base:9.1f}us {ours / base:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
