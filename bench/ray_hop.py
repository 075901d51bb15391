"""What a local-engine stream costs when its replica is on another node of a Ray cluster.

    pip install -e '.[test]'      # Ray and the transformers extra
    python bench/ray_hop.py [--streams N] [--tokens T]

The same tiny Llama (built here, random weights, a real tokenizer) and the same requests
(greedy, ``T`` tokens each, one stream at a time) are served two ways in one run:

- **in process**: ``rakka serve`` with the transformers deployment in the gateway's own
  process (the runner beside the gateway);
- **across Ray**: a two-node local Ray cluster, the replica an actor on the node with the
  (fake) GPU, the request sent to the other node's gateway, which relays the answer from
  the replica through a Ray streaming call, chunk by chunk.

Per chunk it reports the wall time, and the CPU time of every process that served it (the
gateway's, plus the replica actor's across Ray); the difference between the two ways is the
Ray hop's cost per chunk. The model's own compute is in both, the same.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before Ray is imported (it reads these once): keep every address on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx

from rakka_inference.local.tiny_model import build_tiny_chat_model


def _proc_cpu_s(pid: int) -> float:
    """A process's user and system CPU, its ended threads included (the runner's decode
    thread ends whenever the batch is empty, and a per-thread sum would lose it)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _deployment(model: Path, *, gpus: int) -> str:
    return f"""
[[deployment]]
name = "tiny"
model = "tiny-llama"
runtime = "transformers"
[deployment.runtime_config]
model_path = "{model}"
device = "cpu"
gpus = {gpus}
"""


async def _streams(url: str, count: int, tokens: int) -> tuple[int, float]:
    """``count`` streams one after another; (chunks, seconds)."""
    chunks = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for _ in range(count):
            body = {
                "model": "tiny",
                "messages": [{"role": "user", "content": "Hello there"}],
                "max_tokens": tokens,
                "temperature": 0,
                "stream": True,
            }
            async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
                async for line in answer.aiter_lines():
                    if line.startswith("data: {"):
                        event = json.loads(line[6:])
                        if event["choices"] and event["choices"][0]["delta"].get("content"):
                            chunks += 1
    return chunks, time.perf_counter() - started


def _measure(url: str, pids: list[int], streams: int, tokens: int) -> dict[str, float]:
    asyncio.run(_streams(url, 2, tokens))  # warm-up
    cpu = sum(_proc_cpu_s(pid) for pid in pids)
    chunks, wall = asyncio.run(_streams(url, streams, tokens))
    cpu = sum(_proc_cpu_s(pid) for pid in pids) - cpu
    return {"chunks": chunks, "ms_per_chunk": wall / chunks * 1e3, "cpu_us": cpu / chunks * 1e6}


def _in_process(model: Path, streams: int, tokens: int, folder: Path) -> dict[str, float]:
    port = _free_port()
    config = folder / "single.toml"
    config.write_text(f'[cluster]\nbind = "127.0.0.1:{port}"\n' + _deployment(model, gpus=0))
    log = (folder / "single.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "rakka_inference.apps.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while "serving" not in (folder / "single.log").read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "single.log").read_text()[-2000:])
            time.sleep(0.1)
        return _measure(f"http://127.0.0.1:{port}", [process.pid], streams, tokens)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _across_ray(model: Path, streams: int, tokens: int, folder: Path) -> dict[str, float]:
    import ray
    from ray.cluster_utils import Cluster

    from rakka_inference.cluster.ray_driver import RayCluster
    from rakka_inference.cluster.ray_gateway import gateway_name
    from rakka_inference.core.config import load_config

    ports = [_free_port(), _free_port()]
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "labels": {"rakka-bind": f"127.0.0.1:{ports[0]}"}},
    )
    cluster.add_node(num_cpus=1, num_gpus=1, labels={"rakka-bind": f"127.0.0.1:{ports[1]}"})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    topology: RayCluster | None = None
    try:
        config = folder / "cluster.toml"
        config.write_text(
            f'[cluster]\nname = "hop"\nbackend = "ray"\nray_address = "{cluster.address}"\n'
            + _deployment(model, gpus=1)
        )
        topology = RayCluster(config, load_config(config), grace_s=2.0)
        topology.start()
        topology.wait_ready()
        head = cluster.head_node.node_id
        gateway: Any = ray.get_actor(gateway_name(head), namespace="hop")
        replica_pid = _replica_pid(ray, topology)
        gateway_pid = int(ray.get(gateway.describe.remote())["pid"])
        return _measure(f"http://127.0.0.1:{ports[0]}", [gateway_pid, replica_pid], streams, tokens)
    finally:
        if topology is not None:
            topology.stop()
        ray.shutdown()
        cluster.shutdown()


def _replica_pid(ray: Any, topology: Any) -> int:
    [replica] = topology.status()["local_replicas"]
    handle = ray.get_actor(replica["replica"], namespace="hop")
    return int(ray.get(handle.describe.remote())["pid"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=20, help="streams per way")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rakka-bench-hop-"))
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    try:
        model = build_tiny_chat_model(folder / "tiny")
        local = _in_process(model, args.streams, args.tokens, folder)
        remote = _across_ray(model, args.streams, args.tokens, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{args.streams} streams of {args.tokens} tokens, one at a time, tiny Llama on CPU")
    print(f"{'served':<12} {'chunks':>7} {'ms/chunk':>9} {'CPU µs/chunk':>13}")
    for name, figures in (("in process", local), ("across Ray", remote)):
        print(
            f"{name:<12} {figures['chunks']:>7.0f} {figures['ms_per_chunk']:>9.3f} "
            f"{figures['cpu_us']:>13.0f}"
        )
    print(
        f"the Ray hop: +{remote['ms_per_chunk'] - local['ms_per_chunk']:.3f} ms and "
        f"+{remote['cpu_us'] - local['cpu_us']:.0f} µs of CPU per chunk "
        f"({remote['cpu_us'] / local['cpu_us']:.2f}x the in-process CPU)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
