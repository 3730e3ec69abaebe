"""The per-job Prometheus series, counted with plain dicts and lists.

Every job a worker runs touches three series (runs by outcome, run time, wait before the run).
Through prometheus_client that is three ``labels()`` look-ups, an ``inc`` and two ``observe``
calls, each taking a lock: about 8 µs a job, a quarter of what a no-op job costs the worker in
all. A worker is one thread on one event loop, so these collectors count without locks (a
dict look-up and an integer add; the bucket found by :func:`bisect.bisect_left`) and build the
families only when Prometheus scrapes. The exposition is the same as the library's
``Counter`` and ``Histogram`` would give (names, labels, cumulative ``le`` buckets, ``_sum``,
``_count``; no ``_created``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class FastCounter(Collector):
    """A counter family with fixed label names; :meth:`inc` takes the label values as a
    tuple."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(list(self.values.items())):
            family.add_metric(list(labels), value)
        yield family


class FastHistogram(Collector):
    """A histogram family with fixed label names and buckets (upper bounds, ascending; +Inf is
    added); :meth:`observe` takes the label values as a tuple."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(set(bounds)) or not bounds:
            raise ValueError("buckets must be distinct and ascending")
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.bounds = bounds
        #: per label values: one count per bucket (the last one is +Inf), then the sum
        self.series: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        row = self.series.get(labels)
        if row is None:
            row = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1  # the first bound >= value: le is inclusive
        row[-1] += value

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        names = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        names.append("+Inf")
        for labels, row in sorted(list(self.series.items())):
            cumulative: list[tuple[str, float]] = []
            running = 0.0
            for name, count in zip(names, row[:-1], strict=True):
                running += count
                cumulative.append((name, running))
            family.add_metric(list(labels), cumulative, row[-1])
        yield family
