"""``[cluster]``'s limits on client connections: defaults, every field, and each bad
value with its file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from rakka_inference.core.config import parse_config
from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.core.errors import ConfigError, ConfigIssue


def toml(text: str) -> str:
    """Dedented, so that line 1 is the first line written in the test."""
    return textwrap.dedent(text).lstrip("\n")


def issues_of(text: str) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml(text), "test.toml", {})
    return list(info.value.issues)


def test_the_defaults() -> None:
    cluster = parse_config("", "t").cluster
    assert cluster == ClusterConfig()
    assert (cluster.header_timeout_ms, cluster.body_timeout_ms) == (10_000, 30_000)
    assert (cluster.max_connections, cluster.max_connections_per_client) == (4096, 1024)
    assert (cluster.max_request_line_bytes, cluster.max_header_bytes) == (8192, 8192)
    assert cluster.max_head_bytes == 65_536


def test_every_field_is_read() -> None:
    cluster = parse_config(
        toml(
            """
            [cluster]
            header_timeout_ms = 2500
            body_timeout_ms = 60_000
            max_connections = 100
            max_connections_per_client = 10
            max_request_line_bytes = 2048
            max_header_bytes = 4096
            max_head_bytes = 16384
            """
        ),
        "t",
    ).cluster
    assert (cluster.header_timeout_ms, cluster.body_timeout_ms) == (2500, 60_000)
    assert (cluster.max_connections, cluster.max_connections_per_client) == (100, 10)
    assert (cluster.max_request_line_bytes, cluster.max_header_bytes) == (2048, 4096)
    assert cluster.max_head_bytes == 16384


def test_each_bad_value_on_its_line() -> None:
    issues = issues_of(
        """
        [cluster]
        header_timeout_ms = 0
        body_timeout_ms = -5
        max_connections = 0
        max_connections_per_client = 2_000_000
        max_request_line_bytes = 255
        max_header_bytes = 2_000_000
        max_head_bytes = "64k"
        """
    )
    found = {(issue.path, issue.line): issue.message for issue in issues}
    assert found == {
        ("cluster.header_timeout_ms", 2): "must be > 0, got 0",
        ("cluster.body_timeout_ms", 3): "must be > 0, got -5",
        ("cluster.max_connections", 4): "must be in 1..1000000, got 0",
        ("cluster.max_connections_per_client", 5): "must be in 1..1000000, got 2000000",
        ("cluster.max_request_line_bytes", 6): "must be in 256..1048576, got 255",
        ("cluster.max_header_bytes", 7): "must be in 256..1048576, got 2000000",
        ("cluster.max_head_bytes", 8): found[("cluster.max_head_bytes", 8)],
    }
    assert "integer" in found[("cluster.max_head_bytes", 8)]


def test_a_line_limit_past_the_heads_is_refused() -> None:
    issues = issues_of(
        """
        [cluster]
        max_head_bytes = 4096
        max_request_line_bytes = 8192
        max_header_bytes = 4096
        """
    )
    assert [(i.path, i.line, i.message) for i in issues] == [
        ("cluster.max_request_line_bytes", 3, "must be <= max_head_bytes (4096)")
    ]


def test_a_misspelt_field_is_named_with_a_suggestion() -> None:
    (issue,) = issues_of("[cluster]\nheader_timeout = 10_000\n")
    assert "did you mean 'header_timeout_ms'?" in issue.message
