"""Local deployments on engine servers (vLLM, SGLang, llama.cpp) through the real gateway,
the official openai SDK as the client, and the testkit's stand-in engine as the child
process: started with the engine's own flags, supervised (a crash or a hung health check
restarts it, 3 times in 60 s), drained with SIGTERM then SIGKILL, its log captured, its
own metrics read for routing and for ``/metrics``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from engine_support import StandIn, alive, ask, stream, wait_dead

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.local.engine import LocalEngineCore
from rakka_inference.local.engine_server import EngineServerRunner
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock
from rakka_inference.testkit.serving import serving

REMOTE = "from the remote model"


@pytest.fixture
async def remote() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(reply=ReplyScript(text=REMOTE)) as mock:
        yield mock


def remote_deployment(mock: OpenAIMock) -> Deployment:
    return Deployment(
        name="remote",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url, api_key=SecretRef.inline("sk-test", warn=False)
        ),
    )


def topology(*deployments: Deployment) -> Topology:
    return Topology(Config(cluster=ClusterConfig(), deployments=deployments))


def runner_of(topology: Topology, name: str = "local") -> EngineServerRunner:
    [engine] = topology.manager.engines(name)
    assert isinstance(engine, LocalEngineCore)
    runner = engine.runner
    assert isinstance(runner, EngineServerRunner)
    return runner


def pid_of(topology: Topology, name: str = "local") -> int:
    process = runner_of(topology, name).process
    assert process is not None
    assert process.pid is not None
    return process.pid


@pytest.mark.parametrize("runtime", [RuntimeKind.VLLM, RuntimeKind.SGLANG, RuntimeKind.LLAMACPP])
async def test_each_engine_serves_through_the_gateway(
    stand_in: StandIn, runtime: RuntimeKind
) -> None:
    stand_in.runtime = runtime
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        answer = await ask(base, "one two three")
        assert answer == f"stand-in {runtime.value} reply: one two three"
        pieces = await stream(base, "four five")
        assert "".join(pieces) == f"stand-in {runtime.value} reply: four five"
        assert len(pieces) == 3  # streamed as the engine sent it, token by token
        client = httpx.AsyncClient(base_url=base)
        unary = (
            await client.post(
                "/v1/chat/completions",
                json={"model": "local", "messages": [{"role": "user", "content": "a b"}]},
            )
        ).json()
        await client.aclose()
        # The engine's own token counts: 2 words + 1 message; prefix + 2 words.
        usage = {key: unary["usage"][key] for key in ("prompt_tokens", "completion_tokens")}
        assert usage == {"prompt_tokens": 3, "completion_tokens": 3}
        pid = pid_of(served)
    await wait_dead(pid)  # the gateway's shutdown stopped the engine
    [start] = stand_in.starts()
    assert start["flavor"] == runtime.value
    assert start["cuda_visible_devices"] == ""  # no GPU was placed for it


async def test_max_tokens_and_stop_reach_the_engine(stand_in: StandIn) -> None:
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        capped = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "one two three four"}],
            max_tokens=2,
        )
        stopped = await client.chat.completions.create(
            model="local",
            messages=[{"role": "user", "content": "one two three four"}],
            stop=["three"],
        )
        await client.close()
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 2
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == "stand-in vllm reply: one two "


async def test_the_engine_gets_its_flags_and_its_log_is_captured(
    stand_in: StandIn, caplog: pytest.LogCaptureFixture
) -> None:
    deployment = stand_in.deployment(
        max_model_len=2048,
        extra_args=("--enforce-eager",),
        env={
            "RAKKA_STAND_IN_DIR": str(stand_in.root),
            "RAKKA_STAND_IN_TOKEN": "hf_secretvalue123456",
        },
    )
    served = topology(deployment)
    with caplog.at_level(logging.INFO, logger="rakka_inference.engine"):
        async with serving(served.gateway) as base:
            await ask(base)
    [start] = stand_in.starts()
    options = start["options"]
    assert options["served_name"] == "org/tiny-chat"
    assert options["max_model_len"] == 2048
    assert "--enforce-eager" in start["unknown"]
    lines = [r.getMessage() for r in caplog.records if r.name == "rakka_inference.engine"]
    assert any(line.startswith("local-0 | INFO stand-in vllm: serving") for line in lines)
    # The engine echoes its environment at start: the configured value never reaches a log.
    assert "hf_secretvalue123456" not in caplog.text


async def test_a_crash_mid_stream_restarts_the_engine(stand_in: StandIn) -> None:
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        first = pid_of(served)
        stand_in.fault(crash_after_chunks=2)
        with pytest.raises(openai.APIError):
            await stream(base, "a b c d e f")
        stand_in.clear()
        await stand_in.wait_starts(2)
        await _until_serving(base)
        assert pid_of(served) != first
        assert not alive(first)
        [engine] = served.manager.engines("local")
        assert isinstance(engine, LocalEngineCore)
        assert engine.context_restarts == 1
        async with httpx.AsyncClient(base_url=base) as client:
            metrics = (await client.get("/metrics")).text
        assert 'inference_context_restarts{deployment="local",replica="local-0"} 1' in metrics


async def test_a_crash_before_the_first_byte_falls_back_to_the_remote_model(
    stand_in: StandIn, remote: OpenAIMock
) -> None:
    served = topology(stand_in.deployment(fallbacks=("remote",)), remote_deployment(remote))
    async with serving(served.gateway) as base:
        assert (await ask(base)).startswith("stand-in")
        stand_in.fault(crash_after_chunks=0)
        assert await ask(base) == REMOTE
        stand_in.clear()
        await stand_in.wait_starts(2)
        await _until_serving(base)


async def test_an_engine_poisoned_beyond_its_restarts_falls_back(
    stand_in: StandIn, remote: OpenAIMock
) -> None:
    served = topology(stand_in.deployment(fallbacks=("remote",)), remote_deployment(remote))
    async with serving(served.gateway) as base:
        # Every start from now on exits at once: three restarts, then the replica gives up
        # and every request goes to the remote model.
        stand_in.fault(crash_after_chunks=0, exit_on_start=3)
        answers = [await ask(base) for _ in range(6)]
        assert set(answers) == {REMOTE}
        async with asyncio.timeout(20):
            while served.manager.engines("local") and not all(
                isinstance(e, LocalEngineCore) and e.failed for e in served.manager.engines("local")
            ):
                await asyncio.sleep(0.05)


async def test_a_hung_health_check_is_a_poisoned_engine(stand_in: StandIn) -> None:
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        first = pid_of(served)
        stand_in.fault(hang_health=True)
        await stand_in.wait_starts(2)  # two failed checks: restarted
        stand_in.clear()
        await _until_serving(base)
        assert pid_of(served) != first
        await wait_dead(first)


async def test_a_slow_start_is_waited_for_and_an_exit_at_start_retried(
    stand_in: StandIn,
) -> None:
    stand_in.fault(start_delay_ms=600, exit_on_start=1, exit_on_start_times=1)
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        assert len(stand_in.starts()) == 2  # the first exited; the second was waited for
        assert (await ask(base)).startswith("stand-in")


async def test_an_engine_that_never_becomes_healthy_refuses_the_apply(
    stand_in: StandIn,
) -> None:
    stand_in.fault(hang_health=True)
    served = topology()
    await served.start()
    try:
        # Long enough for a loaded machine to start the stand-in, which records each start
        # once it runs: a start killed before that would not be counted.
        with pytest.raises(Exception, match=r"not healthy within 1\.5s"):
            await served.apply(
                Config(
                    cluster=ClusterConfig(),
                    deployments=(stand_in.deployment(startup_timeout_ms=1500),),
                )
            )
        assert len(stand_in.starts()) == 4  # the first start and three restarts
    finally:
        await served.stop(timeout=5)


async def test_stop_drains_then_kills_an_engine_that_ignores_sigterm(stand_in: StandIn) -> None:
    stand_in.fault(ignore_sigterm=True, chunk_delay_ms=30)
    served = topology(stand_in.deployment(stop_grace_ms=300))
    async with serving(served.gateway) as base:
        pid = pid_of(served)
        running = asyncio.create_task(stream(base, "one two three four five"))
        await asyncio.sleep(0.05)
    # The request in flight finished before the engine was stopped.
    assert "".join(await running) == "stand-in vllm reply: one two three four five"
    assert not alive(pid)


async def test_an_engine_error_reaches_the_client_typed(stand_in: StandIn) -> None:
    served = topology(stand_in.deployment())
    async with serving(served.gateway) as base:
        stand_in.fault(
            chat_error={
                "status": 400,
                "message": "This model's maximum context length is 2048 tokens",
                "type": "BadRequestError",
                "code": "context_length_exceeded",
                "param": "messages",
            }
        )
        with pytest.raises(openai.BadRequestError) as error:
            await ask(base)
        assert error.value.status_code == 400
        assert len(stand_in.starts()) == 1  # a bad request is not the engine's failure


async def test_routing_prefers_the_replica_with_room_in_its_kv_cache(stand_in: StandIn) -> None:
    served = topology(stand_in.deployment(replicas=2))
    async with serving(served.gateway) as base:
        starts = await stand_in.wait_starts(2)
        full, roomy = (start["options"]["port"] for start in starts)
        stand_in.fault(per_port={str(full): {"metrics": {"kv_cache_usage": 0.95, "waiting": 3}}})
        engines = [e for e in served.manager.engines("local") if isinstance(e, LocalEngineCore)]
        async with asyncio.timeout(10):  # both replicas have read their engine's report
            while sorted(_kv(e) for e in engines) != [0.0, 0.95]:
                await asyncio.sleep(0.02)
        for _ in range(12):
            await ask(base)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{base}/metrics")).text
            tokens = {
                port: _generated((await client.get(f"http://127.0.0.1:{port}/metrics")).text)
                for port in (full, roomy)
            }
    assert tokens[full] == 0  # every request went to the replica with room
    assert tokens[roomy] > 0
    assert "inference_kv_cache_usage{" in metrics
    assert 'inference_engine_queue_depth{deployment="local",replica="local-' in metrics


def _kv(engine: LocalEngineCore) -> float:
    """The engine's KV-cache use as its replica last read it (-1: not read yet)."""
    load = engine.engine_load
    usage = None if load is None else load.kv_cache_usage
    return -1.0 if usage is None else usage


def _generated(metrics: str) -> float:
    [line] = [m for m in metrics.splitlines() if m.startswith("vllm:generation_tokens_total")]
    return float(line.rsplit(" ", 1)[1])


async def test_a_missing_engine_is_a_config_error_at_apply(stand_in: StandIn) -> None:
    served = topology()
    await served.start()
    try:
        missing = stand_in.deployment(command=("/nowhere/vllm",))
        with pytest.raises(ConfigError, match=r"'local'.runtime_config.command: the engine"):
            await served.apply(Config(cluster=ClusterConfig(), deployments=(missing,)))
        no_model = stand_in.deployment(model_path=str(stand_in.root / "absent"))
        with pytest.raises(ConfigError, match=r"'local'.runtime_config.model_path"):
            await served.apply(Config(cluster=ClusterConfig(), deployments=(no_model,)))
        on_gpu = stand_in.deployment(gpus=None, tensor_parallel_size=2)
        with pytest.raises(ConfigError, match=r"'local'.runtime_config.tensor_parallel_size"):
            await served.apply(Config(cluster=ClusterConfig(), deployments=(on_gpu,)))
        assert stand_in.starts() == []
    finally:
        await served.stop(timeout=5)


async def _until_serving(base: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if (await ask(base)).startswith("stand-in"):
                    return
            except openai.APIError:
                pass
            await asyncio.sleep(0.05)
