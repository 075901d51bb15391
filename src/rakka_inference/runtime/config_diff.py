"""What applying a config changes, checked before anything starts, and why one is refused.

:class:`ConfigDiff` sets a new config against the running deployments: which start (new or
changed), which go, which stay. :func:`check_aliases` and :func:`refusal` are the two ways
:meth:`~rakka_inference.runtime.manager.DeploymentManager.apply` says no: before anything
starts (aliases, and the rate limits of deployments sharing a limiter), and when a
deployment did not start (every set that apply started is stopped, and the running config
stays whole).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from rakka_inference.core.config_rules import shared_limit_conflicts
from rakka_inference.core.deployment import Config, Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue, OperationRefused, SecretError
from rakka_inference.core.secrets import Secret, SecretRef

__all__ = ["ApplyReport", "ConfigDiff", "check_aliases", "check_shared_limits", "refusal"]

log = logging.getLogger("rakka_inference.manager")


@dataclass(frozen=True, slots=True)
class ApplyReport:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What an apply does: which deployments start (new or changed) and which go."""

    wanted: dict[str, Deployment]
    added: tuple[Deployment, ...]
    changed: tuple[Deployment, ...]
    removed: tuple[str, ...]

    @classmethod
    def between(cls, running: Mapping[str, Deployment], config: Config) -> ConfigDiff:
        """From the ``running`` deployments (by name) to those of ``config``."""
        wanted = {d.name: d for d in config.deployments}
        return cls(
            wanted=wanted,
            added=tuple(d for name, d in wanted.items() if name not in running),
            changed=tuple(d for name, d in wanted.items() if running.get(name, d) != d),
            removed=tuple(name for name in running if name not in wanted),
        )

    @property
    def starting(self) -> tuple[Deployment, ...]:
        return (*self.added, *self.changed)

    @property
    def kept(self) -> tuple[Deployment, ...]:
        """The deployments that run on as they are: in the config, and unchanged."""
        starting = {d.name for d in self.starting}
        return tuple(d for name, d in self.wanted.items() if name not in starting)

    def report(self) -> ApplyReport:
        starting = {d.name for d in self.starting}
        return ApplyReport(
            added=tuple(d.name for d in self.added),
            changed=tuple(d.name for d in self.changed),
            removed=self.removed,
            unchanged=tuple(name for name in self.wanted if name not in starting),
        )


def check_aliases(deployments: Collection[Deployment]) -> None:
    """Every alias answers for one deployment and is no deployment's name, so the swap
    cannot trip over one halfway; and deployments that share a rate limiter set the same
    ``rate_limits`` (:func:`check_shared_limits`). The config loader checks both too, with
    lines."""
    check_shared_limits(deployments)
    names = {d.name for d in deployments}
    owners: dict[str, str] = {}
    issues = []
    for deployment in deployments:
        for alias in deployment.aliases:
            owner = owners.setdefault(alias, deployment.name)
            if alias in names:
                reason = f"alias {alias!r} clashes with the deployment named {alias!r}"
            elif owner != deployment.name:
                reason = f"alias {alias!r} already answers for {owner!r}"
            else:
                continue
            issues.append(
                ConfigIssue("<config>", f"deployment {deployment.name!r}.aliases", reason)
            )
    if issues:
        raise ConfigError(issues)


def check_shared_limits(deployments: Collection[Deployment]) -> None:
    """All deployments of a config on one limiter key set the same ``rate_limits``, so none
    decides the others' limits (:func:`~rakka_inference.core.config_rules.
    shared_limit_conflicts`). Their credentials are read for it: two references that hold
    one key share its limiter, as the engines will."""
    issues = [
        ConfigIssue(
            "<config>",
            f"deployment {conflict.deployment!r}.runtime_config.rate_limits",
            conflict.message,
        )
        for conflict in shared_limit_conflicts(deployments, _readable)
    ]
    if issues:
        raise ConfigError(issues)


def _readable(ref: SecretRef) -> Secret | None:
    try:
        return ref.resolve()
    except SecretError:
        return None  # the deployment's check names it


def refusal(deployment: Deployment | None, error: BaseException) -> BaseException:
    """A start failure as the reason the config is refused: a ConfigError naming the
    deployment and the cause. ConfigError and OperationRefused (PlacementFailed among them)
    already say so; a cancellation is not a refusal."""
    if deployment is None or not isinstance(error, Exception):
        return error
    if isinstance(error, ConfigError | OperationRefused):
        return error
    log.warning("deployment %s did not start, the config is rejected: %r", deployment.name, error)
    reason = f"did not start, nothing changed: {type(error).__name__}: {error}"
    return ConfigError([ConfigIssue("<config>", f"deployment {deployment.name!r}", reason)])
