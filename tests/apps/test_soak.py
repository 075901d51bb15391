"""A short soak of the sandbox, in process: after a warm-up, hundreds more mixed requests
must leave no memory behind (``bench/soak.py`` is the long version, with RSS and handles,
against real processes).

The sandbox's mocks once kept every request they received, about 2 KB each: a leak of the
no-config gateway that anyone could drive. They keep the most recent few now; the test
shrinks "few" so that a warm-up fills them, then measures what a burst leaves allocated.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import httpx
import pytest

from rakka_inference.apps import sandbox as sandbox_module
from rakka_inference.apps.sandbox import Sandbox, sandbox_config
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.serving import serving

WARM_UP = 200
"""Requests before tracing starts, and again after (traced) before the measured burst: a
pool reaching its size, or an object replaced by a traced one, is not a leak."""
MEASURED = 300
BYTES_PER_REQUEST = 250
"""The most a request may leave allocated, averaged over the burst: noise, not a leak (the
leak this guards against was about 2,000)."""


async def _burst(client: httpx.AsyncClient, count: int, start: int) -> None:
    async def one(n: int) -> None:
        kind = n % 4
        if kind == 3:
            body = {"model": "sandbox-embed", "input": [f"text {n}"]}
            answer = await client.post("/v1/embeddings", json=body)
        elif kind == 2:
            body = {
                "model": "sandbox-claude",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"hi {n}"}],
            }
            answer = await client.post("/v1/messages", json=body)
        else:
            body = {
                "model": "sandbox",
                "messages": [{"role": "user", "content": f"hi {n}"}],
                "stream": kind == 1,
            }
            answer = await client.post("/v1/chat/completions", json=body)
        assert answer.status_code == 200, answer.text

    for first in range(start, start + count, 8):
        await asyncio.gather(*(one(n) for n in range(first, first + 8)))


async def test_the_sandbox_leaves_nothing_behind_a_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "RECORDS", 8)
    sandbox = Sandbox()
    await sandbox.start()
    try:
        topology = Topology(sandbox_config(sandbox, bind="127.0.0.1:0", environ={}))
        async with (
            serving(topology.gateway) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            await _burst(client, WARM_UP, 0)
            tracemalloc.start()
            try:
                await _burst(client, WARM_UP, WARM_UP)
                gc.collect()
                before, _ = tracemalloc.get_traced_memory()
                await _burst(client, MEASURED, 2 * WARM_UP)
                gc.collect()
                left = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        assert len(sandbox.openai.requests) <= 16
    finally:
        await sandbox.stop()
    assert left < MEASURED * BYTES_PER_REQUEST, f"{left} bytes left by {MEASURED} requests"
