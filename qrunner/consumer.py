"""The worker's side of a queue: its consumer group, reading, leases and the ownership-checked
writes that finish an entry (ack, reschedule, dead-letter).

Every write that ends an entry's life goes through a Lua script that first checks this consumer
still owns the entry, so a worker that lost its lease cannot undo another worker's claim.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys
from .scripts import Script

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Entry:
    """One stream entry delivered to this consumer."""

    queue: str
    entry_id: str
    body: bytes | None
    deliveries: int = 1
    #: The decoded envelope (a Job) or the reason it could not be decoded, filled in once by
    #: the worker so the body is parsed a single time.
    decoded: Any = None
    #: True when the read already recorded the job's running state.
    marked: bool = False


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished job waiting for its batched ack."""

    entry_id: str
    job_id: str
    attempt: int
    result: bytes


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_read(reply: Any) -> list[Entry]:
    """Entries from an XREADGROUP reply (RESP2 list form or redis-py's dict form)."""
    out: list[Entry] = []
    if not reply:
        return out
    items = reply.items() if isinstance(reply, dict) else reply
    for stream_name, messages in items:
        queue = queue_of(_s(stream_name))
        for entry_id, fields in messages:
            body = None
            if fields:
                body = fields.get(b"j") if isinstance(fields, dict) else None
            out.append(Entry(queue, _s(entry_id), body))
    return out


def queue_of(stream_key: str) -> str:
    """``qr:{name}:stream`` -> ``name``."""
    start = stream_key.index("{") + 1
    return stream_key[start : stream_key.index("}", start)]


class Consumer:
    """One consumer (a worker process) in the ``workers`` group of a set of queues."""

    _ack = Script("ack")
    _reschedule = Script("reschedule")
    _deadletter = Script("deadletter")
    _extend = Script("extend_lease")
    _reclaim = Script("reclaim")
    _release = Script("release_consumer")
    _promote = Script("promote")
    _mark_running = Script("mark_running")
    _fetch = Script("fetch")

    def __init__(self, redis: Redis, name: str, queues: Sequence[str]) -> None:
        self.redis = redis
        self.name = name
        self.queues = list(queues)

    async def ensure_group(self, queue: str) -> bool:
        """Create the stream and group if missing; True when it had to create the group."""
        try:
            await self.redis.xgroup_create(keys.stream(queue), keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def read_available(
        self, queues: Sequence[str], count: int, *, now_ms: int = 0, status_ttl_ms: int = 0
    ) -> list[Entry]:
        """Non-blocking read in the given order until ``count`` entries are held; with a
        status TTL the jobs are marked running in the same round trip."""
        got: list[Entry] = []
        for q in queues:
            want = count - len(got)
            if want <= 0:
                break
            flat = await self._fetch(
                self.redis,
                [keys.stream(q)],
                [keys.GROUP, self.name, want, now_ms, status_ttl_ms, keys.job_prefix(q)],
            )
            for i in range(0, len(flat), 2):
                body = flat[i + 1]
                got.append(Entry(q, _s(flat[i]), body if body else None, marked=True))
        return got

    async def read_blocking(self, queues: Sequence[str], count: int, block_ms: int) -> list[Entry]:
        """Wait up to ``block_ms`` for an entry on any of the queues."""
        reply = await self.redis.xreadgroup(
            keys.GROUP,
            self.name,
            {keys.stream(q): ">" for q in queues},
            count=count,
            block=block_ms,
        )
        return parse_read(reply)

    async def ack(self, queue: str, done: Sequence[Completion], result_ttl_ms: int) -> list[bool]:
        packed = b"\n".join(
            b"%s\t%s\t%d\t%s" % (c.entry_id.encode(), c.job_id.encode(), c.attempt, c.result)
            for c in done
        )
        res = await self._ack(
            self.redis,
            [keys.stream(queue)],
            [keys.GROUP, self.name, "", result_ttl_ms, keys.job_prefix(queue), packed],
        )
        return [bool(int(x)) for x in res]

    async def reschedule(
        self,
        entry: Entry,
        job_id: str,
        envelope: bytes,
        delay_ms: int,
        *,
        state: str,
        attempt: int,
        status_ttl_ms: int,
        last_error: str = "",
    ) -> bool:
        q = entry.queue
        due = await self._reschedule(
            self.redis,
            [keys.stream(q), keys.delayed(q), keys.job(q, job_id)],
            [
                keys.GROUP,
                self.name,
                entry.entry_id,
                envelope,
                max(0, delay_ms),
                "",
                status_ttl_ms,
                state,
                attempt,
                last_error,
            ],
        )
        return int(due) >= 0

    async def deadletter(
        self,
        entry: Entry,
        job_id: str,
        envelope: bytes,
        reason: str,
        *,
        task: str,
        status_ttl_ms: int,
    ) -> bool:
        q = entry.queue
        res = await self._deadletter(
            self.redis,
            [keys.stream(q), keys.dlq(q), keys.job(q, job_id or "_malformed")],
            [keys.GROUP, self.name, entry.entry_id, envelope, reason, "", status_ttl_ms, task],
        )
        return res is not None and res is not False

    async def extend(self, queue: str, entry_ids: Sequence[str]) -> list[str]:
        """Heartbeat and renew leases; returns the ids this consumer lost to another."""
        lost = await self._extend(
            self.redis,
            [keys.stream(queue), keys.consumers(queue)],
            [keys.GROUP, self.name, "", *entry_ids],
        )
        return [_s(x) for x in lost]

    async def reclaim(self, queue: str, lease_ms: int, count: int) -> list[Entry]:
        flat = await self._reclaim(
            self.redis, [keys.stream(queue)], [keys.GROUP, self.name, lease_ms, count]
        )
        out = []
        for i in range(0, len(flat), 3):
            body = flat[i + 1]
            out.append(Entry(queue, _s(flat[i]), body if body else None, int(flat[i + 2])))
        return out

    async def promote(self, queue: str, limit: int = 1000) -> tuple[int, int]:
        moved, next_due = await self._promote(
            self.redis, [keys.delayed(queue), keys.stream(queue)], ["", limit]
        )
        return int(moved), int(next_due)

    async def mark_running(
        self, queue: str, job_ids: Sequence[str], now_ms: int, ttl_ms: int
    ) -> None:
        if job_ids:
            await self._mark_running(
                self.redis,
                [keys.stream(queue)],
                [now_ms, ttl_ms, keys.job_prefix(queue), "\n".join(job_ids)],
            )

    async def release(self, queue: str, consumer: str) -> bool:
        """Delete a consumer that owns nothing; a consumer with pending entries is kept."""
        res = await self._release(
            self.redis, [keys.stream(queue), keys.consumers(queue)], [keys.GROUP, consumer]
        )
        return bool(int(res))
