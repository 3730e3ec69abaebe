"""Workflows: follow-up jobs (``on_success`` / ``on_failure``), job groups with a callback, and
fan-out counters for a parent that enqueues children.

Everything here rides on the job envelope's ``flow`` field and on group records under their own
hash tag (``qr:grp:{<group id>}``), so no second broker and no scanning:

- A job enqueued with ``on_success=JobSpec(...)`` / ``on_failure=JobSpec(...)`` carries the
  follow-up's spec. When the job succeeds (or is dead-lettered) the worker enqueues the
  follow-up *before* acking the job, under a job id derived from the job's own
  (``<id>-ok`` / ``<id>-fail``): a crash between the two re-runs the job and its follow-up
  enqueue is refused as a known id. The follow-up reads the upstream job's outcome from
  ``ctx.upstream``.
- ``Client.enqueue_group(specs, callback=...)`` writes the group record (members, order,
  callback) first, then enqueues the members with the group's id in their envelopes. When a
  member finishes (succeeded or dead-lettered; a retry is not an end), ``group_finish.lua``
  counts it once (a set of done ids makes it idempotent) and, once every member is done,
  returns the callback, which the worker enqueues under ``<group id>-cb``. Both happen before
  the member's entry is acked, so a worker killed during the last member leaves the member
  pending; its re-run finds the member counted and the callback id taken, and the callback runs
  once. The callback reads the members' outcomes from ``ctx.group_results``.
- ``Client.enqueue_many(..., parent=job_id)`` makes the children members of the parent's
  fan-out group (id ``parent:<job id>``, no callback); ``Client.status(parent)`` shows
  ``children`` (total, succeeded, failed, remaining) read from the counters.

Group records expire with the status TTL, refreshed on every write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis

from . import keys
from .faults import translated
from .job import Job
from .scripts import Script

if TYPE_CHECKING:
    from .outcome import Outcome
    from .queue import Client

log = logging.getLogger(__name__)

_add = Script("group_add")
_finish = Script("group_finish")


#: Group records live at least this long, even with status records off.
GROUP_MIN_TTL_MS = 24 * 3600 * 1000


def group_ttl_ms(status_ttl_ms: int) -> int:
    return max(status_ttl_ms, GROUP_MIN_TTL_MS)


def fanout_group_id(parent_job_id: str) -> str:
    """The group holding the children a job enqueued with ``parent=<its id>``."""
    return f"parent:{parent_job_id}"


def callback_job_id(group_id: str) -> str:
    return f"{group_id}-cb"


def follow_up_job_id(job_id: str, succeeded: bool) -> str:
    return f"{job_id}-ok" if succeeded else f"{job_id}-fail"


def _group_keys(group_id: str) -> list[str]:
    return [
        keys.group(group_id),
        keys.group_members(group_id),
        keys.group_done(group_id),
        keys.group_results(group_id),
    ]


@dataclass(frozen=True, slots=True)
class GroupCounts:
    """How many members a group (or a parent's fan-out) has, and how many have finished."""

    total: int
    succeeded: int
    failed: int

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.succeeded - self.failed)

    def to_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "remaining": self.remaining,
        }


async def add_members(
    redis: Redis,
    group_id: str,
    member_ids: Sequence[str],
    ttl_ms: int,
    *,
    callback: dict[str, Any] | None = None,
    parent: str | None = None,
) -> int:
    """Create the group (first call) and add members; returns the group's total."""
    order = orjson.dumps(list(member_ids)) if callback is not None else b""
    async with translated():
        total = await _add(
            redis,
            _group_keys(group_id),
            [
                group_ttl_ms(ttl_ms),
                orjson.dumps(callback) if callback is not None else b"",
                order,
                parent or "",
                *member_ids,
            ],
        )
    return int(total)


async def read_counts(redis: Redis, group_id: str) -> GroupCounts | None:
    """The group's counters, or None when it has no record (never made, or expired)."""
    async with translated():
        rec = await redis.hmget(keys.group(group_id), ["succeeded", "failed", "created_ms"])
        if rec[2] is None:
            return None
        total = await redis.scard(keys.group_members(group_id))
    return GroupCounts(int(total), int(rec[0] or 0), int(rec[1] or 0))


def member_outcome(job: Job, outcome: Outcome) -> tuple[str, dict[str, Any]]:
    """("succeeded" | "dead", the record a follow-up or callback gets) for a finished job."""
    from .outcome import DeadLettered, Succeeded

    if isinstance(outcome, Succeeded):
        result = orjson.loads(outcome.result) if outcome.result else None
        return "succeeded", {
            "id": job.id,
            "task": job.task,
            "state": "succeeded",
            "result": result,
            "error": None,
        }
    assert isinstance(outcome, DeadLettered)
    return "dead", {
        "id": job.id,
        "task": job.task,
        "state": "dead",
        "result": None,
        "error": outcome.reason,
    }


class FollowUps:
    """The worker's side: what to do when a job with a ``flow`` finishes, before its ack."""

    def __init__(self, client: Client, ttl_ms: int) -> None:
        self.client = client
        self.ttl_ms = group_ttl_ms(ttl_ms)

    async def finished(self, job: Job, outcome: Outcome) -> None:
        """Enqueue the job's follow-up and count it in its group. Idempotent; raises
        qrunner's typed faults (the caller leaves the entry pending for a re-run)."""
        flow = job.flow
        if not flow:
            return
        state, record = member_outcome(job, outcome)
        follow = flow.get("on_success" if state == "succeeded" else "on_failure")
        if isinstance(follow, dict):
            await self.client.enqueue_follow_up(
                follow, follow_up_job_id(job.id, state == "succeeded"), {"upstream": record}
            )
        group_id = flow.get("group")
        if isinstance(group_id, str):
            await self._count(group_id, job, state, record)

    async def _count(self, group_id: str, job: Job, state: str, record: dict[str, Any]) -> None:
        async with translated():
            res = await _finish(
                self.client.redis,
                _group_keys(group_id),
                [job.id, state, orjson.dumps(record), self.ttl_ms],
            )
        if int(res[0]) == -1:
            log.warning("job %s: its group %s has no record any more (expired)", job.id, group_id)
            return
        callback, outcomes = res[4], res[5]
        if callback:
            spec = orjson.loads(callback)
            flow = {"group_id": group_id, "group_results": orjson.loads(outcomes)}
            await self.client.enqueue_follow_up(spec, callback_job_id(group_id), flow)
