"""The ``[tracing]`` table: defaults, every field, and each bad value with its file, line
and field — including tracing enabled where OpenTelemetry is not installed."""

from __future__ import annotations

import sys
import textwrap

import pytest

from rakka_inference.core.config import missing_tracing_packages, parse_config
from rakka_inference.core.deployment import Config, TracingConfig
from rakka_inference.core.errors import ConfigError, ConfigIssue


def toml(text: str) -> str:
    """Dedented, so that line 1 is the first line written in the test."""
    return textwrap.dedent(text).lstrip("\n")


def only_issue(text: str) -> ConfigIssue:
    with pytest.raises(ConfigError) as info:
        parse_config(toml(text), "test.toml", {})
    issues = info.value.issues
    assert len(issues) == 1, issues
    return issues[0]


def hide(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` and its modules fail to import, as if it were not installed."""
    for name in [n for n in sys.modules if n.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)


def assert_issue(issue: ConfigIssue, path: str, line: int | None, fragment: str) -> None:
    assert issue.source == "test.toml"
    assert (issue.path, issue.line) == (path, line), issue
    assert fragment in issue.message, issue


def test_tracing_is_off_by_default() -> None:
    assert parse_config("", "test.toml", {}).tracing == TracingConfig()
    assert TracingConfig() == TracingConfig(
        enabled=False,
        service_name="rakka-inference",
        exporter="otlp",
        endpoint=None,
        sample_ratio=1.0,
    )


def test_every_field() -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    config = parse_config(
        toml(
            """
            [tracing]
            enabled = true
            service_name = "edge-gateway"
            exporter = "otlp"
            endpoint = "http://collector:4318/v1/traces"
            sample_ratio = 0.25
            """
        ),
        "test.toml",
        {},
    )
    assert config == Config(
        tracing=TracingConfig(
            enabled=True,
            service_name="edge-gateway",
            exporter="otlp",
            endpoint="http://collector:4318/v1/traces",
            sample_ratio=0.25,
        )
    )


def test_a_partial_table_keeps_the_other_defaults() -> None:
    config = parse_config('[tracing]\nexporter = "console"\nsample_ratio = 0\n', "test.toml", {})
    assert config.tracing == TracingConfig(exporter="console", sample_ratio=0.0)


@pytest.mark.parametrize(
    ("line", "path", "fragment"),
    [
        ("enabled = 1", "tracing.enabled", "expected a boolean, got an integer"),
        ('service_name = " "', "tracing.service_name", "must not be empty"),
        (
            'exporter = "jaeger"',
            "tracing.exporter",
            "'jaeger' is not one of 'otlp', 'console', 'none'",
        ),
        ('exporter = "consol"', "tracing.exporter", "did you mean 'console'?"),
        ('endpoint = "collector:4318"', "tracing.endpoint", "must be an http:// or https:// URL"),
        ("sample_ratio = 1.5", "tracing.sample_ratio", "must be in [0, 1], got 1.5"),
        ("sample_ratio = -0.1", "tracing.sample_ratio", "must be in [0, 1]"),
        ('sample_ratio = "all"', "tracing.sample_ratio", "expected a number, got a string"),
        ("sampling = 0.5", "tracing.sampling", "unknown key 'sampling'"),
    ],
)
def test_bad_values(line: str, path: str, fragment: str) -> None:
    assert_issue(only_issue(f"[cluster]\n[tracing]\n{line}\n"), path, 3, fragment)


def test_an_endpoint_needs_the_otlp_exporter() -> None:
    issue = only_issue(
        """
        [tracing]
        exporter = "console"
        endpoint = "http://collector:4318/v1/traces"
        """
    )
    assert_issue(issue, "tracing.endpoint", 3, "applies only to exporter = 'otlp'")


def test_tracing_must_be_a_table() -> None:
    assert_issue(only_issue("tracing = true\n"), "tracing", 1, "expected a table, got a boolean")


def test_the_endpoint_is_not_echoed() -> None:
    issue = only_issue('[tracing]\nendpoint = "ftp://user:hunter2@collector"\n')
    assert "hunter2" not in str(issue)


def test_enabled_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "opentelemetry.sdk")
    issue = only_issue(
        """
        [cluster]
        name = "edge"

        [tracing]
        exporter = "none"
        enabled = true
        """
    )
    assert_issue(issue, "tracing.enabled", 6, "tracing needs OpenTelemetry")
    assert "opentelemetry.sdk" in issue.message
    assert issue.message.endswith("pip install 'rakka-inference[otel]'")
    assert str(issue).startswith("test.toml:6: tracing.enabled: ")


def test_the_otlp_exporter_needs_its_own_package(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "opentelemetry.exporter")
    issue = only_issue("[tracing]\nenabled = true\n")
    assert_issue(issue, "tracing.enabled", 2, "opentelemetry.exporter.otlp.proto.http")
    assert "opentelemetry.sdk" not in issue.message
    # Disabled tracing, or another exporter, needs no exporter package.
    assert parse_config("[tracing]\nenabled = false\n", "test.toml", {}).tracing.enabled is False
    console = TracingConfig(enabled=True, exporter="console")
    assert missing_tracing_packages(console) == ()


def test_missing_packages_are_found_without_importing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hide(monkeypatch, "opentelemetry")
    assert missing_tracing_packages(TracingConfig(enabled=True)) == (
        "opentelemetry.sdk",
        "opentelemetry.exporter.otlp.proto.http",
    )
