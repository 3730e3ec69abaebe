"""What the dashboard's pages show, read from Redis (and from the worker's own metrics when it
runs inside a worker), kept apart from the handlers so each read is one function.

Throughput is honest rather than smooth: ``enqueued/s`` is the change in the stream's
``entries-added`` counter (Redis 7+) between two views of the overview, divided by the time
between them; the first view (and a view more than ten minutes after the last) shows none.
``finished/s`` is the same for the ``qrunner_jobs_total`` counter of *this* process and shows
only when the dashboard runs in a worker. The p95 wait is the upper bound of the histogram
bucket holding the 95th percentile of this worker's waits since it started.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from .. import keys
from ..backlog import read_backlog
from ..job import Job, MalformedJob
from ..metrics import Metrics
from ..queue import Client
from ..redact import mask

#: Stream entries read while looking for a job's envelope (queued or running jobs).
ENVELOPE_SCAN_LIMIT = 10_000
#: A rate over a gap longer than this is an average over nothing anyone remembers.
RATE_WINDOW_S = 600.0
HIDDEN = "***"


@dataclass(frozen=True, slots=True)
class QueueRow:
    queue: str
    depth: int
    pending: int
    delayed: int
    dead: int
    consumers: int
    paused: bool
    oldest_waiting_s: float | None
    enqueued_per_s: float | None
    finished_per_s: float | None
    p95_wait_s: float | None
    #: Why the queue cannot be read (a key of another type under its name), else None.
    problem: str | None = None


class Rates:
    """The previous reading of each counter, to turn counters into per-second rates."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def rate(self, name: str, value: float | None, now_s: float) -> float | None:
        if value is None:
            return None
        before = self._last.get(name)
        self._last[name] = (now_s, value)
        if before is None:
            return None
        elapsed = now_s - before[0]
        if not 0 < elapsed <= RATE_WINDOW_S or value < before[1]:
            return None  # no gap, too long a gap, or the counter restarted
        return (value - before[1]) / elapsed


def finished_counts(metrics: Metrics) -> dict[str, float]:
    """Jobs finished by this process, per queue (``qrunner_jobs_total``)."""
    out: dict[str, float] = {}
    for family in metrics.jobs.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                q = sample.labels["queue"]
                out[q] = out.get(q, 0.0) + sample.value
    return out


def p95_waits(metrics: Metrics) -> dict[str, float]:
    """Per queue, the upper bound (s) of the bucket that holds the 95th percentile wait."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for family in metrics.wait.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets.setdefault(sample.labels["queue"], []).append((bound, sample.value))
    out = {}
    for queue, rows in buckets.items():
        rows.sort()
        total = rows[-1][1] if rows else 0
        if total <= 0:
            continue
        for bound, count in rows:
            if count >= 0.95 * total:
                out[queue] = bound
                break
    return out


async def overview(
    client: Client, paused: set[str], rates: Rates, metrics: Metrics | None
) -> list[QueueRow]:
    stats = await client.stats()
    backlog = {b.queue: b for b in await read_backlog(client.redis, [s.queue for s in stats])}
    seconds, micros = await client.redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    finished = finished_counts(metrics) if metrics is not None else {}
    p95 = p95_waits(metrics) if metrics is not None else {}
    rows = []
    for s in stats:
        b = backlog.get(s.queue)
        oldest = b.oldest_waiting_ms if b is not None else None
        added = b.entries_added if b is not None else None
        done = finished.get(s.queue, 0.0) if metrics is not None else None
        rows.append(
            QueueRow(
                queue=s.queue,
                depth=s.depth,
                pending=s.pending,
                delayed=s.delayed,
                dead=s.dead,
                consumers=s.consumers,
                paused=s.queue in paused,
                oldest_waiting_s=None if oldest is None else max(0, now_ms - oldest) / 1000,
                enqueued_per_s=rates.rate(f"added:{s.queue}", added, now_ms / 1000),
                finished_per_s=rates.rate(f"done:{s.queue}", done, time.monotonic()),
                p95_wait_s=p95.get(s.queue),
                problem=s.problem,
            )
        )
    return rows


async def find_envelope(redis: Redis, queue: str, job_id: str, dlq_id: str | None) -> Job | None:
    """The job's envelope wherever it is now: its dead-letter entry, the delayed set, or the
    stream (queued or running; the first :data:`ENVELOPE_SCAN_LIMIT` entries). None once the
    job has finished (its envelope is deleted with the ack) or when it was not found."""
    if dlq_id:
        rows: Any = await redis.xrange(keys.dlq(queue), min=dlq_id, max=dlq_id)
        if rows:
            return _decode(rows[0][1].get(b"j"), job_id, queue)
    pattern = '{"id":"' + _glob_escape(job_id) + '"*'
    async for member in redis.zscan_iter(keys.delayed(queue), match=pattern, count=500):
        raw = member[0] if isinstance(member, tuple) else member
        if (job := _decode(raw, job_id, queue)) is not None:
            return job
    start, seen = "-", 0
    needle, compact = f'"id":"{job_id}"'.encode(), f'["{job_id}",'.encode()
    while seen < ENVELOPE_SCAN_LIMIT:
        batch: Any = await redis.xrange(keys.stream(queue), min=start, max="+", count=500)
        for entry_id, fields in batch:
            raw = fields.get(b"j", b"")
            ours = raw.startswith(compact) or needle in raw
            if ours and (job := _decode(raw, job_id, queue, entry_id)) is not None:
                return job
            start = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
        seen += len(batch)
        if len(batch) < 500:
            break
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]\\" else c for c in text)


def _decode(raw: Any, job_id: str, queue: str, entry_id: Any = None) -> Job | None:
    if raw is None:
        return None
    try:
        job = Job.decode(raw, entry_id, queue)
    except MalformedJob:
        return None
    return job if job.id == job_id else None


def hide(value: Any, *, reveal: bool) -> Any:
    """A payload with every leaf value replaced by ``***``, or, revealed, with strings passed
    through :func:`qrunner.redact.mask` (email addresses, phone numbers and tokens stay masked even
    then). Keys and structure are kept either way."""
    if isinstance(value, Mapping):
        return {str(k): hide(v, reveal=reveal) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [hide(v, reveal=reveal) for v in value]
    if not reveal:
        return HIDDEN
    return mask(value) if isinstance(value, str) else value


def masked_text(value: Any) -> str | None:
    return None if value is None else mask(str(value))


def declared_limits(tasks: Iterable[Any]) -> dict[str, str]:
    """Task name -> its rate limit in code, for tasks that declare one."""
    return {t.name: ",".join(t.rate_limit.rates) for t in tasks if t.rate_limit}
