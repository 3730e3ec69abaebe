"""The worker's side of a queue: its consumer group, reading, leases and the ownership-checked
writes that finish an entry (ack, reschedule, dead-letter).

Every write that ends an entry's life goes through a Lua script that first checks this consumer
still owns the entry, so a worker that lost its lease cannot undo another worker's claim.

Every method raises qrunner's typed faults (:mod:`qrunner.faults`): :class:`StreamMissing`
naming the queue when its stream or group vanished, :class:`ConnectionLost`,
:class:`ServerBusy`, :class:`OutOfMemory`. Callers never see a redis-py exception.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from . import keys
from .errors import ConnectionLost, RedisFault
from .faults import error_code, translated
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


class Completion(NamedTuple):
    """A finished job waiting for its batched ack. A tuple: one is made per job, and the worker
    builds it with ``tuple.__new__`` (:func:`completion`), several times cheaper than a
    dataclass' ``__init__``; the ack unpacks it in one step."""

    entry_id: str
    job_id: str
    attempt: int
    result: bytes
    task: str = ""
    enqueued_ms: int = 0
    #: How long the handler ran, in ms: the record's start time is the Redis clock at the ack
    #: minus this, so a job never finishes before it started whatever the worker's clock says.
    run_ms: int = 0


_tuple_new = tuple.__new__


def completion(
    entry_id: str,
    job_id: str,
    attempt: int,
    result: bytes,
    task: str,
    enqueued_ms: int,
    run_ms: int,
) -> Completion:
    """``Completion(...)`` with every field given, without the Python-level ``__new__`` that
    NamedTuple generates (this runs once per job)."""
    return _tuple_new(Completion, (entry_id, job_id, attempt, result, task, enqueued_ms, run_ms))


#: On Redis Cluster, the longest an idle worker waits on one queue before sweeping them all.
CLUSTER_POLL_MS = 100


class Finish(enum.IntEnum):
    """What a script that ends an entry's life did with it."""

    #: Done: acked, rescheduled or dead-lettered.
    DONE = 1
    #: Refused: another consumer owns the entry now (this worker's lease lapsed).
    NOT_OWNER = -1
    #: Nothing to do: the entry is no longer pending (already finished, e.g. a retried call
    #: whose first reply was lost, or its stream was flushed and refilled).
    GONE = -2


def _finish(code: Any) -> Finish:
    if isinstance(code, int) and code < 0:
        return Finish(code)
    return Finish.DONE


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
                body = fields.get(b"j") if isinstance(fields, dict) else _field(fields, b"j")
            out.append(Entry(queue, _s(entry_id), body or None))
    return out


def entries_of(queue: str, reply: Any) -> list[Entry]:
    """Entries of one queue from XREADGROUP's reply as the server sent it, before redis-py's
    response callback: nil when nothing is new, else RESP2's ``[[stream, [[id, [field, value,
    ...]], ...]]]`` or RESP3's ``{stream: [...]}``. The callback would build a tuple and a dict
    per entry only for this to pick one field out of it. An entry without a 'j' field (or an
    empty one) gets ``body`` None and is dead-lettered by the worker."""
    if not reply:
        return []
    messages = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    out: list[Entry] = []
    for entry_id, fields in messages:
        body = fields[1] if fields and fields[0] == b"j" else _field(fields, b"j")
        out.append(Entry(queue, entry_id.decode(), body or None))
    return out


def _field(fields: Any, name: bytes) -> Any:
    """The value of ``name`` in a flat ``[field, value, ...]`` list, or None."""
    for i in range(0, len(fields or ()) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return None


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
    _done_sweep = Script("done_sweep")
    _finish_cancelled = Script("finish_cancelled")
    _ensure_group = Script("ensure_group")
    _group_consumers = Script("group_consumers")

    def __init__(self, redis: Redis, name: str, queues: Sequence[str]) -> None:
        self.redis = redis
        self.name = name
        self.queues = list(queues)
        #: A Redis Cluster client: reads must not span slots.
        self.cluster = hasattr(redis, "nodes_manager")
        #: The non-blocking read's client: the same pool (and so the same connections), with
        #: no response callback for XREADGROUP, so its reply reaches :func:`entries_of` as the
        #: server sent it. A cluster client routes through per-node clients of its own, so
        #: there the read takes redis-py's parsed reply (:func:`parse_read`).
        self._reader: Redis | None = None
        if not self.cluster:
            self._reader = Redis(connection_pool=redis.connection_pool)
            self._reader.response_callbacks.pop("XREADGROUP", None)

    async def ensure_group(self, queue: str) -> bool:
        """Create the stream and group if missing; True when it had to create the group."""
        async with translated(queue):
            try:
                created = await self._ensure_group(self.redis, [keys.stream(queue)], [keys.GROUP])
            except ResponseError as exc:  # created by another worker between check and create
                if error_code(exc) == "BUSYGROUP":
                    return False
                raise
        return bool(int(created))

    async def read_available(
        self,
        queues: Sequence[str],
        count: int,
        faults: list[tuple[str, RedisFault]] | None = None,
    ) -> list[Entry]:
        """Non-blocking read in the given order until ``count`` entries are held (a held
        entry is what makes its job *running*: nothing is written per job).

        A queue whose read fails raises its fault, unless ``faults`` is given: then the queue
        and its fault are added there and the other queues are read on. Raising after an
        earlier queue gave entries would drop them here while Redis holds them for this
        consumer, leaving them to the reclaimer a lease later; a queue that cannot be read
        (a key of another type under its name) would hold up every other queue. A lost
        connection ends the read: raised when nothing was read yet, else added to ``faults``
        with the entries read so far returned."""
        got: list[Entry] = []
        for q in queues:
            want = count - len(got)
            if want <= 0:
                break
            try:
                got += await self._read_one(q, want)
            except RedisFault as fault:
                if faults is None or (isinstance(fault, ConnectionLost) and not got):
                    raise
                faults.append((q, fault))
                if isinstance(fault, ConnectionLost):
                    break  # every queue is out of reach: keep what was read, try no more
                continue
        return got

    async def _read_one(self, queue: str, count: int) -> list[Entry]:
        """Up to ``count`` new entries of one queue, without waiting: one XREADGROUP.

        Nothing is written per job: a job is running while its entry is pending (job_status.lua
        reads it there), so starting a job costs no status write. The read needs no memory,
        so it works when Redis is out of memory. NOGROUP (the stream or group is missing)
        becomes :class:`StreamMissing`, and the worker recreates them."""
        streams: dict[Any, Any] = {keys.stream(queue): ">"}
        async with translated(queue):
            if self._reader is None:
                reply = await self.redis.xreadgroup(keys.GROUP, self.name, streams, count)
                return parse_read(reply)
            reply = await self._reader.xreadgroup(keys.GROUP, self.name, streams, count)
        return entries_of(queue, reply)

    async def read_blocking(self, queues: Sequence[str], count: int, block_ms: int) -> list[Entry]:
        """Wait up to ``block_ms`` for an entry on any of the queues.

        On Redis Cluster one XREADGROUP cannot span slots: the worker then waits on its first
        (highest priority) queue for at most :data:`CLUSTER_POLL_MS` and, empty-handed, returns
        so that the caller's non-blocking read sweeps every queue again. An idle worker on a
        cluster costs one read per queue every 100 ms; a busy one never waits.
        """
        if self.cluster and len(queues) > 1:
            queues = queues[:1]
            block_ms = min(block_ms, CLUSTER_POLL_MS)
        async with translated(queues[0] if len(queues) == 1 else None):
            reply = await self.redis.xreadgroup(
                keys.GROUP,
                self.name,
                {keys.stream(q): ">" for q in queues},
                count=count,
                block=block_ms,
            )
        return parse_read(reply)

    async def ack(self, queue: str, done: Sequence[Completion], result_ttl_ms: int) -> list[Finish]:
        packed = b"\n".join(
            b"%s\t%s\t%d\t%s\t%d\t%d\t%s"
            % (entry_id.encode(), job_id.encode(), attempt, task.encode(), enqueued, run, result)
            for entry_id, job_id, attempt, result, task, enqueued, run in done
        )
        async with translated(queue):
            res = await self._ack(
                self.redis,
                [keys.stream(queue)],
                [
                    keys.GROUP,
                    self.name,
                    "",
                    result_ttl_ms,
                    keys.job_prefix(queue),
                    packed,
                    keys.ID_MARKER_TTL_MS,
                ],
            )
        if res.count(1) == len(res):  # the usual reply: every entry acked (counted in C)
            return [Finish.DONE] * len(res)
        return [_finish(int(x)) for x in res]

    async def finish_cancelled(
        self,
        entry: Entry,
        job_id: str,
        attempt: int,
        status_ttl_ms: int,
        *,
        task: str = "",
        enqueued_ms: int = 0,
    ) -> Finish:
        """Ack an entry an operator cancelled, recording the job as ``cancelled``."""
        q = entry.queue
        async with translated(q):
            res = await self._finish_cancelled(
                self.redis,
                [keys.stream(q), keys.job(q, job_id)],
                [
                    keys.GROUP,
                    self.name,
                    entry.entry_id,
                    attempt,
                    status_ttl_ms,
                    task,
                    enqueued_ms or "",
                ],
            )
        return _finish(int(res))

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
        task: str = "",
        enqueued_ms: int = 0,
    ) -> Finish:
        q = entry.queue
        async with translated(q):
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
                    task,
                    enqueued_ms or "",
                ],
            )
        return _finish(int(due))

    async def deadletter(
        self,
        entry: Entry,
        job_id: str,
        envelope: bytes,
        reason: str,
        *,
        task: str,
        status_ttl_ms: int,
        attempt: int = 0,
        enqueued_ms: int = 0,
    ) -> Finish:
        q = entry.queue
        async with translated(q):
            res = await self._deadletter(
                self.redis,
                [keys.stream(q), keys.dlq(q), keys.job(q, job_id or "_malformed")],
                [
                    keys.GROUP,
                    self.name,
                    entry.entry_id,
                    envelope,
                    reason,
                    "",
                    status_ttl_ms,
                    task,
                    attempt or "",
                    enqueued_ms or "",
                ],
            )
        return _finish(res)

    async def extend(self, queue: str, entry_ids: Sequence[str]) -> list[tuple[str, Finish]]:
        """Heartbeat and renew leases; returns the entries this consumer no longer holds, each
        with why (``NOT_OWNER``: another consumer claimed it; ``GONE``: no longer pending)."""
        async with translated(queue):
            lost = await self._extend(
                self.redis,
                [keys.stream(queue), keys.consumers(queue)],
                [keys.GROUP, self.name, "", *entry_ids],
            )
        return [(_s(lost[i]), Finish(int(lost[i + 1]))) for i in range(0, len(lost), 2)]

    async def reclaim(self, queue: str, lease_ms: int, count: int) -> list[Entry]:
        async with translated(queue):
            flat = await self._reclaim(
                self.redis, [keys.stream(queue)], [keys.GROUP, self.name, lease_ms, count]
            )
        out = []
        for i in range(0, len(flat), 3):
            body = flat[i + 1]
            out.append(Entry(queue, _s(flat[i]), body if body else None, int(flat[i + 2])))
        return out

    async def promote(self, queue: str, limit: int = 1000) -> tuple[int, int]:
        """Move due jobs into the stream: (moved, ms until the next one is due or -1), both
        judged on the Redis clock."""
        async with translated(queue):
            moved, wait_ms = await self._promote(
                self.redis, [keys.delayed(queue), keys.stream(queue)], ["", limit]
            )
        return int(moved), int(wait_ms)

    async def sweep_done(self, queue: str, ttl_ms: int, entries: int = 20) -> tuple[int, bool]:
        """Remove the queue's done records older than ``ttl_ms`` (the result TTL the acks were
        given), from up to ``entries`` of its log's entries: (records removed, whether expired
        entries remain)."""
        async with translated(queue):
            removed, more = await self._done_sweep(
                self.redis, [keys.done(queue)], ["", ttl_ms, entries]
            )
        return int(removed), bool(more)

    async def group_consumers(self, queue: str) -> list[tuple[str, int, int]]:
        """(name, pending entries, ms since it last read or claimed) per consumer of the group."""
        async with translated(queue):
            flat = await self._group_consumers(self.redis, [keys.stream(queue)], [keys.GROUP])
        return [(_s(flat[i]), int(flat[i + 1]), int(flat[i + 2])) for i in range(0, len(flat), 3)]

    async def heartbeats(self, queue: str) -> dict[str, int]:
        """Consumer name -> last heartbeat (ms, Redis clock) of every consumer of the queue."""
        async with translated(queue):
            beats = await self.redis.hgetall(keys.consumers(queue))
        return {_s(name): int(ms) for name, ms in beats.items()}

    async def server_time_ms(self) -> int:
        async with translated():
            t = await self.redis.time()
        return int(t[0]) * 1000 + int(t[1]) // 1000

    async def record_alarm(self, fields: dict[Any, Any]) -> None:
        async with translated():
            await self.redis.xadd(keys.alarms(), fields, maxlen=1000, approximate=True)

    async def release(self, queue: str, consumer: str) -> bool:
        """Delete a consumer that owns nothing; a consumer with pending entries is kept."""
        async with translated(queue):
            res = await self._release(
                self.redis, [keys.stream(queue), keys.consumers(queue)], [keys.GROUP, consumer]
            )
        return bool(int(res))
