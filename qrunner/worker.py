"""The worker: a handful of long-lived loops under one TaskGroup.

- fetch: reads entries in priority order into at most ``concurrency`` running jobs
- flush: acks finished jobs in batches (one script call per queue per batch)
- promote: moves due jobs from the delayed sets into their streams
- lease: heartbeats and renews the lease of every entry this worker holds
- reclaim: takes over entries whose owner stopped renewing (crashed worker)
- any extra loops the runtime adds (cron, HTTP endpoint)

Each loop logs and continues on error, so losing Redis for a while only pauses work. Shutdown is
staged: stop reading, let running jobs finish within the grace period, cancel what remains (their
entries stay pending and another worker reclaims them), flush, close.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys
from .consumer import Completion, Consumer, Entry
from .events import Observer
from .job import Job, new_job_id
from .outcome import DeadLettered, Deferred, Outcome, RetryLater, Succeeded
from .queue import Client
from .runner import RateGate, Runner
from .settings import Settings
from .task import Context, Registry

log = logging.getLogger(__name__)

REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
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
        self.runner = Runner(registry, self._context, gate)
        self.status_ttl_ms = self.settings.status_ttl_s * 1000
        # status_ttl_s=0 turns status records off altogether (less Redis memory per job).
        self.result_ttl_ms = (
            self.settings.result_ttl_s * 1000 if self.settings.status_ttl_s > 0 else 0
        )
        self._held: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._active = 0
        self._slot_free = asyncio.Event()
        self._done: dict[str, list[Completion]] = {}
        self._done_event = asyncio.Event()
        self._reading_stopped = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = asyncio.Event()
        self._debug = log.isEnabledFor(logging.DEBUG)
        self.processed = 0

    # -- wiring -----------------------------------------------------------------------------

    def _context(self, job: Job, deliveries: int) -> Context[Any]:
        return Context(
            job=job,
            redis=self.redis,
            client=self.client,
            state=self.state,
            settings=self.settings,
            deliveries=deliveries,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set, or until drained when in burst mode."""
        if stop is not None:
            self._stop = stop
        for q in self.queues:
            await self._retrying("create group", functools.partial(self.consumer.ensure_group, q))
        await self.redis.sadd(keys.queues_set(), *self.queues)
        log.info(
            "worker %s started: queues=%s concurrency=%d%s",
            self.name,
            ",".join(self.queues),
            self.concurrency,
            " burst" if self.burst else "",
        )
        try:
            async with asyncio.TaskGroup() as tg:
                for loop in (self._promote_loop, self._lease_loop, self._reclaim_loop):
                    tg.create_task(loop())
                for extra in self.extra_loops:
                    tg.create_task(extra(self._stop))
                flusher = tg.create_task(self._flush_loop())
                await self._fetch_loop()
                self._reading_stopped.set()
                log.info(
                    "worker %s: stopped reading; %d job(s) in flight", self.name, len(self._held)
                )
                await self._drain()
                self._done_event.set()
                await flusher
                # Loops end on their own at their next pause: cancelling one in the middle of a
                # Redis command can leave its connection half-read.
                self._closing.set()
        finally:
            await self._release_self()
        log.info("worker %s stopped after %d job(s)", self.name, self.processed)

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
        for q in self.queues:
            try:
                await self.consumer.release(q, self.name)
            except (*REDIS_ERRORS, ResponseError):
                pass

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

    async def _fetch_loop(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            free = self.concurrency - self._active
            if free <= 0:
                self._slot_free.clear()
                await self._wait_any(self._slot_free)
                continue
            try:
                entries = await self.consumer.read_available(
                    self._read_order(),
                    free,
                    now_ms=int(time.time() * 1000),
                    status_ttl_ms=self.status_ttl_ms if self.settings.status_ttl_s > 0 else 0,
                )
                if not entries:
                    if self.burst and await self._drained():
                        log.info("worker %s: burst mode and nothing left; stopping", self.name)
                        self._stop.set()
                        break
                    block = min(
                        self.settings.block_ms, 200 if self.burst else self.settings.block_ms
                    )
                    entries = await self.consumer.read_blocking(self.queues, free, block)
                delay = 0.05
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_groups()
                    continue
                raise
            except REDIS_ERRORS as exc:
                log.warning(
                    "worker %s: reading failed (%s); retrying in %.2fs", self.name, exc, delay
                )
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if entries:
                await self._dispatch(entries)

    async def _wait_any(self, event: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def _pause(self, seconds: float) -> bool:
        """Sleep between rounds of a background loop; True when the loop should end."""
        if self._closing.is_set():
            return True
        try:
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    async def _recreate_groups(self) -> None:
        for q in self.queues:
            try:
                created = await self.consumer.ensure_group(q)
            except REDIS_ERRORS:
                return
            if created:
                log.error(
                    "ALARM: stream or consumer group of queue %r vanished (FLUSHALL, or Redis "
                    "restarted without its data); recreated it. Jobs that were in it are lost "
                    "unless Redis persistence kept them.",
                    q,
                )
                self.observer.group_recreated(q)
                try:
                    await self.redis.xadd(
                        keys.alarms(),
                        {"kind": "group_recreated", "queue": q, "worker": self.name},
                        maxlen=1000,
                        approximate=True,
                    )
                except REDIS_ERRORS:
                    pass

    async def _drained(self) -> bool:
        pipe = self.redis.pipeline(transaction=False)
        for q in self.queues:
            pipe.xlen(keys.stream(q))
            pipe.zcard(keys.delayed(q))
        counts = await pipe.execute()
        return not self._held and not any(counts)

    async def _dispatch(self, entries: list[Entry]) -> None:
        started: dict[str, list[str]] = {}
        for e in entries:
            e.decoded = self.runner.decode(e)
            if isinstance(e.decoded, Job) and not e.marked:
                started.setdefault(e.queue, []).append(e.decoded.id)
        if started and self.settings.status_ttl_s > 0:
            now = int(time.time() * 1000)
            try:
                for queue, job_ids in started.items():
                    await self.consumer.mark_running(queue, job_ids, now, self.status_ttl_ms)
            except REDIS_ERRORS as exc:
                log.warning("worker %s: could not record running state: %s", self.name, exc)
        for entry in entries:
            self._start(entry)

    def _start(self, entry: Entry) -> None:
        key = (entry.queue, entry.entry_id)
        if key in self._held:
            return
        self._active += 1
        self._held[key] = asyncio.create_task(self._process(entry))

    # -- running one job --------------------------------------------------------------------

    async def _process(self, entry: Entry) -> None:
        key = (entry.queue, entry.entry_id)
        outcome: Outcome | None = None
        job: Job | None = None
        task_name = "?"
        t0 = time.perf_counter()
        try:
            decoded = entry.decoded if entry.decoded is not None else self.runner.decode(entry)
            if isinstance(decoded, DeadLettered):
                outcome = decoded
            else:
                job = decoded
                task_name = job.task
                wait_ms = int(time.time() * 1000) - job.enqueued_ms if job.enqueued_ms else None
                self.observer.job_started(task_name, entry.queue, wait_ms)
                if self._debug:
                    log.debug("started %s %s attempt %d", task_name, job.id, job.attempt)
                outcome = await self.runner.run(entry, job)
        finally:
            self._active -= 1
            self._slot_free.set()
            if outcome is None:
                self._held.pop(key, None)
        duration = time.perf_counter() - t0
        if isinstance(outcome, Succeeded) and job is not None:
            self._done.setdefault(entry.queue, []).append(
                Completion(entry.entry_id, job.id, job.attempt, outcome.result)
            )
            self._done_event.set()
            self.observer.job_finished(task_name, entry.queue, "succeeded", duration)
            self.processed += 1
            if self._debug:
                log.debug("succeeded %s %s in %.3fs", task_name, job.id, duration)
            return
        await asyncio.shield(self._apply(entry, job, task_name, outcome, duration))

    async def _apply(
        self, entry: Entry, job: Job | None, task: str, outcome: Outcome, duration: float
    ) -> None:
        """Write a non-success outcome (retry, deferral, dead letter); shielded by the caller so
        shutdown cannot interrupt it half-way."""
        key = (entry.queue, entry.entry_id)
        try:
            self._held.pop(key, None)
            ok = await self._retrying("finish job", lambda: self._write_outcome(entry, outcome))
            if ok is False:
                self.observer.ack_refused(entry.queue, 1)
                log.warning(
                    "%s: entry %s is owned by another worker now; outcome dropped",
                    task,
                    entry.entry_id,
                )
                return
            self.processed += 1
            self._log_outcome(task, job, outcome, entry, duration)
        finally:
            self._held.pop(key, None)

    async def _write_outcome(self, entry: Entry, outcome: Outcome) -> bool:
        if isinstance(outcome, RetryLater):
            return await self.consumer.reschedule(
                entry,
                outcome.job.id,
                outcome.job.encode(),
                outcome.delay_ms,
                state="retrying",
                attempt=outcome.job.attempt,
                status_ttl_ms=self.status_ttl_ms,
                last_error=outcome.error,
            )
        if isinstance(outcome, Deferred):
            return await self.consumer.reschedule(
                entry,
                outcome.job.id,
                outcome.job.encode(),
                outcome.delay_ms,
                state="scheduled",
                attempt=outcome.job.attempt,
                status_ttl_ms=self.status_ttl_ms,
            )
        assert isinstance(outcome, DeadLettered)
        job = outcome.job
        body = job.encode() if job is not None else (outcome.raw or b"")
        return await self.consumer.deadletter(
            entry,
            job.id if job else "",
            body,
            outcome.reason,
            task=job.task if job else "",
            status_ttl_ms=self.status_ttl_ms,
        )

    def _log_outcome(
        self, task: str, job: Job | None, outcome: Outcome, entry: Entry, duration: float
    ) -> None:
        job_id = job.id if job else f"entry {entry.entry_id}"
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
            log.info(
                "deferred %s %s by %.1fs: %s", task, job_id, outcome.delay_ms / 1000, outcome.reason
            )
        elif isinstance(outcome, DeadLettered):
            self.observer.job_finished(task, entry.queue, "dead", duration)
            log.warning("dead-lettered %s %s: %s", task, job_id, outcome.reason)

    async def _retrying(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """Run a Redis write until it succeeds; gives up only once the worker is shutting down
        and Redis is still unreachable (the entry then stays pending and is redelivered)."""
        delay = 0.05
        while True:
            try:
                return await op()
            except REDIS_ERRORS as exc:
                if self._reading_stopped.is_set() and delay >= 2.0:
                    log.error(
                        "%s: Redis still unreachable at shutdown (%s); leaving it pending",
                        what,
                        exc,
                    )
                    return None
                log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- background loops -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._done_event.wait()
            self._done_event.clear()
            batches, self._done = self._done, {}
            for queue, done in batches.items():
                await asyncio.shield(self._flush(queue, done))
            if self._reading_stopped.is_set() and not self._held and not self._done:
                return

    async def _flush(self, queue: str, done: list[Completion]) -> None:
        res = await self._retrying(
            "ack", lambda: self.consumer.ack(queue, done, self.result_ttl_ms)
        )
        refused = 0 if res is None else res.count(False)
        if refused:
            self.observer.ack_refused(queue, refused)
            log.warning(
                "%d ack(s) on %s refused: the entries belong to another worker now", refused, queue
            )
        for c in done:
            self._held.pop((queue, c.entry_id), None)

    async def _promote_loop(self) -> None:
        interval = self.settings.promote_interval_ms / 1000
        soonest = 0.0
        while not await self._pause(max(soonest, 0.005)):
            try:
                soonest = interval
                for q in self.queues:
                    moved, next_due = await self.consumer.promote(q)
                    if moved >= 1000:
                        soonest = 0
                    elif next_due > 0:
                        soonest = min(soonest, max(0.0, next_due / 1000 - time.time()))
            except REDIS_ERRORS as exc:
                log.warning("promote failed: %s", exc)
                soonest = 1.0

    async def _lease_loop(self) -> None:
        interval = self.settings.lease_ms / 3000
        first = True
        while not await self._pause(0 if first else interval):
            first = False
            try:
                by_queue: dict[str, list[str]] = {q: [] for q in self.queues}
                for q, entry_id in list(self._held):
                    by_queue.setdefault(q, []).append(entry_id)
                for q, ids in by_queue.items():
                    lost = await self.consumer.extend(q, ids)
                    for entry_id in lost:
                        task = self._held.pop((q, entry_id), None)
                        if task is not None and not task.done():
                            log.warning(
                                "lost the lease of %s on %s; cancelling its run", entry_id, q
                            )
                            task.cancel()
            except REDIS_ERRORS as exc:
                log.warning("lease renewal failed: %s", exc)

    async def _reclaim_loop(self) -> None:
        interval = self.settings.reclaim_interval_ms / 1000
        ticks = 0
        while not await self._pause(interval * (0.5 + random.random())):
            if self._reading_stopped.is_set() or self._stop.is_set():
                continue
            try:
                for q in self.queues:
                    free = self.concurrency - self._active
                    if free <= 0:
                        break
                    entries = await self.consumer.reclaim(q, self.settings.lease_ms, free)
                    if entries:
                        log.warning(
                            "reclaimed %d entr%s on %s from a worker whose lease lapsed",
                            len(entries),
                            "y" if len(entries) == 1 else "ies",
                            q,
                        )
                        self.observer.job_redelivered(q, len(entries))
                        await self._dispatch(entries)
                ticks += 1
                if ticks % 12 == 0:
                    await self._forget_dead_consumers()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    await self._recreate_groups()
                else:
                    log.warning("reclaim failed: %s", exc)
            except REDIS_ERRORS as exc:
                log.warning("reclaim failed: %s", exc)

    async def _forget_dead_consumers(self) -> None:
        """Delete consumers silent for 10 leases that own nothing (never one with pending)."""
        t = await self.redis.time()
        now = int(t[0]) * 1000 + int(t[1]) // 1000
        for q in self.queues:
            beats = await self.redis.hgetall(keys.consumers(q))
            for raw_name, raw_ms in beats.items():
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                if name != self.name and now - int(raw_ms) > 10 * self.settings.lease_ms:
                    await self.consumer.release(q, name)
