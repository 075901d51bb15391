"""The contract between the topology and whatever runs a model.

A :class:`ModelRunner` is the one thing that differs between a vLLM engine on a GPU, a
transformers model on a CPU and a call to a provider's API. Everything around it (queues,
rate limits, retries, circuit breaking, supervision, metrics) is shared and is written
against this protocol only.

Who calls what, and when
========================

``load_weights()``
    Called once by the runner's owner, before the first ``execute``: the ContextActor for
    a local runner (load weights, build the GPU context), the RemoteSession for a remote
    one (resolve the credential, open the HTTP client; a cheap step, but it may fail).
    Until it returns, the owner does not report the replica ready.

``execute(request)``
    Called by a worker for each admitted request, after rate-limit and circuit checks.
    Several calls may run at once (up to the deployment's ``max_concurrent``; a local
    engine batches them). It is an async generator method: it yields
    :class:`~rakka_inference.core.stream.TokenChunk` values, ``usage`` as increments, and
    a ``finish_reason`` on the last chunk. It yields nothing after raising.

    **Cancellation aborts the work.** When the consumer stops early (the client went
    away, a deadline fired) it cancels the task iterating the generator or calls
    ``aclose()`` on it. The runner must then abort the underlying work before the
    generator finishes closing: close the provider's HTTP response, or abort the request
    in the engine so it stops using batch slots and KV cache. It must let
    ``CancelledError`` and ``GeneratorExit`` propagate, never swallow them, and must not
    ``yield`` again from a ``finally`` block.

``rebuild_session(cause)``
    Called by the owner to replace the runner's session while it keeps serving:
    :attr:`SessionRebuildCause.UNAUTHORIZED` after sustained 401s (re-read the credential),
    :attr:`~SessionRebuildCause.CONFIG_CHANGED`, :attr:`~SessionRebuildCause.OPERATOR`
    (credential rotation from the admin API or CLI), and
    :attr:`~SessionRebuildCause.CONTEXT_POISONED` for a local context. Calls of
    ``execute`` in flight finish on the old session; later ones use the new one. Nothing
    is dropped.

The properties (``runtime_kind``, ``transport_kind``, ``rate_limits``) are fixed for the
runner's lifetime and read without awaiting, so they must be cheap. ``estimate_cost`` is
pure.

Errors
======

A runner raises only the typed errors of :mod:`rakka_inference.core.errors`; the owner
decides by type, never by message (DESIGN §2):

- local runners: :class:`~rakka_inference.core.errors.ContextPoisoned` (the context is
  rebuilt, at most 3 times in 60 s), :class:`~rakka_inference.core.errors.OutOfMemory`
  (resume; the request may be retried elsewhere),
  :class:`~rakka_inference.core.errors.Unrecoverable` (the replica stops);
- remote runners: the :class:`~rakka_inference.core.errors.UpstreamError` family,
  translated from the provider's answer once, in the adapter (``RateLimited`` with its
  ``retry_after``, ``ServerError``, ``Timeout`` with its phase, ``Unauthorized`` ...);
- either: :class:`~rakka_inference.core.errors.BadRequest` and its subclasses for a
  request the model cannot serve (context too long, content filtered).

Anything else escaping a runner is a bug, and is reported as ``InternalError``.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rakka_inference.core.messages import ChatRequest, EmbeddingRequest, EmbeddingResult
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.runtimes import RuntimeKind
from rakka_inference.core.stream import TokenChunk
from rakka_inference.core.usage import Usage

__all__ = [
    "BatchingRunner",
    "EmbeddingRunner",
    "ModelRunner",
    "SessionRebuildCause",
    "SupervisedRunner",
    "Transport",
    "TransportKind",
]


class TransportKind(enum.StrEnum):
    """Where a runner's work happens. Placement puts replicas on matching nodes."""

    LOCAL_GPU = "local_gpu"
    LOCAL_CPU = "local_cpu"
    REMOTE_NETWORK = "remote_network"


@dataclass(frozen=True, slots=True, kw_only=True)
class Transport:
    """How a runner reaches its model. ``provider`` is set exactly for remote runners.

    Placement co-locates replicas that share a provider (and so a key and its rate limit).
    """

    kind: TransportKind
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.kind is TransportKind.REMOTE_NETWORK:
            if not self.provider:
                raise ValueError("a remote transport names its provider")
        elif self.provider is not None:
            raise ValueError(f"a {self.kind.value} transport has no provider")

    @classmethod
    def local_gpu(cls) -> Transport:
        return cls(kind=TransportKind.LOCAL_GPU)

    @classmethod
    def local_cpu(cls) -> Transport:
        return cls(kind=TransportKind.LOCAL_CPU)

    @classmethod
    def remote(cls, provider: str) -> Transport:
        return cls(kind=TransportKind.REMOTE_NETWORK, provider=provider)

    @property
    def is_remote(self) -> bool:
        return self.kind is TransportKind.REMOTE_NETWORK


class SessionRebuildCause(enum.StrEnum):
    """Why a runner's session is being rebuilt."""

    UNAUTHORIZED = "unauthorized"
    """Sustained 401s from the provider: the credential was rotated or revoked."""
    CONFIG_CHANGED = "config_changed"
    """The deployment's runtime configuration changed."""
    OPERATOR = "operator"
    """An operator asked for it (credential rotation from the admin API or CLI)."""
    CONTEXT_POISONED = "context_poisoned"
    """A local runner's GPU context became unusable."""


@runtime_checkable
class ModelRunner(Protocol):
    """Runs chat requests for one replica. See the module docstring for the contract.

    ``isinstance`` checks only that the members exist, not their signatures; the type
    checker checks the rest.
    """

    def execute(self, request: ChatRequest) -> AsyncIterator[TokenChunk]:
        """Stream the answer to ``request``. Cancelling the iteration aborts the work."""
        ...

    async def load_weights(self) -> None:
        """Make the runner ready: load weights locally, or build the remote session."""
        ...

    async def rebuild_session(self, cause: SessionRebuildCause) -> None:
        """Replace the session; in-flight requests finish on the old one."""
        ...

    @property
    def runtime_kind(self) -> RuntimeKind:
        """The runtime this runner implements."""
        ...

    @property
    def transport_kind(self) -> Transport:
        """Where the work happens, for placement and metrics."""
        ...

    @property
    def rate_limits(self) -> RateLimits:
        """The limits the rate limiter enforces in front of this runner."""
        ...

    def estimate_cost(self, usage: Usage) -> float | None:
        """The USD cost of ``usage`` on this runner's model.

        ``None`` when the price is unknown (a remote model with no price-table entry and
        no ``[deployment.pricing]`` override): callers then report the cost as unknown,
        never as zero. A local engine's tokens cost
        :data:`~rakka_inference.core.pricing.LOCAL_PRICE` (nothing) unless its deployment
        sets ``pricing``. See :mod:`rakka_inference.core.pricing`.
        """
        ...


@runtime_checkable
class BatchingRunner(Protocol):
    """A local runner that batches requests, and says how many its batch holds now."""

    @property
    def batch_size(self) -> int:
        """Requests in the running decode batch (0 when idle)."""
        ...


@runtime_checkable
class SupervisedRunner(Protocol):
    """A local runner whose context can be lost between requests (an engine server
    process): its ContextActor watches it, and stops it when the context goes away."""

    async def watch(self) -> None:
        """Run while the context is loaded; raise an
        :class:`~rakka_inference.core.errors.EngineError` (ContextPoisoned) when it is lost.
        Returns only once the runner is closed. Cancelled when the context stops."""
        ...

    async def close(self) -> None:
        """Release the context (stop the process). Requests have ended by now."""
        ...


@runtime_checkable
class EmbeddingRunner(Protocol):
    """A runner that also serves ``/v1/embeddings``. Same lifecycle and errors as above."""

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One vector per input, in input order, with the usage they cost."""
        ...
