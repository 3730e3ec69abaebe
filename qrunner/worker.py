"""The worker: a handful of supervised loops under one TaskGroup.

- fetch: reads entries in priority order into at most ``concurrency`` running jobs
- flush: acks finished jobs in batches (:mod:`qrunner.finisher`)
- promote: moves due jobs from the delayed sets into their streams
- lease: heartbeats and renews the lease of every entry this worker holds
- reclaim: takes over entries whose owner stopped renewing (crashed worker)
- janitor: forgets consumers that died, once they own nothing
- any extra loops the runtime adds (cron, HTTP endpoint)

Every loop runs under :func:`qrunner.supervise.supervised`: Redis faults are waited out with
backoff, a vanished stream or group is recreated (with an ALARM) whichever loop noticed it, and
a loop that fails with a bug stops the whole worker (non-zero exit) rather than leaving a
process that runs jobs but never acks them. An event-loop watchdog thread
(:mod:`qrunner.watchdog`) notices a handler that blocks the loop.

Shutdown is staged: stop reading, let running jobs finish within the grace period, cancel what
remains (their entries stay pending and another worker reclaims them), flush, close.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from redis.asyncio import Redis

from . import autopipe, fairness, gctune, keys
from .consumer import Consumer, Entry, Finish, completion
from .context import Context, worker_context
from .control import HISTORY_LENGTH, attempt_record
from .errors import ConnectionLost, KeyConflict, QrunnerError, RedisFault, StreamMissing
from .events import Observer
from .faults import translated
from .finisher import Finisher
from .job import Job, new_job_id
from .logs import JOB_FIELDS
from .outcome import DeadLettered, Deferred, Outcome, RetryLater, Succeeded
from .presence import CONTROL_INTERVAL_S, Presence
from .progress import ProgressSink, RedisProgress
from .queue import Client
from .ratelimit import DeferralLog
from .redact import mask
from .runner import RateGate, Runner
from .settings import Settings
from .stalls import StallGuard
from .supervise import BACKOFF_CAP_S, LoopCrashed, supervised
from .task import Registry
from .watchdog import LoopWatchdog
from .workflow import FollowUps

log = logging.getLogger(__name__)

#: With most slots busy, how long the worker may wait for more to free up before reading
#: (batched refills: one read per several finished jobs instead of one per job).
REFILL_WAIT_S = 0.002

#: The longest a batch's ack waits for the read that its freed slots call for (_read_first).
READ_FIRST_S = 0.001

#: A queue a loop fails on while it works for the others is logged at most this often.
QUEUE_FAULT_LOG_S = 60.0

#: The clean-up pass's calls per queue to remove expired done records, each of at most 20 ack
#: calls' records (see Consumer.sweep_done): a bound on how long one pass holds Redis.
DONE_SWEEP_CALLS = 10

#: Python 3.12+: start a job's task eagerly, running it up to its first wait at once. A job that
#: never waits (or waits on something already done) then costs no event-loop round. 3.11 has
#: no eager tasks and creates them as usual.
#: The Task class is called directly with ``eager_start=True`` (what ``eager_task_factory``
#: does, minus its Python wrapper frame, once per job).
_EAGER = sys.version_info >= (3, 12)
_Task: Any = asyncio.Task


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    if not _EAGER:
        return asyncio.create_task(coro)
    task: asyncio.Task[None] = _Task(coro, loop=asyncio.get_running_loop(), eager_start=True)
    return task


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


ExtraLoop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{new_job_id()[:6]}"


class Worker:
    """Runs ``registry``'s jobs from ``queues`` until ``stop`` is set (or drained, if burst)."""

    def __init__(
        self,
        redis: Redis,
        registry: Registry,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        settings: Settings | None = None,
        state: Any = None,
        observer: Observer | None = None,
        gate: RateGate | None = None,
        weights: dict[str, int] | None = None,
        extra_loops: Sequence[ExtraLoop] = (),
        name: str | None = None,
        signal_escape: bool = False,
    ) -> None:
        self.settings = settings or Settings()
        self.redis = redis
        self.registry = registry
        self.queues = list(queues) if queues else registry.queues() or ["default"]
        self.concurrency = concurrency or self.settings.concurrency
        self.burst = burst
        self.state = state
        self.observer = observer or Observer()
        self.weights = weights
        self.extra_loops = list(extra_loops)
        self.name = name or consumer_name()
        self.client = Client(
            redis,
            registry,
            max_payload_bytes=self.settings.max_payload_bytes,
            status_ttl_s=self.settings.status_ttl_s,
        )
        self.consumer = Consumer(redis, self.name, self.queues)
        #: What handlers get as ``ctx.redis``: ``redis``, or auto-pipelined over its pool.
        self.handler_redis = autopipe.for_handlers(redis, self.settings.autopipeline)
        self.runner = Runner(
            registry, self._context, gate, max_payload_bytes=self.settings.max_payload_bytes
        )
        self.gate = gate
        #: Rate-limit deferrals: DEBUG per job, one INFO summary per task per minute.
        self.deferrals = DeferralLog(log, line=gate.line_view if gate is not None else None)
        status_on = self.settings.status_ttl_s > 0
        # status_ttl_s=0 turns status records off altogether (less Redis memory per job).
        self.status_ttl_ms = self.settings.status_ttl_s * 1000 if status_on else 0
        self._reporter_opener: Callable[[Job], ProgressSink] | None = (
            self._open_reporter if self.status_ttl_ms else None
        )
        self.result_ttl_ms = self.settings.result_ttl_s * 1000 if status_on else 0
        self.finisher = Finisher(
            self.consumer,
            self.observer,
            status_ttl_ms=self.status_ttl_ms,
            result_ttl_ms=self.result_ttl_ms,
            release=self._release_entries,
            recover=self._recover,
            read_first=self._read_first,
        )
        self._held: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: Queues this worker reads that hold tasks with a fairness key (qrunner.fairness).
        self._fair_queues = [
            q for q in self.queues if any(t.fair_key and t.queue == q for t in registry)
        ]
        #: Progress reporters of running jobs, flushed when each job ends.
        self._progress: dict[str, RedisProgress] = {}
        # A subclass that extends _after_run (qrunner.testing records outcomes there) sees
        # every job; the base one is skipped when it has nothing to do.
        self._after_every_run = type(self)._after_run is not Worker._after_run
        #: Follow-ups and group callbacks are enqueued with a registry-less client: the spec
        #: names its queue, and its task may be one only another worker knows.
        self.follow_ups = FollowUps(
            Client(
                redis,
                None,
                max_payload_bytes=self.settings.max_payload_bytes,
                status_ttl_s=self.settings.status_ttl_s,
            ),
            self.status_ttl_ms,
        )
        #: (task, job id, wall-clock start in ms) of every job whose handler is running, for
        #: the watchdog's reports, the presence record and the attempt history. Plain data
        #: only: the watchdog thread reads it while the loop may be blocked.
        self.running: dict[tuple[str, str], tuple[str, str, int]] = {}
        #: Operator control (qrunner.control): queues not to read, jobs to cancel.
        self.paused: set[str] = set()
        self.cancel_ids: set[str] = set()
        self._cancelling: set[tuple[str, str]] = set()
        self.started_ms = int(time.time() * 1000)
        self.presence = Presence(self)
        self._active = 0
        self._slot_free = asyncio.Event()
        #: The fetch loop waits for slots to free up; the ack waiting for its read (_read_first).
        self._waiting_slots = False
        self._read_due: asyncio.Future[None] | None = None
        #: The entry _dispatch is spawning, and the one whose task gave up its hold before
        #: _dispatch recorded it (an eager start runs a task up to its first wait inside _spawn).
        self._starting: tuple[str, str] | None = None
        self._ended_early: list[tuple[str, str]] = []
        #: Free slots worth a read while most are busy (see _fetch_step).
        self._refill_batch = max(1, self.concurrency // 10)
        #: When a partial refill is due anyway (see _fetch_step); None while not waiting.
        self._refill_by: float | None = None
        self._reading_stopped = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = asyncio.Event()
        self._never = asyncio.Event()
        self._recovering = asyncio.Lock()
        #: When each (loop, queue) failure was last reported (see _report_failing).
        self._fault_logged: dict[tuple[str, str], float] = {}
        self._debug = log.isEnabledFor(logging.DEBUG)
        #: Let the watchdog end the process when SIGTERM finds the loop blocked (only where the
        #: process' signal handlers are the worker's: the CLI).
        self.signal_escape = signal_escape
        self.watchdog: LoopWatchdog | None = None

    @property
    def processed(self) -> int:
        return self.finisher.processed

    def _stall_guard(self) -> StallGuard:
        guard: StallGuard | None = getattr(self, "_guard", None)
        if guard is None:
            guard = self._guard = StallGuard(
                self.redis,
                self.name,
                held=self._held_now,
                culprit=self._culprit,
                lease_ms=self.settings.lease_ms,
            )
        return guard

    def _held_now(self) -> list[tuple[str, str]]:
        """Entries this worker holds (watchdog thread), the one being started included: an
        eager start runs the job inside _spawn, before _dispatch records its task."""
        starting = self._starting
        held = list(self._held)
        return [*held, starting] if starting is not None and starting not in held else held

    def _culprit(self) -> tuple[str, str] | None:
        """(queue, job id) of the job running on the loop right now (watchdog thread)."""
        starting = self._starting
        if starting is not None and starting in self.running:
            return starting[0], self.running[starting][1]  # blocking inside its eager start
        task = self.watchdog.current_task() if self.watchdog is not None else None
        for key, held in list(self._held.items()):
            if held is task and key in self.running:
                return key[0], self.running[key][1]
        return None

    # -- wiring -----------------------------------------------------------------------------

    def _context(self, job: Job, deliveries: int) -> Context[Any]:
        # Positional, and the bound method made once: this runs for every job.
        return worker_context(
            job,
            self.handler_redis,
            self.client,
            self.state,
            self.settings,
            deliveries,
            self._reporter_opener,
        )

    def _open_reporter(self, job: Job) -> RedisProgress:
        """The job's progress reporter, made on its first report; flushed by _after_run."""
        reporter = self._progress[job.id] = RedisProgress(
            self.redis, job.queue, job.id, status_ttl_ms=self.status_ttl_ms
        )
        return reporter

    async def _after_run(self, job: Job, outcome: Outcome | None) -> Outcome | None:
        """Before a job's outcome is written: its last progress report, then its workflow
        steps (follow-up, group count; see :mod:`qrunner.workflow`). None when those could
        not be written: the entry then stays pending and the job re-runs (both are idempotent).
        """
        reporter = self._progress.pop(job.id, None)
        if reporter is not None:
            await reporter.flush()
        if job.flow and isinstance(outcome, Succeeded | DeadLettered):
            try:
                await self.follow_ups.finished(job, outcome)
            except QrunnerError as exc:
                log.warning(
                    "%s %s: its follow-up could not be recorded (%s: %s); it is redelivered "
                    "after its lease",
                    job.task,
                    job.id,
                    type(exc).__name__,
                    mask(str(exc)),
                )
                return None
        return outcome

    def _supervise(
        self, name: str, step: Callable[[], Awaitable[float | None]], until: asyncio.Event
    ) -> Coroutine[Any, Any, None]:
        return supervised(
            name,
            step,
            until=until,
            on_stream_missing=self._recover,
            on_connection_lost=self._drop_idle_connections,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, or until drained when in burst mode. Raises
        :class:`~qrunner.supervise.LoopCrashed` when a loop fails with a bug."""
        if stop is not None:
            self._stop = stop
        if not await self._start_up():
            return
        with gctune.tuned(self.settings.gc_young_threshold):
            await self._run_started()

    async def _run_started(self) -> None:
        guard = self._stall_guard()
        watchdog = self.watchdog = LoopWatchdog.from_settings(
            self.settings,
            describe=lambda: [(task, job_id) for task, job_id, _ in list(self.running.values())],
            on_stall=guard.renew,
            on_stall_after_s=self.settings.lease_ms / 3000,
            on_limit=guard.record,
        )
        watchdog.start()
        if self.signal_escape:
            watchdog.install_signal_escape()
        log.info(
            "worker %s started: queues=%s concurrency=%d%s",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            " burst" if self.burst else "",
        )
        try:
            async with asyncio.TaskGroup() as tg:
                loops = (
                    ("promote", self._promote_step),
                    ("lease", self._lease_step),
                    ("reclaim", self._reclaim_step),
                    ("janitor", self._janitor_step),
                    ("control", self._control_step),
                )
                for name, step in loops:
                    tg.create_task(self._supervise(name, step, self._closing), name=name)
                for extra in self.extra_loops:
                    tg.create_task(self._guard_extra(extra))
                flusher = tg.create_task(
                    self._supervise("flush", self._flush_step, self._never), name="flush"
                )
                await self._supervise("fetch", self._fetch_step, self._stop)
                self._reading_stopped.set()
                log.info(
                    "worker %s: stopped reading; %d job(s) in flight", self.name, len(self._held)
                )
                await self._drain()
                self.finisher.wake()
                await flusher
                # Loops end on their own at their next pause: cancelling one in the middle of a
                # Redis command can leave its connection half-read.
                self._closing.set()
        except BaseExceptionGroup as group:
            crashed = [e for e in group.exceptions if isinstance(e, LoopCrashed)]
            raise (crashed[0] if crashed else group.exceptions[0]) from None
        finally:
            watchdog.stop()
            await self._release_self()
        self.deferrals.flush()
        log.info("worker %s stopped after %d job(s)", self.name, self.processed)

    async def _start_up(self) -> bool:
        """Create the groups and register the queues, waiting for Redis; False if stopped."""
        delay = 0.05
        while not self._stop.is_set():
            try:
                for q in self.queues:
                    await self.consumer.ensure_group(q)
                for q in self._fair_queues:
                    await fairness.announce(self.redis, q, self.concurrency)
                async with translated():
                    await self.redis.sadd(keys.queues_set(), *self.queues)
                return True
            except KeyConflict:
                raise  # waiting cannot fix it: say so and stop (the CLI prints it, exit 1)
            except RedisFault as fault:
                log.warning("worker %s: cannot start yet (%s); retrying", self.name, fault)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
        return False

    async def _guard_extra(self, loop: ExtraLoop) -> None:
        name = getattr(loop, "__name__", repr(loop))
        try:
            await loop(self._stop)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.critical("%s loop crashed; stopping the worker", name, exc_info=True)
            raise LoopCrashed(name, exc) from exc

    async def _drain(self) -> None:
        tasks = list(self._held.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.settings.grace_s)
        if pending:
            log.warning(
                "worker %s: grace period of %gs over; cancelling %d job(s) (they stay pending and "
                "will be reclaimed)",
                self.name,
                self.settings.grace_s,
                len(pending),
            )
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _release_self(self) -> None:
        try:
            await self.presence.leave()
        except RedisFault:
            pass
        for q in self.queues:
            try:
                await self.consumer.release(q, self.name)
            except RedisFault:
                pass

    async def _drop_idle_connections(self) -> None:
        """After a lost connection, idle pooled connections are likely dead too: drop them so
        the next command opens a fresh one instead of failing on each in turn."""
        pool = getattr(self.redis, "connection_pool", None)  # a cluster keeps one per node
        if pool is None:
            return
        try:
            await pool.disconnect(inuse_connections=False)
        except Exception as exc:  # closing a broken socket can itself fail; never fatal
            log.debug("dropping idle connections failed: %s", exc)

    async def _recover(self, missing: StreamMissing) -> None:
        """A stream or group vanished: recreate every group this worker reads (with an ALARM
        for each one this worker had to create), so work resumes on the same processes."""
        async with self._recovering:
            for q in self.queues:
                try:
                    created = await self.consumer.ensure_group(q)
                except ConnectionLost as lost:  # the other queues cannot be reached either
                    log.warning("recreating the group of %s failed (%s); retrying", q, lost)
                    return
                except RedisFault as fault:  # this queue's own (a key of another type): go on
                    log.warning("recreating the group of %s failed (%s); retrying", q, fault)
                    continue
                if not created:
                    continue
                log.error(
                    "ALARM: stream or consumer group of queue %r vanished (FLUSHALL, or Redis "
                    "restarted without its data); recreated it. Jobs that were in it are lost "
                    "unless Redis persistence kept them.",
                    q,
                )
                try:
                    await self.consumer.record_alarm(
                        {"kind": "group_recreated", "queue": q, "worker": self.name}
                    )
                except RedisFault as fault:
                    log.warning("could not record the alarm in %s: %s", keys.alarms(), fault)
                self.observer.group_recreated(q)

    # -- reading ----------------------------------------------------------------------------

    def _read_order(self) -> list[str]:
        if not self.weights:
            return self.queues
        pool = list(self.queues)
        order: list[str] = []
        while pool:
            w = [max(1, self.weights.get(q, 1)) for q in pool]
            pick = random.choices(range(len(pool)), weights=w)[0]
            order.append(pool.pop(pick))
        return order

    async def _fetch_step(self) -> float | None:
        free = self.concurrency - self._active
        if free <= 0:
            self._slot_free.clear()
            await self._wait_slots()
            return 0.0
        # Refill in batches: with most slots busy, wait briefly for more to free up rather
        # than paying one read per finished job. Never longer than REFILL_WAIT_S, so slow jobs
        # holding most slots do not keep the free ones idle.
        if free < self._refill_batch and self._active:
            now = time.monotonic()
            if self._refill_by is None:
                self._refill_by = now + REFILL_WAIT_S
            if now < self._refill_by:
                self._slot_free.clear()
                await self._wait_slots(self._refill_by - now)
                return 0.0
        self._refill_by = None
        for q in self._fair_queues:
            await fairness.release(self.redis, q, self.concurrency)
        order = [q for q in self._read_order() if q not in self.paused]
        if not order:  # every queue paused: look again after the next control refresh
            if self.burst:
                self._stop.set()
                return None
            return CONTROL_INTERVAL_S
        if self._read_due is not None:
            # The ack round goes on in the next turn. Without a rate-limit gate nothing is
            # awaited before the read's write, so by then the read is written; with one, the
            # gate's own call goes first.
            _settle(self._read_due)
        sent = time.monotonic()
        faults: list[tuple[str, RedisFault]] = []
        if self.gate is None:
            entries = await self.consumer.read_available(order, free, faults)
            wait_queues, wait_count, max_wait_ms = order, free, None
        else:
            # A queue whose jobs all wait for one exhausted rate limit is read only as far as
            # the limit has turns; every worker leaves it alone until then.
            plan = await self.gate.plan_reads(order, free)
            entries = []
            for queue, count in plan.reads:
                count = min(count, free - len(entries))
                if count <= 0:
                    break
                try:
                    entries += await self.consumer.read_available([queue], count, faults)
                except ConnectionLost as lost:
                    if not entries:
                        raise
                    faults.append((queue, lost))  # keep what the queues before it gave
                    break
            wait_queues = [q for q in plan.wait_queues if q not in self.paused]
            wait_count = min(free, plan.wait_count)
            max_wait_ms = plan.max_wait_ms
        unreadable = {q for q, _ in faults}
        if faults and not entries and unreadable.issuperset(order):
            raise _first(faults)  # the loop's supervisor recovers groups, or logs and backs off
        if not entries:
            if self.burst and await self._drained():
                log.info("worker %s: burst mode and nothing left; stopping", self.name)
                self._stop.set()
                return None
            block = min(self.settings.block_ms, 200 if self.burst else self.settings.block_ms)
            if max_wait_ms is not None:
                block = max(1, min(block, max_wait_ms))
            wait_queues = [q for q in wait_queues if q not in unreadable]
            if not wait_queues:
                await self._report_failing("read", faults)
                return block / 1000
            sent = time.monotonic()
            entries = await self.consumer.read_blocking(wait_queues, wait_count, block)
        if entries and (time.monotonic() - sent) * 1000 > self.settings.lease_ms / 2:
            entries = await self._still_ours(entries)
        if entries:
            await self._dispatch(entries)
        await self._report_failing("read", faults)
        return 0.0

    async def _report_failing(self, what: str, faults: list[tuple[str, RedisFault]]) -> None:
        """Queues for which ``what`` failed while it worked for others: recreate a group that
        vanished, and report each other failure at most once per :data:`QUEUE_FAULT_LOG_S` per
        queue and loop while it lasts."""
        for queue, fault in faults:
            if isinstance(fault, StreamMissing):
                await self._recover(fault)
                continue
            now = time.monotonic()
            last = self._fault_logged.get((what, queue), -QUEUE_FAULT_LOG_S)
            if now - last < QUEUE_FAULT_LOG_S:
                continue
            self._fault_logged[(what, queue)] = now
            log.log(
                logging.ERROR if isinstance(fault, KeyConflict) else logging.WARNING,
                "worker %s: %s failed on queue %r (%s: %s); the other queues go on",
                self.name,
                what,
                queue,
                type(fault).__name__,
                fault,
            )

    async def _each_queue(
        self, what: str, queues: Sequence[str], step: Callable[[str], Awaitable[bool]]
    ) -> None:
        """Run ``step`` for each queue in turn, until one returns True (enough for this round).

        A queue whose step fails does not hold up the ones after it: a key of another type
        under one queue's name must not stop the leases of every other queue's running jobs
        (another worker would take them over and run them twice), nor their reclaims and
        promotions. A lost connection is raised at once (Redis is unreachable for every queue:
        trying each in turn would only add their timeouts), and so is the first fault when every
        queue tried failed: the loop's supervisor logs and waits them out. Otherwise the failing
        queues are reported (:meth:`_report_failing`)."""
        faults: list[tuple[str, RedisFault]] = []
        tried = 0
        for q in queues:
            tried += 1
            try:
                if await step(q):
                    break
            except ConnectionLost:
                raise
            except RedisFault as fault:
                faults.append((q, fault))
        if faults and len(faults) == tried:
            raise _first(faults)
        await self._report_failing(what, faults)

    async def _still_ours(self, entries: list[Entry]) -> list[Entry]:
        """Entries whose read reply took longer than half a lease to arrive (the process was
        frozen, the network stalled) may have been reclaimed meanwhile: keep only those this
        consumer still owns, renewing their leases, so a late reply does not run them twice."""
        by_queue: dict[str, list[str]] = {}
        for e in entries:
            by_queue.setdefault(e.queue, []).append(e.entry_id)
        lost: set[tuple[str, str]] = set()
        for q, ids in by_queue.items():
            lost.update((q, entry_id) for entry_id, _ in await self.consumer.extend(q, ids))
        if lost:
            log.warning(
                "dropped %d entr%s read before a stall longer than half a lease: another worker "
                "took them over meanwhile",
                len(lost),
                "y" if len(lost) == 1 else "ies",
            )
        return [e for e in entries if (e.queue, e.entry_id) not in lost]

    async def _wait_slots(self, within: float | None = None) -> None:
        self._waiting_slots = True
        try:
            await self._wait_any(self._slot_free, within)
        finally:
            self._waiting_slots = False

    async def _read_first(self) -> None:
        """Before a round of acks: when the jobs just finished freed enough slots for the fetch
        loop to read at once, let that read reach Redis first (at most :data:`READ_FIRST_S`).
        Redis then answers the read before it runs the ack script, and the worker starts the
        jobs read while Redis acks the last ones, instead of waiting for both; an ack sent
        first held the read behind it (one process of one-INCR jobs: 59,039 against 46,312
        jobs/s in benchmarks/processes.py)."""
        if not self._waiting_slots or self.concurrency - self._active < self._refill_batch:
            return
        loop = asyncio.get_running_loop()
        due = self._read_due = loop.create_future()
        timer = loop.call_later(READ_FIRST_S, _settle, due)
        try:
            await due
        finally:
            timer.cancel()
            self._read_due = None

    async def _wait_any(self, event: asyncio.Event, within: float | None = None) -> None:
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _drained(self) -> bool:
        async with translated():
            pipe = self.redis.pipeline(transaction=False)
            # A paused queue's jobs wait for a resume, not for this burst.
            for q in [q for q in self.queues if q not in self.paused]:
                pipe.xlen(keys.stream(q))
                pipe.zcard(keys.delayed(q))
                pipe.llen(keys.fair_ring(q))
            counts = await pipe.execute()
        return not self._held and not self.finisher.backlog and not any(counts)

    async def _dispatch(self, entries: list[Entry]) -> None:
        decode = self.runner.decode
        for e in entries:
            if e.decoded is None:
                e.decoded = decode(e)
        held, ended_early, process = self._held, self._ended_early, self._process
        for entry in entries:  # start each (one loop, no call per job: this runs per job)
            key = (entry.queue, entry.entry_id)
            if key in held:
                continue
            self._active += 1
            self._starting = key
            try:
                held[key] = _spawn(process(entry, key))
            finally:
                self._starting = None
            if ended_early:  # it gave up its hold inside _spawn (eager start)
                held.pop(ended_early.pop(), None)

    def _release_entries(self, queue: str, entry_ids: list[str]) -> None:
        held = self._held
        for entry_id in entry_ids:
            held.pop((queue, entry_id), None)

    # -- running one job --------------------------------------------------------------------

    async def _process(self, entry: Entry, key: tuple[str, str]) -> None:
        outcome: Outcome | None = None
        job: Job | None = None
        task_name = "?"
        cancelled = False
        t0 = time.perf_counter()
        try:
            decoded = entry.decoded if entry.decoded is not None else self.runner.decode(entry)
            if isinstance(decoded, DeadLettered):
                outcome = decoded
            else:
                job = decoded
                task_name = job.task
                now_ms = int(time.time() * 1000)
                self.running[key] = (task_name, job.id, now_ms)
                wait_ms = now_ms - job.enqueued_ms if job.enqueued_ms else None
                self.observer.job_started(task_name, entry.queue, wait_ms)
                # Every log line from here on in this task (the handler's too) names the job.
                JOB_FIELDS.set((job.id, task_name, entry.queue, job.attempt))
                if self._debug:
                    log.debug("started %s %s attempt %d", task_name, job.id, job.attempt)
                if job.id in self.cancel_ids:
                    cancelled = True
                else:
                    try:
                        outcome = await self.runner.run(entry, job)
                    except asyncio.CancelledError:
                        if key not in self._cancelling:
                            raise
                        current = asyncio.current_task()
                        if current is not None:
                            current.uncancel()
                        cancelled = True
                    except Exception as exc:
                        self._not_judged(job, exc)  # the entry stays pending, runs again
                if isinstance(outcome, DeadLettered) and entry.deliveries > 1:
                    outcome = await self._with_stall_note(entry.queue, job, outcome)
                if job.flow or job.id in self._progress or self._after_every_run:
                    outcome = await self._after_run(job, outcome)
        finally:
            self._active -= 1
            self._slot_free.set()
            running = self.running.pop(key, None)
            started_ms = running[2] if running is not None else None
            if self._cancelling:
                self._cancelling.discard(key)
            if job is not None and self._progress:
                self._progress.pop(job.id, None)
            if outcome is None:  # cancelled, or not admitted: the entry stays pending
                if self._starting == key:
                    self._ended_early.append(key)
                else:
                    self._held.pop(key, None)
        duration = time.perf_counter() - t0
        if cancelled and job is not None:
            await asyncio.shield(self._finish_cancelled(entry, job, started_ms, duration))
            return
        if isinstance(outcome, Succeeded) and job is not None:
            if job.attempt > 1 and self.status_ttl_ms:  # the history's last line, after failures
                await self._record_attempt(entry.queue, job, "succeeded", None, started_ms)
            self.finisher.succeeded(
                entry.queue,
                completion(
                    entry.entry_id,
                    job.id,
                    job.attempt,
                    outcome.result,
                    job.task,
                    job.enqueued_ms,
                    int(duration * 1000),
                ),
            )
            self.observer.job_finished(task_name, entry.queue, "succeeded", duration)
            self.finisher.processed += 1
            if self._debug:
                log.debug("succeeded %s %s in %.3fs", task_name, job.id, duration)
            return
        if outcome is not None:
            await asyncio.shield(self._apply(entry, job, task_name, outcome, duration, started_ms))

    def _not_judged(self, job: Job, exc: Exception) -> None:
        """Logs why a job's outcome could not be judged here: its entry then stays pending and
        is redelivered after its lease. Called from _process (inline there: a coroutine of its
        own per job cost the hot path)."""
        if isinstance(exc, RedisFault):  # the rate-limit gate could not reach Redis
            log.warning(
                "%s %s: could not be admitted (%s); it is redelivered after its lease",
                job.task,
                job.id,
                exc,
            )
            return
        log.error(
            "%s %s: unexpected error while running it; it is redelivered after its lease "
            "(and dead-lettered after max_deliveries)\n%s",
            job.task,
            job.id,
            mask("".join(traceback.format_exception(exc))),
        )

    async def _with_stall_note(self, queue: str, job: Job, outcome: DeadLettered) -> DeadLettered:
        """A redelivered job dead-lettered as poison says so when it blocked the event loop."""
        try:
            async with translated(queue):
                note = await self.redis.get(keys.stall_note(queue, job.id))
        except RedisFault:
            return outcome
        if not note:
            return outcome
        text = note.decode() if isinstance(note, bytes) else str(note)
        return DeadLettered(f"{outcome.reason}; {text}", outcome.job, outcome.raw)

    async def _apply(
        self,
        entry: Entry,
        job: Job | None,
        task: str,
        outcome: Outcome,
        duration: float,
        started_ms: int | None,
    ) -> None:
        """Write a non-success outcome (retry, deferral, dead letter); shielded by the caller so
        shutdown cannot interrupt it half-way."""
        key = (entry.queue, entry.entry_id)
        try:
            done = await self.finisher.write(entry, outcome, self._reading_stopped)
        finally:
            self._held.pop(key, None)
        job_id = job.id if job else f"entry {entry.entry_id}"
        if done is Finish.NOT_OWNER:
            self.observer.ack_refused(entry.queue, 1)
            log.warning(
                "%s %s: outcome not written: another worker claimed the entry after this "
                "worker's lease lapsed, and runs it again",
                task,
                job_id,
            )
        elif done is Finish.GONE:
            log.warning(
                "%s %s: outcome not written: the entry is no longer pending (its stream was "
                "flushed, or it was finished already)",
                task,
                job_id,
            )
        elif done is Finish.DONE:
            self.finisher.processed += 1
            self._log_outcome(task, job_id, outcome, entry, duration)
            if job is not None and self.status_ttl_ms:
                await self._record_attempt(
                    entry.queue, job, _outcome_name(outcome), outcome, started_ms
                )

    async def _record_attempt(
        self, queue: str, job: Job, outcome: str, detail: Outcome | None, started_ms: int | None
    ) -> None:
        """Append the attempt to the job's history (qrunner.control), started at ``started_ms``
        (the worker's clock; None: now): advisory, so a Redis fault here is logged, never
        raised."""
        error = None
        if isinstance(detail, RetryLater):
            error = mask(str(detail.error))
        elif isinstance(detail, DeadLettered):
            error = mask(detail.reason)
        elif isinstance(detail, Deferred):
            error = detail.reason
        now = int(time.time() * 1000)
        record = attempt_record(
            job.attempt, self.name, now if started_ms is None else started_ms, now, outcome, error
        )
        try:
            async with translated(queue):
                pipe = self.redis.pipeline(transaction=False)
                pipe.rpush(keys.job_history(queue, job.id), record)
                pipe.ltrim(keys.job_history(queue, job.id), -HISTORY_LENGTH, -1)
                pipe.pexpire(keys.job_history(queue, job.id), self.status_ttl_ms)
                await pipe.execute()
        except RedisFault as fault:
            log.debug("could not record the attempt of %s: %s", job.id, fault)

    async def _finish_cancelled(
        self, entry: Entry, job: Job, started_ms: int | None, duration: float
    ) -> None:
        """Ack a job an operator cancelled (running, or taken after the request) as
        ``cancelled``, then drop the request."""
        key = (entry.queue, entry.entry_id)
        try:
            done = await self.consumer.finish_cancelled(
                entry,
                job.id,
                job.attempt,
                self.status_ttl_ms,
                task=job.task,
                enqueued_ms=job.enqueued_ms,
            )
        except RedisFault as fault:
            log.warning(
                "%s %s: cancelled, but not acked (%s); it is redelivered and cancelled again",
                job.task,
                job.id,
                fault,
            )
            return
        finally:
            self._held.pop(key, None)
        if done is not Finish.DONE:
            return
        self.finisher.processed += 1
        self.cancel_ids.discard(job.id)
        self.observer.job_finished(job.task, entry.queue, "cancelled", duration)
        log.info("cancelled %s %s by operator request", job.task, job.id)
        try:
            async with translated():
                await self.redis.hdel(keys.cancel_requests(), job.id)
        except RedisFault as fault:
            log.debug("could not drop the cancel request of %s: %s", job.id, fault)
        if self.status_ttl_ms:
            await self._record_attempt(entry.queue, job, "cancelled", None, started_ms)

    async def _control_step(self) -> float:
        await self.presence.step()
        return CONTROL_INTERVAL_S

    def cancel_running(self, job_ids: set[str]) -> None:
        """Cancel the running jobs among ``job_ids`` (the handler sees CancelledError)."""
        for key, (_task, job_id, _started) in list(self.running.items()):
            if job_id in job_ids and key not in self._cancelling:
                held = self._held.get(key)
                if held is not None and not held.done():
                    self._cancelling.add(key)
                    held.cancel()

    def _log_outcome(
        self, task: str, job_id: str, outcome: Outcome, entry: Entry, duration: float
    ) -> None:
        if isinstance(outcome, RetryLater):
            self.observer.job_finished(task, entry.queue, "retried", duration)
            log.info(
                "retrying %s %s: attempt %d in %.1fs after %s",
                task,
                job_id,
                outcome.job.attempt,
                outcome.delay_ms / 1000,
                outcome.error,
            )
        elif isinstance(outcome, Deferred):
            self.observer.job_finished(task, entry.queue, "deferred", duration)
            if outcome.reason == "rate limited":
                self.observer.rate_limit_wait(task, outcome.delay_ms / 1000)
            if outcome.reason == "rate limited" or outcome.bucket is not None:
                # One INFO line per task per minute, not one per job: a backlog above a limit
                # defers thousands of jobs.
                self.deferrals.deferred(task, job_id, outcome.delay_ms / 1000, outcome.reason)
            else:
                log.info(
                    "deferred %s %s by %.1fs: %s",
                    task,
                    job_id,
                    outcome.delay_ms / 1000,
                    outcome.reason,
                )
        elif isinstance(outcome, DeadLettered):
            self.observer.job_finished(task, entry.queue, "dead", duration)
            log.warning("dead-lettered %s %s: %s", task, job_id, outcome.reason)

    # -- background loops -------------------------------------------------------------------

    async def _flush_step(self) -> float | None:
        return await self.finisher.flush_step(self._flushed_all)

    def _flushed_all(self) -> bool:
        return self._reading_stopped.is_set() and not self._held

    async def _promote_step(self) -> float:
        self.deferrals.tick()
        soonest = self.settings.promote_interval_ms / 1000

        async def promote(q: str) -> bool:
            nonlocal soonest
            moved, wait_ms = await self.consumer.promote(q)
            if moved >= 1000:  # more are due: go again at once
                soonest = 0.0
                return True
            if wait_ms >= 0:
                soonest = min(soonest, wait_ms / 1000)
            return False

        await self._each_queue("promote", self.queues, promote)
        return 0.0 if soonest == 0.0 else max(soonest, 0.005)

    async def _lease_step(self) -> float:
        by_queue: dict[str, list[str]] = {q: [] for q in self.queues}
        for q, entry_id in list(self._held):
            by_queue.setdefault(q, []).append(entry_id)

        async def extend(q: str) -> bool:
            for entry_id, why in await self.consumer.extend(q, by_queue[q]):
                if why is not Finish.NOT_OWNER:
                    continue  # finished meanwhile, or flushed: the run goes on, its ack says so
                task = self._held.pop((q, entry_id), None)
                if task is not None and not task.done():
                    running = self.running.get((q, entry_id))
                    what = f"{running[0]} {running[1]}" if running else f"entry {entry_id}"
                    log.warning(
                        "%s: lost its lease on %s to another worker; cancelling the run here",
                        what,
                        q,
                    )
                    task.cancel()
            return False

        await self._each_queue("lease renewal", list(by_queue), extend)
        return self.settings.lease_ms / 3000

    async def _reclaim_step(self) -> float:
        interval = self.settings.reclaim_interval_ms / 1000
        if self._reading_stopped.is_set() or self._stop.is_set():
            return interval

        async def reclaim(q: str) -> bool:
            free = self.concurrency - self._active
            if free <= 0:
                return True
            entries = await self.consumer.reclaim(q, self.settings.lease_ms, free)
            if not entries:
                return False
            for e in entries:
                e.decoded = self.runner.decode(e)
            shown = ", ".join(
                f"{e.decoded.task} {e.decoded.id} (delivery {e.deliveries})"
                if isinstance(e.decoded, Job)
                else f"entry {e.entry_id}"
                for e in entries[:10]
            )
            log.warning(
                "reclaimed %d entr%s on %s from a worker whose lease lapsed: %s%s",
                len(entries),
                "y" if len(entries) == 1 else "ies",
                q,
                shown,
                "" if len(entries) <= 10 else ", ...",
            )
            self.observer.job_redelivered(q, len(entries))
            await self._dispatch(entries)
            return False

        await self._each_queue("reclaim", self.queues, reclaim)
        return interval * (0.5 + random.random())

    async def _janitor_step(self) -> float:
        """Forget consumers silent for longer than lease + reclaim interval that own nothing
        (a consumer with pending entries is never deleted; see release_consumer.lua)."""
        horizon = self.settings.lease_ms + self.settings.reclaim_interval_ms
        if self._closing.is_set():
            return horizon / 2000
        now = await self.consumer.server_time_ms()

        async def forget(q: str) -> bool:
            beats = await self.consumer.heartbeats(q)
            members = await self.consumer.group_consumers(q)
            names = {name for name, _, _ in members}
            silent = [
                name
                for name, pending, idle in members
                if name != self.name
                and not pending
                and (now - beats[name] if name in beats else idle) > horizon
            ]
            silent += [
                name
                for name, beat in beats.items()
                if name not in names and name != self.name and now - beat > horizon
            ]
            for name in silent:
                if await self.consumer.release(q, name):
                    log.info("forgot consumer %s of %s: silent for over %d ms", name, q, horizon)
            # Done records at the end of their TTL: the acks remove them as they go; this
            # takes those of a queue with nothing more to ack, a bounded amount per call.
            if self.result_ttl_ms > 0:
                for _ in range(DONE_SWEEP_CALLS):
                    _, more = await self.consumer.sweep_done(q, self.result_ttl_ms)
                    if not more:
                        break
            return False

        await self._each_queue("consumer clean-up", self.queues, forget)
        return horizon / 2000


def _first(faults: list[tuple[str, RedisFault]]) -> RedisFault:
    """The fault to raise when a loop failed on every queue: a vanished stream or group first,
    so the supervisor recreates the groups and the loop goes on at once (raising another
    queue's fault instead would leave the vanished group missing for good)."""
    for _, fault in faults:
        if isinstance(fault, StreamMissing):
            return fault
    return faults[0][1]


def _outcome_name(outcome: Outcome) -> str:
    if isinstance(outcome, RetryLater):
        return "retried"
    if isinstance(outcome, Deferred):
        return "deferred"
    if isinstance(outcome, DeadLettered):
        return "dead"
    return "succeeded"
