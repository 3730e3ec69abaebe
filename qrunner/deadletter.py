"""The dead-letter stream of each queue: list, show, replay and purge.

Replay resets the attempt counter and keeps the error history, so a replayed job that fails again
shows every earlier failure.
"""

from __future__ import annotations

import asyncio
import builtins
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis

from . import keys
from .faults import translated
from .job import Job, MalformedJob
from .scripts import Script


@dataclass(frozen=True, slots=True)
class DeadJob:
    queue: str
    dlq_id: str
    reason: str
    failed_ms: int
    task: str
    raw: bytes
    job: Job | None

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "queue": self.queue,
            "dlq_id": self.dlq_id,
            "job_id": self.job.id if self.job else None,
            "task": self.task,
            "reason": self.reason,
            "failed_ms": self.failed_ms,
            "attempt": self.job.attempt if self.job else None,
        }
        if full:
            out["payload"] = self.job.payload if self.job else None
            out["errors"] = [e.to_dict() for e in self.job.errors] if self.job else []
            if self.job is None:
                out["raw"] = self.raw.decode("utf-8", "replace")
        return out


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _dead(queue: str, entry_id: Any, fields: dict[Any, Any]) -> DeadJob:
    f = {_s(k): v for k, v in fields.items()}
    raw = f.get("j", b"")
    raw = raw if isinstance(raw, bytes) else str(raw).encode()
    try:
        job: Job | None = Job.decode(raw, queue=queue)
    except MalformedJob:
        job = None
    return DeadJob(
        queue=queue,
        dlq_id=_s(entry_id),
        reason=_s(f.get("reason", b"")),
        failed_ms=int(f.get("failed_ms", 0) or 0),
        task=_s(f.get("task", b"")) or (job.task if job else ""),
        raw=raw,
        job=job,
    )


class DeadLetters:
    """Operations on the dead-letter streams of a set of queues."""

    _replay = Script("replay")

    def __init__(self, redis: Redis, status_ttl_s: int = 7 * 24 * 3600) -> None:
        self.redis = redis
        self.status_ttl_ms = status_ttl_s * 1000

    async def iterate(
        self, queues: Sequence[str], *, task: str | None = None, batch: int = 500
    ) -> AsyncIterator[DeadJob]:
        for q in queues:
            start = "-"
            while True:
                async with translated(q):
                    rows = await self.redis.xrange(keys.dlq(q), min=start, max="+", count=batch)
                if not rows:
                    break
                for entry_id, fields in rows:
                    dead = _dead(q, entry_id, fields or {})
                    if task is None or dead.task == task:
                        yield dead
                last = _s(rows[-1][0])
                ms, seq = last.split("-")
                start = f"{ms}-{int(seq) + 1}"
                if len(rows) < batch:
                    break

    async def list(
        self, queues: Sequence[str], *, task: str | None = None, limit: int = 100
    ) -> builtins.list[DeadJob]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        out: builtins.list[DeadJob] = []
        async for d in self.iterate(queues, task=task):
            out.append(d)
            if len(out) >= limit:
                break
        return out

    async def find(self, queues: Sequence[str], ident: str) -> DeadJob | None:
        """By dead-letter entry id or by job id."""
        async for d in self.iterate(queues):
            if d.dlq_id == ident or (d.job is not None and d.job.id == ident):
                return d
        return None

    async def replay_one(self, dead: DeadJob) -> bool:
        if dead.job is None:
            return False
        job = replace(dead.job, attempt=1)
        res = await self._replay(
            self.redis,
            [keys.dlq(dead.queue), keys.stream(dead.queue), keys.job(dead.queue, job.id)],
            [dead.dlq_id, job.encode(), self.status_ttl_ms, job.task],
        )
        return res is not None and res is not False

    async def replay(
        self,
        queues: Sequence[str],
        *,
        task: str | None = None,
        ident: str | None = None,
        per_second: float | None = None,
    ) -> tuple[int, int]:
        """Replay matching entries (all, by task, or one id).

        Returns (replayed, skipped malformed). ``per_second`` must be a finite number above 0
        (None: as fast as Redis takes them)."""
        if per_second is not None and not (0 < per_second < math.inf):
            raise ValueError(f"per_second must be a finite number above 0, got {per_second}")
        if ident is not None:
            dead = await self.find(queues, ident)
            if dead is None:
                return 0, 0
            return (1, 0) if await self.replay_one(dead) else (0, 1)
        replayed = skipped = 0
        targets = [d async for d in self.iterate(queues, task=task)]
        for d in targets:
            if await self.replay_one(d):
                replayed += 1
                if per_second:
                    await asyncio.sleep(1.0 / per_second)
            else:
                skipped += 1
        return replayed, skipped

    async def purge(self, queues: Sequence[str], *, task: str | None = None) -> int:
        if task is None:
            total = 0
            for q in queues:
                total += int(await self.redis.xlen(keys.dlq(q)))
                await self.redis.delete(keys.dlq(q))
            return total
        ids: dict[str, builtins.list[str]] = {}
        async for d in self.iterate(queues, task=task):
            ids.setdefault(d.queue, []).append(d.dlq_id)
        for q, chunk in ids.items():
            for i in range(0, len(chunk), 500):
                await self.redis.xdel(keys.dlq(q), *chunk[i : i + 500])
        return sum(len(v) for v in ids.values())
