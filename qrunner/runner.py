"""Run one delivered entry and return its outcome. No Redis writes happen here: the worker
applies the outcome, so this module reads as the policy for a single job."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from .consumer import Entry
from .errors import InvalidPayload, RateLimited, UnknownTask
from .job import Job, MalformedJob
from .outcome import DeadLettered, Deferred, Outcome, Succeeded, classify, error_record
from .task import Context, Registry, Task

log = logging.getLogger(__name__)


class RateGate(Protocol):
    """Admission control for rate-limited tasks (implemented over Redis token buckets)."""

    async def admit(self, task: Task, payload: Any) -> tuple[float, str | None]:
        """Seconds to wait before this job may run (0.0 = go now) and the bucket judged."""
        ...

    async def throttle(self, task: Task, payload: Any, bucket: str | None, seconds: float) -> None:
        """A provider said "slow down": block the bucket for ``seconds`` on every worker."""
        ...


def now_ms() -> int:
    return int(time.time() * 1000)


def _encode_result(value: Any) -> bytes:
    if value is None:
        return b""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(repr(value))


class Runner:
    """Turns an :class:`Entry` into an :class:`Outcome` by running its task's handler."""

    def __init__(
        self,
        registry: Registry,
        make_context: Callable[[Job, int], Context[Any]],
        gate: RateGate | None = None,
    ) -> None:
        self.registry = registry
        self.make_context = make_context
        self.gate = gate
        self._expired: set[asyncio.Task[Any]] = set()

    def _expire(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._expired.add(task)
            task.cancel()

    def decode(self, entry: Entry) -> Job | DeadLettered:
        if entry.body is None:
            return DeadLettered("malformed entry: no 'j' field", None, b"")
        try:
            return Job.decode(entry.body)
        except MalformedJob as exc:
            return DeadLettered(f"malformed entry: {exc}", None, entry.body)

    async def run(self, entry: Entry, job: Job) -> Outcome:
        try:
            task = self.registry.get(job.task)
        except UnknownTask as exc:
            return DeadLettered(str(exc), job.with_error(error_record(exc, job.attempt, now_ms())))
        if entry.deliveries > task.max_deliveries:
            reason = (
                f"poison job: delivered {entry.deliveries} times without finishing "
                f"(max_deliveries={task.max_deliveries})"
            )
            return DeadLettered(reason, job)
        try:
            arg = task.validate(job.payload)
        except InvalidPayload as exc:
            return DeadLettered(str(exc), job.with_error(error_record(exc, job.attempt, now_ms())))
        if self.gate is not None and task.rate_limit is not None:
            wait_s, bucket = await self.gate.admit(task, arg)
            if wait_s > 0:
                return Deferred(int(wait_s * 1000) + 1, job, "rate limited", bucket)
        ctx = self.make_context(job, entry.deliveries)
        me = asyncio.current_task()
        timer = None
        if task.timeout_s is not None and me is not None:
            # One timer handle per job instead of asyncio.timeout(): the same effect at a
            # fraction of the cost on the hot path.
            timer = asyncio.get_running_loop().call_later(task.timeout_s, self._expire, me)
        try:
            value = await task.fn(ctx, arg)
        except asyncio.CancelledError:
            if me is None or me not in self._expired:
                raise
            self._expired.discard(me)
            me.uncancel()
            timed_out = TimeoutError(f"timed out after {task.timeout_s:g}s")
            return classify(timed_out, job, task, now_ms())
        except Exception as exc:
            outcome = classify(exc, job, task, now_ms())
            if (
                isinstance(exc, RateLimited)
                and exc.bucket is not None
                and self.gate is not None
                and task.rate_limit is not None
            ):
                # A provider said "slow down": every worker backs off this task's bucket. A
                # RateLimited without a bucket (quiet hours for one user) defers only this job.
                await self.gate.throttle(task, arg, None, exc.retry_after_s)
            return outcome
        finally:
            if timer is not None:
                timer.cancel()
                self._expired.discard(me)
        return Succeeded(_encode_result(value))
