"""The lock-free per-job series expose exactly what prometheus_client's Counter and Histogram
would for the same observations (bucket edges included: ``le`` is inclusive)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from qrunner.hotmetrics import FastCounter, FastHistogram
from qrunner.metrics import DURATION_BUCKETS_S

OBSERVED = [0.0, 0.0005, 0.001, 0.0010001, 0.3, 5.0, 299.9, 300.0, 301.0, 1e9]


def exposition(*collectors: object) -> bytes:
    registry = CollectorRegistry(auto_describe=True)
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)


def test_same_exposition_as_prometheus_client() -> None:
    theirs_reg = CollectorRegistry(auto_describe=True)
    c = Counter("qrunner_jobs", "Runs.", ["task", "queue", "outcome"], registry=theirs_reg)
    h = Histogram(
        "qrunner_job_duration_seconds",
        "Run time.",
        ["task", "queue"],
        buckets=DURATION_BUCKETS_S,
        registry=theirs_reg,
    )
    fc = FastCounter("qrunner_jobs", "Runs.", ["task", "queue", "outcome"])
    fh = FastHistogram(
        "qrunner_job_duration_seconds", "Run time.", ["task", "queue"], DURATION_BUCKETS_S
    )
    for i, value in enumerate(OBSERVED):
        labels = ("send", "q", "succeeded" if i % 3 else "retried")
        c.labels(*labels).inc()
        fc.inc(labels)
        h.labels("send", f"q{i % 2}").observe(value)
        fh.observe(("send", f"q{i % 2}"), value)
    theirs = [
        line for line in generate_latest(theirs_reg).decode().splitlines() if "_created" not in line
    ]
    ours = exposition(fc, fh).decode().splitlines()
    assert sorted(ours) == sorted(theirs)


def test_nothing_observed_is_an_empty_family() -> None:
    text = exposition(FastCounter("a", "A.", ["x"]), FastHistogram("b", "B.", ["x"], [1.0]))
    assert [line for line in text.decode().splitlines() if not line.startswith("#")] == []
