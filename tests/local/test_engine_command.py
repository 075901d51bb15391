"""The engine servers' command lines, environments, and what stops them at apply."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.policies import Serving
from rakka_inference.core.runtimes import (
    EngineServerConfig,
    LlamaCppConfig,
    RuntimeKind,
    SglangConfig,
    TransformersConfig,
    VllmConfig,
)
from rakka_inference.local.engine_command import (
    default_program,
    engine_arguments,
    engine_environment,
    launch_problem,
    model_source,
)

PYTHON = (sys.executable,)


def deployment(
    runtime: RuntimeKind, config: EngineServerConfig, model: str = "org/model"
) -> Deployment:
    return Deployment(
        name="local",
        model=model,
        runtime=runtime,
        runtime_config=config,
        serving=Serving(max_concurrent=6),
    )


def test_vllm_flags_follow_the_config() -> None:
    config = VllmConfig(
        tensor_parallel_size=2,
        gpu_memory_utilization=0.8,
        max_model_len=8192,
        dtype="bfloat16",
        extra_args=("--enforce-eager",),
    )
    argv = engine_arguments(deployment(RuntimeKind.VLLM, config), 9001, ("0", "1"))
    assert argv == [
        "vllm",
        "serve",
        "org/model",
        "--host",
        "127.0.0.1",
        "--port",
        "9001",
        "--served-model-name",
        "org/model",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.8",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "8192",
        "--enforce-eager",
    ]


def test_sglang_runs_its_module_with_metrics_on() -> None:
    config = SglangConfig(mem_fraction_static=0.7, context_length=4096, model_path="/m")
    argv = engine_arguments(deployment(RuntimeKind.SGLANG, config), 9002, ())
    assert argv[:3] == [sys.executable, "-m", "sglang.launch_server"]
    assert argv[3:5] == ["--model-path", "/m"]
    for flag, value in (
        ("--port", "9002"),
        ("--tp-size", "1"),
        ("--mem-fraction-static", "0.7"),
        ("--context-length", "4096"),
        ("--served-model-name", "org/model"),
    ):
        assert argv[argv.index(flag) + 1] == value
    assert "--enable-metrics" in argv


def test_llamacpp_offloads_every_layer_only_with_a_gpu() -> None:
    local = deployment(RuntimeKind.LLAMACPP, LlamaCppConfig(ctx_size=2048), "/m.gguf")
    on_gpu = engine_arguments(local, 9003, ("3",))
    on_cpu = engine_arguments(local, 9003, ())
    assert on_gpu[on_gpu.index("--n-gpu-layers") + 1] == "999"
    assert on_cpu[on_cpu.index("--n-gpu-layers") + 1] == "0"
    assert on_cpu[on_cpu.index("--parallel") + 1] == "6"  # one slot per concurrent request
    assert on_cpu[on_cpu.index("--ctx-size") + 1] == "2048"
    assert {"--metrics", "--alias"} <= set(on_cpu)
    set_layers = deployment(RuntimeKind.LLAMACPP, LlamaCppConfig(n_gpu_layers=20), "/m.gguf")
    argv = engine_arguments(set_layers, 1, ())
    assert argv[argv.index("--n-gpu-layers") + 1] == "20"


def test_command_replaces_the_program_only() -> None:
    config = VllmConfig(command=(*PYTHON, "-m", "some.wrapper"))
    argv = engine_arguments(deployment(RuntimeKind.VLLM, config), 1, ())
    assert argv[:4] == [sys.executable, "-m", "some.wrapper", "serve"]


def test_environment_pins_the_gpus_and_adds_env() -> None:
    config = VllmConfig(env={"HF_HOME": "/cache"})
    local = deployment(RuntimeKind.VLLM, config)
    env = engine_environment(local, ("2", "3"), {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3"})
    assert env == {"PATH": "/bin", "HF_HOME": "/cache", "CUDA_VISIBLE_DEVICES": "2,3"}
    # A replica without GPUs sees none, not the machine's.
    assert (
        engine_environment(local, (), {"CUDA_VISIBLE_DEVICES": "0"})["CUDA_VISIBLE_DEVICES"] == ""
    )


def test_model_source_prefers_model_path(tmp_path: Path) -> None:
    assert model_source(deployment(RuntimeKind.VLLM, VllmConfig())) == "org/model"
    config = VllmConfig(model_path=str(tmp_path))
    assert model_source(deployment(RuntimeKind.VLLM, config)) == str(tmp_path)


def test_default_programs() -> None:
    assert default_program(RuntimeKind.VLLM) == ("vllm",)
    assert default_program(RuntimeKind.LLAMACPP) == ("llama-server",)
    with pytest.raises(ValueError, match="not an engine server"):
        default_program(RuntimeKind.TRANSFORMERS)


def test_a_missing_engine_is_named() -> None:
    # Neither vLLM nor llama.cpp nor SGLang is installed here.
    problem = launch_problem(deployment(RuntimeKind.VLLM, VllmConfig()))
    assert problem is not None
    assert problem[0] == "runtime"
    assert "'vllm' was not found" in problem[1]
    problem = launch_problem(deployment(RuntimeKind.SGLANG, SglangConfig()))
    assert problem is not None
    assert "SGLang is not installed" in problem[1]
    command = LlamaCppConfig(command=("/nowhere/llama-server",))
    problem = launch_problem(deployment(RuntimeKind.LLAMACPP, command, "/m.gguf"))
    assert problem is not None
    assert problem[0] == "runtime_config.command"


def test_a_missing_model_path_is_named(tmp_path: Path) -> None:
    ok = VllmConfig(command=PYTHON)
    assert launch_problem(deployment(RuntimeKind.VLLM, ok)) is None  # a hub id
    assert launch_problem(deployment(RuntimeKind.VLLM, ok, str(tmp_path))) is None
    missing = launch_problem(deployment(RuntimeKind.VLLM, ok, "./no/such/model"))
    assert missing == ("model", "'./no/such/model' does not exist")
    by_path = VllmConfig(command=PYTHON, model_path=str(tmp_path / "gone"))
    problem = launch_problem(deployment(RuntimeKind.SGLANG, SglangConfig(command=PYTHON)))
    assert problem is None
    problem = launch_problem(deployment(RuntimeKind.VLLM, by_path))
    assert problem is not None
    assert problem[0] == "runtime_config.model_path"


def test_llamacpp_needs_a_file(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    config = LlamaCppConfig(command=PYTHON)
    assert launch_problem(deployment(RuntimeKind.LLAMACPP, config, str(gguf))) is None
    problem = launch_problem(deployment(RuntimeKind.LLAMACPP, config, "org/model"))
    assert problem is not None
    assert problem[0] == "model"
    assert "is not a file" in problem[1]


def test_other_runtimes_are_refused() -> None:
    other = Deployment(
        name="t", model="m", runtime=RuntimeKind.TRANSFORMERS, runtime_config=TransformersConfig()
    )
    with pytest.raises(TypeError, match="not configured for an engine server"):
        launch_problem(other)
