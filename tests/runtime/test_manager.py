"""DeploymentManager: diff-and-apply, hot-swap under load, scale, drain, rebuild, reload
of a bad config, and replicas that fail — against the OpenAI-format mock over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest

from rakka_inference.actors.system import ActorSystem
from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ConfigError, ModelNotFound, OperationRefused, SecretError
from rakka_inference.core.messages import ChatMessage, ChatRequest
from rakka_inference.core.policies import Budget, CircuitBreakerConfig, RateLimits, Serving
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind, VllmConfig
from rakka_inference.core.secrets import SecretRef
from rakka_inference.core.stream import aggregate
from rakka_inference.runtime.lifecycle import DeploymentState
from rakka_inference.runtime.manager import MAX_REPLICAS
from rakka_inference.runtime.request import RequestActor
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan, ReplyScript
from rakka_inference.testkit.mock_openai import OpenAIMock

KEY = "sk-manager-0001"
ROTATED = "sk-manager-0002"


def deployment(mock: OpenAIMock, name: str = "chat", **kw: object) -> Deployment:
    config = OpenAIConfig(endpoint=mock.openai_base_url, api_key=SecretRef.inline(KEY, warn=False))
    return Deployment(
        name=name,
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=config,
        serving=Serving(max_concurrent=256, queue_capacity=1024),
        **kw,  # type: ignore[arg-type]
    )


def config(*deployments: Deployment) -> Config:
    return Config(cluster=ClusterConfig(), deployments=deployments)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(
        faults=FaultPlan(valid_keys={KEY, ROTATED}), reply=ReplyScript(text="a b c d", chunks=4)
    ) as server:
        yield server


@pytest.fixture
async def topology(mock: OpenAIMock) -> AsyncIterator[Topology]:
    topology = Topology(config(deployment(mock)))
    await topology.start()
    try:
        yield topology
    finally:
        await topology.stop(timeout=5)


async def ask(topology: Topology, model: str = "chat", *, stream: bool = False) -> str:
    request = ChatRequest(
        model=model, messages=(ChatMessage.user("hi"),), stream=stream, include_usage=stream
    )
    actor = RequestActor(request, topology.coordinator, topology.policies)
    return aggregate([chunk async for chunk in actor.chunks()]).text


async def test_apply_adds_changes_and_removes(topology: Topology, mock: OpenAIMock) -> None:
    manager = topology.manager
    assert manager.state("chat") is DeploymentState.SERVING
    assert await ask(topology) == "a b c d"
    changed = replace(deployment(mock), aliases=("default",), replicas=2)
    report = await topology.apply(config(changed, deployment(mock, "extra")))
    assert (report.added, report.changed, report.removed) == (("extra",), ("chat",), ())
    [status] = [s for s in manager.describe() if s.name == "chat"]
    assert status.generation == 2
    assert len(status.replicas) == 2
    assert status.last_change == "hot-swap"
    assert await ask(topology, "default") == "a b c d"
    report = await topology.apply(config(changed))
    assert report.removed == ("extra",)
    assert report.unchanged == ("chat",)
    with pytest.raises(ModelNotFound):
        await ask(topology, "extra")
    await manager.aclose()  # drains finish; nothing is left running
    assert not manager.deployments


async def test_a_hot_swap_under_200_streams_loses_none(
    topology: Topology, mock: OpenAIMock
) -> None:
    mock.reply = ReplyScript(text="one two three four five", chunks=5, chunk_delay_s=0.02)
    old_engines = {engine.name for engine in topology.manager.engines("chat")}
    streams = [asyncio.ensure_future(ask(topology, stream=True)) for _ in range(200)]
    await asyncio.sleep(0.03)  # every stream is mid-answer
    changed = replace(deployment(mock), serving=Serving(max_concurrent=300, queue_capacity=1024))
    report = await topology.apply(config(changed))
    assert report.changed == ("chat",)
    new_engines = {engine.name for engine in topology.manager.engines("chat")}
    assert not old_engines & new_engines
    answers = await asyncio.gather(*streams)
    assert answers == ["one two three four five"] * 200
    assert await ask(topology) == "one two three four five"


async def test_an_invalid_config_is_rejected_whole(topology: Topology, mock: OpenAIMock) -> None:
    before = topology.manager.describe()
    local = Deployment(name="gpu", model="m", runtime=RuntimeKind.VLLM, runtime_config=VllmConfig())
    with pytest.raises(ConfigError, match="the engine executable 'vllm' was not found"):
        await topology.apply(config(deployment(mock, "new"), local))
    assert topology.manager.describe() == before
    assert await ask(topology) == "a b c d"
    with pytest.raises(ModelNotFound):
        await ask(topology, "new")


async def test_a_start_failure_leaves_the_running_deployments(
    topology: Topology, mock: OpenAIMock
) -> None:
    broken = Deployment(
        name="broken",
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=mock.openai_base_url,
            api_key=SecretRef.from_env("RAKKA_TEST_UNSET_VARIABLE_FOR_MANAGER"),
        ),
    )
    changed = replace(deployment(mock), replicas=2)
    with pytest.raises(Exception, match="RAKKA_TEST_UNSET_VARIABLE_FOR_MANAGER"):
        await topology.apply(config(changed, broken))
    [status] = topology.manager.describe()
    assert (status.name, status.generation, len(status.replicas)) == ("chat", 1, 1)
    assert await ask(topology) == "a b c d"


async def test_scale_up_and_down(topology: Topology) -> None:
    manager = topology.manager
    status = await manager.scale("chat", 3)
    assert [r.state for r in status.replicas] == [DeploymentState.SERVING] * 3
    assert len(topology.coordinator.table.replicas["chat"]) == 3
    status = await manager.scale("chat", 1)
    assert len(status.replicas) == 1
    assert len(topology.coordinator.table.replicas["chat"]) == 1
    assert await ask(topology) == "a b c d"
    with pytest.raises(OperationRefused, match="at least 1 replica"):
        await manager.scale("chat", 0)
    with pytest.raises(ModelNotFound):
        await manager.scale("nope", 2)


async def test_replicas_are_bounded_in_a_scale_and_in_a_config(
    topology: Topology, mock: OpenAIMock
) -> None:
    manager = topology.manager
    with pytest.raises(OperationRefused, match=f"at most {MAX_REPLICAS} replicas"):
        await manager.scale("chat", MAX_REPLICAS + 1)
    before = manager.describe()
    huge = deployment(mock, replicas=100_000_000)
    with pytest.raises(ConfigError, match=f"replicas: must be at most {MAX_REPLICAS}"):
        await topology.apply(config(huge))
    assert manager.describe() == before
    assert await ask(topology) == "a b c d"


async def test_drain_then_operations_are_refused(topology: Topology) -> None:
    manager = topology.manager
    await manager.drain("chat")
    assert manager.state("chat") is DeploymentState.STOPPED
    with pytest.raises(OperationRefused, match="is stopped"):
        await manager.scale("chat", 2)
    with pytest.raises(OperationRefused, match="is stopped"):
        await manager.rebuild_session("chat")
    with pytest.raises(OperationRefused, match="is stopped"):
        await manager.drain("chat")


async def test_rebuild_session_rotates_without_dropping(
    topology: Topology, mock: OpenAIMock
) -> None:
    mock.reply = ReplyScript(text="x y", chunks=2, chunk_delay_s=0.02)
    running = [asyncio.ensure_future(ask(topology, stream=True)) for _ in range(20)]
    await asyncio.sleep(0.01)
    generations = await topology.manager.rebuild_session("chat")
    assert generations == [2]
    assert await asyncio.gather(*running) == ["x y"] * 20
    assert await ask(topology) == "x y"


async def test_remove_forgets_the_deployment(topology: Topology) -> None:
    await topology.manager.remove("chat")
    assert topology.manager.describe() == []
    with pytest.raises(ModelNotFound):
        await ask(topology)
    with pytest.raises(ModelNotFound):
        await topology.manager.remove("chat")


async def test_local_replicas_are_placed_on_gpus_and_released(mock: OpenAIMock) -> None:
    from rakka_inference.core.errors import PlacementFailed
    from rakka_inference.runtime.placement import Node, NodeInventory, Placement
    from rakka_inference.testkit.mock_runner import MockRunner

    placement = Placement(NodeInventory([Node("gpu-node", gpus=("0",))]))
    topology = Topology(
        config(deployment(mock)),
        runners={RuntimeKind.VLLM: lambda d: MockRunner()},
        placement=placement,
    )
    await topology.start()
    try:
        wide = Deployment(
            name="wide",
            model="m",
            runtime=RuntimeKind.VLLM,
            runtime_config=VllmConfig(tensor_parallel_size=2),
        )
        # More GPUs than any node has: the config is wrong, and says where.
        with pytest.raises(ConfigError, match=r"'wide'.runtime_config.tensor_parallel_size"):
            await topology.apply(config(deployment(mock), wide))
        assert [s.name for s in topology.manager.describe()] == ["chat"]
        one = replace(wide, name="local", runtime_config=VllmConfig())
        await topology.apply(config(deployment(mock), one))
        assert placement.snapshot()[0].free_gpus == 0
        assert await ask(topology, "local")
        # A GPU that is there but held is not a config error.
        with pytest.raises(PlacementFailed, match="needs 1 free GPU"):
            await topology.manager.scale("local", 2)
        await topology.apply(config(deployment(mock)))  # removed: drained, GPU released
        await topology.manager.aclose()
        assert placement.snapshot()[0].free_gpus == 1
    finally:
        await topology.stop(timeout=5)


# ---------------------------------------------------------------------- all or nothing


class Starts:
    """Wraps the topology's engine builder: records every engine built and stopped, and
    makes the start of the deployments named in ``failing`` raise (a model that will not
    load, say)."""

    def __init__(self, topology: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing: set[str] = set()
        self.gate: asyncio.Event | None = None
        self.built: list[str] = []
        self.stopped: list[str] = []
        build = topology.builder.build

        async def wrapped(  # type: ignore[no-untyped-def]
            deployment: Deployment, name: str, on_failed: Callable[[str], None], **placed: Any
        ):
            engine = await build(deployment, name, on_failed, **placed)
            self.built.append(engine.name)
            start, stop = engine.start, engine.stop

            async def starting(system: ActorSystem, actor: str | None = None) -> None:
                if self.gate is not None:
                    await self.gate.wait()
                if deployment.name in self.failing:
                    raise OSError(f"no weights for {deployment.name}")
                await start(system, actor)

            async def stopping(timeout: float = 30.0) -> None:
                self.stopped.append(engine.name)
                await stop(timeout)

            monkeypatch.setattr(engine, "start", starting)
            monkeypatch.setattr(engine, "stop", stopping)
            return engine

        monkeypatch.setattr(topology.builder, "build", wrapped)


async def test_a_failed_start_stops_what_the_apply_started_and_changes_nothing(
    topology: Topology, mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = Starts(topology, monkeypatch)
    starts.failing.add("chat")  # a changed deployment: it starts after the added ones
    before = topology.manager.describe()
    wanted = config(
        replace(deployment(mock), replicas=2), deployment(mock, "good"), deployment(mock, "more")
    )
    with pytest.raises(ConfigError, match=r"deployment 'chat'.*OSError: no weights for chat"):
        await topology.apply(wanted)
    # good's and more's sets started, then were stopped with chat's failed new replica.
    assert starts.built == ["good-0", "more-0", "chat-0.g2"]
    assert sorted(starts.stopped) == sorted(starts.built)
    assert topology.manager.describe() == before
    assert set(topology.coordinator.table.replicas) == {"chat"}
    assert await ask(topology) == "a b c d"
    with pytest.raises(ModelNotFound):
        await ask(topology, "good")
    starts.failing.clear()  # the same config applies once every deployment starts
    report = await topology.apply(wanted)
    assert (report.added, report.changed) == (("good", "more"), ("chat",))
    assert await ask(topology, "more") == "a b c d"


def limited(mock: OpenAIMock, name: str, rpm: int, day_usd: float, failures: int) -> Deployment:
    """A deployment with its own limits, budget and circuit settings (the shared state an
    apply stages), on an upstream model of its own (its own limiter and breaker)."""
    base = deployment(mock, name, budget=Budget(max_spend_per_day=day_usd), replicas=2)
    settings = replace(
        base.runtime_config,  # type: ignore[type-var]
        rate_limits=RateLimits(requests_per_minute=rpm),
        circuit_breaker=CircuitBreakerConfig(failure_threshold=failures),
    )
    return replace(base, model=f"gpt-4o-mini-{name}", runtime_config=settings)


def shared_state(topology: Topology) -> tuple[object, ...]:
    """What running deployments share: limits, breakers, budgets, ledgers' output caps."""
    return (
        sorted(
            (u.key.model, u.requests_per_minute) for u in topology.services.limiters.utilization()
        ),
        sorted((b.key.model, b.config) for b in topology.services.breakers),
        sorted((b.deployment, b.limit_day_usd) for b in topology.budgets.snapshot()),
        sorted(topology.budgets.report(), key=lambda row: row.deployment),
    )


async def test_a_refused_apply_leaves_every_shared_limit_breaker_and_ledger_as_it_was(
    mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = Topology(config(limited(mock, "alpha", 600, 100.0, 10), deployment(mock)))
    await topology.start()
    try:
        starts = Starts(topology, monkeypatch)
        await ask(topology, "alpha")
        before = shared_state(topology)
        # alpha changes its limit, budget and circuit settings and is rebuilt (both its
        # replicas), a newcomer gets a limiter and a breaker of its own, then chat, also
        # changed, does not start.
        starts.failing.add("chat")
        wanted = config(
            limited(mock, "new", 60, 5.0, 3),
            limited(mock, "alpha", 2, 200.0, 5),
            replace(deployment(mock), aliases=("default",)),
        )
        with pytest.raises(ConfigError, match="no weights for chat"):
            await topology.apply(wanted)
        assert starts.built == ["new-0", "new-1", "alpha-0.g2", "alpha-1.g2", "chat-0.g2"]
        assert shared_state(topology) == before
        assert [await ask(topology, "alpha") for _ in range(3)] == ["a b c d"] * 3
        # The same change, without the failure, commits all of it at once.
        starts.failing.clear()
        await topology.apply(wanted)
        limits, breakers, budgets, _report = shared_state(topology)
        assert limits == [("gpt-4o-mini", None), ("gpt-4o-mini-alpha", 2), ("gpt-4o-mini-new", 60)]
        assert [config.failure_threshold for _model, config in breakers] == [10, 5, 3]
        assert budgets == [("alpha", 200.0), ("chat", None), ("new", 5.0)]
    finally:
        await topology.stop(timeout=5)


async def test_a_config_dropping_alpha_for_beta_with_an_unset_secret_keeps_alpha(
    mock: OpenAIMock,
) -> None:
    topology = Topology(config(deployment(mock, "alpha")))
    await topology.start()
    try:
        beta = Deployment(
            name="beta",
            model="gpt-4o-mini",
            runtime=RuntimeKind.OPENAI,
            runtime_config=OpenAIConfig(
                endpoint=mock.openai_base_url,
                api_key=SecretRef.from_env("RAKKA_TEST_UNSET_VAR_FOR_BETA"),
            ),
        )
        with pytest.raises(ConfigError, match="RAKKA_TEST_UNSET_VAR_FOR_BETA") as rejected:
            await topology.apply(config(beta))
        assert isinstance(rejected.value.__cause__, SecretError)
        assert await ask(topology, "alpha") == "a b c d"  # not 404: alpha never left
        [status] = topology.manager.describe()
        assert (status.name, status.state, status.generation) == (
            "alpha",
            DeploymentState.SERVING,
            1,
        )
        assert [d.name for d in topology.config.deployments] == ["alpha"]
    finally:
        await topology.stop(timeout=5)


async def test_nothing_running_changes_until_every_new_set_has_started(
    topology: Topology, mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = Starts(topology, monkeypatch)
    starts.gate = asyncio.Event()
    applying = asyncio.ensure_future(topology.apply(config(deployment(mock, "beta"))))
    await asyncio.sleep(0.05)  # beta is starting; chat is still in the config's place
    assert not applying.done()
    assert await ask(topology) == "a b c d"
    with pytest.raises(ModelNotFound):
        await ask(topology, "beta")
    starts.gate.set()
    report = await applying
    assert (report.added, report.removed) == (("beta",), ("chat",))
    assert await ask(topology, "beta") == "a b c d"
    with pytest.raises(ModelNotFound):
        await ask(topology)


async def test_an_alias_that_clashes_is_refused_before_anything_starts(
    topology: Topology, mock: OpenAIMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = Starts(topology, monkeypatch)
    clash = replace(deployment(mock, "extra"), aliases=("chat",))
    with pytest.raises(ConfigError, match="clashes with the deployment named 'chat'"):
        await topology.apply(config(deployment(mock), clash))
    assert starts.built == []
    assert await ask(topology) == "a b c d"


async def test_a_failed_scale_up_stops_the_replicas_it_started(
    topology: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = Starts(topology, monkeypatch)
    real = topology.builder.build
    count = 0

    async def third_fails(  # type: ignore[no-untyped-def]
        deployment: Deployment, name: str, on_failed: Callable[[str], None], **placed: Any
    ):
        nonlocal count
        count += 1
        if count == 2:
            starts.failing.add(deployment.name)
        return await real(deployment, name, on_failed, **placed)

    monkeypatch.setattr(topology.builder, "build", third_fails)
    with pytest.raises(OSError, match="no weights"):
        await topology.manager.scale("chat", 3)
    assert starts.built == ["chat-1", "chat-2"]
    assert sorted(starts.stopped) == ["chat-1", "chat-2"]
    [status] = topology.manager.describe()
    assert len(status.replicas) == 1
    assert len(topology.coordinator.table.replicas["chat"]) == 1
    assert await ask(topology) == "a b c d"
