"""The breaker registry: one circuit breaker per (provider, endpoint), shared."""

from __future__ import annotations

import logging

import pytest

from rakka_inference.core.errors import ServerError
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import BreakerKey, BreakerState, BreakerTransition
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.testkit.clock import FakeClock

KEY = BreakerKey("openai", "https://api.openai.com/v1")
CLOSED, OPEN = BreakerState.CLOSED, BreakerState.OPEN


def http_503() -> ServerError:
    return ServerError("openai returned HTTP 503", provider="openai", upstream_status=503)


def test_the_registry_shares_one_breaker_per_endpoint(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    seen: list[BreakerTransition] = []
    registry = BreakerRegistry(clock=clock, on_transition=seen.append)
    config = CircuitBreakerConfig(failure_threshold=1)
    first = registry.get_or_create(KEY, config)
    assert registry.get_or_create(BreakerKey(KEY.provider, KEY.endpoint), config) is first
    with caplog.at_level(logging.WARNING, logger="rakka_inference.remote.breaker_registry"):
        shared = registry.get_or_create(KEY, CircuitBreakerConfig(failure_threshold=5))
    assert shared is first
    assert shared.config == config
    assert "is shared" in caplog.text
    other_key = BreakerKey("openai", "https://eu.api.openai.com/v1")
    other = registry.get_or_create(other_key, config)
    assert other is not first
    assert registry.get(other_key) is other
    assert registry.get(BreakerKey("x", "y")) is None
    assert len(registry) == 2
    assert list(registry) == [first, other]
    first.record_failure(first.admit(), http_503())
    assert [t.key for t in seen] == [KEY]
    assert [s.state for s in registry.snapshots()] == [OPEN, CLOSED]
    assert str(KEY) == "openai at https://api.openai.com/v1"
