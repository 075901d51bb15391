"""What connections may cost: the counts, caps, clients, log and limits, on a fake clock.
What the server does with them is tested on real sockets against ``rakka serve``
(``tests/apps/test_serve_connections.py``), and at its edges in ``test_connection_guard``."""

from __future__ import annotations

import dataclasses
import logging

import orjson
import pytest

from rakka_inference.core.deployment import ClusterConfig
from rakka_inference.observe.metrics import InferenceMetrics
from rakka_inference.runtime.connection_limits import (
    FILE_RESERVE,
    SHED_REASONS,
    ConnectionGuard,
    ConnectionLimits,
    client_key,
    connections_within,
)
from rakka_inference.testkit.clock import FakeClock
from rakka_inference.wire.request_head import HeadLimit

CLUSTER = ClusterConfig(max_connections=4, max_connections_per_client=2)


def guard(cluster: ClusterConfig = CLUSTER, clock: FakeClock | None = None) -> ConnectionGuard:
    return ConnectionGuard(cluster, clock=clock or FakeClock(), file_limited=lambda wanted: wanted)


def test_the_per_client_cap_then_the_total_cap() -> None:
    g = guard()
    assert g.admit("10.0.0.1") is not None
    assert g.admit("10.0.0.1") is not None
    assert g.admit("10.0.0.1") is None
    assert g.admit("10.0.0.2") is not None
    assert g.admit("10.0.0.3") is not None
    assert g.open == 4
    assert g.admit("10.0.0.4") is None
    assert g.shed_counts["client_limit"] == 1
    assert g.shed_counts["total_limit"] == 1
    g.release("10.0.0.1")
    assert g.admit("10.0.0.4") is not None
    g.release("10.0.0.2")
    assert g.open == 3
    assert g.admit("10.0.0.1") is not None  # one of its two was released


def test_local_sockets_are_not_capped_nor_counted() -> None:
    g = guard(ClusterConfig(max_connections=1))
    assert g.admit("10.0.0.1") is not None
    assert g.admit(None) is not None
    g.release(None)
    assert g.open == 1


def test_clients_are_addresses_and_ipv6_clients_their_64() -> None:
    assert client_key(("192.0.2.7", 5000)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("2001:db8:1:2:bbbb::9", 5001, 0, 0)) == "2001:db8:1:2::/64"
    assert client_key(("::ffff:192.0.2.7", 5000, 0, 0)) == "192.0.2.7"
    assert client_key(("fe80::1%eth0", 5000, 0, 2)) == "fe80::/64"
    assert client_key("") is None  # a Unix socket's peer
    assert client_key(None) is None


def test_the_file_limit_bounds_the_total() -> None:
    assert connections_within(4096, -1) == 4096  # no limit
    assert connections_within(4096, 20_000) == 4096
    assert connections_within(4096, 1024) == (1024 - FILE_RESERVE) // 2
    assert connections_within(10, 0) == 1


def test_a_lower_file_limit_is_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "rakka_inference.connections")
    cluster = ClusterConfig(max_connections=1000, max_connections_per_client=250)
    g = ConnectionGuard(cluster, file_limited=lambda wanted: 100)
    assert g.limits.max_connections == 100
    assert g.limits.max_connections_per_client == 25  # a quarter of the whole, as configured
    g.follow(lambda: dataclasses.replace(cluster))
    assert g.admit("10.0.0.1") is not None
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "the open-file limit holds 100 client connections, not max_connections = 1000 "
        "(and 25 from one client): raise it (ulimit -n, systemd's LimitNOFILE)"
    ]
    behind_a_proxy = ClusterConfig(max_connections=1000, max_connections_per_client=1000)
    held = ConnectionLimits.of(behind_a_proxy, max_connections=100)
    assert held.max_connections_per_client == 100
    tiny = ConnectionLimits.of(ClusterConfig(max_connections_per_client=1), max_connections=10)
    assert tiny.max_connections_per_client == 1


def test_a_connection_gets_the_limits_current_when_it_is_accepted() -> None:
    g = guard()
    current = [CLUSTER]
    g.follow(lambda: current[0])
    first = g.admit("10.0.0.1")
    assert first is not None
    assert first.max_head_bytes == 65_536
    current[0] = dataclasses.replace(CLUSTER, max_head_bytes=4096, header_timeout_ms=500)
    second = g.admit("10.0.0.2")
    assert second is not None
    assert (second.max_head_bytes, second.header_timeout_s) == (4096, 0.5)
    assert first.max_head_bytes == 65_536  # the first keeps what it was accepted with


def test_sheds_are_logged_once_per_reason_every_ten_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "rakka_inference.connections")
    clock = FakeClock()
    g = guard(clock=clock)
    limits = g.limits
    for _ in range(5):
        g.shed("head_timeout", "10.0.0.1", limits)
    g.shed("header_too_long", "10.0.0.2", limits)
    clock.advance(9.9)
    g.shed("head_timeout", "10.0.0.3", limits)
    clock.advance(0.2)
    g.shed("head_timeout", "10.0.0.4", limits)
    assert [r.getMessage() for r in caplog.records] == [
        "closed a connection from 10.0.0.1: its request head did not arrive within 10 s",
        "closed a connection from 10.0.0.2: a header line is longer than 8192 bytes "
        "(max_header_bytes)",
        "closed a connection from 10.0.0.4: its request head did not arrive within 10 s "
        "(5 more since the last line for this)",
    ]
    assert g.shed_counts["head_timeout"] == 7


def test_every_reason_is_described_and_counted_into_the_metrics() -> None:
    g = guard()
    metrics = InferenceMetrics()
    metrics.watch_connections(g)
    g.on_shed = metrics.connection_shed
    assert g.admit("10.0.0.1") is not None
    text = metrics.render().decode()
    for reason in SHED_REASONS:
        assert f'inference_connections_shed_total{{reason="{reason}"}} 0' in text
        assert g.limits.describe(reason)
    assert "\ninference_connections_open 1\n" in text
    g.shed("body_timeout", "10.0.0.1", g.limits)
    assert 'inference_connections_shed_total{reason="body_timeout"} 1' in metrics.render().decode()


def test_the_answers_to_a_head_too_long_are_openai_errors() -> None:
    limits = ConnectionLimits.of(ClusterConfig(), max_connections=10)
    line = limits.error(HeadLimit.REQUEST_LINE)
    assert line.http_status == 414
    assert line.to_openai_error() == {
        "error": {
            "message": "the request line is longer than 8192 bytes",
            "type": "invalid_request_error",
            "param": None,
            "code": "uri_too_long",
        }
    }
    for limit, words in ((HeadLimit.HEADER, "a request header"), (HeadLimit.HEAD, "headers")):
        error = limits.error(limit)
        body = orjson.loads(orjson.dumps(error.to_openai_error()))
        assert error.http_status == 431
        assert body["error"]["code"] == "request_header_fields_too_large"
        assert words in body["error"]["message"]


def test_an_unreadable_ipv6_host_is_its_own_client() -> None:
    assert client_key(("zz::not-an-address", 1, 0, 0)) == "zz::not-an-address"
