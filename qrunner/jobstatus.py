"""Reading one job's status: its status hash merged with where its stream entry is.

A job due now is written once at enqueue (its stream entry, and one field in the queue's live
index ``qr:{q}:live``: job id -> entry id) and once when it ends (a compact status record, in
the same script call as the ack: a field of the queue's done hash ``qr:{q}:done`` when nothing
else was recorded for the job, which ``job_status.lua`` spells out as a hash's fields).
Between the two nothing is written: the entry still unread means *queued*, pending for a
consumer means *running* on that consumer. The
status record also holds what the entry cannot tell (the scheduled time, the last error,
progress, the result) and is written when a job is delayed, retried, cancelled or ends. This
module puts the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from . import keys
from .job import Job, MalformedJob
from .scripts import Script

#: States after which the status hash is the whole story (the entry has left the stream, or an
#: operator cancelled the job and the worker will drop it).
ENDED = frozenset({"succeeded", "dead", "cancelled"})

_job_status = Script("job_status")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def merge(
    rec: dict[str, Any],
    body: bytes | str | None,
    owner: bytes | str | None,
    entry_id: bytes | str | None = None,
    queue: str | None = None,
) -> dict[str, Any]:
    """The job's record from its status hash ``rec`` (field -> value), its stream entry's
    envelope ``body`` (None when it has no live entry), the consumer ``owner`` holding the
    entry (None when unread) and the entry's id (it tells when a job added to the stream at
    once was enqueued) and ``queue`` (whose stream holds it). Empty when there is neither."""
    state = _text(rec["state"]) if rec.get("state") is not None else ""
    if not body or state in ENDED:
        return rec
    try:
        job = Job.decode(body, entry_id, queue)
    except MalformedJob:
        return rec
    out = dict(rec)
    out["state"] = "running" if owner else "queued"
    out["task"] = job.task
    out["attempt"] = job.attempt
    if job.enqueued_ms:
        out["enqueued_ms"] = job.enqueued_ms
    if owner:
        out["worker"] = _text(owner)
    return out


def _call(queue: str, job_id: str) -> tuple[list[str], list[str]]:
    return [keys.stream(queue), keys.job(queue, job_id)], [keys.GROUP, job_id]


def _first(queues: Sequence[str], replies: Sequence[Any]) -> tuple[str, dict[str, Any]] | None:
    for q, (rec, body, owner, *entry) in zip(queues, replies, strict=True):
        flat = {_text(rec[i]): rec[i + 1] for i in range(0, len(rec), 2)}
        merged = merge(flat, body or None, owner or None, entry[0] if entry else None, q)
        if merged:
            return q, merged
    return None


def _is_cluster(redis: Any) -> bool:
    return getattr(redis, "nodes_manager", None) is not None


def _queue_calls(pipe: Any, queues: Sequence[str], job_id: str) -> None:
    for q in queues:
        ks, argv = _call(q, job_id)
        _job_status.queue_in(pipe, ks, argv)


async def find(
    redis: Redis, queues: Sequence[str], job_id: str
) -> tuple[str, dict[str, Any]] | None:
    """The first queue of ``queues`` with a trace of the job and its merged record (see
    :func:`merge`), or None; one pipelined round trip (two when the script is not loaded)."""
    if not queues:
        return None
    if _is_cluster(redis):  # a cluster pipeline cannot carry EVALSHA: one call per queue
        for q in queues:
            found = _first([q], [await _job_status(redis, *_call(q, job_id))])
            if found:
                return found
        return None
    for attempt in (1, 2):
        pipe = redis.pipeline(transaction=False)
        _queue_calls(pipe, queues, job_id)
        try:
            return _first(queues, await pipe.execute())
        except NoScriptError:
            if attempt == 2:
                raise
            await _job_status.ensure_loaded(redis)
    return None  # pragma: no cover


def find_sync(
    redis: SyncRedis, queues: Sequence[str], job_id: str
) -> tuple[str, dict[str, Any]] | None:
    """:func:`find` for a synchronous client (qrunner.SyncClient)."""
    if not queues:
        return None
    if _is_cluster(redis):
        for q in queues:
            found = _first([q], [_job_status.call_sync(redis, *_call(q, job_id))])
            if found:
                return found
        return None
    for attempt in (1, 2):
        pipe = redis.pipeline(transaction=False)
        _queue_calls(pipe, queues, job_id)
        try:
            return _first(queues, pipe.execute())
        except NoScriptError:
            if attempt == 2:
                raise
            redis.script_load(_job_status.source)
    return None  # pragma: no cover


async def read(redis: Redis, queue: str, job_id: str) -> dict[str, Any]:
    """One job's merged record in ``queue``; empty when the queue has no trace of it."""
    found = await find(redis, [queue], job_id)
    return found[1] if found else {}
