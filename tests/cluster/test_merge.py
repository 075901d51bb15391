"""The node's answers merged from its workers': metrics labelled per worker, admin views."""

from __future__ import annotations

from rakka_inference.cluster.merge import (
    label_sample,
    merge_costs,
    merge_deployments,
    merge_metrics,
    merge_rows,
    merge_status,
)

W0 = """# HELP rakka_requests_total Requests.
# TYPE rakka_requests_total counter
rakka_requests_total{deployment="a",outcome="ok"} 3
# HELP rakka_latency_seconds Latency.
# TYPE rakka_latency_seconds histogram
rakka_latency_seconds_bucket{le="0.1"} 1
rakka_latency_seconds_bucket{le="+Inf"} 2
rakka_latency_seconds_sum 0.3
rakka_latency_seconds_count 2
"""
W1 = """# HELP rakka_requests_total Requests.
# TYPE rakka_requests_total counter
rakka_requests_total{deployment="a",outcome="ok"} 5
# HELP rakka_up Up.
# TYPE rakka_up gauge
rakka_up 1
"""


def test_a_sample_gets_the_worker_as_its_first_label() -> None:
    assert label_sample('m{a="1"} 2', "w0") == 'm{worker="w0",a="1"} 2'
    assert label_sample("m 2", "w1") == 'm{worker="w1"} 2'
    assert label_sample("m{} 2", "w1") == 'm{worker="w1"} 2'
    assert label_sample("!garbage", "w1") == "!garbage"


def test_metrics_keep_each_family_together_with_one_header() -> None:
    text = merge_metrics([("w0", W0), ("w1", W1)])
    lines = text.splitlines()
    assert lines.count("# TYPE rakka_requests_total counter") == 1
    start = lines.index("# TYPE rakka_requests_total counter")
    assert lines[start + 1 : start + 3] == [
        'rakka_requests_total{worker="w0",deployment="a",outcome="ok"} 3',
        'rakka_requests_total{worker="w1",deployment="a",outcome="ok"} 5',
    ]
    histogram = lines.index("# TYPE rakka_latency_seconds histogram")
    assert lines[histogram + 4] == 'rakka_latency_seconds_count{worker="w0"} 2'
    assert 'rakka_up{worker="w1"} 1' in lines
    assert text.endswith("\n")
    assert merge_metrics([]) == ""


def test_a_sample_without_a_header_is_its_own_family() -> None:
    text = merge_metrics([("w0", "\nlone 1\n"), ("w1", "lone 2\n")])
    assert text == 'lone{worker="w0"} 1\nlone{worker="w1"} 2\n'


def test_deployments_merge_by_name_with_every_workers_replicas() -> None:
    views = [
        ("w0", {"deployments": [{"name": "b", "replicas": [{"name": "b-0"}]}]}),
        ("w1", None),
        (
            "w2",
            {
                "deployments": [
                    {"name": "b", "replicas": [{"name": "b-0"}]},
                    {"name": "a", "replicas": []},
                ]
            },
        ),
    ]
    merged = merge_deployments(views)
    assert [d["name"] for d in merged] == ["a", "b"]
    assert merged[1]["workers"] == ["w0", "w2"]
    assert merged[1]["replicas"] == [
        {"worker": "w0", "name": "b-0"},
        {"worker": "w2", "name": "b-0"},
    ]


def test_rows_are_marked_and_costs_summed() -> None:
    views = [
        ("w0", {"data": [{"deployment": "a", "model": "m", "cost_usd": 1.5, "requests": 2}]}),
        ("w1", {"data": [{"deployment": "a", "model": "m", "cost_usd": 0.5, "requests": 1}]}),
        ("w2", None),
    ]
    assert merge_rows(views, "data")[1] == {
        "worker": "w1",
        "deployment": "a",
        "model": "m",
        "cost_usd": 0.5,
        "requests": 1,
    }
    assert merge_costs(views) == [{"deployment": "a", "model": "m", "cost_usd": 2.0, "requests": 3}]


def test_status_lists_who_answered() -> None:
    status = merge_status([("w0", {"circuits": [{"state": "open"}]}), ("w1", None)])
    assert status["workers"] == [
        {"worker": "w0", "answered": True},
        {"worker": "w1", "answered": False},
    ]
    assert status["circuits"] == [{"worker": "w0", "state": "open"}]
    assert status["deployments"] == []
    assert status["budgets"] == []
