"""A small metrics registry and the Prometheus text exposition format, version 0.0.4.

Three kinds of metric, each with a fixed tuple of label names given at creation:

- :class:`Counter`: only goes up (requests, tokens, dollars);
- :class:`Gauge`: set, up or down;
- :class:`Histogram`: fixed bucket bounds; rendered as cumulative ``_bucket{le=...}``
  series with a final ``le="+Inf"``, then ``_sum`` and ``_count``.

The hot path. ``metric.labels(*values)`` returns the *child* that holds one label set's
value; children are cached in a dict keyed by the tuple of label values, so recording is
one dict lookup and an add (``requests.labels("gpt", "openai", "ok").inc()``). Callers that
record often keep the child and skip the lookup. Histograms find the bucket by bisection
and keep per-bucket counts; the cumulative sums are made when rendered, not on every
observation.

Cardinality is bounded. A metric holds at most ``max_series`` label sets. A new label set
beyond that is folded into one overflow series whose labels are all ``__overflow__``
(so a metric never holds more than ``max_series + 1`` series), and each lookup folded that
way is counted in ``metrics_series_overflow_total{metric="<name>"}``, rendered last and
only once something has overflowed. A metric that overflows is a bug in what is used as
a label, and that counter is how it shows.

Collect-time gauges. State that is read rather than counted (circuit state, queue depth,
workers busy) is registered as a callback with :meth:`Registry.gauge_callback`; it yields
``(label_values, value)`` pairs when the registry is rendered, i.e. when ``/metrics`` is
scraped. Samples past ``max_series`` are dropped and counted as overflow. A callback that
raises is logged and its family left out of that scrape; the rest of the scrape is served.

Rendering follows the text format 0.0.4: a ``# HELP`` line (``\\`` and newline escaped) and
a ``# TYPE`` line per family, then one line per sample; label values escape ``\\``, ``"``
and newline; values are written as Python's shortest round-trip ``repr`` (``1e-05``,
``0.25``), integers as integers, and infinities as ``+Inf``/``-Inf`` — all of which
Prometheus parses. Families appear in registration order, series in creation order.

Threads: the registry is written to and rendered from one thread, the event loop's (no
locks on the hot path). A worker thread should hand its figures to the loop.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from typing import ClassVar, Generic, TypeVar

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_SERIES",
    "OVERFLOW",
    "OVERFLOW_METRIC",
    "Collect",
    "LabelValues",
    "Registry",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "escape_label_value",
    "format_value",
]

log = logging.getLogger("rakka_inference.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of a ``/metrics`` answer."""

DEFAULT_MAX_SERIES = 10_000
OVERFLOW = "__overflow__"
"""The label value of every label of a metric's overflow series."""
OVERFLOW_METRIC = "metrics_series_overflow_total"

LabelValues = tuple[str, ...]
Collect = Callable[[], Iterable[tuple[LabelValues, float]]]
"""A collect-time gauge's callback: ``(label values, value)`` pairs, read at scrape time."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


# --------------------------------------------------------------------------- format


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: ``3``, ``0.25``, ``1e-05``, ``+Inf``, ``NaN``."""
    if type(value) is int:
        return str(value)
    value = float(value)
    if math.isfinite(value):
        return repr(value)
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: LabelValues) -> str:
    """``a="x",b="y"``: the inside of a sample's braces."""
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


def _braced(labels: str) -> str:
    return f"{{{labels}}}" if labels else ""


def _check_labels(names: Sequence[str], values: LabelValues) -> None:
    if len(values) != len(names):
        raise ValueError(f"expected {len(names)} label values {tuple(names)}, got {len(values)}")
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"label values must be str, got {type(value).__name__}")


# --------------------------------------------------------------------------- children


class CounterChild:
    """One label set of a :class:`Counter`."""

    __slots__ = ("labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeChild:
    """One label set of a :class:`Gauge`."""

    __slots__ = ("labels", "value")

    def __init__(self, labels: str) -> None:
        self.labels = labels
        self.value: float = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramChild:
    """One label set of a :class:`Histogram`: per-bucket counts (the last is ``+Inf``)."""

    __slots__ = ("_bounds", "counts", "labels", "sum")

    def __init__(self, labels: str, bounds: tuple[float, ...]) -> None:
        self.labels = labels
        self._bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum: float = 0

    def observe(self, value: float) -> None:
        # bisect_left: the first bound >= value, i.e. the bucket whose ``le`` holds it.
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


# --------------------------------------------------------------------------- metrics

C = TypeVar("C", CounterChild, GaugeChild, HistogramChild)


class _Family(ABC):
    """A named family of samples, rendered in its registry's exposition."""

    kind: ClassVar[str]

    def __init__(self, name: str, help: str, label_names: Sequence[str], max_series: int) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in label_names:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"repeated label name in {tuple(label_names)} for {name}")
        if max_series < 1:
            raise ValueError(f"max_series must be >= 1, got {max_series}")
        self.name = name
        self.help = help
        self.label_names: tuple[str, ...] = tuple(label_names)
        self.max_series = max_series

    def _header(self, out: list[str]) -> None:
        out.append(
            f"# HELP {self.name} {_escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        )

    @abstractmethod
    def render(self, out: list[str]) -> None:
        """Append this family's lines to ``out``."""
        ...


class _Metric(_Family, Generic[C]):
    """A family whose children are kept (counters, gauges, histograms)."""

    def __init__(
        self,
        name: str,
        help: str,
        label_names: Sequence[str],
        max_series: int,
        on_overflow: Callable[[str], None],
    ) -> None:
        super().__init__(name, help, label_names, max_series)
        self._on_overflow = on_overflow
        self._children: dict[LabelValues, C] = {}
        self._overflow_key: LabelValues = (OVERFLOW,) * len(self.label_names)
        self._solo: C | None = self.labels() if not self.label_names else None

    @abstractmethod
    def _new_child(self, labels: str) -> C: ...

    def labels(self, *values: str) -> C:
        """The child for these label values (in the order of ``label_names``)."""
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: LabelValues) -> C:
        _check_labels(self.label_names, values)
        if len(self._children) >= self.max_series:
            self._on_overflow(self.name)
            values = self._overflow_key
            child = self._children.get(values)
            if child is not None:
                return child
        child = self._new_child(_label_text(self.label_names, values))
        self._children[values] = child
        return child

    def _only(self) -> C:
        if self._solo is None:
            raise ValueError(f"{self.name} has labels {self.label_names}: use .labels(...)")
        return self._solo

    def __len__(self) -> int:
        """The number of series held (the overflow series included)."""
        return len(self._children)


def _render_scalars(
    family: _Family, children: Iterable[CounterChild | GaugeChild], out: list[str]
) -> None:
    family._header(out)
    name = family.name
    out.extend(f"{name}{_braced(c.labels)} {format_value(c.value)}\n" for c in children)


class Counter(_Metric[CounterChild]):
    kind = "counter"

    def _new_child(self, labels: str) -> CounterChild:
        return CounterChild(labels)

    def inc(self, amount: float = 1) -> None:
        """Add to an unlabelled counter."""
        self._only().inc(amount)

    def render(self, out: list[str]) -> None:
        _render_scalars(self, self._children.values(), out)


class Gauge(_Metric[GaugeChild]):
    kind = "gauge"

    def _new_child(self, labels: str) -> GaugeChild:
        return GaugeChild(labels)

    def set(self, value: float) -> None:
        """Set an unlabelled gauge."""
        self._only().set(value)

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def render(self, out: list[str]) -> None:
        _render_scalars(self, self._children.values(), out)


class Histogram(_Metric[HistogramChild]):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        label_names: Sequence[str],
        max_series: int,
        on_overflow: Callable[[str], None],
        *,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and bounds[-1] == math.inf:
            bounds.pop()  # +Inf is always there
        if not bounds:
            raise ValueError(f"{name}: a histogram needs at least one finite bucket bound")
        if any(not math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
            raise ValueError(f"{name}: bucket bounds must be finite and strictly increasing")
        if "le" in label_names:
            raise ValueError(f"{name}: 'le' is reserved for histogram buckets")
        self.bounds: tuple[float, ...] = tuple(bounds)
        self._le = [*(format_value(b) for b in bounds), "+Inf"]
        super().__init__(name, help, label_names, max_series, on_overflow)

    def _new_child(self, labels: str) -> HistogramChild:
        return HistogramChild(labels, self.bounds)

    def observe(self, value: float) -> None:
        """Observe into an unlabelled histogram."""
        self._only().observe(value)

    def render(self, out: list[str]) -> None:
        self._header(out)
        name = self.name
        for child in self._children.values():
            labels = child.labels
            prefix = f"{name}_bucket{{{labels},le=" if labels else f"{name}_bucket{{le="
            total = 0
            for le, count in zip(self._le, child.counts, strict=True):
                total += count
                out.append(f'{prefix}"{le}"}} {total}\n')
            braced = _braced(labels)
            out.append(f"{name}_sum{braced} {format_value(child.sum)}\n")
            out.append(f"{name}_count{braced} {total}\n")


class _CallbackGauge(_Family):
    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        label_names: Sequence[str],
        max_series: int,
        on_overflow: Callable[[str], None],
        *,
        collect: Collect,
    ) -> None:
        super().__init__(name, help, label_names, max_series)
        self._on_overflow = on_overflow
        self._collect = collect

    def render(self, out: list[str]) -> None:
        lines: list[str] = []
        self._header(lines)
        names, name, room = self.label_names, self.name, self.max_series
        try:
            for values, value in self._collect():
                _check_labels(names, values)
                if room == 0:
                    self._on_overflow(name)
                    continue
                room -= 1
                lines.append(f"{name}{_braced(_label_text(names, values))} {format_value(value)}\n")
        except Exception:
            log.exception("metrics: collecting %s failed; left out of this scrape", name)
            return
        out.extend(lines)


# --------------------------------------------------------------------------- registry

_F = TypeVar("_F", bound=_Family)


class Registry:
    """The metrics of one process, rendered together for ``/metrics``."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._overflows: dict[str, int] = {}

    def counter(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> Counter:
        return self._register(Counter(name, help, labels, max_series, self._overflowed))

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> Gauge:
        return self._register(Gauge(name, help, labels, max_series, self._overflowed))

    def histogram(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> Histogram:
        metric = Histogram(name, help, labels, max_series, self._overflowed, buckets=buckets)
        return self._register(metric)

    def gauge_callback(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        collect: Collect,
        *,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        """A gauge read at scrape time: ``collect()`` yields ``(label values, value)``."""
        self._register(
            _CallbackGauge(name, help, labels, max_series, self._overflowed, collect=collect)
        )

    def _register(self, family: _F) -> _F:
        if family.name in self._families or family.name == OVERFLOW_METRIC:
            raise ValueError(f"metric {family.name} is already registered")
        self._families[family.name] = family
        return family

    def _overflowed(self, name: str) -> None:
        self._overflows[name] = self._overflows.get(name, 0) + 1

    def overflows(self, name: str) -> int:
        """Lookups of metric ``name`` folded into its overflow series, plus collected
        samples dropped, so far."""
        return self._overflows.get(name, 0)

    def render(self) -> bytes:
        """Every family in the text exposition format 0.0.4, UTF-8."""
        out: list[str] = []
        for family in self._families.values():
            family.render(out)
        if self._overflows:
            out.append(
                f"# HELP {OVERFLOW_METRIC} New label sets folded into a metric's {OVERFLOW} "
                "series, or collected samples dropped, past its max_series.\n"
                f"# TYPE {OVERFLOW_METRIC} counter\n"
            )
            out.extend(
                f'{OVERFLOW_METRIC}{{metric="{name}"}} {count}\n'
                for name, count in self._overflows.items()
            )
        return "".join(out).encode("utf-8")
