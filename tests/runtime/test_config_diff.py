"""The checks apply makes on a new config before anything starts."""

from __future__ import annotations

import pytest

from rakka_inference.core.deployment import Deployment
from rakka_inference.core.errors import ConfigError
from rakka_inference.core.policies import RateLimits
from rakka_inference.core.runtimes import OpenAIConfig, RuntimeKind
from rakka_inference.core.secrets import SecretRef
from rakka_inference.runtime.config_diff import check_aliases, check_shared_limits


def remote(name: str, limits: RateLimits, env: str = "KEY", model: str = "gpt-4o") -> Deployment:
    config = OpenAIConfig(api_key=SecretRef.from_env(env), rate_limits=limits)
    return Deployment(name=name, model=model, runtime=RuntimeKind.OPENAI, runtime_config=config)


RPM_10 = RateLimits(requests_per_minute=10)


@pytest.mark.parametrize(
    ("first", "second"),
    [(RateLimits(), RPM_10), (RPM_10, RateLimits()), (RPM_10, RateLimits(tokens_per_minute=5))],
)
def test_a_new_config_with_two_limits_on_one_key_is_refused(
    first: RateLimits, second: RateLimits
) -> None:
    deployments = [remote("a", first), remote("b", second)]
    for check in (check_shared_limits, check_aliases):
        with pytest.raises(ConfigError) as info:
            check(deployments)
        (issue,) = info.value.issues
        assert issue.path == "deployment 'b'.runtime_config.rate_limits"
        assert issue.message.startswith(
            "deployment 'b'.runtime_config.rate_limits differs from deployment "
            "'a'.runtime_config.rate_limits, with which it shares one rate limiter"
        )


def test_same_limits_or_separate_keys_pass() -> None:
    check_aliases([remote("a", RPM_10), remote("b", RPM_10)])
    check_aliases([remote("a", RPM_10), remote("b", RateLimits(), env="OTHER")])
    check_aliases([remote("a", RPM_10), remote("b", RateLimits(), model="gpt-4o-mini")])
