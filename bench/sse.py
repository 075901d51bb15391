"""SSE decode throughput: our sans-I/O decoder against httpx-sse, in the same run.

    pip install -e '.[bench]'
    python bench/sse.py [--events N] [--repeat R]

The stream is an OpenAI-style chat completion stream (``data: {json}\\n\\n`` per token).
Two chunkings are measured: one network read per event (what providers flush), and 4 KiB
reads. The baseline is httpx-sse's own pipeline over the same bytes — an incremental UTF-8
decoder, its ``SSELineDecoder`` and its ``SSEDecoder`` — which is what ``aconnect_sse``
runs per chunk. Target (issue: remote core): >= 3x httpx-sse.

Our events carry the payload as bytes and decode it to text only when ``.data`` is read
(adapters hand the bytes to the JSON parser). httpx-sse always builds the string, so the
table shows ours both ways: as used (``raw``) and with every payload decoded (``text``).
"""

from __future__ import annotations

import argparse
import codecs
import json
import os
import statistics
import time
from collections.abc import Callable

from rakka_inference.wire.sse import SseDecoder


def make_stream(events: int) -> list[bytes]:
    chunks = []
    for i in range(events):
        payload = {
            "id": "chatcmpl-9x2c",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-2024-08-06",
            "choices": [{"index": 0, "delta": {"content": f" token{i}"}, "finish_reason": None}],
        }
        chunks.append(b"data: " + json.dumps(payload).encode() + b"\n\n")
    chunks.append(b"data: [DONE]\n\n")
    return chunks


def rechunk(chunks: list[bytes], size: int) -> list[bytes]:
    blob = b"".join(chunks)
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def ours(chunks: list[bytes]) -> int:
    decoder = SseDecoder()
    count = 0
    for chunk in chunks:
        count += len(decoder.feed(chunk))
    return count


def ours_text(chunks: list[bytes]) -> int:
    """Ours, also decoding every payload to str (what httpx-sse hands out)."""
    decoder = SseDecoder()
    count = 0
    for chunk in chunks:
        for event in decoder.feed(chunk):
            count += event.data is not None
    return count


def httpx_sse_pipeline(chunks: list[bytes]) -> int:
    from httpx_sse._decoders import SSEDecoder, SSELineDecoder

    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = SSELineDecoder()
    sse = SSEDecoder()
    count = 0
    for chunk in chunks:
        for line in lines.decode(text_decoder.decode(chunk)):
            if sse.decode(line) is not None:
                count += 1
    return count


def best_of(fn: Callable[[list[bytes]], int], chunks: list[bytes], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(chunks)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    per_event = make_stream(args.events)
    cases = {"one read per event": per_event, "4 KiB reads": rechunk(per_event, 4096)}
    print(f"{args.events} OpenAI-style events, median of {args.repeat} runs, one core")
    print(
        f"{'chunking':20} {'httpx-sse ev/s':>15} {'ours raw ev/s':>14} {'ratio':>6}"
        f" {'ours text ev/s':>15} {'ratio':>6}"
    )
    for name, chunks in cases.items():
        n = args.events + 1
        assert ours(chunks) == ours_text(chunks) == httpx_sse_pipeline(chunks) == n
        t_base = best_of(httpx_sse_pipeline, chunks, args.repeat)
        t_raw = best_of(ours, chunks, args.repeat)
        t_text = best_of(ours_text, chunks, args.repeat)
        print(
            f"{name:20} {n / t_base:15,.0f} {n / t_raw:14,.0f} {t_base / t_raw:5.2f}x"
            f" {n / t_text:15,.0f} {t_base / t_text:5.2f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
