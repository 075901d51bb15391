"""The metrics registry and its text exposition (format 0.0.4): exact text, a strict parse,
escaping, cumulative buckets, bounded cardinality and collect-time gauges."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from rakka_inference.observe.prometheus import (
    CONTENT_TYPE,
    OVERFLOW,
    OVERFLOW_METRIC,
    LabelValues,
    Registry,
    escape_label_value,
    format_value,
)

# ---------------------------------------------------------------- a strict little parser

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)\Z")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\[\\"n])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass
class Family:
    help: str = ""
    type: str = ""
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    inner, labels, pos = text[1:-1], {}, 0
    while pos < len(inner):
        match = _LABEL.match(inner, pos)
        assert match is not None, f"bad labels at {inner[pos:]!r}"
        name, raw = match.groups()
        assert name not in labels
        labels[name] = re.sub(r'\\[\\"n]', lambda m: _UNESCAPE[m.group()], raw)
        pos = match.end()
        if pos < len(inner):
            assert inner[pos] == ",", inner
            pos += 1
    return labels


def parse(payload: bytes) -> dict[str, Family]:
    """Families by name; fails on anything the 0.0.4 text format does not allow."""
    text = payload.decode("utf-8")
    assert not text or text.endswith("\n")
    families: dict[str, Family] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} declared twice"
            families[name] = Family(
                help=re.sub(r"\\[\\n]", lambda m: _UNESCAPE[m.group()], help_text)
            )
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current
            assert kind in {"counter", "gauge", "histogram"}
            families[name].type = kind
        else:
            match = _SAMPLE.match(line)
            assert match is not None, f"bad sample line {line!r}"
            name, labels, value = match.groups()
            assert current is not None
            family = families[current]
            allowed = {current}
            if family.type == "histogram":
                allowed = {f"{current}_bucket", f"{current}_sum", f"{current}_count"}
            assert name in allowed, f"{name} under {current}"
            family.samples.append((name, _labels(labels) if labels else {}, float(value)))
    return families


def value(families: dict[str, Family], name: str, **labels: str) -> float:
    family = name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in families:
            family = name.removesuffix(suffix)
    found = [v for n, ls, v in families[family].samples if n == name and ls == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


# ---------------------------------------------------------------- exact text


def test_exposition_is_exact() -> None:
    registry = Registry()
    requests = registry.counter("requests_total", "Requests served.", ("route", "code"))
    up = registry.gauge("up", "Is it up.")
    latency = registry.histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 1))
    plain = registry.histogram("plain_seconds", "Unlabelled.", buckets=(0.5,))
    registry.counter("unused_total", "Never touched.", ("x",))
    requests.labels("/a", "200").inc()
    requests.labels("/a", "200").inc(2)
    requests.labels("/b", "500").inc(0.5)
    up.set(1)
    for seconds in (0.05, 0.1, 0.7, 3.0):
        latency.labels("/a").observe(seconds)
    plain.observe(0.25)
    assert registry.render().decode() == (
        "# HELP requests_total Requests served.\n"
        "# TYPE requests_total counter\n"
        'requests_total{route="/a",code="200"} 3\n'
        'requests_total{route="/b",code="500"} 0.5\n'
        "# HELP up Is it up.\n"
        "# TYPE up gauge\n"
        "up 1\n"
        "# HELP latency_seconds Latency.\n"
        "# TYPE latency_seconds histogram\n"
        'latency_seconds_bucket{route="/a",le="0.1"} 2\n'
        'latency_seconds_bucket{route="/a",le="1.0"} 3\n'
        'latency_seconds_bucket{route="/a",le="+Inf"} 4\n'
        'latency_seconds_sum{route="/a"} 3.85\n'
        'latency_seconds_count{route="/a"} 4\n'
        "# HELP plain_seconds Unlabelled.\n"
        "# TYPE plain_seconds histogram\n"
        'plain_seconds_bucket{le="0.5"} 1\n'
        'plain_seconds_bucket{le="+Inf"} 1\n'
        "plain_seconds_sum 0.25\n"
        "plain_seconds_count 1\n"
        "# HELP unused_total Never touched.\n"
        "# TYPE unused_total counter\n"
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_an_empty_registry_renders_nothing() -> None:
    assert Registry().render() == b""


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (42, "42"),
        (-3, "-3"),
        (0.0, "0.0"),
        (2.5, "2.5"),
        (1e-05, "1e-05"),
        (5e-05, "5e-05"),
        (1.5e20, "1.5e+20"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
        (True, "1.0"),
    ],
)
def test_values_are_written_as_prometheus_parses_them(number: float, text: str) -> None:
    assert format_value(number) == text
    # Go's ParseFloat, which Prometheus uses, reads the same forms as float().
    parsed = float(text)
    assert parsed == number or (math.isnan(parsed) and math.isnan(number))


# ---------------------------------------------------------------- escaping


def test_label_values_and_help_are_escaped() -> None:
    nasty = 'back\\slash "quoted"\nnew line'
    assert escape_label_value(nasty) == 'back\\\\slash \\"quoted\\"\\nnew line'
    registry = Registry()
    registry.gauge("g", 'Help with \\ and\na newline and "quotes".', ("v",)).labels(nasty).set(7)
    text = registry.render().decode()
    assert '# HELP g Help with \\\\ and\\na newline and "quotes".\n' in text
    assert 'g{v="back\\\\slash \\"quoted\\"\\nnew line"} 7\n' in text
    assert text.count("\n") == 3  # no raw newline escaped into the output
    families = parse(registry.render())
    assert families["g"].help == 'Help with \\ and\na newline and "quotes".'
    assert families["g"].samples == [("g", {"v": nasty}, 7.0)]


def test_unicode_label_values_are_utf8() -> None:
    registry = Registry()
    registry.counter("c_total", "c", ("who",)).labels("zoë ☃").inc()
    assert 'c_total{who="zoë ☃"} 1\n'.encode() in registry.render()


# ---------------------------------------------------------------- histograms


def test_buckets_are_cumulative_and_le_is_inclusive() -> None:
    registry = Registry()
    histogram = registry.histogram("h", "h", ("k",), buckets=(1, 2, 5))
    child = histogram.labels("x")
    for observed in (0.5, 1, 1.5, 2, 2, 4.9, 5, 5.01, 100, -1):
        child.observe(observed)
    families = parse(registry.render())
    buckets = [(ls["le"], v) for n, ls, v in families["h"].samples if n == "h_bucket"]
    assert buckets == [("1.0", 3), ("2.0", 6), ("5.0", 8), ("+Inf", 10)]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert value(families, "h_count", k="x") == 10 == child.count
    assert value(families, "h_sum", k="x") == pytest.approx(120.91)


def test_a_trailing_inf_bound_is_implicit() -> None:
    histogram = Registry().histogram("h", "h", buckets=[0.1, 1.0, math.inf])
    assert histogram.bounds == (0.1, 1.0)


@pytest.mark.parametrize("buckets", [(), (math.inf,), (1, 1), (2, 1), (math.nan,), (-math.inf, 1)])
def test_bad_buckets_are_refused(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bucket"):
        Registry().histogram("h", "h", buckets=buckets)


def test_le_is_reserved_for_histograms() -> None:
    with pytest.raises(ValueError, match="'le' is reserved"):
        Registry().histogram("h", "h", ("le",), buckets=(1,))
    Registry().gauge("g", "a gauge may use it", ("le",))


# ---------------------------------------------------------------- definitions and use


@pytest.mark.parametrize("name", ["", "9lives", "has-dash", "spa ce", "é"])
def test_bad_metric_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Registry().counter(name, "x")


@pytest.mark.parametrize("labels", [("__reserved",), ("a-b",), ("1a",), ("a", "a")])
def test_bad_label_names_are_refused(labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="label name"):
        Registry().counter("c_total", "x", labels)


def test_names_are_registered_once() -> None:
    registry = Registry()
    registry.counter("c_total", "x")
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("c_total", "x")
    with pytest.raises(ValueError, match="already registered"):
        registry.counter(OVERFLOW_METRIC, "x")
    with pytest.raises(ValueError, match="max_series"):
        registry.counter("d_total", "x", max_series=0)


def test_label_values_are_checked_once_per_new_series() -> None:
    counter = Registry().counter("c_total", "x", ("a", "b"))
    with pytest.raises(ValueError, match="expected 2 label values"):
        counter.labels("only-one")
    with pytest.raises(TypeError, match="must be str"):
        counter.labels("a", 3)  # type: ignore[arg-type]
    assert len(counter) == 0


def test_unlabelled_and_labelled_use() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "x")
    gauge = registry.gauge("g", "x")
    labelled = registry.counter("l_total", "x", ("a",))
    counter.inc()
    counter.inc(4)
    gauge.set(10)
    gauge.inc(2.5)
    gauge.dec(0.5)
    gauge.dec()
    with pytest.raises(ValueError, match="only goes up"):
        counter.inc(-1)
    with pytest.raises(ValueError, match=r"use \.labels"):
        labelled.inc()
    assert labelled.labels("x") is labelled.labels("x")  # cached
    families = parse(registry.render())
    assert value(families, "c_total") == 5
    assert value(families, "g") == 11


# ---------------------------------------------------------------- cardinality


def test_new_label_sets_past_max_series_fold_into_one_overflow_series() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "x", ("user",), max_series=2)
    histogram = registry.histogram("h", "x", ("a", "b"), buckets=(1,), max_series=1)
    counter.labels("a").inc()
    counter.labels("b").inc()
    for name in ("c", "d", "e"):
        counter.labels(name).inc(10)
    counter.labels("a").inc()  # existing series are untouched by the overflow
    histogram.labels("x", "y").observe(0.5)
    histogram.labels("z", "w").observe(2)
    assert len(counter) == 3
    assert len(histogram) == 2
    assert counter.labels("f") is counter.labels(OVERFLOW)  # a direct hit: not a fold
    assert registry.overflows("c_total") == 4
    assert registry.overflows("h") == 1
    assert registry.overflows("unknown") == 0
    families = parse(registry.render())
    assert families["c_total"].samples == [
        ("c_total", {"user": "a"}, 2),
        ("c_total", {"user": "b"}, 1),
        ("c_total", {"user": OVERFLOW}, 30),
    ]
    assert value(families, "h_count", a=OVERFLOW, b=OVERFLOW) == 1
    assert families[OVERFLOW_METRIC].type == "counter"
    assert value(families, OVERFLOW_METRIC, metric="c_total") == 4
    assert value(families, OVERFLOW_METRIC, metric="h") == 1


def test_twenty_thousand_distinct_labels_stay_bounded() -> None:
    registry = Registry()
    counter = registry.counter("c_total", "x", ("id",), max_series=100)
    for i in range(20_000):
        counter.labels(f"request-{i}").inc()
    assert len(counter) == 101
    assert value(parse(registry.render()), "c_total", id=OVERFLOW) == 19_900


# ---------------------------------------------------------------- collect-time gauges


def test_callback_gauges_are_read_at_render_time() -> None:
    registry = Registry()
    depth = {"a": 1, "b": 2}

    def collect() -> Iterator[tuple[LabelValues, float]]:
        for name, queued in depth.items():
            yield (name,), queued

    registry.gauge_callback("queue_depth", "Queued.", ("replica",), collect)
    registry.gauge_callback("nothing", "Nothing yet.", (), lambda: ())
    assert value(parse(registry.render()), "queue_depth", replica="a") == 1
    depth["a"] = 7
    depth["c"] = 0
    text = registry.render().decode()
    assert text == (
        "# HELP queue_depth Queued.\n"
        "# TYPE queue_depth gauge\n"
        'queue_depth{replica="a"} 7\n'
        'queue_depth{replica="b"} 2\n'
        'queue_depth{replica="c"} 0\n'
        "# HELP nothing Nothing yet.\n"
        "# TYPE nothing gauge\n"
    )


def test_callback_samples_past_max_series_are_dropped_and_counted() -> None:
    registry = Registry()
    registry.gauge_callback(
        "g", "x", ("i",), lambda: (((str(i),), i) for i in range(5)), max_series=3
    )
    families = parse(registry.render())
    assert [ls["i"] for _, ls, _ in families["g"].samples] == ["0", "1", "2"]
    assert value(families, OVERFLOW_METRIC, metric="g") == 2
    registry.render()
    assert registry.overflows("g") == 4  # counted per scrape


def test_a_failing_callback_leaves_only_its_family_out(caplog: pytest.LogCaptureFixture) -> None:
    registry = Registry()

    def broken() -> Iterator[tuple[LabelValues, float]]:
        yield ("ok",), 1
        raise RuntimeError("replica went away")

    registry.counter("before_total", "x").inc()
    registry.gauge_callback("broken", "x", ("r",), broken)
    registry.gauge_callback("wrong_arity", "x", ("r",), lambda: [(("a", "b"), 1)])
    registry.gauge("after", "x").set(3)
    with caplog.at_level(logging.ERROR, logger="rakka_inference.metrics"):
        families = parse(registry.render())
    assert set(families) == {"before_total", "after"}
    assert value(families, "after") == 3
    assert [r.getMessage() for r in caplog.records] == [
        "metrics: collecting broken failed; left out of this scrape",
        "metrics: collecting wrong_arity failed; left out of this scrape",
    ]
