"""The breaker registry: one circuit breaker per (provider, endpoint, upstream model),
shared, with one config."""

from __future__ import annotations

import pytest

from rakka_inference.core.errors import ConfigError, ServerError
from rakka_inference.core.policies import CircuitBreakerConfig
from rakka_inference.remote.breaker import BreakerKey, BreakerState, BreakerTransition
from rakka_inference.remote.breaker_registry import BreakerRegistry
from rakka_inference.testkit.clock import FakeClock

ENDPOINT = "https://api.openai.com/v1"
KEY = BreakerKey("openai", ENDPOINT, "gpt-4o")
MINI = BreakerKey("openai", ENDPOINT, "gpt-4o-mini")
CLOSED, OPEN = BreakerState.CLOSED, BreakerState.OPEN
ONE = CircuitBreakerConfig(failure_threshold=1)
FIVE = CircuitBreakerConfig(failure_threshold=5)


def http_503() -> ServerError:
    return ServerError("openai returned HTTP 503", provider="openai", upstream_status=503)


def test_one_breaker_per_upstream_model() -> None:
    clock = FakeClock()
    seen: list[BreakerTransition] = []
    registry = BreakerRegistry(clock=clock, on_transition=seen.append)
    first = registry.get_or_create(KEY, ONE, holder="a")
    # Another deployment on the same model at the same endpoint shares it.
    assert (
        registry.get_or_create(BreakerKey("openai", ENDPOINT, "gpt-4o"), ONE, holder="b") is first
    )
    # Another model at that endpoint, or the model at another endpoint, has its own.
    mini = registry.get_or_create(MINI, ONE, holder="c")
    eu = registry.get_or_create(
        BreakerKey("openai", "https://eu.example/v1", "gpt-4o"), ONE, holder="d"
    )
    assert len({id(first), id(mini), id(eu)}) == 3
    assert registry.get(MINI) is mini
    assert registry.get(BreakerKey("x", "y", "z")) is None
    assert len(registry) == 3
    assert list(registry) == [first, mini, eu]
    assert registry.at_endpoint("openai", ENDPOINT) == (first, mini)
    assert registry.at_endpoint("anthropic", ENDPOINT) == ()
    # One model failing opens its circuit only.
    first.record_failure(first.admit(), http_503())
    assert [t.key for t in seen] == [KEY]
    assert [s.state for s in registry.snapshots()] == [OPEN, CLOSED, CLOSED]
    assert mini.refusal() is None


def test_two_deployments_on_one_breaker_with_other_settings_are_refused() -> None:
    registry = BreakerRegistry(clock=FakeClock())
    first = registry.get_or_create(KEY, ONE, holder="gpt4o-a")
    with pytest.raises(ConfigError) as refused:
        registry.get_or_create(KEY, FIVE, holder="gpt4o-b")
    [issue] = refused.value.issues
    assert issue.path == "deployment 'gpt4o-b'.runtime_config.circuit_breaker"
    assert "differs from deployment 'gpt4o-a'" in issue.message
    assert "openai model 'gpt-4o'" in issue.message
    assert ENDPOINT not in str(refused.value)
    assert first.config == ONE  # nothing changed
    # The defaults (an unset table) differ from a set one too.
    with pytest.raises(ConfigError):
        registry.get_or_create(KEY, CircuitBreakerConfig(), holder="gpt4o-c")
    # Other models at the endpoint are free to differ.
    assert registry.get_or_create(MINI, FIVE, holder="gpt4o-b").config == FIVE


def test_a_deployment_rebuilt_with_new_settings_reconfigures_its_breaker() -> None:
    registry = BreakerRegistry(clock=FakeClock())
    breaker = registry.get_or_create(KEY, FIVE, holder="a")
    breaker.record_failure(breaker.admit(), http_503())
    again = registry.get_or_create(KEY, ONE, holder="a")  # a reload of "a" alone
    assert again is breaker
    assert breaker.config == ONE
    assert breaker.snapshot().consecutive_failures == 1  # the state is kept


def test_an_apply_stages_the_claims_and_changes_the_breaker_when_it_commits() -> None:
    registry = BreakerRegistry(clock=FakeClock())
    breaker = registry.get_or_create(KEY, ONE, holder="a")
    registry.get_or_create(KEY, ONE, holder="b")
    breaker.record_failure(breaker.admit(), http_503())
    # "a" and "b" change their settings together: neither is refused for differing from
    # the other's old ones, and the breaker keeps its settings until the apply commits.
    registry.stage(kept=())
    assert registry.get_or_create(KEY, FIVE, holder="a") is breaker
    assert registry.get_or_create(KEY, FIVE, holder="b") is breaker
    assert breaker.config == ONE  # the running deployments still use it
    registry.commit()
    assert breaker.config == FIVE
    assert breaker.snapshot().consecutive_failures == 1  # the state is kept
    # Only "a" changes, "b" is kept: "a" is refused when it is built.
    registry.stage(kept=("b",))
    with pytest.raises(ConfigError):
        registry.get_or_create(KEY, ONE, holder="a")
    registry.abort()
    assert breaker.config == FIVE
    # "b" leaves: "a" alone may change it.
    registry.stage(kept=())
    registry.get_or_create(KEY, ONE, holder="a")
    registry.commit()
    assert breaker.config == ONE
    # Nobody holds it any more: a newcomer sets it.
    registry.stage(kept=())
    registry.commit()
    assert registry.get_or_create(KEY, FIVE, holder="c").config == FIVE


def test_a_refused_apply_changes_no_breaker_and_leaves_none_behind() -> None:
    registry = BreakerRegistry(clock=FakeClock())
    breaker = registry.get_or_create(KEY, ONE, holder="a")
    registry.stage(kept=())
    registry.get_or_create(KEY, FIVE, holder="a")  # "a" changes its settings...
    registry.get_or_create(MINI, FIVE, holder="new")  # ...and a newcomer gets a breaker
    assert len(registry) == 2
    registry.abort()  # ...but another deployment did not start
    assert breaker.config == ONE
    assert registry.get(MINI) is None
    assert len(registry) == 1
    # The running claims stand: "b" may not join "a" with other settings.
    with pytest.raises(ConfigError):
        registry.get_or_create(KEY, FIVE, holder="b")


def test_every_observer_is_told_even_after_one_fails(caplog: pytest.LogCaptureFixture) -> None:
    registry = BreakerRegistry(clock=FakeClock())
    seen: list[BreakerState] = []

    def broken(transition: BreakerTransition) -> None:
        raise RuntimeError("observer bug")

    registry.observe(broken)
    registry.observe(lambda transition: seen.append(transition.to_state))
    breaker = registry.get_or_create(KEY, ONE, holder="a")
    with caplog.at_level("INFO"):
        breaker.record_failure(breaker.admit(), http_503())
    assert seen == [OPEN]
    assert "a circuit observer failed" in caplog.text
    opened = [r for r in caplog.records if "closed -> open" in r.getMessage()]
    assert opened
    assert opened[0].levelname == "WARNING"
