"""DpCoordinator: which replica serves a request for a model.

The coordinator keeps, for every deployment, its replicas and the aliases it answers to.
It is a plain object, not an actor, shared by the gateway, the deployment manager and the
topology, all on one event loop. Registration changes are rare, synchronous and made by the
deployment manager; each change publishes a new immutable :class:`RoutingTable` with one
assignment, so a routing read always sees one whole version. Routing is the hot path:
:meth:`DpCoordinator.route` reads the current table and asks each candidate replica for
its live load.

The routing rule is the power of two choices: draw two distinct healthy replicas at random
and take the less loaded (ties go to the first drawn). It is nearly as good as scanning all
replicas for the least loaded, without the herd that a pure minimum causes when many
requests read the same stale loads at once, and it costs two reads. A replica whose circuit
is open is not healthy and is skipped; when no replica is healthy the request fails fast
with :class:`CircuitOpen`, so the caller can fall back to another deployment.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rakka_inference.core.errors import CircuitOpen, ModelNotFound
from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.stream import TokenChunk
from rakka_inference.engine.stream import RequestStream
from rakka_inference.runtime.capabilities import HasCircuit

__all__ = [
    "DpCoordinator",
    "Replica",
    "RoutingTable",
]


class Replica(Protocol):
    """What the coordinator needs of a replica (an engine core, remote or local)."""

    @property
    def name(self) -> str: ...

    @property
    def load_score(self) -> float:
        """Queued plus in-flight requests over capacity."""
        ...

    @property
    def healthy(self) -> bool:
        """False while the replica must not get requests (its circuit is open)."""
        ...

    def submit(
        self,
        request: ChatRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[TokenChunk]:
        """Queue the request; its chunks arrive on the returned stream."""
        ...

    def submit_embedding(
        self,
        request: EmbeddingRequest,
        *,
        deadline: float | None = None,
        max_wait_s: float | None = None,
    ) -> RequestStream[EmbeddingResult]:
        """Queue an embeddings request; BadRequest when the replica serves none."""
        ...


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """One immutable version of the routing state."""

    replicas: Mapping[str, tuple[Replica, ...]] = field(default_factory=dict)
    """Deployment name to its replicas."""
    aliases: Mapping[str, str] = field(default_factory=dict)
    """Alias to deployment name."""

    def resolve(self, model: str) -> str:
        """The deployment a model name or alias means; ModelNotFound when none."""
        if model in self.replicas:
            return model
        target = self.aliases.get(model)
        if target is None:
            raise ModelNotFound(f"the model {model!r} does not exist", param="model")
        return target


class DpCoordinator:
    """Deployments, their replicas and aliases; routes by the power of two choices."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not cryptography
        self.table = RoutingTable()

    # ------------------------------------------------------------------ hot path

    def resolve(self, model: str) -> str:
        """The deployment a model name or alias means; ModelNotFound when none."""
        return self.table.resolve(model)

    def route(self, model: str) -> Replica:
        """The replica to send a request for ``model`` (a name or an alias) to."""
        return self.route_deployment(self.table.resolve(model))

    def route_deployment(self, name: str, exclude: Collection[str] = ()) -> Replica:
        """The replica of deployment ``name`` to send a request to, none of ``exclude``
        (replicas that already failed this request)."""
        replicas = self.table.replicas.get(name)
        if replicas is None:
            raise ModelNotFound(f"the model {name!r} does not exist", param="model")
        healthy = [r for r in replicas if r.healthy and r.name not in exclude]
        if not healthy:
            if not replicas:
                raise CircuitOpen(f"deployment {name!r} has no replica serving", retry_after=1.0)
            # The replica whose circuit lets a request through first says why, and when.
            refusals = [
                refusal
                for r in replicas
                if isinstance(r, HasCircuit) and (refusal := r.circuit_refusal()) is not None
            ]
            if refusals:
                raise min(refusals, key=lambda e: e.retry_after or 0.0)
            raise CircuitOpen(
                f"every replica of deployment {name!r} has its circuit open", retry_after=1.0
            )
        if len(healthy) == 1:
            return healthy[0]
        first, second = self._rng.sample(healthy, 2)
        return second if second.load_score < first.load_score else first

    # ------------------------------------------------------------------ changes

    def register(self, deployment: str, replica: Replica) -> None:
        """Add ``replica`` to ``deployment`` (creating the deployment on first use)."""
        table = self.table
        if deployment in table.aliases:
            raise ValueError(f"{deployment!r} is already an alias of {table.aliases[deployment]!r}")
        current = table.replicas.get(deployment, ())
        if any(existing.name == replica.name for existing in current):
            raise ValueError(f"replica {replica.name!r} is already registered for {deployment!r}")
        replicas = dict(table.replicas)
        replicas[deployment] = (*current, replica)
        self.table = RoutingTable(replicas, table.aliases)

    def deregister(self, deployment: str, replica_name: str) -> bool:
        """Remove a replica; False when it was not registered. The deployment stays known
        (requests for it fail fast) until :meth:`remove`."""
        table = self.table
        current = table.replicas.get(deployment, ())
        kept = tuple(replica for replica in current if replica.name != replica_name)
        if len(kept) == len(current):
            return False
        replicas = dict(table.replicas)
        replicas[deployment] = kept
        self.table = RoutingTable(replicas, table.aliases)
        return True

    def remove(self, deployment: str) -> None:
        """Forget a deployment and its aliases."""
        table = self.table
        replicas = {k: v for k, v in table.replicas.items() if k != deployment}
        aliases = {k: v for k, v in table.aliases.items() if v != deployment}
        self.table = RoutingTable(replicas, aliases)

    def set_aliases(self, deployment: str, aliases: Iterable[str]) -> None:
        """Make ``aliases`` (and only those) answer for ``deployment``."""
        table = self.table
        wanted = list(aliases)
        for alias in wanted:
            if alias in table.replicas:
                raise ValueError(f"alias {alias!r} is already a deployment")
            owner = table.aliases.get(alias)
            if owner is not None and owner != deployment:
                raise ValueError(f"alias {alias!r} already answers for {owner!r}")
        kept = {k: v for k, v in table.aliases.items() if v != deployment}
        kept.update(dict.fromkeys(wanted, deployment))
        self.table = RoutingTable(table.replicas, kept)

    def models(self) -> list[tuple[str, tuple[str, ...]]]:
        """Every deployment with its aliases, sorted by name (for ``GET /v1/models``)."""
        table = self.table
        return [
            (name, tuple(sorted(a for a, target in table.aliases.items() if target == name)))
            for name in sorted(table.replicas)
        ]
