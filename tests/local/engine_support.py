"""Shared by the engine-server tests: a local deployment run on the testkit's stand-in
engine (a real child process speaking vLLM's, SGLang's or llama.cpp's HTTP surface), its
fault file and its start records."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.policies import Serving
from rakka_inference.core.runtimes import (
    EngineServerConfig,
    LlamaCppConfig,
    RuntimeKind,
    SglangConfig,
    VllmConfig,
)

STAND_IN = (sys.executable, "-m", "rakka_inference.testkit.stand_in_engine")

_CONFIGS: dict[RuntimeKind, type[EngineServerConfig]] = {
    RuntimeKind.VLLM: VllmConfig,
    RuntimeKind.SGLANG: SglangConfig,
    RuntimeKind.LLAMACPP: LlamaCppConfig,
}


@dataclass
class StandIn:
    """The stand-in's directory: what each start recorded, and the faults it reads."""

    root: Path
    runtime: RuntimeKind = RuntimeKind.VLLM
    faults: dict[str, Any] = field(default_factory=dict)

    def fault(self, **faults: Any) -> None:
        """Set these faults (read by the engine at start and at each request)."""
        self.faults.update(faults)
        self._write()

    def clear(self, *names: str) -> None:
        for name in names or tuple(self.faults):
            self.faults.pop(name, None)
        self._write()

    def _write(self) -> None:
        path = self.root / "faults.json"
        path.with_suffix(".tmp").write_text(json.dumps(self.faults))
        path.with_suffix(".tmp").replace(path)

    def starts(self) -> list[dict[str, Any]]:
        path = self.root / "starts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    async def wait_starts(self, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(starts := self.starts()) < count:
                await asyncio.sleep(0.02)
        return starts

    def model_file(self) -> Path:
        """A file for llama.cpp to be given (the stand-in does not read it)."""
        path = self.root / "model.gguf"
        path.write_bytes(b"GGUF")
        return path

    def deployment(
        self,
        name: str = "local",
        *,
        serving: Serving | None = None,
        fallbacks: tuple[str, ...] = (),
        replicas: int = 1,
        **config: Any,
    ) -> Deployment:
        """A deployment of ``runtime`` run on the stand-in, quick to supervise."""
        fields: dict[str, Any] = {
            "command": (*STAND_IN, self.runtime.value),
            "env": {"RAKKA_STAND_IN_DIR": str(self.root)},
            "gpus": 0,
            "health_interval_ms": 100,
            "health_timeout_ms": 300,
            "health_failures": 2,
            "metrics_interval_ms": 50,
            "startup_timeout_ms": 20_000,
            "stop_grace_ms": 2_000,
        }
        fields.update(config)
        model = str(self.model_file()) if self.runtime is RuntimeKind.LLAMACPP else "org/tiny-chat"
        return Deployment(
            name=name,
            model=model,
            runtime=self.runtime,
            runtime_config=_CONFIGS[self.runtime](**fields),
            serving=serving or Serving(max_concurrent=8),
            fallbacks=fallbacks,
            replicas=replicas,
        )


def sdk(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=20)


async def ask(base: str, text: str = "hello there", *, model: str = "local", **extra: Any) -> str:
    client = sdk(base)
    try:
        answer = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], **extra
        )
    finally:
        await client.close()
    return answer.choices[0].message.content or ""


async def stream(base: str, text: str = "hello there", *, model: str = "local") -> list[str]:
    client = sdk(base)
    try:
        chunks = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": text}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = [
            chunk.choices[0].delta.content
            async for chunk in chunks
            if chunk.choices and chunk.choices[0].delta.content
        ]
    finally:
        await client.close()
    return pieces


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_dead(pid: int, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while alive(pid):
            await asyncio.sleep(0.02)
