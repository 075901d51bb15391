"""RemoteSession: the HTTP client and credential of one remote replica, rebuilt in place.

The remote analogue of a local ContextActor (DESIGN §2): RemoteEngineCore (stable) →
RemoteSession (rebuilt in place) → workers. It is a plain object, not an actor: the
engine's runner owns it, the workers read its current snapshot inline, and the engine's
``rebuild_session`` (admin API, ``rakka rotate-credentials``) calls :meth:`RemoteSession.rebuild`
directly. A rebuild re-reads the credential and opens a new pooled HTTP client, after
sustained 401s, a configuration change, or an operator's request. Requests in flight
finish on the old client; new ones use the new one. Nothing is dropped.

Snapshots
=========

A :class:`SessionSnapshot` pairs one transport (its own connection pool) with the
credential provider and a ``generation`` (1 for the first, +1 per rebuild). The session's
``current`` property reads one attribute: a rebuild swaps it in one assignment on the
event loop, so readers never lock and never see half a session. A snapshot is its own
lease context manager (a counter: no allocation, no await).

The hot path, with no await and no actor hop::

    snapshot = session.current
    with snapshot.lease():                       # counts a request in flight
        secret = await snapshot.credential()     # cached by the provider
        response = await snapshot.transport.send(...)
        ...
    # on a 401:
    await session.rebuild(SessionRebuildCause.UNAUTHORIZED, seen_generation=snapshot.generation)

Lifecycle of a snapshot::

    LIVE ──rebuild swaps it out──► RETIRED ──last lease ends (or none)──► CLOSED
    LIVE ──session.aclose()─────────────────────────────────────────────► CLOSED

A retired snapshot still serves the leases it has; its transport is closed exactly once,
when the last of them ends, or at the rebuild itself when it has none. Leasing a closed
snapshot is a bug (a stale reference held across a rebuild) and raises InternalError.

Rebuilds
========

``rebuild(cause, seen_generation=g)`` coalesces:

- a caller that saw generation ``g`` when its request failed does nothing when the current
  generation is already past ``g`` (someone rebuilt since): 50 concurrent 401s cause one
  rebuild, not 50;
- concurrent calls share the rebuild in flight (it runs in its own task, so a caller that
  is cancelled does not cancel it for the others).

A rebuild refreshes the credential first, then builds the transport, then swaps. If either
step fails (a :class:`SecretError`, say: the key file is missing mid-rotation), the old
snapshot goes on serving, the error is raised to every caller, and the next rebuild tries
again. Rebuilds are logged at INFO with the cause, the generations and the credential's
*source*, never its value.

The snapshot does not pin the credential's value: it asks the provider each time, so a
provider whose credential expires on its own (a Vertex OAuth token) renews it without a
session rebuild. Requests in flight keep the value they already read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol, runtime_checkable

from rakka_inference.actors.single_flight import SingleFlight
from rakka_inference.core.errors import InternalError, RakkaError
from rakka_inference.core.runner import SessionRebuildCause
from rakka_inference.core.secrets import Secret
from rakka_inference.remote.credentials import CredentialProvider
from rakka_inference.wire.http import HttpTransport

__all__ = [
    "RemoteSession",
    "SessionSnapshot",
]

log = logging.getLogger("rakka_inference.remote.session")


class _State(enum.Enum):
    LIVE = "live"
    RETIRED = "retired"
    CLOSED = "closed"


# Module constants: an enum member looked up through its class costs more on the hot path.
_LIVE: Final = _State.LIVE
_RETIRED: Final = _State.RETIRED
_CLOSED: Final = _State.CLOSED


@runtime_checkable
class _Closeable(Protocol):
    async def aclose(self) -> None: ...


class SessionSnapshot:
    """One transport, the credential provider and a generation. Counts its leases.

    ``transport``, ``generation`` and ``created_at`` (on the session's clock) never change.
    """

    __slots__ = (
        "_credentials",
        "_leases",
        "_on_drained",
        "_state",
        "created_at",
        "generation",
        "transport",
    )

    def __init__(
        self,
        transport: HttpTransport,
        credentials: CredentialProvider,
        generation: int,
        *,
        created_at: float = 0.0,
        on_drained: Callable[[SessionSnapshot], None] | None = None,
    ) -> None:
        self.transport: Final = transport
        self.generation: Final = generation
        self.created_at: Final = created_at
        self._credentials = credentials
        self._leases = 0
        self._state = _LIVE
        self._on_drained = on_drained

    @property
    def credentials(self) -> CredentialProvider:
        return self._credentials

    async def credential(self) -> Secret:
        """The credential to send with a request on this snapshot."""
        return await self._credentials.credential()

    def lease(self) -> SessionSnapshot:
        """Mark a request in flight on this snapshot for the ``with`` block's duration.

        The snapshot is its own lease context manager (a counter, no allocation):
        ``with snapshot.lease():`` enters it, and the ``with`` block's end releases it.
        """
        return self

    def __enter__(self) -> SessionSnapshot:
        if self._state is _CLOSED:
            raise InternalError(
                f"session generation {self.generation} is closed; lease session.current instead"
            )
        self._leases += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._leases -= 1
        if self._leases == 0 and self._state is _RETIRED:
            self._state = _CLOSED
            if self._on_drained is not None:
                self._on_drained(self)

    @property
    def in_flight(self) -> int:
        """Leases held now."""
        return self._leases

    @property
    def retired(self) -> bool:
        """Swapped out by a rebuild (still serving its leases until it closes)."""
        return self._state is not _LIVE

    @property
    def closed(self) -> bool:
        """Its transport is closed (or closing)."""
        return self._state is _CLOSED

    def _retire(self) -> bool:
        """Swap-out: True when it has no leases and must be closed now."""
        if self._state is not _LIVE:
            return False
        if self._leases:
            self._state = _RETIRED
            return False
        self._state = _CLOSED
        return True

    def _force_close(self) -> bool:
        """Shutdown: True when its transport still has to be closed."""
        if self._state is _CLOSED:
            return False
        self._state = _CLOSED
        return True

    def __repr__(self) -> str:
        return (
            f"SessionSnapshot(generation={self.generation}, {self._state.value}, "
            f"in_flight={self._leases})"
        )


class RemoteSession:
    """Owns a remote replica's transports and credential provider. See the module docstring.

    ``transport_factory`` opens a new pooled HTTP client each time it is called.
    ``clock`` (monotonic seconds) stamps snapshots and times rebuilds. The session owns
    ``credentials``: :meth:`aclose` closes it too when it has an ``aclose``.
    """

    def __init__(
        self,
        transport_factory: Callable[[], HttpTransport],
        credentials: CredentialProvider,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport_factory = transport_factory
        self._credentials = credentials
        self._clock = clock
        self._current: SessionSnapshot | None = None
        self._rebuilds: SingleFlight[SessionSnapshot] = SingleFlight("remote-session-rebuild")
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def credentials(self) -> CredentialProvider:
        return self._credentials

    @property
    def current(self) -> SessionSnapshot:
        """The live snapshot. Raises InternalError before :meth:`start`."""
        snapshot = self._current
        if snapshot is None:
            raise InternalError("the remote session is not started")
        return snapshot

    @property
    def generation(self) -> int:
        """The live snapshot's generation; 0 before :meth:`start`."""
        snapshot = self._current
        return 0 if snapshot is None else snapshot.generation

    @property
    def rebuilding(self) -> bool:
        return self._rebuilds.running

    def lease(self) -> SessionSnapshot:
        """A lease on the current snapshot: ``with session.lease() as snapshot:``."""
        return self.current

    async def start(self) -> SessionSnapshot:
        """Read the credential and open the first transport (generation 1). Idempotent."""
        self._check_open()
        if self._current is not None:
            return self._current
        return await self._rebuilds.run(self._start)

    async def _start(self) -> SessionSnapshot:
        await self._credentials.refresh()
        snapshot = self._new_snapshot(1)
        self._current = snapshot
        log.info("remote session started: generation 1, credential %s", self._describe())
        return snapshot

    async def rebuild(
        self, cause: SessionRebuildCause, *, seen_generation: int | None = None
    ) -> SessionSnapshot:
        """Refresh the credential, open a new transport and swap them in.

        With ``seen_generation`` (the generation a failed request ran on), nothing is done
        when the session was rebuilt since; the current snapshot is returned. Concurrent
        calls share one rebuild. On failure the old snapshot stays current and the error is
        raised.
        """
        self._check_open()
        current = self.current
        if seen_generation is not None and current.generation > seen_generation:
            return current
        return await self._rebuilds.run(lambda: self._rebuild(cause))

    async def _rebuild(self, cause: SessionRebuildCause) -> SessionSnapshot:
        old = self.current
        generation = old.generation + 1
        started = self._clock()
        log.info(
            "rebuilding remote session (cause %s): generation %d -> %d, credential %s",
            cause.value,
            old.generation,
            generation,
            self._describe(),
        )
        try:
            await self._credentials.refresh()
            snapshot = self._new_snapshot(generation)
        except Exception as error:
            log.warning(
                "remote session rebuild (cause %s) failed; generation %d goes on serving: %s",
                cause.value,
                old.generation,
                error if isinstance(error, RakkaError) else type(error).__name__,
            )
            raise
        self._current = snapshot
        close_now = old._retire()
        log.info(
            "remote session rebuilt (cause %s): generation %d live; generation %d %s (%.0f ms)",
            cause.value,
            generation,
            old.generation,
            "closing" if close_now else f"draining {old.in_flight} request(s)",
            (self._clock() - started) * 1000,
        )
        if close_now:
            await self._close_transport(old)
        return snapshot

    def _new_snapshot(self, generation: int) -> SessionSnapshot:
        return SessionSnapshot(
            self._transport_factory(),
            self._credentials,
            generation,
            created_at=self._clock(),
            on_drained=self._on_drained,
        )

    def _on_drained(self, snapshot: SessionSnapshot) -> None:
        # Called from a lease's __exit__, which cannot await: close in a tracked task.
        task = asyncio.get_running_loop().create_task(
            self._close_transport(snapshot), name=f"close-session-{snapshot.generation}"
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_transport(self, snapshot: SessionSnapshot) -> None:
        try:
            await snapshot.transport.aclose()
        except Exception as error:
            log.warning(
                "closing the transport of session generation %d failed: %s",
                snapshot.generation,
                type(error).__name__,
            )
        else:
            log.debug("session generation %d closed", snapshot.generation)

    async def wait_retired_closed(self) -> None:
        """Wait until transports whose last lease has ended are closed."""
        while self._closing:
            await asyncio.gather(*self._closing)

    async def aclose(self) -> None:
        """Stop rebuilding; close the current transport now and the credential provider.

        A retired snapshot still in use closes when its last lease ends.
        """
        if self._closed:
            return
        self._closed = True
        await self._rebuilds.aclose()
        current = self._current
        if current is not None and current._force_close():
            await self._close_transport(current)
        if isinstance(self._credentials, _Closeable):
            await self._credentials.aclose()
        await self.wait_retired_closed()
        log.info("remote session closed at generation %d", self.generation)

    def _check_open(self) -> None:
        if self._closed:
            raise InternalError("the remote session is closed")

    def _describe(self) -> str:
        return self._credentials.describe()

    def __repr__(self) -> str:
        return f"RemoteSession(generation={self.generation}, credential={self._describe()})"
