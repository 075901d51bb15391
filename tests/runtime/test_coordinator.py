"""DpCoordinator: registration, aliases, power-of-two routing, health."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from rakka_inference.core.errors import CircuitOpen, ModelNotFound
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import BreakerKey, CircuitBreaker
from rakka_inference.runtime.coordinator import DpCoordinator
from rakka_inference.testkit.clock import FakeClock


@dataclass
class FakeReplica:
    name: str
    load_score: float = 0.0
    healthy: bool = True


def test_routes_by_name_and_alias() -> None:
    coordinator = DpCoordinator(rng=random.Random(1))
    only = FakeReplica("gpt-0")
    coordinator.register("gpt-4o", only)
    coordinator.set_aliases("gpt-4o", ["gpt", "default"])
    assert coordinator.route("gpt-4o") is only
    assert coordinator.route("gpt") is only
    assert coordinator.models() == [("gpt-4o", ("default", "gpt"))]
    with pytest.raises(ModelNotFound) as caught:
        coordinator.route("claude")
    assert caught.value.param == "model"
    assert caught.value.http_status == 404


def test_power_of_two_choices_prefers_the_less_loaded() -> None:
    coordinator = DpCoordinator(rng=random.Random(7))
    busy = FakeReplica("busy", load_score=0.9)
    idle = FakeReplica("idle", load_score=0.1)
    coordinator.register("d", busy)
    coordinator.register("d", idle)
    assert all(coordinator.route("d") is idle for _ in range(50))


def test_spreads_load_over_many_replicas() -> None:
    coordinator = DpCoordinator(rng=random.Random(3))
    replicas = [FakeReplica(f"r{i}") for i in range(8)]
    for replica in replicas:
        coordinator.register("d", replica)
    counts = {r.name: 0 for r in replicas}
    for _ in range(4000):
        chosen = coordinator.route("d")
        counts[chosen.name] += 1
        assert isinstance(chosen, FakeReplica)
        chosen.load_score += 0.001  # the chosen one gets busier
    assert max(counts.values()) - min(counts.values()) < 200


def test_open_circuits_are_skipped_then_fail_fast() -> None:
    coordinator = DpCoordinator(rng=random.Random(5))
    sick = FakeReplica("sick", healthy=False)
    well = FakeReplica("well", load_score=0.99)
    coordinator.register("d", sick)
    coordinator.register("d", well)
    assert all(coordinator.route("d") is well for _ in range(20))
    well.healthy = False
    with pytest.raises(CircuitOpen, match="every replica"):
        coordinator.route("d")
    assert coordinator.deregister("d", "sick")
    assert coordinator.deregister("d", "well")
    assert not coordinator.deregister("d", "well")
    with pytest.raises(CircuitOpen, match="no replica"):
        coordinator.route("d")
    coordinator.remove("d")
    with pytest.raises(ModelNotFound):
        coordinator.route("d")


def test_conflicting_names_are_refused() -> None:
    coordinator = DpCoordinator()
    coordinator.register("a", FakeReplica("a0"))
    coordinator.register("b", FakeReplica("b0"))
    coordinator.set_aliases("a", ["shared"])
    with pytest.raises(ValueError, match="already registered"):
        coordinator.register("a", FakeReplica("a0"))
    with pytest.raises(ValueError, match="already answers"):
        coordinator.set_aliases("b", ["shared"])
    with pytest.raises(ValueError, match="already a deployment"):
        coordinator.set_aliases("b", ["a"])
    with pytest.raises(ValueError, match="already an alias"):
        coordinator.register("shared", FakeReplica("x"))
    coordinator.set_aliases("a", [])  # aliases can be taken away
    assert coordinator.models() == [("a", ()), ("b", ())]


def test_a_routing_read_sees_one_table_version() -> None:
    coordinator = DpCoordinator()
    coordinator.register("d", FakeReplica("r0"))
    before = coordinator.table
    coordinator.register("d", FakeReplica("r1"))
    assert len(before.replicas["d"]) == 1  # old versions never change
    assert len(coordinator.table.replicas["d"]) == 2


@dataclass
class BreakerReplica:
    """A replica behind a circuit breaker, as a remote engine is one."""

    name: str
    breaker: CircuitBreaker
    load_score: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.breaker.refusal() is None

    @property
    def open_for_s(self) -> float | None:
        refusal = self.breaker.refusal()
        return None if refusal is None else refusal.retry_after

    def circuit_refusal(self) -> CircuitOpen | None:
        return self.breaker.refusal(f"deployment 'gpt4o-a' ({self.breaker.key.provider})")


def test_every_circuit_open_is_told_by_deployment_and_provider() -> None:
    clock = FakeClock()
    coordinator = DpCoordinator(rng=random.Random(5))
    key = BreakerKey("openai", "http://10.0.0.7:8443/v1", "gpt-4o")
    breakers = [CircuitBreaker(key, CircuitBreakerConfig(), clock=clock) for _ in range(2)]
    for index, breaker in enumerate(breakers):
        coordinator.register("gpt4o-a", BreakerReplica(f"r{index}", breaker))
    breakers[0].force_open(30)
    clock.advance(1)
    breakers[1].force_open(12)
    with pytest.raises(CircuitOpen) as caught:
        coordinator.route("gpt4o-a")
    # The replica that reopens first says when.
    assert caught.value.message == (
        "deployment 'gpt4o-a' (openai): circuit open, retry in 12s "
        "(forced open by operator for 12s)"
    )
    assert caught.value.retry_after == 12.0
    assert "10.0.0.7" not in caught.value.message
