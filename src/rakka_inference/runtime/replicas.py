"""Building one replica's engine from a deployment: remote or local, placed, budgeted.

:class:`EngineBuilder` is the :class:`~rakka_inference.runtime.manager.EngineFactory` of a
serving process:

- a **remote** deployment gets a :class:`~rakka_inference.remote.engine.RemoteEngineCore`
  through :func:`~rakka_inference.remote.factory.build_remote_engine`, sharing the
  process's limiters and breakers;
- a **local** deployment gets a :class:`~rakka_inference.local.engine.LocalEngineCore`
  whose contexts are built by the runner factory registered for its runtime; an engine
  server runtime (vLLM, SGLang, llama.cpp) with no runner registered gets an
  :class:`~rakka_inference.local.engine_server.EngineServerRunner`: its context is the
  engine's process, on the GPUs placement gave the replica. A runtime with no runner in
  this build, a model its runner cannot find, or an engine program that is not installed
  is refused at :meth:`EngineBuilder.check`, before anything changes, with the field and
  the reason.

A remote deployment's credential is read at :meth:`EngineBuilder.check` too: one that is not
set or cannot be read refuses the config there, naming the field, before any replica of it
starts.

Every deployment has a cost ledger (:class:`~rakka_inference.engine.budget.BudgetLedger`):
with limits when it has a ``budget`` (reserve-then-settle, its ``on_exceeded`` policy),
without otherwise, so the cost report covers every deployment. A ledger lives as long as
its deployment's name and budget: a hot-swap that keeps the budget keeps the spend.

An apply of a whole config is staged (:meth:`EngineBuilder.stage`, :meth:`~EngineBuilder.
commit`, :meth:`~EngineBuilder.abort`): the ledgers, limiters and breakers its new engines
get become the deployments' own only when it commits, so a refused apply leaves the cost
report, the budgets and the limits of the running deployments as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError, ConfigIssue, SecretError
from rakka_inference.core.policies import Budget
from rakka_inference.core.pricing import resolve_price
from rakka_inference.core.runner import ModelRunner
from rakka_inference.core.runtimes import RemoteRuntimeConfig, RuntimeKind
from rakka_inference.engine.budget import BudgetEvent, BudgetLedger
from rakka_inference.engine.budget_book import BudgetBook
from rakka_inference.local.engine import LocalEngineCore
from rakka_inference.local.engine_command import launch_problem
from rakka_inference.local.engine_server import EngineServerRunner
from rakka_inference.providers.registry import adapter_for
from rakka_inference.remote.factory import RemoteServices, build_remote_engine
from rakka_inference.remote.transports.factory import create_transport
from rakka_inference.runtime.manager import Engine
from rakka_inference.wire.http import HttpTransport

__all__ = ["EngineBuilder", "LocalEngineFactory", "RunnerFactory"]

log = logging.getLogger("rakka_inference.replicas")

RunnerFactory = Callable[[Deployment], ModelRunner]
"""Builds a fresh runner for a local deployment (one per context: first load and rebuilds)."""

LocalEngineFactory = Callable[[Deployment, str], Engine]
"""Builds the engine of a local replica elsewhere than in this process (a Ray cluster's
replica actor, reached through a proxy): the deployment and the replica's name."""

RunnerCheck = Callable[[Deployment], "tuple[str, str] | None"]
"""Why a runtime's runner could not serve a deployment, as (field, reason); ``None`` if it can."""


def _sentence_transformers(deployment: Deployment) -> ModelRunner:
    # Imported on use: the runner's backends need the optional ``embeddings`` extra.
    from rakka_inference.local.sentence_embed import (  # noqa: PLC0415
        SentenceTransformersRunner,
    )

    return SentenceTransformersRunner(deployment)


def _sentence_transformers_check(deployment: Deployment) -> tuple[str, str] | None:
    from rakka_inference.local.sentence_embed import model_source_problem  # noqa: PLC0415

    return model_source_problem(deployment)


def _transformers(deployment: Deployment) -> ModelRunner:
    # Imported on use: loading the model needs the optional ``transformers`` extra.
    from rakka_inference.local.transformers_runner import TransformersRunner  # noqa: PLC0415

    return TransformersRunner(deployment)


def _transformers_check(deployment: Deployment) -> tuple[str, str] | None:
    from rakka_inference.local.transformers_runner import model_source_problem  # noqa: PLC0415

    return model_source_problem(deployment)


DEFAULT_RUNNERS: Mapping[RuntimeKind, RunnerFactory] = {
    RuntimeKind.SENTENCE_TRANSFORMERS: _sentence_transformers,
    RuntimeKind.TRANSFORMERS: _transformers,
}
"""The local runtimes this build serves out of the box (tests register MockRunner)."""

DEFAULT_CHECKS: Mapping[RuntimeKind, RunnerCheck] = {
    RuntimeKind.SENTENCE_TRANSFORMERS: _sentence_transformers_check,
    RuntimeKind.TRANSFORMERS: _transformers_check,
}
"""What each runtime's runner needs of a deployment, checked before it is applied."""


class EngineBuilder:
    """Builds engines for the deployment manager; owns the cost ledgers."""

    def __init__(
        self,
        services: RemoteServices | None = None,
        *,
        runners: Mapping[RuntimeKind, RunnerFactory] = DEFAULT_RUNNERS,
        checks: Mapping[RuntimeKind, RunnerCheck] | None = None,
        clock: Callable[[], float] = time.time,
        local_engines: LocalEngineFactory | None = None,
    ) -> None:
        self.services = services or RemoteServices()
        self.runners = runners
        self.local_engines = local_engines
        """Set on a Ray gateway: local replicas run in the cluster's replica actors, which
        check and load their runners themselves."""
        # A default check belongs to its default runner: a runner registered in its place
        # (MockRunner in tests) is not held to it.
        self.checks: Mapping[RuntimeKind, RunnerCheck] = (
            checks
            if checks is not None
            else {
                kind: check
                for kind, check in DEFAULT_CHECKS.items()
                if runners.get(kind) is DEFAULT_RUNNERS.get(kind)
            }
        )
        self._clock = clock
        self.on_budget_event: Callable[[BudgetEvent], None] | None = None
        """Told of every budget limit crossed and recovered (the metrics), after the log."""
        self._ledgers: dict[str, BudgetLedger] = {}
        self._staged_ledgers: dict[str, BudgetLedger] | None = None
        """While an apply is staged: the new ledgers its engines got, by deployment."""
        self._staged_caps: dict[str, int] | None = None
        """While an apply is staged: the output caps for ledgers running engines use."""
        self._throttle_targets: dict[str, list[Engine]] = {}

    @property
    def budgets(self) -> BudgetBook:
        """Every deployment's ledger, for the cost report and ``/metrics``."""
        return BudgetBook(self._ledgers.values())

    def check(self, deployment: Deployment) -> None:
        if deployment.is_remote:
            adapter_for(deployment, self.services.prices)  # raises ConfigError when unbuildable
            _check_credential(deployment)
            return
        if self.local_engines is not None:
            return  # the replica actors check, and a refusal refuses the apply
        if deployment.runtime not in self.runners:
            if deployment.runtime.is_engine_server:
                problem = launch_problem(deployment)
                if problem is not None:
                    raise _config_error(deployment, *problem)
                return
            raise _config_error(
                deployment,
                "runtime",
                f"runtime {deployment.runtime.value!r} has no runner in this build "
                f"(local runtimes served: {_names(self.runners)})",
            )
        check = self.checks.get(deployment.runtime)
        problem = None if check is None else check(deployment)
        if problem is not None:
            raise _config_error(deployment, *problem)

    async def build(
        self,
        deployment: Deployment,
        name: str,
        on_failed: Callable[[str], None],
        *,
        gpus: tuple[str, ...] = (),
    ) -> Engine:
        ledger = self._ledger(deployment)
        if deployment.is_remote:
            return await build_remote_engine(deployment, self.services, name=name, budget=ledger)
        if self.local_engines is not None:
            return self.local_engines(deployment, name)
        factory = self.runners.get(deployment.runtime)
        make: Callable[[], ModelRunner]
        if factory is None:  # an engine server (check refused any other runtime)
            make = lambda: EngineServerRunner(  # noqa: E731
                deployment, _open_engine_transport, name=name, gpus=gpus
            )
        else:
            make = lambda: factory(deployment)  # noqa: E731
        engine = LocalEngineCore(
            name,
            make,
            serving=deployment.serving,
            budget=ledger,
            on_failed=lambda error: on_failed(f"{type(error).__name__}: {error}"),
        )
        return engine

    def stage(self, kept: Iterable[Deployment]) -> None:
        """An apply begins (see the module); ``kept`` are the deployments it leaves be."""
        self._staged_ledgers = {}
        self._staged_caps = {}
        self.services.stage(d.name for d in kept)

    def commit(self) -> None:
        """The apply's engines serve: their ledgers, caps, limits and settings become the
        deployments' own. Never awaits."""
        staged, caps = self._staged_ledgers, self._staged_caps
        self._staged_ledgers, self._staged_caps = None, None
        self._ledgers.update(staged or {})
        for name, cap in (caps or {}).items():
            self._ledgers[name].default_max_output_tokens = cap
        self.services.commit()

    def abort(self) -> None:
        """The apply was refused: the running ledgers, limits and settings stand."""
        self._staged_ledgers, self._staged_caps = None, None
        self.services.abort()

    def _ledger(self, deployment: Deployment) -> BudgetLedger:
        budget = deployment.budget or Budget()
        price = resolve_price(
            deployment.upstream_model,
            deployment.pricing,
            self.services.prices,
            local=not deployment.is_remote,
        )
        staged = self._staged_ledgers
        ledger = None if staged is None else staged.get(deployment.name)
        if ledger is None:
            ledger = self._ledgers.get(deployment.name)
        if ledger is None or ledger.budget != budget or ledger.price != price:
            ledger = BudgetLedger(
                deployment.name,
                budget,
                price,
                clock=self._clock,
                on_throttle=lambda on: self._throttle(deployment.name, on),
                on_event=self._budget_event,
                model=deployment.model,
            )
            if staged is None:
                self._ledgers[deployment.name] = ledger
            else:
                staged[deployment.name] = ledger  # the deployment's own once committed
        # The cap the engine's limiter estimates with and the adapter sends (a hot swap
        # may change it while keeping the spend): a ledger running engines use takes it
        # when the apply commits.
        cap = deployment.runtime_config.default_max_output_tokens
        if self._staged_caps is not None and self._ledgers.get(deployment.name) is ledger:
            self._staged_caps[deployment.name] = cap
        else:
            ledger.default_max_output_tokens = cap
        return ledger

    def _budget_event(self, event: BudgetEvent) -> None:
        if event.exceeded:
            log.warning(
                "deployment %s: spend in the last %s, $%.4f, is over its limit of $%.4f "
                "(on_exceeded = %s)",
                event.deployment,
                event.window.value,
                event.spent_usd,
                event.limit_usd,
                event.action.value,
            )
        else:
            log.info(
                "deployment %s: spend in the last %s is back under its limit ($%.4f of $%.4f)",
                event.deployment,
                event.window.value,
                event.spent_usd,
                event.limit_usd,
            )
        if self.on_budget_event is not None:
            self.on_budget_event(event)

    def forget(self, name: str) -> None:
        """The deployment is gone: drop its ledger."""
        self._ledgers.pop(name, None)

    def _throttle(self, name: str, on: bool) -> None:
        log.warning("deployment %s: budget %s", name, "throttling" if on else "back to normal")
        for engine in self._throttle_targets.get(name, ()):
            limit = engine.serving.max_concurrent
            engine.set_concurrency_limit(max(1, limit // 2) if on else limit)

    def watch_throttle(self, name: str, engines: list[Engine]) -> None:
        """The engines a budget's throttle applies to (the deployment's current replicas)."""
        self._throttle_targets[name] = engines
        ledger = self._ledgers.get(name)
        if ledger is not None and ledger.throttled:
            self._throttle(name, True)


def _check_credential(deployment: Deployment) -> None:
    """A ConfigError naming the field when the credential a remote deployment sends (or
    exchanges for a token) is not set or cannot be read now; the value is dropped."""
    config = deployment.runtime_config
    if not isinstance(config, RemoteRuntimeConfig) or config.credential is None:
        return  # building it says what is missing
    try:
        config.credential.resolve()
    except SecretError as error:
        path = f"runtime_config.{config.credential_field}"
        raise _config_error(deployment, path, str(error)) from error


def _open_engine_transport(connections: int) -> HttpTransport:
    return create_transport(max_connections=connections)


def _config_error(deployment: Deployment, field: str, reason: str) -> ConfigError:
    return ConfigError([ConfigIssue("<config>", f"deployment {deployment.name!r}.{field}", reason)])


def _names(runners: Mapping[RuntimeKind, RunnerFactory]) -> str:
    return ", ".join(sorted(kind.value for kind in runners)) or "none"
