"""The stand-in engine server: a real process per flavor, called over loopback HTTP with
httpx and the official openai SDK, and its faults and start records."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.local.engine_metrics import parse_engine_metrics
from rakka_inference.testkit.stand_in_engine import main, parse_engine_args
from rakka_inference.testkit.stand_in_faults import (
    InvalidChatRequest,
    StandInFaults,
    plan_reply,
    read_faults,
)

FLAVORS = ("vllm", "sglang", "llamacpp")
SERVED = "served-model"
HELLO = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello big world"}]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def engine_args(flavor: str, port: int, *extra: str, name: str = SERVED) -> list[str]:
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if flavor == "vllm":
        return ["serve", "org/model", *where, "--served-model-name", name, *extra]
    if flavor == "sglang":
        return ["--model-path", "org/model", *where, "--served-model-name", name, *extra]
    return ["--model", "/models/m.gguf", *where, "--alias", name, *extra]


METRICS_FLAG = {"vllm": (), "sglang": ("--enable-metrics",), "llamacpp": ("--metrics",)}


class Engine:
    """One stand-in process; its stdout and stderr go to files in its directory."""

    def __init__(
        self,
        flavor: str,
        directory: Path,
        *extra: str,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] | None = None,
        faults: Mapping[str, Any] | None = None,
        record: bool = True,
    ) -> None:
        self.flavor = flavor
        self.directory = directory
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {
            key: value
            for key, value in os.environ.items()
            if key != "CUDA_VISIBLE_DEVICES" and not key.startswith("RAKKA_STAND_IN_")
        }
        self.out_path = directory / f"{flavor}-{self.port}-{time.monotonic_ns()}.out"
        self.err_path = self.out_path.with_suffix(".err")
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        argv = engine_args(flavor, self.port, *extra) if args is None else list(args)
        if faults is not None:  # before the start: it reads them at once
            (directory / "faults.json").write_text(json.dumps(faults))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rakka_inference.testkit.stand_in_engine", flavor, *argv],
            stdout=self._out,
            stderr=self._err,
            env={
                **base,
                **({"RAKKA_STAND_IN_DIR": str(directory)} if record else {}),
                **(env or {}),
            },
        )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_for_log(self, text: str, *, stderr: bool = False, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in (self.stderr if stderr else self.stdout):
            assert time.monotonic() < deadline, f"no {text!r} in the log: {self.stdout}"
            time.sleep(0.01)

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.stderr}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready: {self.stdout}{self.stderr}"
            time.sleep(0.01)

    def wait(self, timeout: float = 15) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        """SIGINT (it exits cleanly, so coverage is saved; even with ignore_sigterm), then
        SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._out.close()
        self._err.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []

    def start(flavor: str, *extra: str, **options: Any) -> Engine:
        engine = Engine(flavor, tmp_path, *extra, **options)
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.close()


@pytest.fixture(scope="module", params=FLAVORS)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    flavor: str = request.param
    engine = Engine(flavor, tmp_path_factory.mktemp(flavor), *METRICS_FLAG[flavor])
    try:
        engine.wait_ready()
        yield engine
    finally:
        engine.close()


def write_faults(engine: Engine, faults: Mapping[str, Any]) -> None:
    (engine.directory / "faults.json").write_text(json.dumps(faults))


@pytest.fixture
def faults(served: Engine) -> Iterator[Callable[[Mapping[str, Any]], None]]:
    yield lambda faults: write_faults(served, faults)
    (served.directory / "faults.json").unlink(missing_ok=True)


def sdk(engine: Engine) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{engine.url}/v1", api_key="unused", max_retries=0)


def refused_soon(url: str, seconds: float = 5) -> bool:
    """Whether connecting to ``url`` is refused within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/models")
        except httpx.ConnectError:
            return True
    return False


def reply(flavor: str, *words: str) -> str:
    return f"stand-in {flavor} reply:" + "".join(f" {word}" for word in words)


# ---------------------------------------------------------------------------- chat


def test_a_unary_chat_answers_with_usage(served: Engine) -> None:
    with sdk(served) as client:
        answer = client.chat.completions.create(model=SERVED, messages=HELLO)
    assert answer.object == "chat.completion"
    assert answer.model == SERVED
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == reply(served.flavor, "hello", "big", "world")
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 4)
    assert answer.usage.total_tokens == 11


def test_a_stream_sends_a_token_per_chunk_then_the_usage(served: Engine) -> None:
    with sdk(served) as client:
        chunks = list(
            client.chat.completions.create(
                model=SERVED,
                messages=HELLO,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert texts == [f"stand-in {served.flavor} reply:", " hello", " big", " world"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 4)
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_and_stop_end_the_reply(served: Engine) -> None:
    with sdk(served) as client:
        capped = client.chat.completions.create(model=SERVED, messages=HELLO, max_tokens=2)
        stopped = client.chat.completions.create(model=SERVED, messages=HELLO, stop=["ig", "zz"])
        streamed = list(
            client.chat.completions.create(
                model=SERVED,
                messages=HELLO,
                stream=True,
                max_completion_tokens=1,
            )
        )
    assert capped.choices[0].message.content == reply(served.flavor, "hello")
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage is not None
    assert capped.usage.completion_tokens == 2
    assert stopped.choices[0].message.content == reply(served.flavor, "hello", "b")
    assert stopped.choices[0].finish_reason == "stop"
    assert [c.choices[0].delta.content for c in streamed[1:-1]] == [reply(served.flavor)]
    assert streamed[-1].choices[0].finish_reason == "length"


def test_content_parts_and_bad_requests(served: Engine) -> None:
    parts = [
        {"type": "text", "text": "look at"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "this"},
    ]
    body = {"messages": [{"role": "user", "content": parts}]}  # no model: the served one
    answer = httpx.post(f"{served.url}/v1/chat/completions", json=body).json()
    assert answer["choices"][0]["message"]["content"] == reply(served.flavor, "look", "at", "this")
    assert answer["usage"]["prompt_tokens"] == 4

    with sdk(served) as client, pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="other", messages=HELLO)
    assert missing.value.code == "model_not_found"
    assert missing.value.param == "model"
    assert missing.value.type == "invalid_request_error"

    url = f"{served.url}/v1/chat/completions"
    for content, param in [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "messages"),
        (b'{"messages": ["hi"]}', "messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
    ]:
        response = httpx.post(url, content=content)
        assert response.status_code == 400, content
        assert response.json()["error"]["param"] == param
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_models_lists_the_served_name(served: Engine) -> None:
    with sdk(served) as client:
        (model,) = client.models.list().data
    assert (model.id, model.object, model.owned_by) == (SERVED, "model", served.flavor)
    assert (model.model_extra or {})["max_model_len"] == 4096


def test_metrics_speak_the_engines_names_and_count_the_load(
    served: Engine, faults: Callable[[Mapping[str, Any]], None]
) -> None:
    runtime = RuntimeKind(served.flavor)
    text = httpx.get(f"{served.url}/metrics").text
    before = parse_engine_metrics(text, runtime)
    assert (before.running, before.waiting, before.kv_cache_usage) == (0.0, 0.0, 0.0)
    assert before.prompt_tokens is not None
    assert before.generated_tokens is not None
    assert (text.count("# HELP "), text.count("# TYPE ")) == (5, 5)
    assert (f'{{model_name="{SERVED}"}}' in text) == (served.flavor != "llamacpp")

    faults({"chunk_delay_ms": 60})
    body = {"model": SERVED, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body) as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk: the request is running
        during = parse_engine_metrics(httpx.get(f"{served.url}/metrics").text, runtime)
        assert (during.running, during.kv_cache_usage) == (1.0, 0.1)
        assert [line for line in lines if line][-1] == "data: [DONE]"
    after = parse_engine_metrics(httpx.get(f"{served.url}/metrics").text, runtime)
    assert after.running == 0.0
    assert after.prompt_tokens == before.prompt_tokens + 7
    assert after.generated_tokens == before.generated_tokens + 4

    faults({"metrics": {"running": 3, "waiting": 2.5, "kv_cache_usage": 0.75}})
    overridden = parse_engine_metrics(httpx.get(f"{served.url}/metrics").text, runtime)
    assert (overridden.running, overridden.waiting, overridden.kv_cache_usage) == (3, 2.5, 0.75)
    faults({"metrics": {"waiting": 4}})
    partly = parse_engine_metrics(httpx.get(f"{served.url}/metrics").text, runtime)
    assert (partly.running, partly.waiting) == (0.0, 4.0)


# ---------------------------------------------------------------------------- live faults


def test_chat_error_answers_that_openai_error(
    served: Engine, faults: Callable[[Mapping[str, Any]], None]
) -> None:
    error = {"status": 400, "message": "too long", "type": "invalid_request_error"}
    faults({"chat_error": {**error, "code": "context_length_exceeded", "param": "messages"}})
    with sdk(served) as client, pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SERVED, messages=HELLO)
    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "messages"
    assert "too long" in refused.value.message
    faults({"chat_error": {}})
    response = httpx.post(f"{served.url}/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"


def test_health_can_fail_hang_and_recover_while_running(
    served: Engine, faults: Callable[[Mapping[str, Any]], None]
) -> None:
    health = f"{served.url}/health"
    faults({"health_status": 500})
    assert httpx.get(health).status_code == 500
    faults({"hang_health": True})
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(health, timeout=httpx.Timeout(5, read=0.2))
    faults({})
    response = httpx.get(health)
    assert response.status_code == 200
    if served.flavor == "llamacpp":
        assert response.json() == {"status": "ok"}


def test_a_client_that_leaves_mid_stream_is_logged(
    served: Engine, faults: Callable[[Mapping[str, Any]], None]
) -> None:
    faults({"chunk_delay_ms": 100})
    body = {"model": SERVED, "messages": HELLO, "stream": True}
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", json=body) as stream:
        next(stream.iter_lines())
    served.wait_for_log("the client went away mid-stream")


# ---------------------------------------------------------------------------- processes


def test_each_start_is_recorded(start: Callable[..., Engine], tmp_path: Path) -> None:
    extra = ("--enable-metrics", "--tp-size", "2", "--trust-remote-code", "--chunked", "64")
    env = {
        "CUDA_VISIBLE_DEVICES": "2,3",
        "RAKKA_STAND_IN_TAG": "first",
        "RAKKA_STAND_IN_ECHO_ENV": "HF_HOME, NOT_SET",
        "HF_HOME": "/cache/hf",
    }
    weird = 'we"ird\\name'
    port = free_port()
    engine = start(
        "sglang", port=port, env=env, args=engine_args("sglang", port, *extra, name=weird)
    )
    engine.wait_ready()
    plain = start("vllm")
    plain.wait_ready()
    first, second = (
        json.loads(line) for line in (tmp_path / "starts.jsonl").read_text().splitlines()
    )
    assert first["pid"] == engine.process.pid
    assert first["flavor"] == "sglang"
    assert first["argv"] == engine_args("sglang", port, *extra, name=weird)
    assert first["unknown"] == ["--trust-remote-code", "--chunked", "64"]
    assert first["options"]["tp_size"] == 2
    assert first["options"]["served_name"] == weird
    assert first["options"]["model"] == "org/model"
    assert first["cuda_visible_devices"] == "2,3"
    assert first["env"] == {
        "RAKKA_STAND_IN_DIR": str(tmp_path),
        "RAKKA_STAND_IN_ECHO_ENV": "HF_HOME, NOT_SET",
        "RAKKA_STAND_IN_TAG": "first",
        "HF_HOME": "/cache/hf",
    }
    assert second["cuda_visible_devices"] is None
    assert second["env"] == {"RAKKA_STAND_IN_DIR": str(tmp_path)}

    text = httpx.get(f"{engine.url}/metrics").text
    assert r'model_name="we\"ird\\name"' in text
    assert parse_engine_metrics(text, RuntimeKind.SGLANG).running == 0.0
    assert engine.stdout.startswith("INFO stand-in sglang: loading org/model\n")
    assert f"INFO stand-in sglang: serving {weird} on 127.0.0.1:{port}\n" in engine.stdout


def test_a_slow_start_refuses_connections_until_loaded(start: Callable[..., Engine]) -> None:
    engine = start("vllm", faults={"start_delay_ms": 600})
    engine.wait_for_log("loading")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{engine.url}/health")
    engine.wait_ready()


def test_llamacpp_listens_while_loading_and_answers_503(start: Callable[..., Engine]) -> None:
    engine = start("llamacpp", faults={"start_delay_ms": 800})
    engine.wait_for_log("loading")
    loading = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
    deadline = time.monotonic() + 10
    while True:  # it listens a moment after it logs
        try:
            response = httpx.get(f"{engine.url}/health")
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    assert (response.status_code, response.json()) == (503, loading)
    models = httpx.get(f"{engine.url}/v1/models")
    assert (models.status_code, models.json()) == (503, loading)
    engine.wait_ready()
    assert httpx.get(f"{engine.url}/v1/models").status_code == 200


def test_exit_on_start_for_the_first_starts_only(
    start: Callable[..., Engine], tmp_path: Path
) -> None:
    (tmp_path / "faults.json").write_text(
        json.dumps({"exit_on_start": 3, "exit_on_start_times": 2})
    )
    for _ in range(2):
        failed = start("llamacpp")
        assert failed.wait() == 3
        assert "ERROR stand-in llamacpp: failed to start" in failed.stderr
    third = start("llamacpp")  # no --metrics
    third.wait_ready()
    assert httpx.get(f"{third.url}/metrics").status_code == 404
    assert len((tmp_path / "starts.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(("flavor", "chunks"), [("vllm", None), ("sglang", 2), ("llamacpp", 9)])
def test_a_crash_kills_the_process_mid_answer(
    start: Callable[..., Engine], flavor: str, chunks: int | None
) -> None:
    engine = start(flavor, faults={"crash_after_chunks": chunks or 0})
    engine.wait_ready()
    received: list[str | None] = []

    def ask(client: openai.OpenAI) -> None:
        if chunks is None:
            client.chat.completions.create(model=SERVED, messages=HELLO)
        for chunk in client.chat.completions.create(model=SERVED, messages=HELLO, stream=True):
            received.append(chunk.choices[0].delta.content)  # noqa: PERF401 - up to the crash

    with sdk(engine) as client, pytest.raises((openai.APIError, httpx.TransportError)):
        ask(client)
    assert engine.wait() == 70
    if chunks is not None:
        assert len(received) == 1 + min(chunks, 4)  # the role chunk, then the content
    assert "crashing (fault crash_after_chunks)" in engine.stderr


@pytest.mark.parametrize(
    ("then", "status"),
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGINT, 0)],
    ids=["then-sigkill", "then-sigint"],
)
def test_ignore_sigterm_leaves_it_running(
    start: Callable[..., Engine], then: signal.Signals, status: int
) -> None:
    engine = start("sglang", faults={"ignore_sigterm": True})
    engine.wait_ready()
    engine.process.send_signal(signal.SIGTERM)
    engine.wait_for_log("WARNING stand-in sglang: SIGTERM ignored", stderr=True)
    assert httpx.get(f"{engine.url}/health").status_code == 200
    engine.process.send_signal(then)
    assert engine.wait() == status


def test_sigterm_drains_the_requests_in_flight_and_exits_0(start: Callable[..., Engine]) -> None:
    engine = start("vllm", faults={"chunk_delay_ms": 150, "hang_health": True})
    engine.wait_for_log("serving")
    body = {"model": SERVED, "messages": HELLO, "stream": True}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", f"{engine.url}/v1/chat/completions", json=body) as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines).startswith("data: ")
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(
                f"{engine.url}/health", timeout=httpx.Timeout(5, read=0.1)
            )  # a hung health check, in flight too
        engine.process.send_signal(signal.SIGTERM)
        engine.wait_for_log("shutting down")
        assert refused_soon(engine.url)  # it stops listening at once
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) == 6  # four tokens, the finish, [DONE]
    assert engine.wait() == 0
    assert "INFO stand-in vllm: SIGTERM received" in engine.stdout


def test_a_signal_while_loading_stops_it(start: Callable[..., Engine]) -> None:
    engine = start("vllm", faults={"start_delay_ms": 20_000})
    engine.wait_for_log("loading")
    engine.process.send_signal(signal.SIGTERM)
    assert engine.wait() == 0
    assert "serving" not in engine.stdout


@pytest.mark.parametrize("flavor", ["vllm", "llamacpp"])
def test_a_port_in_use_fails_the_start(start: Callable[..., Engine], flavor: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        engine = start(flavor, port=taken.getsockname()[1], record=False)
        assert engine.wait() == 1
    assert "cannot listen on 127.0.0.1:" in engine.stderr
    assert not (engine.directory / "starts.jsonl").exists()  # no RAKKA_STAND_IN_DIR: no record


def test_a_missing_port_exits_2_like_a_real_cli(start: Callable[..., Engine]) -> None:
    engine = start("vllm", args=["serve", "org/model"])
    assert engine.wait() == 2
    assert "the following arguments are required: --port" in engine.stderr


# ---------------------------------------------------------------------------- in process


@pytest.mark.parametrize(
    ("flavor", "argv", "missing"),
    [
        ("vllm", ["serve", "--port", "1"], "model"),
        ("sglang", ["--port", "1"], "--model-path"),
        ("llamacpp", ["--port", "1"], "--model"),
    ],
)
def test_the_model_is_required(
    flavor: str, argv: list[str], missing: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([flavor, *argv])
    assert exited.value.code == 2
    assert missing in capsys.readouterr().err


def test_an_unknown_flavor_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tgi", "--port", "1"]) == 2
    assert main([]) == 2
    assert "usage: stand_in_engine {vllm,sglang,llamacpp}" in capsys.readouterr().err


def test_each_flavor_reads_its_own_flags() -> None:
    vllm = parse_engine_args(
        RuntimeKind.VLLM,
        ["serve", "m", "--port", "9", "--max-model-len", "8192", "--tensor-parallel-size", "2"],
    )
    assert (vllm.served_name, vllm.host, vllm.max_model_len, vllm.metrics) == (
        "m",
        "127.0.0.1",
        8192,
        True,
    )
    assert vllm.options["tensor_parallel_size"] == 2
    sglang = parse_engine_args(
        RuntimeKind.SGLANG, ["--model-path", "m", "--port", "9", "--context-length", "512"]
    )
    assert (sglang.max_model_len, sglang.metrics) == (512, False)
    llama = parse_engine_args(
        RuntimeKind.LLAMACPP,
        [
            "-m",
            "m.gguf",
            "--port",
            "9",
            "-a",
            "x",
            "-c",
            "256",
            "-np",
            "4",
            "-ngl",
            "99",
            "--flash-attn",
        ],
    )
    assert (llama.served_name, llama.max_model_len, llama.metrics) == ("x", 256, False)
    assert (llama.options["parallel"], llama.options["n_gpu_layers"]) == (4, 99)
    assert llama.unknown == ("--flash-attn",)


def test_the_reply_plan() -> None:
    tool = {"role": "tool", "content": None, "tool_call_id": "c1"}
    assert plan_reply("vllm", {"messages": [tool]}).tokens == ("stand-in vllm reply:",)
    last = [
        {"role": "user", "content": "one"},
        {"role": "assistant"},
        {"role": "user", "content": "two"},
    ]
    both = plan_reply("vllm", {"messages": last, "stop": ["", 5, "zz"], "max_tokens": 9})
    assert both.tokens == ("stand-in vllm reply:", " two")
    assert (both.finish_reason, both.prompt_tokens) == ("stop", 5)
    capped = plan_reply("vllm", {"messages": last, "max_tokens": 9, "max_completion_tokens": 1})
    assert capped.finish_reason == "length"
    assert plan_reply("vllm", {"messages": last, "stop": "stand"}).tokens == ()
    with pytest.raises(InvalidChatRequest):
        plan_reply("vllm", {"messages": last, "max_tokens": True})


def test_a_broken_faults_file_means_no_faults(tmp_path: Path) -> None:
    assert read_faults(None) == StandInFaults()
    assert read_faults(str(tmp_path)) == StandInFaults()
    path = tmp_path / "faults.json"
    for broken in ["{", "[1]", '"x"']:
        path.write_text(broken)
        assert read_faults(str(tmp_path)) == StandInFaults()
    path.write_text(
        json.dumps(
            {
                "start_delay_ms": "soon",
                "exit_on_start": True,
                "hang_health": 1,
                "chat_error": {"status": "x", "code": False, "param": 3},
                "metrics": [1],
                "chunk_delay_ms": 5,
            }
        )
    )
    faults = read_faults(str(tmp_path))
    assert (faults.start_delay_ms, faults.exit_on_start, faults.hang_health) == (0.0, None, False)
    assert faults.chunk_delay_ms == 5.0
    assert faults.chat_error is not None
    assert (faults.chat_error.status, faults.chat_error.code, faults.chat_error.param) == (
        500,
        None,
        None,
    )
    assert faults.metrics.running is None
    assert faults.exits_on_start(1) is None
    assert StandInFaults(exit_on_start=4).exits_on_start(100) == 4


def test_per_port_faults_apply_to_the_engine_on_that_port(tmp_path: Path) -> None:
    (tmp_path / "faults.json").write_text(
        json.dumps(
            {"chunk_delay_ms": 5, "per_port": {"8001": {"metrics": {"kv_cache_usage": 0.9}}}}
        )
    )
    mine = read_faults(str(tmp_path), 8001)
    other = read_faults(str(tmp_path), 8002)
    assert mine.metrics.kv_cache_usage == 0.9
    assert mine.chunk_delay_ms == other.chunk_delay_ms == 5
    assert other.metrics.kv_cache_usage is None
