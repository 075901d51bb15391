"""What some engines can do and others cannot, named as small protocols.

Every replica's engine has the shared surface (submit, load, health). A remote replica
also has a circuit breaker, a rate limiter and a session to rebuild; a local one has none
of them. The topology asks for a capability with ``isinstance(engine, Capability)``
instead of probing attributes, so what it relies on has a name and a type.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from rakka_inference.core.errors import CircuitOpen
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.local.engine_metrics import EngineLoad
from rakka_inference.remote.breaker import CircuitBreaker
from rakka_inference.remote.ratelimit import PermitSource

__all__ = ["HasCircuit", "HasContext", "HasLimiter", "RebuildsSession"]


@runtime_checkable
class HasCircuit(Protocol):
    """A replica behind a circuit breaker (routing skips it while the circuit is open)."""

    @property
    def breaker(self) -> CircuitBreaker: ...

    @property
    def open_for_s(self) -> float | None:
        """Seconds until the open circuit lets a probe through (None: closed)."""
        ...

    def circuit_refusal(self) -> CircuitOpen | None:
        """The error a request gets while the circuit refuses it, naming the deployment
        and provider (never the endpoint); None when it would be admitted."""
        ...


@runtime_checkable
class HasLimiter(Protocol):
    """A replica that takes a rate-limit permit per request."""

    @property
    def limiter(self) -> PermitSource: ...


@runtime_checkable
class RebuildsSession(Protocol):
    """A replica whose session (HTTP client and credential) can be rebuilt: rotation."""

    async def rebuild_session(self, cause: SessionRebuildCause) -> int:
        """Rebuild it; running requests finish on the old one. Returns the generation."""
        ...


@runtime_checkable
class HasContext(Protocol):
    """A local replica: a model context that can be rebuilt, maybe batching requests."""

    @property
    def context_restarts(self) -> int: ...

    @property
    def batch_size(self) -> int | None: ...

    @property
    def engine_load(self) -> EngineLoad | None: ...
