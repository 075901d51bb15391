"""Deployments sharing a rate limiter (one provider key and model) change their limits
together on a reload, and a refused reload leaves the limiter's limits as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from rakka_inference.core.deployment import ClusterConfig, Config, Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.topology import Topology
from rakka_inference.testkit.faults import FaultPlan
from rakka_inference.testkit.mock_openai import OpenAIMock

KEY = "sk-shared-limits-0001"


def deployment(name: str, base_url: str, rpm: int, key: SecretRef | None = None) -> Deployment:
    return Deployment(
        name=name,
        model="gpt-4o-mini",
        runtime=RuntimeKind.OPENAI,
        runtime_config=OpenAIConfig(
            endpoint=base_url,
            api_key=key or SecretRef.inline(KEY, warn=False),
            rate_limits=RateLimits(requests_per_minute=rpm),
        ),
    )


def config(*deployments: Deployment) -> Config:
    return Config(cluster=ClusterConfig(), deployments=deployments)


@pytest.fixture
async def mock() -> AsyncIterator[OpenAIMock]:
    async with OpenAIMock(faults=FaultPlan(valid_keys={KEY})) as server:
        yield server


def rpm_of(topology: Topology) -> set[int | None]:
    return {use.requests_per_minute for use in topology.services.limiters.utilization()}


async def test_a_reload_changes_shared_limits_together(mock: OpenAIMock) -> None:
    url = mock.openai_base_url
    topology = Topology(config(deployment("a", url, 10), deployment("b", url, 10)))
    await topology.start()
    try:
        assert rpm_of(topology) == {10}
        await topology.apply(config(deployment("a", url, 20), deployment("b", url, 20)))
        assert rpm_of(topology) == {20}
    finally:
        await topology.stop()


async def test_a_refused_reload_leaves_the_shared_limits(mock: OpenAIMock) -> None:
    url = mock.openai_base_url
    topology = Topology(config(deployment("a", url, 10), deployment("b", url, 10)))
    await topology.start()
    try:
        unset = SecretRef.from_env("RAKKA_TEST_UNSET_SECRET_FOR_LIMITS")
        # Both change to 20; a third deployment cannot start (its key is not set).
        refused = config(
            deployment("a", url, 20), deployment("b", url, 20), deployment("c", url, 5, unset)
        )
        with pytest.raises(ConfigError):
            await topology.apply(refused)
        assert rpm_of(topology) == {10}
        assert set(topology.manager.deployments) == {"a", "b"}
    finally:
        await topology.stop()
