"""``rakka serve``: the embedded sandbox over real HTTP, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from rakka_inference.apps.serve import EXIT_GRACE_RAN_OUT, ServeApp
from rakka_inference.core.config import load_config
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.runtimes import RuntimeKind, VllmConfig
from rakka_inference.testkit.faults import Fault, FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


CLI_MAIN = "from rakka_inference.apps.cli import main; raise SystemExit(main())"


async def start_serve(port: int, grace: str, program: str = CLI_MAIN) -> asyncio.subprocess.Process:
    """``rakka serve`` (the no-config sandbox) as a child process, once it is ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        program,
        "serve",
        "--port",
        str(port),
        "--grace",
        grace,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        assert line, "the server exited before it was ready"
        if "Application startup complete" in line:
            return process


async def test_rakka_serve_answers_the_openai_sdk_then_stops_on_sigterm() -> None:
    port = free_port()
    process = await start_serve(port, "5")
    assert process.stdout is not None
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        try:
            stream = await client.chat.completions.create(
                model="sandbox",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            text = ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            assert text.startswith("Hello from sandbox-gpt")
            models = await client.models.list()
            assert {"sandbox-gpt", "sandbox-claude", "sandbox-gemini", "sandbox-embed"} <= {
                m.id for m in models.data
            }
            vectors = await client.embeddings.create(model="sandbox-embed", input=["a", "b"])
            assert len(vectors.data) == 2
        finally:
            await client.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_topology_that_cannot_start_fails_the_lifespan() -> None:
    local = Deployment(name="l", model="m", runtime=RuntimeKind.VLLM, runtime_config=VllmConfig())
    app = ServeApp(Config(cluster=ClusterConfig(), deployments=(local,)), bind="127.0.0.1:1")
    inbox = [{"type": "lifespan.startup"}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return inbox.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    await app({"type": "lifespan"}, receive, send)  # type: ignore[arg-type]
    assert sent[0]["type"] == "lifespan.startup.failed"
    # A rejected config is the command's to say, once (run_server): not uvicorn's too.
    assert sent[0]["message"] == ""
    assert "the engine executable 'vllm' was not found" in str(app.startup_error)


async def test_sigterm_during_100_streams_loses_none() -> None:
    port = free_port()
    process = await start_serve(port, "20")
    assert process.stdout is not None
    try:
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        )
        started = asyncio.Event()
        begun = 0

        async def one() -> str:
            nonlocal begun
            stream = await client.chat.completions.create(
                model="sandbox-gpt", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            text = ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    if not text:
                        begun += 1
                        if begun == 100:
                            started.set()
                    text += chunk.choices[0].delta.content
            return text

        try:
            streams = [asyncio.ensure_future(one()) for _ in range(100)]
            await asyncio.wait_for(started.wait(), 60)  # all 100 are mid-stream
            process.send_signal(signal.SIGTERM)
            texts = await asyncio.gather(*streams)
        finally:
            await client.close()
        assert all(
            t.startswith("Hello from sandbox-gpt") and t.endswith("next to it.") for t in texts
        )
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _toml(mock: OpenAIMock, name: str, key_variable: str) -> str:
    return f"""
[[deployment]]
name = "{name}"
model = "gpt-4o-mini"
runtime = "openai"
[deployment.runtime_config]
endpoint = "{mock.openai_base_url}"
api_key = {{ from_env = "{key_variable}" }}
"""


async def test_a_sighup_reload_that_cannot_start_is_logged_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RAKKA_SERVE_TEST_KEY", "sk-serve-0001")
    monkeypatch.delenv("RAKKA_SERVE_TEST_UNSET_VAR", raising=False)
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={"sk-serve-0001"}), reply=ReplyScript(text="still here")
    ) as mock:
        file = tmp_path / "rakka.toml"
        file.write_text(_toml(mock, "alpha", "RAKKA_SERVE_TEST_KEY"))
        app = ServeApp(load_config(file), bind="127.0.0.1:1", config_file=str(file))
        await app.startup()
        try:
            assert app.topology is not None
            file.write_text(_toml(mock, "beta", "RAKKA_SERVE_TEST_UNSET_VAR"))
            with caplog.at_level(logging.ERROR, logger="rakka_inference.apps.serve"):
                await app._reload()  # what SIGHUP runs
            assert "reload rejected, the running config stays" in caplog.text
            assert "RAKKA_SERVE_TEST_UNSET_VAR" in caplog.text
            transport = httpx.ASGITransport(app=app.topology.gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://rakka") as client:
                answer = await client.post(
                    "/v1/chat/completions",
                    json={"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
                )
            assert answer.status_code == 200, answer.text  # not 404: alpha never left
            assert [d.name for d in app.topology.config.deployments] == ["alpha"]
        finally:
            await app.shutdown()


async def test_serving_a_config_never_loads_the_sandbox() -> None:
    # The mock providers are imported only when serving without a config: a process that
    # imports the serve path (the CLI, the ASGI app, the topology) has none of testkit.
    program = (
        "import sys, rakka_inference.apps.cli, rakka_inference.apps.serve; "
        "print(sorted(m for m in sys.modules if m.startswith("
        "('rakka_inference.testkit', 'rakka_inference.apps.sandbox'))))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", program, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    assert out.decode().strip() == "[]"


_SLOW_SANDBOX = """
import rakka_inference.apps.sandbox as sandbox
from rakka_inference.testkit.faults import ReplyScript

# Every mock answers 4000 pieces 50 ms apart: minutes, far past the grace.
sandbox._reply = lambda name: ReplyScript(text="word " * 4000, chunks=4000, chunk_delay_s=0.05)
from rakka_inference.apps.cli import main

raise SystemExit(main())
"""


async def test_streams_cut_when_the_grace_runs_out_are_told_why_and_the_exit_says_so() -> None:
    port = free_port()
    process = await start_serve(port, "1", _SLOW_SANDBOX)
    assert process.stdout is not None
    output: list[str] = []
    try:

        async def drain_output() -> None:  # the server must never block on a full pipe
            assert process.stdout is not None
            while line := await process.stdout.readline():
                output.append(line.decode())

        reader = asyncio.ensure_future(drain_output())
        begun = 0
        all_begun = asyncio.Event()
        routes = [("/v1/chat/completions", "sandbox-gpt")] * 3 + [
            ("/v1/messages", "sandbox-claude")
        ] * 2
        # What shows that content has come, in each route's format.
        content = {"/v1/chat/completions": '"content":"w', "/v1/messages": '"text_delta"'}

        async def one(client: httpx.AsyncClient, path: str, model: str) -> str:
            nonlocal begun
            body = {
                "model": model,
                "max_tokens": 100,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            }
            text = ""
            async with client.stream("POST", path, json=body) as answer:
                assert answer.status_code == 200
                async for piece in answer.aiter_text():
                    had_content = content[path] in text
                    text += piece
                    if not had_content and content[path] in text:
                        begun += 1
                        if begun == len(routes):
                            all_begun.set()
            return text

        timeout = httpx.Timeout(120.0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout) as c:
            streams = [asyncio.ensure_future(one(c, path, model)) for path, model in routes]
            await asyncio.wait_for(all_begun.wait(), 60)  # every stream is mid-answer
            process.send_signal(signal.SIGTERM)
            texts = await asyncio.wait_for(asyncio.gather(*streams), 120)
        for (path, _), text in zip(routes, texts, strict=True):
            events = [event for event in text.split("\n\n") if event.strip()]
            if path == "/v1/chat/completions":
                assert events[-1] == "data: [DONE]", events[-3:]
                error = orjson.loads(events[-2].removeprefix("data: "))["error"]
                assert error["code"] == "shutting_down", error
            else:
                assert events[-1].startswith("event: error\n"), events[-3:]
                data = orjson.loads(events[-1].split("data: ", 1)[1])
                assert data["type"] == "error"
                assert "grace period ran out" in data["error"]["message"]
            assert content[path] in text  # the partial answer stands
        assert await asyncio.wait_for(process.wait(), 60) == EXIT_GRACE_RAN_OUT
        await asyncio.wait_for(reader, 60)
        assert "Exception in ASGI application" not in "".join(output)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_requests_not_yet_answered_when_cut_get_their_routes_503(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAKKA_SERVE_TEST_KEY", "sk-serve-0001")
    async with OpenAIMock(faults=FaultPlan(valid_keys={"sk-serve-0001"})) as mock:
        file = tmp_path / "rakka.toml"
        file.write_text(_toml(mock, "alpha", "RAKKA_SERVE_TEST_KEY"))
        app = ServeApp(load_config(file), bind="127.0.0.1:1", config_file=str(file))
        await app.startup()
        try:
            assert app.topology is not None
            gateway = app.topology.gateway
            mock.faults.next(Fault.slow_first_byte(120), Fault.slow_first_byte(120))
            transport = httpx.ASGITransport(app=gateway)
            async with httpx.AsyncClient(transport=transport, base_url="http://rakka") as client:
                message = {"role": "user", "content": "hi"}
                waiting = [
                    asyncio.ensure_future(
                        client.post(
                            "/v1/chat/completions", json={"model": "alpha", "messages": [message]}
                        )
                    ),
                    asyncio.ensure_future(
                        client.post(
                            "/v1/messages",
                            json={"model": "alpha", "max_tokens": 10, "messages": [message]},
                        )
                    ),
                ]

                async def both_waiting() -> None:  # on their upstream's first byte
                    while gateway.in_flight < 2:
                        await asyncio.sleep(0.01)

                await asyncio.wait_for(both_waiting(), 60)
                app.cut()
                openai_answer, anthropic_answer = await asyncio.wait_for(
                    asyncio.gather(*waiting), 60
                )
                late = await client.post(
                    "/v1/chat/completions", json={"model": "alpha", "messages": [message]}
                )
            assert app.grace_ran_out
            for answer in (openai_answer, late):
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"]["code"] == "shutting_down"
                assert "retry-after" in answer.headers
            assert anthropic_answer.status_code == 503, anthropic_answer.text
            body = anthropic_answer.json()
            assert body["type"] == "error"
            assert "grace period ran out" in body["error"]["message"]
        finally:
            await app.shutdown()
