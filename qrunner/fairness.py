"""Per-tenant fairness within a queue: ``@registry.task(..., fair_key=lambda p: p.business_id)``.

A burst of one key's jobs must not delay another key's single job. Jobs of a task with a
fairness key, when due at once, are not added to the queue's stream at enqueue: they are parked
in a list per key (``qr:{q}:fair:k:<key>``), and a ring (``qr:{q}:fair:ring``) lists the keys
that have parked jobs. :func:`release` (``fair_release.lua``) moves them into the stream one
per key in ring order (A,A,A,B,B,C is served A,B,C,A,B,A) and only while the stream holds fewer
undelivered entries than the workers asked for (their concurrency), so the stream never holds
more than about one round of any key's backlog. Enqueue tops the stream up in the same script,
so an idle worker wakes at once.

Downstream of the stream nothing changes: leases, retries, dead letters and crash recovery are
the stream's. Moving a job from its list into the stream is one atomic step, so a parked job is
never lost or duplicated. Delayed jobs and retries enter the stream when due, as any job (they
were served fairly once already). ``qrunner stats`` depth counts the stream only; parked jobs
are in :func:`parked`.
"""

from __future__ import annotations

from redis.asyncio import Redis

from . import keys
from .faults import translated
from .scripts import Script

_release = Script("fair_release")


async def release(redis: Redis, queue: str, target: int) -> int:
    """Top up ``queue``'s stream to ``target`` undelivered entries from its parked fair jobs,
    round-robin over keys; returns how many moved."""
    async with translated(queue):
        moved = await _release(
            redis, [keys.stream(queue), keys.fair_ring(queue)], [keys.GROUP, max(1, target)]
        )
    return int(moved)


async def announce(redis: Redis, queue: str, target: int) -> None:
    """Tell enqueuers how many undelivered entries the queue's workers want (their
    concurrency); the largest announced wins."""
    async with translated(queue):
        current = await redis.get(keys.fair_backlog(queue))
        if current is None or int(current) < target:
            await redis.set(keys.fair_backlog(queue), target)


async def parked(redis: Redis, queue: str) -> int:
    """Parked fair jobs of ``queue`` (one LLEN per key with jobs: for operators, not a hot
    path)."""
    async with translated(queue):
        lists = await redis.lrange(keys.fair_ring(queue), 0, -1)
        total = 0
        for name in lists:
            total += int(await redis.llen(name.decode() if isinstance(name, bytes) else name))
    return total
