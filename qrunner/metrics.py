"""Prometheus metrics: lifecycle hooks turned into counters and histograms, plus queue gauges.

Two kinds of numbers live here, and they behave differently on purpose:

- **Per process** (counters, histograms): what *this* worker did since it started. Prometheus
  sums them across workers; a restart resets them, which ``rate()`` already handles.
- **Whole system** (``qrunner_queue_*`` gauges): read from Redis right before each scrape, so any
  worker's endpoint reports every queue, including queues no worker is consuming. Each worker
  reports the same values; aggregate them with ``max``, never ``sum``.

Each :class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` rather than the
library's global default one, so several workers (or tests) in one process never collide on
"Duplicated timeseries" and nothing is registered at import time.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from .backlog import Backlog, read_backlog
from .control import Control
from .errors import BackendUnavailable
from .events import Observer
from .hotmetrics import FastCounter, FastHistogram
from .queue import Client, QueueStats

log = logging.getLogger(__name__)

#: Handler run time: from 1 ms (cache hit, no-op) to the 5-minute default task timeout.
DURATION_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

#: Enqueue-to-start: milliseconds when workers keep up; minutes to an hour for a backlog or a
#: retry's backoff (the envelope keeps its first enqueue time, so retries count their delay).
WAIT_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)

_QUEUE_GAUGES: tuple[tuple[str, str], ...] = (
    ("depth", "Jobs waiting in the queue's stream, not yet delivered to a worker."),
    ("pending", "Jobs delivered to a worker and not yet acknowledged (running or orphaned)."),
    ("delayed", "Jobs scheduled for later: delays, retries in backoff, deferrals."),
    ("dead", "Jobs in the queue's dead-letter stream."),
    ("consumers", "Workers registered on the queue (heartbeat entries)."),
)


class _QueueCollector(Collector):
    """Serves the last Redis snapshot at collection time.

    Prometheus collectors are synchronous, so the snapshot is taken beforehand by
    :meth:`Metrics.refresh`. Building fresh families on every collection (instead of keeping
    labelled ``Gauge`` children) means a queue that disappears from Redis also disappears from
    the output rather than reporting its last value forever.
    """

    def __init__(self) -> None:
        self.snapshot: list[QueueStats] = []
        self.backlog: list[Backlog] = []
        self.actions: dict[str, int] = {}
        self.now_ms: int = 0
        self.redis_up = True

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "qrunner_redis_up", "1 when the last queue snapshot was read from Redis, else 0."
        )
        up.add_metric([], 1.0 if self.redis_up else 0.0)
        yield up
        readable = [s for s in self.snapshot if s.problem is None]
        for field, doc in _QUEUE_GAUGES:
            family = GaugeMetricFamily(f"qrunner_queue_{field}", doc, labels=["queue"])
            for stats in readable:
                family.add_metric([stats.queue], float(getattr(stats, field)))
            yield family
        conflicts = GaugeMetricFamily(
            "qrunner_queue_key_conflict",
            "1 for a queue with a key of another type under its name (WRONGTYPE: something "
            "else writes under qr:); its jobs wait and its other gauges are absent.",
            labels=["queue"],
        )
        for stats in self.snapshot:
            if stats.problem is not None:
                conflicts.add_metric([stats.queue], 1.0)
        yield conflicts
        age = GaugeMetricFamily(
            "qrunner_queue_oldest_job_age_seconds",
            "Age of the oldest job no worker has read yet (0 when none is waiting).",
            labels=["queue"],
        )
        enqueued = CounterMetricFamily(
            "qrunner_jobs_enqueued",
            "Jobs ever added to the queue's stream (Redis 7 and Valkey report it; 6.2 does not).",
            labels=["queue"],
        )
        for b in self.backlog:
            waited_ms = 0 if b.oldest_waiting_ms is None else self.now_ms - b.oldest_waiting_ms
            age.add_metric([b.queue], max(0, waited_ms) / 1000)
            if b.entries_added is not None:
                enqueued.add_metric([b.queue], float(b.entries_added))
        yield age
        yield enqueued
        actions = CounterMetricFamily(
            "qrunner_operator_actions",
            "Operator actions (pause, cancel, purge, ...) from any CLI, API or dashboard.",
            labels=["action"],
        )
        for action, count in sorted(self.actions.items()):
            actions.add_metric([action], float(count))
        yield actions


#: The ``task`` label of jobs whose task name is not a registered one.
UNKNOWN_TASK = "unknown"
#: Without a list of registered tasks, at most this many distinct task labels are kept.
MAX_TASK_LABELS = 200
_TASK_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,99}")


class _RateLimitCollector(Collector):
    """This worker's state read at scrape time: jobs in flight per queue, and from the
    rate-limit gate the jobs waiting for a turn per task and what admission did (granted, held
    in place, deferred) with the seconds waited."""

    def __init__(self) -> None:
        self.gate: Any = None
        self.worker: Any = None

    def collect(self) -> Iterator[Metric]:
        if self.worker is not None:
            in_flight = GaugeMetricFamily(
                "qrunner_jobs_in_flight", "Jobs this process is running now.", labels=["queue"]
            )
            per_queue: dict[str, int] = {}
            for queue, _entry in list(self.worker.running):
                per_queue[queue] = per_queue.get(queue, 0) + 1
            for queue in self.worker.queues:
                in_flight.add_metric([queue], float(per_queue.get(queue, 0)))
            yield in_flight
        gate = self.gate
        if gate is None:
            return
        waiting = GaugeMetricFamily(
            "qrunner_rate_limit_waiting",
            "Jobs deferred to a recorded rate-limit turn, per task (as last read from Redis).",
            labels=["task"],
        )
        admissions = CounterMetricFamily(
            "qrunner_rate_limit_admissions",
            "Rate-limit admissions by this process, by what happened to the job.",
            labels=["task", "kind"],
        )
        waited = CounterMetricFamily(
            "qrunner_rate_limit_wait_seconds",
            "Seconds jobs spent waiting for a rate-limit turn (held in place, or deferred).",
            labels=["task", "how"],
        )
        for task, counts in sorted(gate.counts.items()):
            view = gate.line_view(task)
            waiting.add_metric([task], float(view.waiting) if view is not None else 0.0)
            for kind in ("granted", "claimed", "held", "deferred", "refused"):
                admissions.add_metric([task, kind], float(getattr(counts, kind)))
            waited.add_metric([task, "held"], counts.held_s)
            waited.add_metric([task, "deferred"], counts.deferred_s)
        yield waiting
        yield admissions
        yield waited


class Metrics(Observer):
    """Counts what happens to jobs (as a worker :class:`Observer`) and renders the exposition.

    The ``task`` label comes from the job envelope, which any producer writes: a raw name would
    let one bad producer mint a time series per job. With ``tasks`` (the registry's names) only
    those become labels and every other name is counted as ``unknown``; without it, at most
    :data:`MAX_TASK_LABELS` identifier-like names are kept, the rest are ``unknown``.
    """

    def __init__(self, tasks: Iterable[str] | None = None) -> None:
        # A _created sample per counter and histogram doubles the series for no use here.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._tasks: set[str] | None = set(tasks) if tasks is not None else None
        self._seen_tasks: set[str] = set()
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        # The three series every job touches are counted without prometheus_client's locks
        # and label look-ups (see qrunner.hotmetrics); the rest are the library's own.
        self.jobs = FastCounter(
            "qrunner_jobs",
            "Job runs by outcome (succeeded, retried, deferred, dead).",
            ["task", "queue", "outcome"],
        )
        self.duration = FastHistogram(
            "qrunner_job_duration_seconds",
            "Time from a handler's start to its outcome.",
            ["task", "queue"],
            DURATION_BUCKETS_S,
        )
        self.wait = FastHistogram(
            "qrunner_job_wait_seconds",
            "Time from enqueue to the start of a run.",
            ["queue"],
            WAIT_BUCKETS_S,
        )
        for hot in (self.jobs, self.duration, self.wait):
            reg.register(hot)
        self.redeliveries = Counter(
            "qrunner_redeliveries_total",
            "Entries reclaimed from a worker whose lease lapsed; each will run again.",
            ["queue"],
            registry=reg,
        )
        self.acks_refused = Counter(
            "qrunner_acks_refused_total",
            "Outcomes dropped because another worker owns the entry now (fencing).",
            ["queue"],
            registry=reg,
        )
        self.groups_recreated = Counter(
            "qrunner_groups_recreated_total",
            "Streams or consumer groups found missing and recreated; jobs may have been lost.",
            ["queue"],
            registry=reg,
        )
        self.rate_limit_waits = Counter(
            "qrunner_rate_limit_waits_total",
            "Jobs deferred because a rate limit had no token.",
            ["task"],
            registry=reg,
        )
        self.cron_fires = Counter(
            "qrunner_cron_fires_total",
            "Schedule slots enqueued by this process.",
            ["schedule"],
            registry=reg,
        )
        self.cron_misses = Counter(
            "qrunner_cron_misses_total",
            "Schedule slots skipped by the catch-up policy.",
            ["schedule"],
            registry=reg,
        )
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        self._queues = _QueueCollector()
        reg.register(self._queues)
        self._limits = _RateLimitCollector()
        reg.register(self._limits)

    def watch_worker(self, worker: Any) -> None:
        """Export the jobs ``worker`` runs now (its ``running`` map: (queue, entry) -> job)."""
        self._limits.worker = worker

    def watch_gate(self, gate: Any) -> None:
        """Export the rate-limit gate's state (waiting jobs, admissions, time waited)."""
        self._limits.gate = gate

    def task_label(self, task: str) -> str:
        """The ``task`` label for a task name from an envelope (see the class docstring)."""
        if self._tasks is not None:
            return task if task in self._tasks else UNKNOWN_TASK
        if task in self._seen_tasks:
            return task
        if len(self._seen_tasks) >= MAX_TASK_LABELS or not _TASK_LABEL_RE.fullmatch(task):
            return UNKNOWN_TASK
        self._seen_tasks.add(task)
        return task

    # -- lifecycle hooks (sync, on the event loop: counter updates only) -------------------

    def job_started(self, task: str, queue: str, wait_ms: int | None) -> None:
        if wait_ms is not None:
            # A producer whose clock runs ahead yields a negative wait; zero is the honest floor.
            self.wait.observe((queue,), max(0, wait_ms) / 1000)

    def job_finished(self, task: str, queue: str, outcome: str, duration_s: float) -> None:
        task = self.task_label(task)
        self.jobs.inc((task, queue, outcome))
        self.duration.observe((task, queue), duration_s)

    def job_redelivered(self, queue: str, count: int) -> None:
        self.redeliveries.labels(queue).inc(count)

    def ack_refused(self, queue: str, count: int) -> None:
        self.acks_refused.labels(queue).inc(count)

    def group_recreated(self, queue: str) -> None:
        self.groups_recreated.labels(queue).inc()

    def rate_limit_wait(self, task: str, wait_s: float) -> None:
        self.rate_limit_waits.labels(self.task_label(task)).inc()

    def cron_fired(self, schedule: str, count: int) -> None:
        self.cron_fires.labels(schedule).inc(count)

    def cron_missed(self, schedule: str, count: int) -> None:
        self.cron_misses.labels(schedule).inc(count)

    # -- exposition ----------------------------------------------------------------------------

    async def refresh(self, client: Client, *, timeout_s: float = 5.0) -> None:
        """Read queue sizes from Redis for the next :meth:`exposition`.

        When Redis is unreachable or slower than ``timeout_s`` the queue gauges are dropped (not
        left stale) and ``qrunner_redis_up`` reads 0, so a scrape still returns this process's
        counters: an outage must not also blind the dashboards that would show it.
        """
        try:
            async with asyncio.timeout(timeout_s):
                snapshot = await client.stats()
                backlog = await read_backlog(client.redis, [s.queue for s in snapshot])
                now_ms = await _redis_now_ms(client)
                actions = await Control(client.redis).action_counts()
        except (BackendUnavailable, TimeoutError, RedisError, OSError) as exc:
            if self._queues.redis_up:
                log.warning("metrics: queue gauges unavailable: %s", str(exc) or "timed out")
            self._queues.snapshot = []
            self._queues.backlog = []
            self._queues.redis_up = False
            return
        self._queues.snapshot = snapshot
        self._queues.backlog = backlog
        self._queues.now_ms = now_ms
        self._queues.actions = actions
        self._queues.redis_up = True

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric in this instance's registry."""
        return generate_latest(self.registry)


async def _redis_now_ms(client: Client) -> int:
    """The Redis clock (ms): job ages are judged on the clock that stamped the entry ids."""
    seconds, micros = await client.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
