"""Who holds each shared rate limiter and circuit breaker, with which settings.

Deployments that send one provider key for one model share a rate limiter; deployments that
call one model at one endpoint share a circuit breaker. A shared object has one set of
settings, so each deployment *claims* it with its own, and a claim with other settings
than another holder's is refused (:class:`~rakka_inference.remote.factory.RemoteServices`,
:class:`~rakka_inference.remote.breaker_registry.BreakerRegistry`).

:class:`SharedClaims` keeps the claims of the running config and, while a config is being
applied, those of the config being built, apart. An apply is all or nothing
(:meth:`~rakka_inference.runtime.manager.DeploymentManager.apply`): its new replicas are all
built before anything running is touched. So:

- :meth:`SharedClaims.stage` begins an apply: the deployments it keeps as they are keep
  their claims, every other one claims again as its replicas are built. A limiter or a
  breaker that running deployments use keeps their settings meanwhile;
- :meth:`SharedClaims.commit` makes the staged claims the running ones, as the apply swaps
  its replicas in (the caller then gives each object its holders' settings, in the same
  step, without awaiting);
- :meth:`SharedClaims.abort` drops them: a refused apply leaves every claim, and every
  setting, as it was.

Outside an apply (a scale-up, a replica placed again) a claim is made on the running claims
directly: it is the running deployment's own.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

__all__ = ["SharedClaims"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SharedClaims(Generic[K, V]):
    """The claims on shared objects keyed by ``K``, each holder's settings a ``V``."""

    __slots__ = ("_running", "_staged")

    def __init__(self) -> None:
        self._running: dict[K, dict[str, V]] = {}
        self._staged: dict[K, dict[str, V]] | None = None

    @property
    def staging(self) -> bool:
        """Whether an apply is under way (between :meth:`stage` and its end)."""
        return self._staged is not None

    def stage(self, kept: Iterable[str]) -> None:
        """Begin applying a config: the deployments named in ``kept`` stay as they run
        (their claims stand); any other deployment claims again when it is built."""
        keep = set(kept)
        self._staged = {
            key: {name: value for name, value in holders.items() if name in keep}
            for key, holders in self._running.items()
        }

    def claim(self, key: K, holder: str, value: V) -> str | None:
        """Claim ``key`` for deployment ``holder`` with ``value``. Returns the name of a
        deployment that holds it with another value (the claim is not made), else None."""
        claims = self._staged if self._staged is not None else self._running
        holders = claims.setdefault(key, {})
        for name, held in holders.items():
            if name != holder and held != value:
                return name
        holders[holder] = value
        return None

    def running(self, key: K) -> V | None:
        """The value the running holders of ``key`` share; None when none holds it."""
        holders = self._running.get(key)
        return next(iter(holders.values())) if holders else None

    def commit(self) -> dict[K, V]:
        """The staged claims become the running ones. Returns the value of each key held
        now (its holders agree: a claim that disagrees is refused)."""
        if self._staged is not None:
            self._running, self._staged = self._staged, None
        return {
            key: next(iter(holders.values())) for key, holders in self._running.items() if holders
        }

    def abort(self) -> list[K]:
        """The apply was refused: the running claims stand as they were. Returns the keys
        it claimed that no running deployment holds (what it made may be dropped)."""
        staged, self._staged = self._staged or {}, None
        return [key for key, holders in staged.items() if holders and self.running(key) is None]
