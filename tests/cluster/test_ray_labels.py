"""Which nodes get a gateway, and how the driver describes them: pure functions over rows
of Ray's node table."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from rakka_inference.cluster.ray_driver import describe
from rakka_inference.cluster.ray_nodes import wants_gateway


@pytest.mark.parametrize(
    ("labels", "wanted"),
    [
        ({}, True),
        ({"rakka-gateway": "true"}, True),
        ({"rakka-gateway": "false"}, False),
        ({"rakka-gateway": "False"}, False),
        ({"rakka-egress": "false"}, False),  # no providers to reach: no remote replicas
        ({"rakka-bind": "10.0.0.2:8080"}, True),
    ],
)
def test_a_gateway_on_every_node_but_those_labelled_off(
    labels: dict[str, str], wanted: bool
) -> None:
    assert wants_gateway({"NodeID": "n", "Labels": labels}) is wanted
    assert wants_gateway({"NodeID": "n"}) is True


def test_the_driver_says_where_each_gateway_serves_and_why_not() -> None:
    status = {
        "singletons": {"deployment_manager": "b", "limit_authority": "b"},
        "nodes": [
            {"node": "a", "alive": True, "gateway": "127.0.0.1:8080", "problem": None},
            {"node": "b", "alive": True, "gateway": None, "problem": "secret not set"},
            {"node": "c", "alive": False, "gateway": None, "problem": None},
        ],
    }
    assert describe(status) == {
        "a": "gateway 127.0.0.1:8080",
        "b": "no gateway (secret not set), deployment manager",
        "c": "down",
    }
