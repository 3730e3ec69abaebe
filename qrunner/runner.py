"""Run one delivered entry and return its outcome. No Redis writes happen here: the worker
applies the outcome, so this module reads as the policy for a single job."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .consumer import Entry
from .context import Context
from .deadlines import Deadlines
from .errors import InvalidPayload, RateLimited, UnknownTask
from .firststep import resume
from .job import MAX_ERROR_HISTORY, Job, MalformedJob
from .names import shown
from .outcome import (
    TRACEBACK_TAIL_CHARS,
    DeadLettered,
    Deferred,
    Outcome,
    Succeeded,
    classify,
    error_record,
)
from .task import Registry, Task

if TYPE_CHECKING:
    from .admission import ReadPlan
    from .ratelimit import LineView, Verdict

log = logging.getLogger(__name__)

#: ``Settings.max_payload_bytes`` by default.
DEFAULT_MAX_PAYLOAD_BYTES = 512 * 1024
#: How much an envelope may grow past the enqueue limit on its way through retries: its error
#: history holds at most MAX_ERROR_HISTORY records of a 1000-character message and a
#: TRACEBACK_TAIL_CHARS traceback each, every character up to 6 bytes once JSON-escaped.
ERROR_HISTORY_ROOM_BYTES = MAX_ERROR_HISTORY * (1000 + TRACEBACK_TAIL_CHARS + 200) * 6
#: How much of an oversized entry its dead letter keeps.
OVERSIZED_KEEP_BYTES = 4096


class RateGate(Protocol):
    """Admission control for rate-limited tasks (implemented over Redis token buckets)."""

    async def admit(self, task: Task, payload: Any, job_id: str | None = None) -> Verdict:
        """Seconds to wait before this job may run (0.0 = go now), the bucket judged and when
        the job's token became its own; the job id lets a deferred job find the turn it was
        given when it comes back."""
        ...

    async def throttle(self, task: Task, payload: Any, bucket: str | None, seconds: float) -> None:
        """A provider said "slow down": block the bucket for ``seconds`` on every worker."""
        ...

    async def plan_reads(self, queues: Sequence[str], free: int) -> ReadPlan:
        """Which queues to read this round and how much of each: a queue whose every job waits
        for one exhausted bucket is left unread until its turn comes within reach."""
        ...

    def line_view(self, task: str) -> LineView | None:
        """Jobs of ``task`` waiting for a turn and the time to the next one, for the logs."""
        ...


def now_ms() -> int:
    return int(time.time() * 1000)


#: The outcome of every handler that returns None: immutable, so one serves every job.
SUCCEEDED_EMPTY = Succeeded(b"")


def _encode_result(value: Any) -> bytes:
    if value is None:
        return b""
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(repr(value))


def default_thread_limit() -> int:
    """As many handler threads as ``ThreadPoolExecutor`` would start by default."""
    return min(32, (os.cpu_count() or 1) + 4)


class HandlerThreads:
    """Runs the bodies of ``run_in_thread`` tasks: each on a daemon thread of its own, at most
    ``limit`` at once (further jobs wait for a slot; their timeout runs meanwhile).

    Neither ``asyncio.to_thread`` nor a ``ThreadPoolExecutor`` is used, on purpose:

    - ``to_thread`` runs on the loop's default executor, which also serves ``getaddrinfo``
      for every new Redis, database and HTTP connection. CPU-bound or hung handlers filling
      it would stall DNS lookups and so the worker itself; a limit of our own keeps them apart.
    - A timed-out thread cannot be stopped. Executor threads are joined at interpreter exit
      (and ``asyncio.run`` waits for the default executor at shutdown), so one runaway body
      would keep a stopping worker alive forever; a daemon thread does not.

    A thread keeps its slot until its body really returns, even after its job timed out, so
    runaway bodies cost at most ``limit`` threads and never an unbounded number.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = default_thread_limit() if limit is None else limit
        if self.limit < 1:
            raise ValueError("a handler thread limit must be at least 1")
        self._slots: asyncio.Semaphore | None = None
        #: Threads started and not yet finished (timed-out ones included).
        self.alive = 0

    async def run(self, task: Task, ctx: Context[Any], arg: Any) -> Any:
        """``task.fn(ctx, arg)`` on a thread; its result, or its exception re-raised here."""
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        slots = self._slots
        await slots.acquire()
        done: asyncio.Future[Any] = loop.create_future()
        job_id = ctx.job_id
        started = time.monotonic()

        def settle(value: Any, error: BaseException | None) -> None:  # on the loop
            self.alive -= 1
            slots.release()
            if done.cancelled():
                log.warning(
                    "task %s job %s: its thread finished after %.1fs, but the job had already "
                    "timed out or been cancelled; its %s is ignored",
                    task.name,
                    job_id,
                    time.monotonic() - started,
                    "result" if error is None else type(error).__name__,
                )
            elif error is None:
                done.set_result(value)
            else:
                done.set_exception(error)

        body = _thread_body(task, ctx, arg, loop, settle)
        thread = threading.Thread(target=body, name=f"qrunner {task.name} {job_id}", daemon=True)
        try:
            thread.start()
        except BaseException:
            slots.release()
            raise
        self.alive += 1
        # Cancelling this await (timeout, lost lease, shutdown) cancels ``done`` only; the
        # thread runs on and ``settle`` drops what it returns.
        return await done


def _thread_body(
    task: Task,
    ctx: Context[Any],
    arg: Any,
    loop: asyncio.AbstractEventLoop,
    settle: Callable[[Any, BaseException | None], None],
) -> Callable[[], None]:
    # Context variables set by the worker are visible to the body, as with asyncio.to_thread.
    context = contextvars.copy_context()

    def body() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = context.run(task.fn, ctx, arg)
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                raise TypeError(
                    f"task {task.name!r} runs in a thread but its handler returned an "
                    "awaitable; a run_in_thread handler must be a plain function"
                )
        except Exception as exc:
            # StopIteration cannot travel through a future.
            error = exc if not isinstance(exc, StopIteration) else RuntimeError(repr(exc))
        except BaseException as exc:
            # SystemExit or KeyboardInterrupt raised by a handler thread is that job's failure,
            # not a reason to stop the worker.
            error = RuntimeError(f"handler raised {exc!r}")
            error.__cause__ = exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop is closed: nobody waits for this result any more
            pass

    return body


class Runner:
    """Turns an :class:`Entry` into an :class:`Outcome` by running its task's handler."""

    def __init__(
        self,
        registry: Registry,
        make_context: Callable[[Job, int], Context[Any]],
        gate: RateGate | None = None,
        *,
        thread_limit: int | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.registry = registry
        #: The enqueue side's limit (``QRUNNER_MAX_PAYLOAD_BYTES``); entries up to this plus
        #: :data:`ERROR_HISTORY_ROOM_BYTES` are decoded, longer ones dead-lettered.
        self.max_payload_bytes = max_payload_bytes
        self.max_entry_bytes = max_payload_bytes + ERROR_HISTORY_ROOM_BYTES
        self.make_context = make_context
        self.gate = gate
        self.threads = HandlerThreads(thread_limit)
        self._expired: set[asyncio.Task[Any]] = set()
        self._deadlines = Deadlines(self._expire)

    def _expire(self, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._expired.add(task)
            task.cancel()

    def decode(self, entry: Entry) -> Job | DeadLettered:
        """The entry's envelope, or the dead letter it becomes when it is not a valid one.

        The enqueue side refuses oversized and malformed jobs, but anything that can write to
        Redis can add an entry, so the same limits are enforced here before a handler runs: an
        entry over the size limit (plus room for its error history) is dead-lettered unparsed
        with the first :data:`OVERSIZED_KEEP_BYTES` of it, and an envelope from another queue's
        stream is refused.
        """
        body = entry.body
        if body is None:
            return DeadLettered("malformed entry: no 'j' field", None, b"")
        if len(body) > self.max_entry_bytes:
            reason = (
                f"malformed entry: {len(body)} bytes, over the {self.max_entry_bytes}-byte "
                f"limit for an envelope (QRUNNER_MAX_PAYLOAD_BYTES={self.max_payload_bytes} "
                f"plus room for the error history); first {OVERSIZED_KEEP_BYTES} bytes kept"
            )
            return DeadLettered(reason, None, bytes(body[:OVERSIZED_KEEP_BYTES]))
        try:
            job = Job.decode(body, entry.entry_id, entry.queue)
        except MalformedJob as exc:
            return DeadLettered(f"malformed entry: {exc}", None, body)
        if job.queue != entry.queue:
            reason = (
                f"malformed entry: its envelope names queue {shown(job.queue)} but it was read "
                f"from queue {entry.queue!r}"
            )
            return DeadLettered(reason, None, body)
        return job

    def _watch(
        self, timeout_s: float | None, elapsed_s: float
    ) -> tuple[asyncio.Task[Any] | None, float | None]:
        """The running task and its deadline's slot, ``timeout_s`` from ``elapsed_s`` ago.
        Shared timers (qrunner.deadlines) instead of asyncio.timeout() or a timer per job:
        the same effect at a fraction of the cost on the hot path."""
        me = asyncio.current_task()
        if timeout_s is None or me is None:
            return me, None
        return me, self._deadlines.add(me, timeout_s, elapsed_s)

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
        turn_ms = None
        if self.gate is not None and task.rate_limit is not None:
            wait_s, bucket, turn_ms = await self.gate.admit(task, arg, job.id)
            if wait_s > 0:
                return Deferred(int(wait_s * 1000) + 1, job, "rate limited", bucket)
        ctx = self.make_context(job, entry.deliveries)
        if turn_ms is not None:
            ctx.turn_ms = turn_ms
        me = None
        tick = None
        try:
            if task.run_in_thread:
                me, tick = self._watch(task.timeout_s, 0.0)
                value = await self.threads.run(task, ctx, arg)
            else:
                # The handler's first step runs here (qrunner.firststep): one that returns
                # without waiting needs no deadline.
                began = time.perf_counter()
                coro = task.fn(ctx, arg)
                if type(coro) is not CoroutineType:  # an awaitable of another kind
                    me, tick = self._watch(task.timeout_s, 0.0)
                    value = await coro
                else:
                    try:
                        yielded = coro.send(None)
                    except StopIteration as stop:
                        value = stop.value
                    else:
                        # It waits: from here on, under its deadline, counted from its start.
                        me, tick = self._watch(task.timeout_s, time.perf_counter() - began)
                        value = await resume(coro, yielded)
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
            if tick is not None and me is not None:
                self._deadlines.remove(tick, me)
                if self._expired:  # timed out, and its handler went on anyway
                    self._expired.discard(me)
        return SUCCEEDED_EMPTY if value is None else Succeeded(_encode_result(value))
