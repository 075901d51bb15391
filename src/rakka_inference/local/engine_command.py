"""The command line and environment of an engine server, and what would stop it starting.

A replica of a ``vllm``, ``sglang`` or ``llamacpp`` deployment runs the engine's own
OpenAI-compatible server. This module maps the deployment onto that server's flags:

==========================  ==================================  ============================
config                      vLLM (``vllm serve MODEL``)         SGLang / llama.cpp
==========================  ==================================  ============================
model / ``model_path``      ``MODEL``                           ``--model-path`` / ``--model``
the upstream model name     ``--served-model-name``             ``--served-model-name`` /
                                                                ``--alias``
the replica's port          ``--host 127.0.0.1 --port P``       the same
``tensor_parallel_size``    ``--tensor-parallel-size``          ``--tp-size`` / —
``gpu_memory_utilization``  ``--gpu-memory-utilization``        —
``mem_fraction_static``     —                                   ``--mem-fraction-static`` / —
``max_model_len``           ``--max-model-len``                 —
``context_length``          —                                   ``--context-length`` / —
``ctx_size``                —                                   — / ``--ctx-size``
``n_gpu_layers``            —                                   — / ``--n-gpu-layers``
``dtype``                   ``--dtype``                         ``--dtype`` / —
metrics                     (always on)                         ``--enable-metrics`` /
                                                                ``--metrics``
``max_concurrent``          —                                   — / ``--parallel``
``extra_args``              appended unchanged                  appended unchanged
==========================  ==================================  ============================

The program is ``runtime_config.command`` when set, else the engine's own: ``vllm``,
``python -m sglang.launch_server`` (this interpreter), ``llama-server``. The environment is
the gateway's, plus ``runtime_config.env``, plus ``CUDA_VISIBLE_DEVICES`` set to the GPUs
placement gave the replica (empty when it has none, so the engine never takes a GPU that
another replica holds).

:func:`launch_problem` is what is checked before a deployment is applied: a program that
is not installed, or a model path that does not exist, is a ``ConfigError`` naming the
field, never a replica that crashes at start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.runtimes import (
    EngineServerConfig,
    LlamaCppConfig,
    RuntimeKind,
    SglangConfig,
    VllmConfig,
)

__all__ = [
    "ENGINE_HOST",
    "default_program",
    "engine_arguments",
    "engine_environment",
    "launch_problem",
    "model_source",
    "program",
]

ENGINE_HOST = "127.0.0.1"
"""Engines listen on loopback only: the gateway is their one client."""

_SGLANG_MODULE = "sglang.launch_server"


def default_program(runtime: RuntimeKind) -> tuple[str, ...]:
    """The engine's own program, when ``runtime_config.command`` is not set."""
    if runtime is RuntimeKind.VLLM:
        return ("vllm",)
    if runtime is RuntimeKind.SGLANG:
        return (sys.executable, "-m", _SGLANG_MODULE)
    if runtime is RuntimeKind.LLAMACPP:
        return ("llama-server",)
    raise ValueError(f"runtime {runtime.value!r} is not an engine server")


def program(deployment: Deployment) -> tuple[str, ...]:
    """What runs: ``runtime_config.command``, else the engine's own program."""
    config = _config(deployment)
    return config.command or default_program(deployment.runtime)


def model_source(deployment: Deployment) -> str:
    """The model the engine loads: ``runtime_config.model_path``, else ``model``."""
    config = _config(deployment)
    return str(Path(config.model_path).expanduser()) if config.model_path else deployment.model


def engine_arguments(deployment: Deployment, port: int, gpus: Sequence[str]) -> list[str]:
    """The whole argv: the program, the flags mapped from the config, ``extra_args``."""
    config = _config(deployment)
    model = model_source(deployment)
    served = deployment.upstream_model
    where = ["--host", ENGINE_HOST, "--port", str(port)]
    args: list[str] = list(program(deployment))
    if isinstance(config, VllmConfig):
        args += ["serve", model, *where, "--served-model-name", served]
        args += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
        args += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
        args += ["--dtype", config.dtype]
        args += _optional("--max-model-len", config.max_model_len)
    elif isinstance(config, SglangConfig):
        args += ["--model-path", model, *where, "--served-model-name", served]
        args += ["--enable-metrics", "--tp-size", str(config.tensor_parallel_size)]
        args += ["--dtype", config.dtype]
        args += _optional("--mem-fraction-static", config.mem_fraction_static)
        args += _optional("--context-length", config.context_length)
    elif isinstance(config, LlamaCppConfig):
        layers = config.n_gpu_layers
        if layers is None:
            layers = 999 if gpus else 0  # every layer on the GPU when there is one
        args += ["--model", model, *where, "--alias", served, "--metrics"]
        args += ["--parallel", str(max(1, deployment.serving.max_concurrent))]
        args += ["--n-gpu-layers", str(layers)]
        args += _optional("--ctx-size", config.ctx_size)
    return args + list(config.extra_args)


def engine_environment(
    deployment: Deployment, gpus: Sequence[str], base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The engine's environment: ``base`` (the gateway's), ``runtime_config.env``, and
    ``CUDA_VISIBLE_DEVICES`` for the replica's GPUs."""
    env = dict(os.environ if base is None else base)
    env.update(_config(deployment).env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def launch_problem(deployment: Deployment) -> tuple[str, str] | None:
    """Why the engine of ``deployment`` could not start here, as (field, reason); ``None``
    if nothing is known to stop it."""
    config = _config(deployment)
    runtime = deployment.runtime
    if not config.command and runtime is RuntimeKind.SGLANG:
        if importlib.util.find_spec("sglang") is None:
            return (
                "runtime",
                "runtime 'sglang' runs 'python -m sglang.launch_server', and SGLang is not "
                "installed in this Python; install it, or set runtime_config.command",
            )
    else:
        executable = program(deployment)[0]
        if shutil.which(executable) is None:
            field = "runtime_config.command" if config.command else "runtime"
            return (
                field,
                f"the engine executable {executable!r} was not found (not on PATH, or not "
                f"executable); install {_ENGINE_NAMES[runtime]}, or set runtime_config.command",
            )
    return _model_problem(deployment, config)


def _model_problem(deployment: Deployment, config: EngineServerConfig) -> tuple[str, str] | None:
    if config.model_path is not None:
        field, source = "runtime_config.model_path", config.model_path
    else:
        field, source = "model", deployment.model
        if deployment.runtime is not RuntimeKind.LLAMACPP and not _looks_like_path(source):
            return None  # a model id: the engine resolves it (its cache, or its hub)
    path = Path(source).expanduser()
    if deployment.runtime is RuntimeKind.LLAMACPP:
        if not path.is_file():
            return field, f"{source!r} is not a file; llama.cpp loads a GGUF file by path"
        return None
    if not path.exists():
        return field, f"{source!r} does not exist"
    return None


def _looks_like_path(model: str) -> bool:
    # A hub id has a slash too ("org/name"); a path says where it starts.
    return model.startswith(("/", "./", "../", "~"))


def _optional(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _config(deployment: Deployment) -> EngineServerConfig:
    config = deployment.runtime_config
    if not isinstance(config, EngineServerConfig):
        raise TypeError(f"deployment {deployment.name!r} is not configured for an engine server")
    return config


_ENGINE_NAMES: Mapping[RuntimeKind, str] = {
    RuntimeKind.VLLM: "vLLM",
    RuntimeKind.SGLANG: "SGLang",
    RuntimeKind.LLAMACPP: "llama.cpp's llama-server",
}
