"""Deployments sharing a rate limiter (provider, credential, model) set the same limits."""

from __future__ import annotations

import textwrap

import pytest

from rakka_inference.core.config import parse_config
from rakka_inference.core.errors import ConfigError, ConfigIssue
from rakka_inference.core.policies import RateLimits


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml(text), "test.toml", {})
    return list(info.value.issues)


TWO = """
[[deployment]]
name = "a"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
api_key = {{ from_env = "{key_a}" }}
{limits_a}
[[deployment]]
name = "b"
model = "gpt-4o"
runtime = "openai"
[deployment.runtime_config]
api_key = {{ from_env = "{key_b}" }}
{limits_b}
"""

RPM_10 = "[deployment.runtime_config.rate_limits]\nrequests_per_minute = 10"
RPM_60 = "[deployment.runtime_config.rate_limits]\nrequests_per_minute = 60"


def two(limits_a: str, limits_b: str, key_a: str = "K", key_b: str = "K") -> str:
    return TWO.format(limits_a=limits_a, limits_b=limits_b, key_a=key_a, key_b=key_b)


def test_an_unlimited_deployment_is_not_capped_by_its_neighbour() -> None:
    issues = issues_of(two("", RPM_10))
    assert len(issues) == 1, issues
    issue = issues[0]
    assert issue.source == "test.toml"
    assert issue.path == "deployment[1].runtime_config.rate_limits"
    assert issue.line == 14  # the [deployment.runtime_config.rate_limits] header of 'b'
    assert (
        "deployment 'b'.runtime_config.rate_limits differs from deployment "
        "'a'.runtime_config.rate_limits, with which it shares one rate limiter" in issue.message
    )
    assert "env:K" in issue.message


def test_a_limit_cannot_vanish_behind_a_neighbour_without_one() -> None:
    issues = issues_of(two(RPM_60, ""))
    assert [issue.path for issue in issues] == ["deployment[1].runtime_config.rate_limits"]
    assert issues[0].line == 13  # no table of its own: the runtime_config line


def test_different_limits_are_refused() -> None:
    (issue,) = issues_of(two(RPM_10, RPM_60))
    assert "'b'" in issue.message
    assert "'a'" in issue.message


def test_identical_limits_and_separate_keys_load() -> None:
    same = parse_config(toml(two(RPM_10, RPM_10)), "t.toml", {})
    assert {d.runtime_config.rate_limits for d in same.deployments} == {  # type: ignore[union-attr]
        RateLimits(requests_per_minute=10)
    }
    parse_config(toml(two("", "")), "t.toml", {})
    parse_config(toml(two(RPM_10, RPM_60, key_b="OTHER")), "t.toml", {})


def test_other_models_do_not_share() -> None:
    text = two(RPM_10, RPM_60).replace('model = "gpt-4o"', 'model = "gpt-4o-mini"', 1)
    parse_config(toml(text), "t.toml", {})


@pytest.mark.filterwarnings("ignore::rakka_inference.core.secrets.InlineSecretWarning")
def test_inline_keys_compare_by_fingerprint_and_never_show() -> None:
    text = two(RPM_10, RPM_60).replace('{ from_env = "K" }', '"sk-secret-value"')
    (issue,) = issues_of(text)
    assert "sk-secret-value" not in str(issue)
    assert "inline:" in issue.message
    other = text.replace('"sk-secret-value"', '"sk-other-value"', 1)
    parse_config(toml(other), "t.toml", {})


def test_a_defaulted_key_counts_as_its_environment_variable() -> None:
    text = two(RPM_10, "").replace('api_key = { from_env = "K" }\n', "")
    (issue,) = issues_of(text)
    assert "env:OPENAI_API_KEY" in issue.message


# ---------------------------------------------------------------------- by what the keys hold


def test_with_secrets_read_two_variables_holding_one_key_share_and_are_checked() -> None:
    text = toml(two(RPM_10, "", key_a="KEY_ONE", key_b="KEY_TWO"))
    same = {"KEY_ONE": "sk-one-key", "KEY_TWO": "sk-one-key"}
    parse_config(text, "t.toml", same)  # not read: two references, two keys as far as told
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml", same, check_secrets=True)
    (issue,) = info.value.issues
    assert issue.path == "deployment[1].runtime_config.rate_limits"
    assert "key env:KEY_TWO, which holds the key of env:KEY_ONE" in issue.message
    assert "sk-one-key" not in str(info.value)
    # Two keys: two limiters, each its own limits.
    apart = {"KEY_ONE": "sk-one-key", "KEY_TWO": "sk-another"}
    parse_config(text, "t.toml", apart, check_secrets=True)


@pytest.mark.filterwarnings("ignore::rakka_inference.core.secrets.InlineSecretWarning")
def test_an_inline_key_and_a_variable_holding_it_share() -> None:
    text = toml(two(RPM_10, RPM_60, key_b="KEY_TWO")).replace(
        '{ from_env = "K" }', '"sk-inline-value"'
    )
    environ = {"KEY_TWO": "sk-inline-value"}
    parse_config(text, "t.toml", environ)  # not read: an inline key and a variable
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml", environ, check_secrets=True)
    (issue,) = info.value.issues
    assert "sk-inline-value" not in str(info.value)
    assert "key env:KEY_TWO, which holds the key of inline:" in issue.message


def test_a_key_that_cannot_be_read_is_compared_by_reference_and_said_apart() -> None:
    text = toml(two(RPM_10, RPM_60, key_a="UNSET", key_b="UNSET"))
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml", {}, check_secrets=True)
    messages = [issue.message for issue in info.value.issues]
    assert sum("secret env:UNSET is not set" in m for m in messages) == 2
    assert sum("with which it shares one rate limiter" in m for m in messages) == 1
