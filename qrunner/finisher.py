"""Finishing jobs: batched acks of successes, and the writes of every other outcome.

Successes are acked in batches (one script call per queue per batch); retries, deferrals and
dead letters are written one by one. Every write checks ownership first (see the Lua scripts),
so each comes back as a :class:`~qrunner.consumer.Finish`:

- ``DONE``: written;
- ``NOT_OWNER``: another worker claimed the entry after this one's lease lapsed; nothing written
  (counted as a refused ack: that worker runs the job again);
- ``GONE``: the entry is no longer pending at all: already finished (a retried call whose first
  reply was lost) or its stream was flushed. Nothing to do.

A batch whose write fails on a Redis fault is kept and written again once Redis answers; the
flush loop is supervised, so it cannot die and leave a worker that runs jobs but never acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .consumer import Completion, Consumer, Entry, Finish
from .errors import KeyConflict, RedisFault, StreamMissing
from .events import Observer
from .job import Job
from .outcome import DeadLettered, Deferred, Outcome, RetryLater
from .supervise import BACKOFF_CAP_S, BACKOFF_START_S

log = logging.getLogger(__name__)


class Finisher:
    """Writes outcomes for one worker; ``on_finished`` releases the entry from the worker."""

    def __init__(
        self,
        consumer: Consumer,
        observer: Observer,
        *,
        status_ttl_ms: int,
        result_ttl_ms: int,
        release: Any,
        recover: Any,
        read_first: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.consumer = consumer
        self.observer = observer
        self.status_ttl_ms = status_ttl_ms
        self.result_ttl_ms = result_ttl_ms
        #: ``release(queue, entry_ids)``: the worker stops holding (and renewing) the entries.
        self._release = release
        #: ``recover(StreamMissing)``: recreate the group and raise the alarm.
        self._recover = recover
        #: Awaited before each round of acks: the worker lets a read go out first (see
        #: Worker._read_first).
        self._read_first = read_first
        self._done: dict[str, list[Completion]] = {}
        self._wake = asyncio.Event()
        self.processed = 0

    # -- successes, batched -------------------------------------------------------------------

    def succeeded(self, queue: str, completion: Completion) -> None:
        self._done.setdefault(queue, []).append(completion)
        self._wake.set()

    @property
    def backlog(self) -> int:
        return sum(len(v) for v in self._done.values())

    def wake(self) -> None:
        self._wake.set()

    async def flush_step(self, final: Callable[[], bool]) -> float | None:
        """One round of the flush loop: wait for completions, ack them. Returns None once
        ``final()`` says no more can come and nothing is left; raises faults (the supervisor
        waits them out; unflushed completions stay queued for the next round)."""
        if not self._done:
            if final():
                return None
            await self._wake.wait()
            self._wake.clear()
            if self._read_first is not None:
                await self._read_first()
        batches, self._done = self._done, {}
        try:
            while batches:
                queue, done = next(iter(batches.items()))
                await asyncio.shield(self._ack(queue, done))
                del batches[queue]
        finally:
            for queue, done in batches.items():  # not written: back in line for the next round
                self._done.setdefault(queue, [])[:0] = done
        return 0.0

    async def _ack(self, queue: str, done: list[Completion]) -> None:
        try:
            res = await self.consumer.ack(queue, done, self.result_ttl_ms)
        except StreamMissing:
            log.warning(
                "%d finished job(s) on %s could not be acked: the stream vanished (FLUSHALL or "
                "restart without data) and their entries with it",
                len(done),
                queue,
            )
            self._release_all(queue, done)
            raise
        except KeyConflict as conflict:
            # The stream holding their entries was replaced by a key of another type: nothing
            # is left to ack, and waiting would hold up every other queue's acks behind it.
            log.error("%d finished job(s) on %s could not be acked: %s", len(done), queue, conflict)
            self._release_all(queue, done)
            return
        refused = res.count(Finish.NOT_OWNER)
        if refused:
            self.observer.ack_refused(queue, refused)
            log.warning(
                "%d ack(s) on %s refused: another worker claimed the entries after this "
                "worker's lease lapsed, and runs them again",
                refused,
                queue,
            )
        self._release_all(queue, done)

    def _release_all(self, queue: str, done: list[Completion]) -> None:
        self._release(queue, [c.entry_id for c in done])

    # -- other outcomes, one by one -----------------------------------------------------------

    async def write(self, entry: Entry, outcome: Outcome, stopping: asyncio.Event) -> Finish | None:
        """Write a retry, deferral or dead letter, waiting out Redis faults; None when Redis
        stayed down into shutdown, or a key of the queue holds another type of value (the entry
        stays pending and is redelivered)."""
        delay = BACKOFF_START_S
        while True:
            try:
                return await self._write(entry, outcome)
            except StreamMissing as missing:
                await self._recover(missing)
                return Finish.GONE
            except KeyConflict as conflict:
                # Waiting cannot fix it: the entry stays pending, unrenewed, and comes back
                # through the reclaimer (dead-lettered after max deliveries) once it is fixed.
                log.error(
                    "entry %s on %s: outcome not written: %s", entry.entry_id, entry.queue, conflict
                )
                return None
            except RedisFault as fault:
                if stopping.is_set() and delay >= 2.0:
                    log.error(
                        "entry %s on %s: Redis still failing at shutdown (%s); it stays pending "
                        "and another worker finishes it",
                        entry.entry_id,
                        entry.queue,
                        fault,
                    )
                    return None
                log.warning(
                    "writing the outcome of %s failed (%s); retrying", entry.entry_id, fault
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)

    async def _write(self, entry: Entry, outcome: Outcome) -> Finish:
        if isinstance(outcome, RetryLater | Deferred):
            job = outcome.job
            return await self.consumer.reschedule(
                entry,
                job.id,
                job.encode(),
                outcome.delay_ms,
                state="retrying" if isinstance(outcome, RetryLater) else "scheduled",
                attempt=job.attempt,
                status_ttl_ms=self.status_ttl_ms,
                last_error=outcome.error if isinstance(outcome, RetryLater) else "",
                task=job.task,
                enqueued_ms=job.enqueued_ms,
            )
        assert isinstance(outcome, DeadLettered)
        dead: Job | None = outcome.job
        body = dead.encode() if dead is not None else (outcome.raw or b"")
        return await self.consumer.deadletter(
            entry,
            dead.id if dead else "",
            body,
            outcome.reason,
            task=dead.task if dead else "",
            status_ttl_ms=self.status_ttl_ms,
            attempt=dead.attempt if dead else 0,
            enqueued_ms=dead.enqueued_ms if dead else 0,
        )
