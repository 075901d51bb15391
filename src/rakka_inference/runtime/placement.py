"""Placement: which node runs each replica of a deployment, and on which GPUs.

Replicas are placed by transport (DESIGN §7), over any number of nodes:

- a **remote** replica needs a node with egress. It prefers a node that already serves the
  same (provider, key fingerprint), so one rate limiter and session pool serve every
  deployment sharing the key; then the node with the fewest replicas; then the name.
- a **local** replica needs free GPUs on one node: ``tensor_parallel_size`` for vLLM, one
  for transformers and sentence-transformers on a CUDA ``device``, none (CPU) otherwise.
  It takes the fitting node left with the fewest free GPUs (best fit keeps whole nodes for
  wide tensor-parallel replicas), then the fewest replicas, then the name; on that node,
  the first free GPUs in the node's order.

A replica is known by (deployment, generation, index): during a hot swap the new set of a
deployment (the next generation) is placed while the old one still holds its node and
GPUs. A replica that fits nowhere raises :class:`PlacementError` saying why. The policy is
deterministic and does no I/O, so :meth:`Placement.plan` (the rules run on a copy)
predicts what :meth:`Placement.place` does when called in the plan's order. Two things
touch the outside, both injectable: GPU detection (:func:`detect_gpu_count`) and the
co-location key (:func:`credential_key`), which reads the secret for its fingerprint.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import PlacementFailed, SecretError
from rakka_inference.core.runtimes import (
    LocalRuntimeConfig,
    RemoteRuntimeConfig,
)

__all__ = [
    "Assignment",
    "CredentialKey",
    "GpuSlot",
    "Node",
    "NodeInventory",
    "NodeSnapshot",
    "Placement",
    "PlacementError",
    "credential_key",
    "detect_gpu_count",
    "gpu_request",
    "gpus_needed",
    "visible_gpus",
]

PROC_GPUS = Path("/proc/driver/nvidia/gpus")
NVIDIA_SMI_TIMEOUT_S = 2.0


class PlacementError(PlacementFailed):
    """Replicas that no node can take. ``reasons`` has one line per replica, such as
    ``deployment 'llama' replica 0 needs 2 free GPUs; node 'gpu-1' has 1 free of 1``."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("\n".join(self.reasons))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Node:
    """A machine that can host replicas. ``gpus`` are the ids a runner is given
    (``CUDA_VISIBLE_DEVICES`` entries: indices or UUIDs)."""

    name: str
    egress: bool = True
    """Whether the node can reach remote providers."""
    gpus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"node {self.name!r} lists a GPU twice: {self.gpus}")


@dataclass(frozen=True, slots=True)
class Assignment:
    """Replica ``replica`` of a ``deployment``'s set ``generation`` runs on ``node`` with
    ``gpus`` (maybe none)."""

    deployment: str
    replica: int
    node: str
    gpus: tuple[str, ...] = ()
    generation: int = 0

    @property
    def ident(self) -> tuple[str, int, int]:
        return (self.deployment, self.generation, self.replica)


class CredentialKey(NamedTuple):
    """What replicas are co-located by: a provider and an API key's fingerprint."""

    provider: str
    key_fingerprint: str


@dataclass(frozen=True, slots=True)
class GpuSlot:
    id: str
    holder: Assignment | None


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """A node as the admin API shows it: its GPUs, who holds each, and its replicas."""

    name: str
    egress: bool
    gpus: tuple[GpuSlot, ...]
    replicas: tuple[Assignment, ...]

    @property
    def free_gpus(self) -> int:
        return sum(slot.holder is None for slot in self.gpus)


# --------------------------------------------------------------------------- detection


def _nvidia_smi_list() -> str | None:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        return subprocess.check_output(  # noqa: S603 - a fixed argv found on PATH, no shell
            [executable, "-L"], text=True, timeout=NVIDIA_SMI_TIMEOUT_S, stderr=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None


def detect_gpu_count(
    proc_dir: Path = PROC_GPUS, list_gpus: Callable[[], str | None] = _nvidia_smi_list
) -> int:
    """NVIDIA GPUs on this machine, without importing torch: the driver's entries under
    ``/proc/driver/nvidia/gpus``, else the ``GPU n:`` lines of ``nvidia-smi -L``. Any
    failure counts as no GPUs."""
    try:
        count = sum(1 for _ in proc_dir.iterdir())
    except OSError:
        count = 0
    if count:
        return count
    listing = list_gpus()
    if listing is None:
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def visible_gpus(count: int, cuda_visible_devices: str | None) -> tuple[str, ...]:
    """The GPU ids a process may use, given ``count`` GPUs and ``CUDA_VISIBLE_DEVICES``.

    Unset: every index. Set: its entries (indices below ``count``, or ``GPU-``/``MIG-``
    UUIDs), stopping at the first invalid or repeated one as CUDA does; empty hides all.
    """
    if cuda_visible_devices is None:
        return tuple(str(index) for index in range(count))
    chosen: list[str] = []
    for raw in cuda_visible_devices.split(","):
        entry = raw.strip()
        if entry.isdigit():
            entry = str(int(entry))
            valid = int(entry) < count
        else:
            valid = entry.startswith(("GPU-", "MIG-"))
        if not valid or entry in chosen or len(chosen) == count:
            break
        chosen.append(entry)
    return tuple(chosen)


# --------------------------------------------------------------------------- needs


def gpus_needed(deployment: Deployment) -> int:
    """GPUs one replica occupies: the runtime config's ``gpus`` where set, else vLLM's and
    SGLang's tensor-parallel size, one for llama.cpp with ``n_gpu_layers`` above 0, one
    for a CUDA device."""
    return gpu_request(deployment)[0]


def gpu_request(deployment: Deployment) -> tuple[int, str | None]:
    """GPUs one replica occupies, and the ``runtime_config`` field that asks for them
    (``None`` when none are asked for)."""
    config = deployment.runtime_config
    return config.gpu_request() if isinstance(config, LocalRuntimeConfig) else (0, None)


def credential_key(deployment: Deployment) -> CredentialKey | None:
    """The (provider, key fingerprint) of a remote deployment, the one its rate limiter is
    keyed by; ``None`` for a local deployment or a credential that cannot be read now (the
    replica is placed without preference, and building it reports the credential)."""
    config = deployment.runtime_config
    if not isinstance(config, RemoteRuntimeConfig):
        return None
    ref = config.credential
    if ref is None:
        return None
    try:
        fingerprint = ref.resolve().fingerprint()
    except SecretError:
        return None
    return CredentialKey(config.provider_label, fingerprint)


# --------------------------------------------------------------------------- inventory


class NodeInventory:
    """The nodes, and which replica occupies which node and GPUs."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self._nodes: dict[str, Node] = {}
        for node in nodes:
            if node.name in self._nodes:
                raise ValueError(f"node {node.name!r} is listed twice")
            self._nodes[node.name] = node
        self._placed: dict[tuple[str, int, int], tuple[Assignment, CredentialKey | None]] = {}

    @classmethod
    def local(
        cls,
        *,
        name: str | None = None,
        detect_gpus: Callable[[], int] = detect_gpu_count,
        environ: Mapping[str, str] | None = None,
    ) -> NodeInventory:
        """This machine alone: egress-capable, with the GPUs it has and may use."""
        env = os.environ if environ is None else environ
        gpus = visible_gpus(detect_gpus(), env.get("CUDA_VISIBLE_DEVICES"))
        return cls([Node(name or platform.node() or "localhost", egress=True, gpus=gpus)])

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(self._nodes.values())

    def assignments(self, node: str | None = None) -> tuple[Assignment, ...]:
        """What is placed (on ``node``, or anywhere), by deployment, generation, replica."""
        return tuple(
            assignment
            for _, (assignment, _key) in sorted(self._placed.items())
            if node is None or assignment.node == node
        )

    def free_gpus(self, node: str) -> tuple[str, ...]:
        held = {gpu for assignment in self.assignments(node) for gpu in assignment.gpus}
        return tuple(gpu for gpu in self._nodes[node].gpus if gpu not in held)

    def _keys(self, node: str) -> set[CredentialKey | None]:
        return {key for assignment, key in self._placed.values() if assignment.node == node}

    def _copy(self) -> NodeInventory:
        copy = NodeInventory(self._nodes.values())
        copy._placed = dict(self._placed)
        return copy


# --------------------------------------------------------------------------- policy


class Placement:
    """The placement policy over an inventory; the only writer of its occupancy."""

    def __init__(
        self,
        inventory: NodeInventory,
        *,
        key_of: Callable[[Deployment], CredentialKey | None] = credential_key,
    ) -> None:
        self.inventory = inventory
        self._key_of = key_of

    def place(self, deployment: Deployment, replica: int, *, generation: int = 0) -> Assignment:
        """Choose a node (and GPUs) for a replica and mark them occupied."""
        key = self._key_of(deployment)
        assignment = _choose(self.inventory, deployment, replica, generation, key)
        self.inventory._placed[assignment.ident] = (assignment, key)
        return assignment

    def release(self, assignment: Assignment) -> None:
        """Free what ``assignment`` occupied. Releasing twice, or a stale one, does nothing."""
        placed = self.inventory._placed.get(assignment.ident)
        if placed is not None and placed[0] == assignment:
            del self.inventory._placed[assignment.ident]

    def impossible(self, deployment: Deployment) -> tuple[str, str] | None:
        """Why no node could ever take a replica of ``deployment``, whatever else runs, as
        (``runtime_config`` field, reason): more GPUs than any node has. ``None`` when some
        node could (it may be busy now: that is :meth:`plan`'s to say)."""
        need, field = gpu_request(deployment)
        if not need or field is None:
            return None
        nodes = self.inventory.nodes
        largest = max((len(node.gpus) for node in nodes), default=0)
        if need <= largest:
            return None
        have = f"the largest node has {largest}" if largest else "no node has a GPU"
        return (
            f"runtime_config.{field}",
            f"asks for {need} GPU{'s' if need != 1 else ''} per replica; {have} "
            "(set runtime_config.gpus = 0 to run it without one)",
        )

    def plan(
        self,
        deployments: Iterable[Deployment],
        *,
        replacing: Iterable[Assignment] = (),
        generations: Mapping[str, int] | None = None,
    ) -> list[Assignment]:
        """Where every replica of ``deployments`` would go, committing nothing.

        The plan starts from the current occupancy with ``replacing`` released (what will
        be freed before the new replicas are placed); each deployment's set gets its
        ``generations`` entry (0 when absent). It raises one :class:`PlacementError` listing
        every replica that does not fit. Releasing ``replacing`` and then calling
        :meth:`place` for the returned assignments in order gives the same assignments.
        """
        trial = Placement(self.inventory._copy(), key_of=self._key_of)
        for assignment in replacing:
            trial.release(assignment)
        planned: list[Assignment] = []
        reasons: list[str] = []
        for deployment in deployments:
            generation = (generations or {}).get(deployment.name, 0)
            for replica in range(deployment.replicas):
                try:
                    planned.append(trial.place(deployment, replica, generation=generation))
                except PlacementError as exc:
                    reasons.extend(exc.reasons)
        if reasons:
            raise PlacementError(reasons)
        return planned

    def snapshot(self) -> tuple[NodeSnapshot, ...]:
        """Every node, its GPUs and what holds them, and its replicas."""
        nodes: list[NodeSnapshot] = []
        for node in self.inventory.nodes:
            replicas = self.inventory.assignments(node.name)
            holders = {gpu: assignment for assignment in replicas for gpu in assignment.gpus}
            slots = tuple(GpuSlot(gpu, holders.get(gpu)) for gpu in node.gpus)
            nodes.append(NodeSnapshot(node.name, node.egress, slots, replicas))
        return tuple(nodes)


def _choose(
    inventory: NodeInventory,
    deployment: Deployment,
    replica: int,
    generation: int,
    key: CredentialKey | None,
) -> Assignment:
    name = deployment.name
    who = f"deployment {name!r} replica {replica}"
    placed = inventory._placed.get((name, generation, replica))
    if placed is not None:
        where = f"is already placed on node {placed[0].node!r}"
        raise PlacementError([f"{who} (generation {generation}) {where}"])
    nodes = inventory.nodes
    count = {node.name: len(inventory.assignments(node.name)) for node in nodes}
    if deployment.is_remote:
        egress = [node for node in nodes if node.egress]
        if not egress:
            names = ", ".join(repr(node.name) for node in nodes)
            state = f"none of nodes {names} has egress" if nodes else "there are no nodes"
            raise PlacementError([f"{who} calls a remote provider; {state}"])
        apart = {node.name: key is None or key not in inventory._keys(node.name) for node in nodes}
        best = min(egress, key=lambda node: (apart[node.name], count[node.name], node.name))
        return Assignment(name, replica, best.name, (), generation)
    need = gpus_needed(deployment)
    free = {node.name: inventory.free_gpus(node.name) for node in nodes}
    fits = [node for node in nodes if len(free[node.name]) >= need]
    if not fits:
        wants = f"{need} free GPU{'s' if need != 1 else ''}" if need else "a node"
        state = ", ".join(
            f"node {node.name!r} has {len(free[node.name])} free of {len(node.gpus)}"
            for node in nodes
        )
        raise PlacementError([f"{who} needs {wants}; {state or 'there are no nodes'}"])
    best = min(fits, key=lambda node: (len(free[node.name]), count[node.name], node.name))
    return Assignment(name, replica, best.name, free[best.name][:need], generation)
