"""Operator control, in one place for the CLI, the HTTP API and the dashboard alike: which
workers run and what, the jobs of a queue by state, a job's history, and the actions (cancel,
pause / resume a queue, empty a queue, delete a dead entry, fire / pause / resume a schedule,
change a rate limit at run time).

Control state lives under one hash tag (``qr:{ctl}:...``, see :mod:`qrunner.keys`), so it sits
on one slot of a cluster. Workers act on it from their ``control`` loop (once a second; see
:class:`qrunner.presence.Presence`): a paused queue stops being read (a blocking read already
waiting when the pause lands may still return one batch, which runs), a cancelled job that is
running is cancelled in its worker (the handler sees ``CancelledError``) and acked as
``cancelled``, a queued or delayed one is acked as ``cancelled`` when a worker takes it, and a
rate limit set here replaces the code's until reset.

Every action is logged (``qrunner.control``), appended to a capped audit stream and counted in
Redis, so ``qrunner_operator_actions_total`` counts actions from every CLI and dashboard.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import jobstatus, keys
from .errors import ConfigError, JobNotFound
from .faults import raise_if_conflict
from .job import Job, MalformedJob
from .names import check_queue_name
from .scripts import Script

log = logging.getLogger(__name__)

#: How long a worker's presence record outlives its last heartbeat.
PRESENCE_TTL_MS = 10_000
#: Actions kept in the audit stream.
AUDIT_LENGTH = 1000
#: Attempts kept in a job's history.
HISTORY_LENGTH = 25
JOB_STATES = ("queued", "running", "delayed", "scheduled")
TERMINAL = jobstatus.ENDED

_mark_cancelled = Script("mark_cancelled")


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: Any) -> int | None:
    text = _text(value)
    return int(text) if text.lstrip("-").isdigit() else None


@dataclass(frozen=True, slots=True)
class RunningJob:
    queue: str
    job_id: str
    task: str
    started_ms: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    host: str
    pid: int
    started_ms: int
    heartbeat_ms: int
    queues: list[str]
    concurrency: int
    running: list[RunningJob] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    queue: str
    task: str
    state: str
    attempt: int
    enqueued_ms: int | None
    #: When it may run (delayed / scheduled) or started (running).
    at_ms: int | None = None
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[JobRow]
    total: int
    offset: int
    limit: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [r.to_dict() for r in self.rows],
            "total": self.total,
            "offset": self.offset,
            "limit": self.limit,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    attempt: int
    worker: str | None
    started_ms: int | None
    ended_ms: int | None
    outcome: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LimitRow:
    task: str
    code: str | None
    override: str | None

    @property
    def effective(self) -> str | None:
        return self.override or self.code

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "effective": self.effective}


def attempt_record(
    attempt: int, worker: str, started_ms: int, ended_ms: int, outcome: str, error: str | None
) -> bytes:
    """One entry of a job's history list (written by the worker)."""
    return orjson.dumps(
        {
            "attempt": attempt,
            "worker": worker,
            "started_ms": started_ms,
            "ended_ms": ended_ms,
            "outcome": outcome,
            "error": error,
        }
    )


class Control:
    """Operator reads and actions over one Redis. ``actor`` names who acts in the audit log
    (``cli``, ``dashboard``, ``api``)."""

    def __init__(self, redis: Redis, *, actor: str = "cli", status_ttl_s: int = 7 * 86400):
        self.redis = redis
        self.actor = actor
        self.status_ttl_ms = status_ttl_s * 1000

    # -- reads -----------------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """Live workers (presence records not expired), by name; each with its running jobs."""
        names = sorted(_text(n) for n in await self.redis.smembers(keys.workers_set()))
        if not names:
            return []
        raws = await self.redis.mget([keys.worker_record(n) for n in names])
        out, gone = [], []
        for name, raw in zip(names, raws, strict=True):
            if raw is None:
                gone.append(name)
                continue
            data = orjson.loads(raw)
            out.append(
                WorkerInfo(
                    name=name,
                    host=str(data.get("host", "")),
                    pid=int(data.get("pid", 0)),
                    started_ms=int(data.get("started_ms", 0)),
                    heartbeat_ms=int(data.get("heartbeat_ms", 0)),
                    queues=[str(q) for q in data.get("queues", [])],
                    concurrency=int(data.get("concurrency", 0)),
                    running=[RunningJob(**r) for r in data.get("running", [])],
                )
            )
        if gone:
            await self.redis.srem(keys.workers_set(), *gone)
        return out

    async def paused(self) -> set[str]:
        return {_text(q) for q in await self.redis.smembers(keys.paused_queues())}

    async def jobs(self, queue: str, state: str, *, offset: int = 0, limit: int = 50) -> Page:
        """A page of ``queue``'s jobs in ``state``: ``queued`` (not yet read by a worker),
        ``running`` (read, not finished), ``delayed`` (waiting for their time: delays,
        retries, deferrals) or ``scheduled`` (the same set, soonest first: an alias)."""
        check_queue_name(queue)
        if state not in JOB_STATES:
            raise ConfigError(f"--state: must be one of {', '.join(JOB_STATES)}, got {state!r}")
        if offset < 0 or not 1 <= limit <= 1000:
            raise ConfigError("--limit: must be from 1 to 1000 (and the offset not negative)")
        if state in ("delayed", "scheduled"):
            return await self._delayed(queue, offset, limit)
        if state == "running":
            return await self._running(queue, offset, limit)
        return await self._queued(queue, offset, limit)

    async def _delayed(self, queue: str, offset: int, limit: int) -> Page:
        total = int(await self.redis.zcard(keys.delayed(queue)))
        members: Any = await self.redis.zrange(
            keys.delayed(queue), offset, offset + limit - 1, withscores=True
        )
        rows = []
        for raw, score in members:
            job = _decode(raw, queue=queue)
            if job is not None:
                rows.append(_row(job, queue, "delayed", int(score)))
        return Page(rows, total, offset, limit)

    async def _running(self, queue: str, offset: int, limit: int) -> Page:
        stream = keys.stream(queue)
        try:
            summary = await self.redis.xpending(stream, keys.GROUP)
            pending = await self.redis.xpending_range(
                stream, keys.GROUP, min="-", max="+", count=offset + limit
            )
        except ResponseError as exc:
            raise_if_conflict(exc, queue)  # else: no stream or group yet
            return Page([], 0, offset, limit)
        pending = pending[offset:]
        rows = []
        for p in pending:
            entry_id = _text(p["message_id"])
            found: Any = await self.redis.xrange(stream, min=entry_id, max=entry_id)
            if not found:
                continue
            job = _decode(found[0][1].get(b"j"), entry_id, queue)
            if job is not None:
                started = int(time.time() * 1000) - int(p["time_since_delivered"])
                rows.append(_row(job, queue, "running", started, worker=_text(p["consumer"])))
        return Page(rows, int(summary["pending"]), offset, limit)

    async def _queued(self, queue: str, offset: int, limit: int) -> Page:
        stream = keys.stream(queue)
        last = "0-0"
        try:
            for g in await self.redis.xinfo_groups(stream):
                if _text(g.get("name")) == keys.GROUP:
                    last = _text(g.get("last-delivered-id")) or "0-0"
        except ResponseError as exc:
            raise_if_conflict(exc, queue)  # else: no stream or group yet
            return Page([], 0, offset, limit)
        entries: Any = await self.redis.xrange(
            stream, min=f"({last}", max="+", count=offset + limit
        )
        total = await self._count_after(queue, last)
        rows = []
        for entry_id, fields in entries[offset:]:
            job = _decode(fields.get(b"j"), entry_id, queue)
            if job is not None:
                rows.append(_row(job, queue, "queued", job.not_before_ms or None))
        return Page(rows, total, offset, limit)

    async def _count_after(self, queue: str, last: str) -> int:
        """Entries after ``last``: the stream's length less those read (pending or acked and
        deleted entries are gone from XLEN already, pending ones are not)."""
        stream = keys.stream(queue)
        length = int(await self.redis.xlen(stream))
        try:
            pending = int((await self.redis.xpending(stream, keys.GROUP))["pending"])
        except ResponseError as exc:
            raise_if_conflict(exc, queue)  # else: no stream or group yet
            pending = 0
        return max(0, length - pending)

    async def history(self, queue: str, job_id: str) -> list[Attempt]:
        """Every attempt of the job: finished attempts from its history list, then the current
        or last one from its status record."""
        raw = await self.redis.lrange(keys.job_history(queue, job_id), 0, -1)
        attempts = [Attempt(**orjson.loads(r)) for r in raw]
        rec = await jobstatus.read(self.redis, queue, job_id)
        if not rec:
            return attempts
        number = _int(rec.get("attempt")) or 1
        state = _text(rec.get("state"))
        if any(a.attempt == number and a.outcome == state for a in attempts):
            return attempts
        if state in ("running", "succeeded", "cancelled", "dead"):
            attempts.append(
                Attempt(
                    attempt=number,
                    worker=_text(rec.get("worker")) or None,
                    started_ms=_int(rec.get("started_ms")),
                    ended_ms=_int(rec.get("finished_ms")) if state != "running" else None,
                    outcome=state,
                    error=_text(rec.get("last_error")) or None if state == "dead" else None,
                )
            )
        return attempts

    async def limits(self, tasks: Iterable[tuple[str, str | None]]) -> list[LimitRow]:
        """Each (task, code rates) with its run-time override, if any."""
        overrides = {
            _text(k): _text(v) for k, v in (await self.redis.hgetall(keys.rate_overrides())).items()
        }
        return [LimitRow(task, code, overrides.get(task)) for task, code in tasks]

    async def paused_schedules(self) -> set[str]:
        return {_text(s) for s in await self.redis.smembers(keys.paused_schedules())}

    async def audit(self, count: int = 50) -> list[dict[str, Any]]:
        """The latest actions, newest first."""
        rows: Any = await self.redis.xrevrange(keys.audit_log(), count=count)
        return [{_text(k): _text(v) for k, v in fields.items()} for _id, fields in rows]

    async def action_counts(self) -> dict[str, int]:
        raw = await self.redis.hgetall(keys.action_counts())
        return {_text(k): int(v) for k, v in raw.items()}

    # -- actions -----------------------------------------------------------------------------

    async def _record(self, action: str, target: str, detail: str = "") -> None:
        log.info(
            "operator action by %s: %s %s%s",
            self.actor,
            action,
            target,
            f" ({detail})" if detail else "",
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            keys.audit_log(),
            {
                "actor": self.actor,
                "action": action,
                "target": target,
                "detail": detail,
                "at_ms": str(int(time.time() * 1000)),
            },
            maxlen=AUDIT_LENGTH,
            approximate=True,
        )
        pipe.hincrby(keys.action_counts(), action, 1)
        await pipe.execute()

    async def record(self, action: str, target: str, detail: str = "") -> None:
        """Log, audit and count an action taken through another API (dead-letter replay and
        purge go through :class:`~qrunner.DeadLetters`)."""
        await self._record(action, target, detail)

    async def pause(self, queue: str) -> bool:
        """Workers stop reading ``queue`` (in-flight jobs finish); True if it was not paused."""
        check_queue_name(queue)
        added = bool(await self.redis.sadd(keys.paused_queues(), queue))
        await self._record("pause", queue)
        return added

    async def resume(self, queue: str) -> bool:
        check_queue_name(queue)
        removed = bool(await self.redis.srem(keys.paused_queues(), queue))
        await self._record("resume", queue)
        return removed

    async def cancel(self, queue: str, job_id: str, state: str) -> str:
        """Cancel a job whose status is ``state`` (see :meth:`qrunner.Client.status`): a
        finished job is left alone (its state is returned); any other is marked ``cancelled``
        and a request is left for the workers. Returns the job's state after the call."""
        if state in TERMINAL:
            return state
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.cancel_requests(), job_id, f"{queue}\t{int(time.time() * 1000)}")
        await pipe.execute()
        if state in ("queued", "scheduled", "retrying", "delayed"):
            # Nothing runs it yet: the record says so now; the entry is acked as cancelled
            # when a worker takes it.
            if not await _mark_cancelled(self.redis, [keys.job(queue, job_id)], []):
                return "succeeded"  # it finished since its state was read
        await self._record("cancel", job_id, f"queue {queue}, was {state}")
        return "cancelled" if state != "running" else "cancelling"

    async def purge(self, queue: str) -> int:
        """Remove every job of ``queue`` no worker has taken: the unread stream entries and the
        delayed set. Running jobs finish. Returns how many were removed."""
        check_queue_name(queue)
        stream = keys.stream(queue)
        removed = 0
        last = "0-0"
        try:
            for g in await self.redis.xinfo_groups(stream):
                if _text(g.get("name")) == keys.GROUP:
                    last = _text(g.get("last-delivered-id")) or "0-0"
        except ResponseError as exc:
            raise_if_conflict(exc, queue)  # else: no stream or group yet
            last = "0-0"
        while True:
            batch = await self.redis.xrange(stream, min=f"({last}", max="+", count=500)
            if not batch:
                break
            ids = [_text(entry_id) for entry_id, _ in batch]
            jobs = [_decode((fields or {}).get(b"j"), queue=queue) for _, fields in batch]
            pipe = self.redis.pipeline(transaction=False)
            pipe.xdel(stream, *ids)
            job_ids = [job.id for job in jobs if job is not None]
            if job_ids:
                pipe.hdel(keys.live(queue), *job_ids)
            removed += int((await pipe.execute())[0])
            last = ids[-1]
        delayed = int(await self.redis.zcard(keys.delayed(queue)))
        await self.redis.delete(keys.delayed(queue))
        removed += delayed
        await self._record("purge", queue, f"{removed} job(s)")
        return removed

    async def delete_dead(self, queue: str, dlq_id: str) -> bool:
        deleted = bool(await self.redis.xdel(keys.dlq(queue), dlq_id))
        if deleted:
            await self._record("dlq-delete", dlq_id, f"queue {queue}")
        return deleted

    async def pause_schedule(self, name: str) -> bool:
        added = bool(await self.redis.sadd(keys.paused_schedules(), name))
        await self._record("schedule-pause", name)
        return added

    async def resume_schedule(self, name: str) -> bool:
        removed = bool(await self.redis.srem(keys.paused_schedules(), name))
        await self._record("schedule-resume", name)
        return removed

    async def schedule_fired(self, name: str, job_id: str) -> None:
        await self._record("schedule-fire", name, f"job {job_id}")

    async def set_limit(self, task: str, rates: Sequence[str]) -> None:
        """Replace ``task``'s rate limit on every worker (within a second) until reset."""
        from .ratelimit import RateLimitSpec

        try:
            RateLimitSpec.parse(tuple(rates), None)
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"RATE: {exc}") from None
        await self.redis.hset(keys.rate_overrides(), task, ",".join(rates))
        await self._record("limit-set", task, ",".join(rates))

    async def reset_limit(self, task: str) -> bool:
        removed = bool(await self.redis.hdel(keys.rate_overrides(), task))
        await self._record("limit-reset", task)
        return removed


def _decode(raw: Any, entry_id: Any = None, queue: str | None = None) -> Job | None:
    """The envelope, or None when it is not one; ``entry_id`` (its stream entry, when it was
    read from a stream) times a job whose envelope does not say when it was enqueued, and
    ``queue`` (where it was read) places one whose envelope does not name its queue."""
    if raw is None:
        return None
    try:
        return Job.decode(raw, entry_id, queue)
    except MalformedJob:
        return None


def _row(job: Job, queue: str, state: str, at_ms: int | None, worker: str | None = None) -> JobRow:
    return JobRow(
        id=job.id,
        queue=queue,
        task=job.task,
        state=state,
        attempt=job.attempt,
        enqueued_ms=job.enqueued_ms or None,
        at_ms=at_ms,
        worker=worker,
    )


async def find_job(redis: Redis, job_id: str, queues: Sequence[str]) -> str:
    """The queue whose status record holds ``job_id``; raises :class:`JobNotFound`."""
    pipe = redis.pipeline(transaction=False)
    for q in queues:
        pipe.exists(keys.job(q, job_id))
        pipe.hget(keys.done(q), job_id)
    found = await pipe.execute()
    for i, q in enumerate(queues):
        if found[2 * i] or found[2 * i + 1] is not None:
            return q
    raise JobNotFound(job_id)
