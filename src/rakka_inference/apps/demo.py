"""``rakka demo``: the failure paths, shown end to end against in-process mock providers.

It starts an OpenAI-format and an Anthropic-format mock, a real gateway on a loopback port
(uvicorn, as ``rakka serve`` runs it) and talks to it over HTTP like any client would:

1. the happy path;
2. a 429 with Retry-After: retried after the wait, and answered;
3. 503s until the circuit opens: then requests fail fast, without calling the provider;
4. fallback: with that circuit open, a deployment whose ``fallbacks`` names the Anthropic
   one is answered by Anthropic;
5. key rotation under load: 40 streams in flight while the key file changes and the old
   key starts getting 401 — none is dropped.

Each step prints as it runs, then one report. The exit status is 0 when every step showed
what it should.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.policies import CircuitBreakerConfig, Jitter, RetryPolicy
from rakka_inference.core.runtimes import AnthropicConfig, OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.engine.report import RequestRecord
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_anthropic import AnthropicMock
from rakka_inference.testkit.mock_openai import OpenAIMock

__all__ = ["StepResult", "main", "run_demo"]

OLD_KEY = "sk-demo-old-key"
NEW_KEY = "sk-demo-new-key"
CLAUDE_KEY = "sk-ant-demo"


@dataclass(frozen=True, slots=True)
class StepResult:
    name: str
    ok: bool
    detail: str


def _config(openai_url: str, anthropic_url: str, key_file: Path) -> Config:
    retry = RetryPolicy(
        max_retries=2, initial_backoff_ms=20, max_backoff_ms=100, jitter=Jitter.NONE
    )
    breaker = CircuitBreakerConfig(failure_threshold=3, open_duration_ms=60_000)
    openai_config = OpenAIConfig(
        endpoint=openai_url,
        api_key=SecretRef.from_file(key_file),
        retry=retry,
        circuit_breaker=breaker,
    )
    claude = Deployment(
        name="demo-claude",
        model="claude-haiku-4-5",
        runtime=RuntimeKind.ANTHROPIC,
        runtime_config=AnthropicConfig(
            endpoint=anthropic_url, api_key=SecretRef.inline(CLAUDE_KEY, warn=False)
        ),
    )
    solo = Deployment(
        name="demo-gpt-solo",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=openai_config,
    )
    with_fallback = Deployment(
        name="demo-gpt",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=openai_config,
        fallbacks=("demo-claude",),
    )
    return Config(cluster=ClusterConfig(name="demo"), deployments=(with_fallback, solo, claude))


class _Client:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def chat(self, model: str, *, stream: bool = False) -> tuple[int, str, float]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],
            "stream": stream,
        }
        started = time.perf_counter()
        async with self.session.post(
            f"{self.base}/v1/chat/completions", data=orjson.dumps(body)
        ) as r:
            raw = await r.read()
        elapsed = (time.perf_counter() - started) * 1000
        if r.status != 200:
            return r.status, orjson.loads(raw)["error"]["message"], elapsed
        if not stream:
            return 200, orjson.loads(raw)["choices"][0]["message"]["content"], elapsed
        text = ""
        for event in raw.split(b"\n\n"):
            if event.startswith(b"data: {"):
                document = orjson.loads(event[6:])
                if "error" in document:
                    return 502, document["error"]["message"], elapsed
                for choice in document.get("choices", ()):
                    text += choice["delta"].get("content") or ""
        return 200, text, elapsed


async def run_demo(out: TextIO = sys.stdout) -> list[StepResult]:
    """Run every step; return what each showed."""
    import uvicorn  # noqa: PLC0415

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    records: list[RequestRecord] = []
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory() as scratch:
        key_file = Path(scratch) / "openai.key"
        key_file.write_text(OLD_KEY)
        gpt = OpenAIMock(faults=FaultPlan(valid_keys={OLD_KEY}), reply=_reply("OpenAI"))
        claude = AnthropicMock(faults=FaultPlan(valid_keys={CLAUDE_KEY}), reply=_reply("Anthropic"))
        await gpt.start()
        await claude.start()
        topology = Topology(
            _config(gpt.openai_base_url, claude.url, key_file), on_record=records.append
        )
        server = uvicorn.Server(
            uvicorn.Config(
                topology.gateway, host="127.0.0.1", port=0, lifespan="on", log_level="warning"
            )
        )
        server_task = asyncio.ensure_future(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn has no startup event
                await asyncio.sleep(0.01)
            port = server.servers[0].sockets[0].getsockname()[1]
            base = f"http://127.0.0.1:{port}"
            say(f"rakka demo: gateway on {base}, mock OpenAI and Anthropic in this process\n")
            async with aiohttp.ClientSession() as session:
                client = _Client(session, base)
                steps: list[tuple[str, Callable[[], Any]]] = [
                    ("happy path", lambda: _happy(client, records)),
                    ("429 with Retry-After", lambda: _rate_limited(client, gpt, records)),
                    ("circuit opens after 503s", lambda: _circuit(client, gpt, records)),
                    ("fallback to a second provider", lambda: _fallback(client, records)),
                    (
                        "key rotation under load",
                        lambda: _rotation(client, gpt, topology, key_file),
                    ),
                ]
                for index, (name, step) in enumerate(steps, 1):
                    say(f"[{index}/{len(steps)}] {name} ...")
                    ok, detail = await step()
                    results.append(StepResult(name, ok, detail))
                    say(f"      {'ok  ' if ok else 'FAIL'} {detail}")
        finally:
            server.should_exit = True
            await server_task
            await gpt.stop()
            await claude.stop()
    say("\nreport")
    for result in results:
        say(f"  {'ok  ' if result.ok else 'FAIL'} {result.name}: {result.detail}")
    return results


def _reply(provider: str) -> ReplyScript:
    return ReplyScript(text=f"Hello from the {provider} mock.", chunks=6, chunk_delay_s=0.01)


async def _happy(client: _Client, records: list[RequestRecord]) -> tuple[bool, str]:
    status, text, ms = await client.chat("demo-gpt")
    return status == 200, f"{status} in {ms:.1f} ms: {text!r}"


async def _rate_limited(
    client: _Client, gpt: OpenAIMock, records: list[RequestRecord]
) -> tuple[bool, str]:
    gpt.faults.next(Fault.rate_limit(0.3))
    status, _, ms = await client.chat("demo-gpt-solo")
    attempts = records[-1].attempts
    ok = status == 200 and attempts == 2 and ms >= 250
    return ok, f"{status} after {attempts} attempts, {ms:.0f} ms (the provider asked for 300 ms)"


async def _circuit(
    client: _Client, gpt: OpenAIMock, records: list[RequestRecord]
) -> tuple[bool, str]:
    gpt.faults.for_key(OLD_KEY, Fault.server_error(503))
    first, _, slow_ms = await client.chat("demo-gpt-solo")  # 3 attempts: the circuit opens
    calls_before = len(gpt.requests)
    status, message, fast_ms = await client.chat("demo-gpt-solo")
    no_call = len(gpt.requests) == calls_before
    ok = first == 502 and status == 503 and no_call
    return ok, (
        f"first {first} after retries in {slow_ms:.0f} ms; then {status} in {fast_ms:.1f} ms "
        f"without calling the provider ({message})"
    )


async def _fallback(client: _Client, records: list[RequestRecord]) -> tuple[bool, str]:
    status, text, ms = await client.chat("demo-gpt")
    tried = " -> ".join(records[-1].tried)
    return status == 200 and "Anthropic" in text, f"{status} in {ms:.1f} ms via {tried}: {text!r}"


async def _rotation(
    client: _Client, gpt: OpenAIMock, topology: Topology, key_file: Path
) -> tuple[bool, str]:
    gpt.faults.clear()
    for breaker in topology.services.breakers:
        breaker.force_close()
    streams = [asyncio.ensure_future(client.chat("demo-gpt-solo", stream=True)) for _ in range(40)]
    await asyncio.sleep(0.02)  # they are in flight
    await asyncio.to_thread(key_file.write_text, NEW_KEY)
    gpt.faults.rotate_key(OLD_KEY, NEW_KEY)  # the old key gets 401 from now on
    late = [asyncio.ensure_future(client.chat("demo-gpt-solo", stream=True)) for _ in range(20)]
    outcomes = await asyncio.gather(*streams, *late)
    good = sum(1 for status, text, _ in outcomes if status == 200 and "OpenAI" in text)
    return good == len(outcomes), f"{good}/{len(outcomes)} streams answered across the rotation"


def main() -> int:
    results = asyncio.run(run_demo())
    return 0 if all(result.ok for result in results) else 1
