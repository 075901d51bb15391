"""Placement: GPU detection, remote co-location, GPU occupancy, failures, plan, snapshot."""

from __future__ import annotations

import platform
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import PlacementFailed
from rakka_inference.core.runtimes import (
    AnthropicConfig,
    GeminiConfig,
    LiteLLMConfig,
    OpenAIConfig,
    RuntimeKind,
    SentenceTransformersConfig,
    TransformersConfig,
    VllmConfig,
)
from rakka_inference.core.secrets import Secret, SecretRef
from rakka_inference.runtime.placement import (
    Assignment,
    CredentialKey,
    GpuSlot,
    Node,
    NodeInventory,
    Placement,
    PlacementError,
    credential_key,
    detect_gpu_count,
    gpus_needed,
    visible_gpus,
)

KEY_1 = "sk-placement-one"
KEY_2 = "sk-placement-two"


def _key(value: str) -> SecretRef:
    return SecretRef.inline(value, warn=False)


def openai(name: str, key: str = KEY_1, *, replicas: int = 1) -> Deployment:
    return Deployment(
        name=name,
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(api_key=_key(key)),
        replicas=replicas,
    )


def anthropic(name: str, key: str = KEY_2) -> Deployment:
    return Deployment(
        name=name,
        model="claude-sonnet-4",
        runtime=RuntimeKind.ANTHROPIC,
        runtime_config=AnthropicConfig(api_key=_key(key)),
    )


def vllm(name: str, tp: int = 1, *, replicas: int = 1) -> Deployment:
    return Deployment(
        name=name,
        model="meta-llama/Llama-3.1-8B",
        runtime=RuntimeKind.VLLM,
        runtime_config=VllmConfig(tensor_parallel_size=tp),
        replicas=replicas,
    )


def transformers(name: str, device: str = "cpu") -> Deployment:
    return Deployment(
        name=name,
        model="distilgpt2",
        runtime=RuntimeKind.TRANSFORMERS,
        runtime_config=TransformersConfig(device=device),
    )


def embedder(name: str, device: str = "cpu") -> Deployment:
    return Deployment(
        name=name,
        model="all-MiniLM-L6-v2",
        runtime=RuntimeKind.SENTENCE_TRANSFORMERS,
        runtime_config=SentenceTransformersConfig(device=device),
    )


def reasons(exc: pytest.ExceptionInfo[PlacementError]) -> list[str]:
    return list(exc.value.reasons)


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("count", "env", "expected"),
    [
        (2, None, ("0", "1")),
        (0, None, ()),
        (2, "1", ("1",)),
        (2, "", ()),
        (2, "-1", ()),
        (2, "0,5,1", ("0",)),
        (2, "1,1,0", ("1",)),
        (4, " 01 , 2", ("1", "2")),
        (2, "GPU-aaaa,0", ("GPU-aaaa", "0")),
        (1, "GPU-aaaa,MIG-bbbb", ("GPU-aaaa",)),
        (2, "0x1", ()),
    ],
)
def test_visible_gpus_follows_cuda_visible_devices(
    count: int, env: str | None, expected: tuple[str, ...]
) -> None:
    assert visible_gpus(count, env) == expected


def test_detection_counts_driver_entries_first(tmp_path: Path) -> None:
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (tmp_path / bus).mkdir()

    def unused() -> str | None:
        raise AssertionError("nvidia-smi is not needed when the driver lists GPUs")

    assert detect_gpu_count(tmp_path, unused) == 2


def test_detection_falls_back_to_nvidia_smi_lines(tmp_path: Path) -> None:
    listing = (
        "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1111)\n"
        "  MIG 1g.10gb     Device  0: (UUID: MIG-2222)\n"
        "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-3333)\n"
    )
    assert detect_gpu_count(tmp_path / "absent", lambda: listing) == 2
    assert detect_gpu_count(tmp_path, lambda: listing) == 2  # empty driver directory
    assert detect_gpu_count(tmp_path / "absent", lambda: None) == 0


def _fake_nvidia_smi(directory: Path, body: str) -> None:
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("echo 'GPU 0: Fake (UUID: GPU-1)'; echo 'GPU 1: Fake (UUID: GPU-2)'", 2),
        ("echo 'NVIDIA-SMI has failed' >&2; exit 9", 0),
        (None, 0),
    ],
)
def test_detection_runs_nvidia_smi_from_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str | None, expected: int
) -> None:
    if body is not None:
        _fake_nvidia_smi(tmp_path, body)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_gpu_count(tmp_path / "absent") == expected


def test_local_inventory_without_gpus() -> None:
    inventory = NodeInventory.local(name="box", detect_gpus=lambda: 0, environ={})
    assert inventory.nodes == (Node("box", egress=True, gpus=()),)


def test_local_inventory_with_two_gpus() -> None:
    inventory = NodeInventory.local(name="box", detect_gpus=lambda: 2, environ={})
    assert inventory.nodes == (Node("box", egress=True, gpus=("0", "1")),)


def test_local_inventory_honours_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setattr(platform, "node", lambda: "")
    inventory = NodeInventory.local(detect_gpus=lambda: 2)
    assert inventory.nodes == (Node("localhost", egress=True, gpus=("1",)),)


def test_local_inventory_is_named_after_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(platform, "node", lambda: "gpu-box-7")
    inventory = NodeInventory.local(detect_gpus=lambda: 1)
    assert inventory.nodes == (Node("gpu-box-7", gpus=("0",)),)


def test_records_reject_duplicates() -> None:
    with pytest.raises(ValueError, match="lists a GPU twice"):
        Node("a", gpus=("0", "0"))
    with pytest.raises(ValueError, match="listed twice"):
        NodeInventory([Node("a"), Node("a")])


# --------------------------------------------------------------------------- needs and keys


@pytest.mark.parametrize(
    ("deployment", "needed"),
    [
        (vllm("v", tp=4), 4),
        (transformers("t", "cuda"), 1),
        (transformers("t", " CUDA:1 "), 1),
        (embedder("e", "gpu"), 1),
        (embedder("e", "cpu"), 0),
        (transformers("t", "mps"), 0),
        (openai("o"), 0),
    ],
)
def test_gpus_needed(deployment: Deployment, needed: int) -> None:
    assert gpus_needed(deployment) == needed


def test_gpus_set_in_the_runtime_config_win() -> None:
    auto = transformers("t", "auto")
    assert gpus_needed(auto) == 0
    config = auto.runtime_config
    assert isinstance(config, TransformersConfig)
    assert gpus_needed(replace(auto, runtime_config=replace(config, gpus=2))) == 2
    cpu = transformers("t", "cuda")
    assert isinstance(cpu.runtime_config, TransformersConfig)
    assert gpus_needed(replace(cpu, runtime_config=replace(cpu.runtime_config, gpus=0))) == 0


def test_credential_key_is_provider_and_existing_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert credential_key(openai("o")) == CredentialKey("openai", Secret(KEY_1).fingerprint())
    assert credential_key(anthropic("a")) == CredentialKey("anthropic", Secret(KEY_2).fingerprint())
    azure = Deployment(
        name="az",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            variant="azure",
            resource="r",
            deployment="d",
            api_version="2024-10-21",
            azure_ad_token=_key("entra-token"),
        ),
    )
    assert credential_key(azure) == CredentialKey("azure", Secret("entra-token").fingerprint())
    vertex = Deployment(
        name="vx",
        model="gemini-2.0-flash",
        runtime=RuntimeKind.GEMINI,
        runtime_config=GeminiConfig(
            variant="vertex", project="p", region="us-central1", credentials=_key("{sa}")
        ),
    )
    assert credential_key(vertex) == CredentialKey("gemini", Secret("{sa}").fingerprint())
    monkeypatch.delenv("PLACEMENT_TEST_KEY", raising=False)
    unset = Deployment(
        name="u",
        model="gpt-4o",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(api_key=SecretRef.from_env("PLACEMENT_TEST_KEY")),
    )
    assert credential_key(unset) is None
    no_ref = Deployment(
        name="n", model="gpt-4o", runtime=RuntimeKind.OPENAI, runtime_config=OpenAIConfig()
    )
    assert credential_key(no_ref) is None
    assert credential_key(vllm("v")) is None


# --------------------------------------------------------------------------- remote


def three_nodes() -> NodeInventory:
    return NodeInventory(
        [
            Node("edge-a", egress=True),
            Node("edge-b", egress=True),
            Node("gpu-c", egress=False, gpus=("0", "1")),
        ]
    )


def test_remote_replicas_co_locate_by_provider_and_key() -> None:
    placement = Placement(three_nodes())
    assert placement.place(openai("gpt"), 0).node == "edge-a"  # tie: fewest, then name
    assert placement.place(anthropic("claude"), 0).node == "edge-b"  # fewest replicas
    # Same provider and key as "gpt": joins it although edge-a now holds more replicas.
    assert placement.place(openai("gpt-mini"), 0).node == "edge-a"
    assert placement.place(openai("gpt", replicas=2), 1).node == "edge-a"
    # A new key has no partner: fewest replicas wins.
    assert placement.place(openai("other-key", KEY_2), 0).node == "edge-b"
    # The same key value under another provider is another limiter: no preference.
    litellm = Deployment(
        name="proxy",
        model="litellm/gpt-4o",
        runtime=RuntimeKind.LITELLM,
        runtime_config=LiteLLMConfig(api_key=_key(KEY_1)),
    )
    assert placement.place(litellm, 0).node == "edge-b"
    assert all(a.node != "gpu-c" and a.gpus == () for a in placement.inventory.assignments())


def test_remote_placement_uses_the_injected_key() -> None:
    keys = {"x": CredentialKey("p", "k1"), "y": CredentialKey("p", "k1")}
    placement = Placement(three_nodes(), key_of=lambda d: keys.get(d.name))
    assert placement.place(openai("x"), 0).node == "edge-a"
    assert placement.place(anthropic("filler-1"), 0).node == "edge-b"
    assert placement.place(anthropic("filler-2"), 0).node == "edge-a"
    # edge-a now holds two replicas and edge-b one, but edge-a serves the key.
    assert placement.place(openai("y"), 0).node == "edge-a"


def test_remote_without_egress_fails() -> None:
    placement = Placement(NodeInventory([Node("gpu-c", egress=False), Node("gpu-d", False)]))
    with pytest.raises(PlacementError) as exc:
        placement.place(openai("gpt"), 0)
    assert reasons(exc) == [
        "deployment 'gpt' replica 0 calls a remote provider; "
        "none of nodes 'gpu-c', 'gpu-d' has egress"
    ]
    with pytest.raises(PlacementError) as exc:
        Placement(NodeInventory([])).place(openai("gpt"), 0)
    assert reasons(exc) == [
        "deployment 'gpt' replica 0 calls a remote provider; there are no nodes"
    ]


# --------------------------------------------------------------------------- local


def gpu_nodes() -> NodeInventory:
    return NodeInventory(
        [
            Node("big", egress=False, gpus=("0", "1", "2", "3")),
            Node("small", egress=False, gpus=("0", "1")),
            Node("edge", egress=True),
        ]
    )


def test_local_gpu_placement_best_fit_and_release() -> None:
    placement = Placement(gpu_nodes())
    first = placement.place(vllm("llama", tp=2, replicas=2), 0)
    assert first == Assignment("llama", 0, "small", ("0", "1"))  # fits exactly
    second = placement.place(vllm("llama", tp=2, replicas=2), 1)
    assert second == Assignment("llama", 1, "big", ("0", "1"))
    assert placement.place(transformers("tiny", "cuda"), 0) == Assignment("tiny", 0, "big", ("2",))
    assert placement.inventory.free_gpus("big") == ("3",)
    assert placement.inventory.free_gpus("small") == ()
    placement.release(first)
    assert placement.inventory.free_gpus("small") == ("0", "1")
    assert placement.place(embedder("emb", "cuda"), 0) == Assignment("emb", 0, "big", ("3",))
    assert placement.place(embedder("emb2", "cuda"), 0) == Assignment("emb2", 0, "small", ("0",))


def test_cpu_runners_need_no_gpu() -> None:
    placement = Placement(gpu_nodes())
    # No GPU needed: the node with the fewest free GPUs, keeping GPU nodes' room.
    assert placement.place(transformers("cpu-lm"), 0) == Assignment("cpu-lm", 0, "edge")
    assert placement.place(embedder("cpu-emb"), 0) == Assignment("cpu-emb", 0, "edge")
    single = Placement(NodeInventory.local(name="box", detect_gpus=lambda: 0, environ={}))
    assert single.place(embedder("cpu-emb"), 0) == Assignment("cpu-emb", 0, "box")


def test_tensor_parallel_needs_one_node_with_enough_gpus() -> None:
    placement = Placement(gpu_nodes())
    assert placement.place(vllm("wide", tp=4), 0) == Assignment(
        "wide", 0, "big", ("0", "1", "2", "3")
    )
    with pytest.raises(PlacementError) as exc:
        placement.place(vllm("wider", tp=3), 0)  # 2 free on "small": never split
    assert reasons(exc) == [
        "deployment 'wider' replica 0 needs 3 free GPUs; node 'big' has 0 free of 4, "
        "node 'small' has 2 free of 2, node 'edge' has 0 free of 0"
    ]


def test_gpu_failure_messages() -> None:
    one = Placement(NodeInventory([Node("local", gpus=("0",))]))
    with pytest.raises(PlacementError) as exc:
        one.place(vllm("llama", tp=2), 0)
    assert reasons(exc) == [
        "deployment 'llama' replica 0 needs 2 free GPUs; node 'local' has 1 free of 1"
    ]
    assert isinstance(exc.value, PlacementFailed)
    assert (exc.value.http_status, exc.value.openai_code) == (409, "placement_failed")
    assert str(exc.value) == reasons(exc)[0]
    one.place(transformers("a", "cuda"), 0)
    with pytest.raises(PlacementError) as exc:
        one.place(transformers("b", "cuda"), 0)
    assert reasons(exc) == [
        "deployment 'b' replica 0 needs 1 free GPU; node 'local' has 0 free of 1"
    ]
    with pytest.raises(PlacementError) as exc:
        Placement(NodeInventory([])).place(embedder("cpu"), 0)
    assert reasons(exc) == ["deployment 'cpu' replica 0 needs a node; there are no nodes"]


def test_placing_a_placed_replica_fails_and_release_is_idempotent() -> None:
    placement = Placement(gpu_nodes())
    placed = placement.place(transformers("t", "cuda"), 0)
    with pytest.raises(PlacementError) as exc:
        placement.place(transformers("t", "cuda"), 0)
    assert reasons(exc) == [
        "deployment 't' replica 0 (generation 0) is already placed on node 'small'"
    ]
    placement.release(Assignment("t", 0, "big", ("0",)))  # stale: not what is placed
    assert placement.inventory.assignments() == (placed,)
    placement.release(placed)
    placement.release(placed)
    assert placement.inventory.assignments() == ()
    assert placement.inventory.free_gpus("small") == ("0", "1")


# --------------------------------------------------------------------------- plan


def test_plan_commits_nothing_and_predicts_place() -> None:
    placement = Placement(gpu_nodes())
    before = placement.snapshot()
    config = [vllm("llama", tp=2, replicas=2), openai("gpt", replicas=2), embedder("e", "cuda")]
    planned = placement.plan(config)
    assert placement.snapshot() == before
    assert placement.inventory.assignments() == ()
    placed = [
        placement.place(d, a.replica) for a in planned for d in config if d.name == a.deployment
    ]
    assert placed == planned
    assert [a.deployment for a in planned] == ["llama", "llama", "gpt", "gpt", "e"]


def test_plan_lists_every_replica_that_does_not_fit() -> None:
    placement = Placement(NodeInventory([Node("local", egress=False, gpus=("0",))]))
    with pytest.raises(PlacementError) as exc:
        placement.plan([vllm("llama", tp=2, replicas=2), transformers("t", "cuda"), openai("g")])
    assert reasons(exc) == [
        "deployment 'llama' replica 0 needs 2 free GPUs; node 'local' has 1 free of 1",
        "deployment 'llama' replica 1 needs 2 free GPUs; node 'local' has 1 free of 1",
        "deployment 'g' replica 0 calls a remote provider; none of nodes 'local' has egress",
    ]
    assert str(exc.value) == "\n".join(reasons(exc))
    assert placement.inventory.assignments() == ()


def test_plan_against_current_occupancy_and_replacements() -> None:
    placement = Placement(NodeInventory([Node("local", gpus=("0", "1"))]))
    old = placement.place(vllm("llama", tp=2), 0)
    with pytest.raises(PlacementError) as exc:
        placement.plan([vllm("llama-v2", tp=2)])
    assert reasons(exc) == [
        "deployment 'llama-v2' replica 0 needs 2 free GPUs; node 'local' has 0 free of 2"
    ]
    assert placement.plan([vllm("llama-v2", tp=2)], replacing=[old]) == [
        Assignment("llama-v2", 0, "local", ("0", "1"))
    ]
    assert placement.inventory.assignments() == (old,)
    with pytest.raises(PlacementError) as exc:
        placement.plan([embedder("dup"), embedder("dup")])
    assert reasons(exc) == [
        "deployment 'dup' replica 0 (generation 0) is already placed on node 'local'"
    ]


# --------------------------------------------------------------------------- snapshot


def test_snapshot_shows_nodes_gpus_and_holders() -> None:
    placement = Placement(gpu_nodes())
    llama = placement.place(vllm("llama", tp=2), 0)
    tiny = placement.place(transformers("tiny", "cuda"), 0)
    gpt = placement.place(openai("gpt"), 0)
    big, small, edge = placement.snapshot()
    assert small.gpus == (GpuSlot("0", llama), GpuSlot("1", llama))
    assert small.free_gpus == 0
    assert big.gpus[0] == GpuSlot("0", tiny)
    assert [slot.holder for slot in big.gpus[1:]] == [None, None, None]
    assert big.free_gpus == 3
    assert (edge.name, edge.egress, edge.gpus, edge.replicas) == ("edge", True, (), (gpt,))
    assert (big.egress, big.replicas) == (False, (tiny,))
    text = repr(placement.snapshot()) + repr(placement.inventory.assignments())
    assert KEY_1 not in text


def test_a_hot_swap_places_the_next_generation_beside_the_old() -> None:
    placement = Placement(NodeInventory([Node("local", gpus=("0", "1", "2"))]))
    old = placement.place(vllm("llama"), 0, generation=1)
    old_gpt = placement.place(openai("gpt"), 0, generation=1)
    new = [vllm("llama", tp=2), openai("gpt")]
    planned = placement.plan(new, generations={"llama": 2, "gpt": 2})
    assert planned == [
        Assignment("llama", 0, "local", ("1", "2"), generation=2),
        Assignment("gpt", 0, "local", (), generation=2),
    ]
    assert placement.place(new[0], 0, generation=2) == planned[0]
    assert placement.place(new[1], 0, generation=2) == planned[1]
    assert placement.inventory.free_gpus("local") == ()
    placement.release(old)
    placement.release(old_gpt)
    assert placement.inventory.free_gpus("local") == ("0",)
    assert placement.inventory.assignments() == tuple(planned[::-1])
