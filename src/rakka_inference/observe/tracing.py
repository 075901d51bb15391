"""Turning tracing on and off: the OpenTelemetry backend behind :mod:`rakka_inference.core.tracing`.

The span API the engines call lives in core and costs nothing when off; this module
installs a backend behind it, either on a ``TracerProvider`` the caller owns
(:func:`configure`, for embedding applications and tests) or on one built from
``[tracing]`` (:func:`setup`, for ``rakka serve``). OpenTelemetry is imported only here,
and only when tracing is turned on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from rakka_inference.core import tracing
from rakka_inference.core.config import OTEL_EXTRA, missing_tracing_packages
from rakka_inference.core.deployment import TracingConfig
from rakka_inference.core.errors import ConfigError, ConfigIssue

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["Tracing", "configure", "setup"]


def configure(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on; ``None`` turns tracing off.

    The global OpenTelemetry provider is left as it is: an application that embeds the
    gateway keeps its own, and tests give each run a provider of its own.
    """
    if provider is None:
        tracing.install(None)
        return
    from rakka_inference.observe.tracing_otel import OtelBackend  # noqa: PLC0415 - optional

    tracing.install(OtelBackend(provider))


class Tracing(Protocol):
    """Tracing set up from a configuration; :meth:`shutdown` exports what is left."""

    def shutdown(self) -> None: ...


def setup(config: TracingConfig) -> Tracing:
    """Build a ``TracerProvider`` from ``[tracing]`` and trace with it.

    Raises :class:`ConfigError` naming the ``otel`` extra when OpenTelemetry is missing
    (:func:`~rakka_inference.core.config.load_config` says so first, with the line).
    """
    missing = missing_tracing_packages(config)
    if missing:
        message = f"tracing needs OpenTelemetry, not installed here ({', '.join(missing)})"
        issue = ConfigIssue("[tracing]", "tracing.enabled", f"{message}: {OTEL_EXTRA}")
        raise ConfigError([issue])
    from rakka_inference.observe.tracing_otel import ConfiguredTracing  # noqa: PLC0415

    return ConfiguredTracing.install(config)
