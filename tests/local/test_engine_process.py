"""EngineProcess and EngineServerRunner on their own: a child's log lines (cut, cleaned of
secrets), how its end is told, and the runner's answers when its engine fails — with real
child processes (small Python programs, and the testkit's stand-in engine)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
from engine_support import StandIn, alive, wait_dead

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ContextPoisoned, ServerError, Unrecoverable
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.runner import SessionRebuildCause, SupervisedRunner, TransportKind
from rakka_inference.core.runtimes import RuntimeKind, TransformersConfig
from rakka_inference.core.usage import Usage
from rakka_inference.local.engine_process import MAX_LINE_BYTES, EngineProcess
from rakka_inference.local.engine_server import EngineServerRunner
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.wire.http import HttpTransport


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def open_transport(connections: int) -> HttpTransport:
    return create_transport(max_connections=connections)


def request(text: str = "hi there", *, stream: bool = True) -> ChatRequest:
    return ChatRequest(model="local", messages=(ChatMessage.user(text),), stream=stream)


async def test_log_lines_are_cut_cleaned_and_kept(caplog: pytest.LogCaptureFixture) -> None:
    code = (
        "import sys\n"
        f"print('x' * {MAX_LINE_BYTES * 3}, flush=True)\n"
        "print('token hf_abcdefghijklmnop in use')\n"
        "print()\n"
        "sys.stdout.write('no newline at the end')\n"
        "sys.exit(3)\n"
    )
    process = EngineProcess(
        "replica-0", python(code), {}, "http://127.0.0.1:1", secrets=("hf_abcdefghijklmnop",)
    )
    with caplog.at_level(logging.INFO, logger="rakka_inference.engine"):
        await process.start()
        assert await process.wait() == 3
        await process.stop(1.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("replica-0 |")]
    assert len(lines) == 3  # the blank line is not logged
    assert lines[0].endswith(" [cut]")
    assert len(lines[0]) < MAX_LINE_BYTES + 50
    assert "hf_abcdefghijklmnop" not in caplog.text
    assert "[redacted]" in lines[1]
    assert lines[2] == "replica-0 | no newline at the end"
    assert (
        process.describe_exit() == "exited with status 3 (its last line: 'no newline at the end')"
    )
    assert not process.running


async def test_a_killed_engine_says_which_signal() -> None:
    process = EngineProcess("r", python("import time; time.sleep(30)"), {}, "http://127.0.0.1:1")
    assert process.pid is None
    await process.stop(0.1)  # never started: nothing to do
    await process.start()
    assert process.running
    await process.stop(0.5)
    assert process.describe_exit() == "was killed by signal 15"
    await process.stop(0.5)  # again: nothing more


def deployment_for(stand_in: StandIn, **config: object) -> Deployment:
    return stand_in.deployment(**config)


async def test_the_runner_answers_for_its_engine(stand_in: StandIn) -> None:
    runner = EngineServerRunner(deployment_for(stand_in), open_transport, gpus=("5",))
    assert isinstance(runner, SupervisedRunner)
    assert runner.runtime_kind is RuntimeKind.VLLM
    assert runner.transport_kind.kind is TransportKind.LOCAL_GPU
    assert runner.rate_limits.requests_per_minute is None
    assert runner.estimate_cost(Usage(input_tokens=10, output_tokens=10)) == 0.0
    assert "not started" in repr(runner)
    with pytest.raises(ContextPoisoned, match="is not running"):
        await anext(runner.execute(request()))
    await runner.watch()  # nothing to watch before loading
    await runner.load_weights()
    try:
        assert "pid" in runner.describe()
        assert stand_in.starts()[0]["cuda_visible_devices"] == "5"
        await runner.rebuild_session(SessionRebuildCause.OPERATOR)  # nothing to rebuild
        text = "".join([c.text async for c in runner.execute(request("a b", stream=False))])
        assert text == "stand-in vllm reply: a b"
        stand_in.fault(chat_error={"status": 500, "message": "engine busy", "type": "x"})
        with pytest.raises(ServerError):
            await anext(runner.execute(request()))
        assert runner.process is not None
        assert runner.process.running  # a 500 from a live engine is that request's
    finally:
        await runner.close()
    assert runner.closed


async def test_a_runner_without_metrics_reports_no_load(stand_in: StandIn) -> None:
    runner = EngineServerRunner(deployment_for(stand_in, metrics_interval_ms=0), open_transport)
    assert runner.transport_kind.kind is TransportKind.LOCAL_CPU
    await runner.load_weights()
    watch = asyncio.create_task(runner.watch())
    try:
        await asyncio.sleep(0.3)
        assert runner.engine_load is None
        assert runner.batch_size == 0
    finally:
        await runner.close()
    await watch  # a closed runner's watch ends quietly


async def test_the_runner_reads_its_engines_load(stand_in: StandIn) -> None:
    stand_in.fault(metrics={"running": 3, "waiting": 2, "kv_cache_usage": 0.5})
    runner = EngineServerRunner(deployment_for(stand_in), open_transport)
    await runner.load_weights()
    watch = asyncio.create_task(runner.watch())
    try:
        async with asyncio.timeout(10):
            while runner.engine_load is None:
                await asyncio.sleep(0.02)
        load = runner.engine_load
        assert (load.running, load.waiting, load.kv_cache_usage) == (3, 2, 0.5)
        assert runner.batch_size == 3
        process = runner.process
        assert process is not None
        pid = process.pid
        assert pid is not None
        process._signal(__import__("signal").SIGKILL)
        with pytest.raises(ContextPoisoned, match="was killed by signal 9"):
            await watch
    finally:
        await runner.close()
    assert not alive(pid)


async def test_a_program_that_cannot_run_is_unrecoverable(tmp_path: Path) -> None:
    stand_in = StandIn(tmp_path)
    not_a_program = tmp_path / "engine"
    not_a_program.write_text("")  # exists, but is not executable
    runner = EngineServerRunner(
        deployment_for(stand_in, command=(str(not_a_program),)), open_transport
    )
    with pytest.raises(Unrecoverable, match="cannot run"):
        await runner.load_weights()


async def test_a_runner_kills_its_engine_if_the_load_is_cancelled(stand_in: StandIn) -> None:
    stand_in.fault(start_delay_ms=5000)
    runner = EngineServerRunner(deployment_for(stand_in), open_transport)
    loading = asyncio.create_task(runner.load_weights())
    [start] = await stand_in.wait_starts(1)
    loading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loading
    await wait_dead(start["pid"])


def test_only_engine_servers_are_run() -> None:
    other = Deployment(
        name="t", model="m", runtime=RuntimeKind.TRANSFORMERS, runtime_config=TransformersConfig()
    )
    with pytest.raises(TypeError, match="not configured for an engine"):
        EngineServerRunner(other, open_transport)


async def test_a_watch_ends_when_its_cancellation_was_swallowed(stand_in: StandIn) -> None:
    """Python 3.11's wait_for, among others, can swallow a cancellation that lands as the
    awaited work completes; a watch being stopped must end all the same."""
    runner = EngineServerRunner(deployment_for(stand_in), open_transport)
    await runner.load_weights()
    swallowed = asyncio.Event()

    async def swallowing(process: object, probe: object) -> None:
        if swallowed.is_set():
            return
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            swallowed.set()  # once

    runner._read_load = swallowing  # type: ignore[method-assign, assignment]
    watch = asyncio.create_task(runner.watch())
    try:
        await asyncio.sleep(0.3)  # the watch is reading the engine's load
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await watch
        assert swallowed.is_set()
    finally:
        await runner.close()
