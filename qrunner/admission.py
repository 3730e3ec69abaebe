"""Admission of rate-limited tasks: maps a task and its payload to a token bucket, gives each job
its turn in the bucket's line, and tells the worker which queues are worth reading.

A task's limit applies to one bucket per task, or one per key when the task derives a key from
the payload (per recipient, per sender, per tenant). Keys are hashed before they reach Redis so
phone numbers and addresses never appear in key names.

A job that finds no token is not sent round again at every refill: :meth:`TokenBucketGate.admit`
reserves its real turn (:meth:`~qrunner.ratelimit.RateLimiter.reserve`). A turn within
``hold_s`` is waited for in place, holding the entry (no deferral at all); a later one is
recorded under the job's id and the job is deferred once, to that turn, when it runs without a
second charge. Jobs of other tasks never wait behind a limited one: only the limited job leaves
the stream.

A queue whose only task is limited by one task-wide bucket is *gated*: there every job needs a
token from the same bucket, so the stream itself is the line. :meth:`TokenBucketGate.plan_reads`
tells the worker to read such a queue only once the bucket's line is shorter than half of
``read_ahead_s``, and then only as many entries as have turns within ``read_ahead_s``; in
between, every worker leaves the queue alone, since they all judge it from the same bucket
state in Redis (and share out each allowance there). The jobs read wait for their turns in
place. Jobs of a gated queue are never recorded for later (they would come back at the far end
of the stream, behind the jobs they should precede); one whose turn is not within ``hold_s`` is
refused without being charged and deferred to ask again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from .errors import ConfigError
from .ratelimit import Admission, LineView, RateLimiter, RateLimitSpec, Verdict
from .task import Registry, Task

log = logging.getLogger(__name__)

#: Most jobs sent to Redis in one admission call.
_MAX_BATCH = 256
#: Buckets remembered per task for :meth:`TokenBucketGate.line_view` (per-key limits).
_LINES_PER_TASK = 1024
#: A bucket not heard of for this long no longer counts towards a task's waiting jobs.
_LINE_FORGET_S = 600.0


def bucket_name(task: Task, payload: Any) -> str:
    limit = task.rate_limit
    if limit is None or limit.key is None:
        return f"task:{task.name}"
    digest = hashlib.blake2b(str(limit.key(payload)).encode(), digest_size=8).hexdigest()
    return f"task:{task.name}:{digest}"


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How a worker should read its queues this round (see :meth:`TokenBucketGate.plan_reads`)."""

    #: Non-blocking reads, in order: (queue, most entries to read from it).
    reads: list[tuple[str, int]]
    #: Queues to wait on when those reads found nothing (gated queues that are held: left out).
    wait_queues: list[str]
    #: Most entries to take per queue in that wait.
    wait_count: int
    #: Longest that wait may last, in ms: when a held queue may be read again (None: no cap).
    max_wait_ms: int | None


@dataclass(slots=True)
class AdmissionCounts:
    """What the gate did for one task in this process (for metrics)."""

    granted: int = 0
    claimed: int = 0
    held: int = 0
    deferred: int = 0
    refused: int = 0
    #: Seconds jobs waited in place for a turn within the hold.
    held_s: float = 0.0
    #: Seconds of deferral handed out (to a recorded turn, or to ask again).
    deferred_s: float = 0.0


@dataclass(slots=True)
class _Gated:
    task: Task
    spec: RateLimitSpec
    bucket: str
    #: Monotonic time before which the queue is not read.
    open_at: float = 0.0
    #: True once the worker reads the queue through :meth:`TokenBucketGate.plan_reads`; until
    #: then its jobs are admitted as in any other queue (turns recorded, no refusals).
    planned: bool = False


@dataclass(slots=True)
class _Batch:
    """Admissions of one bucket and cost waiting to go to Redis together."""

    spec: RateLimitSpec
    items: list[tuple[str | None, int, asyncio.Future[Admission]]] = field(default_factory=list)


@dataclass(slots=True)
class _Lines:
    buckets: dict[str, tuple[int, int, float]] = field(default_factory=dict)


class TokenBucketGate:
    """The worker's :class:`~qrunner.runner.RateGate` over Redis token buckets.

    ``hold_s``: a turn at most this far away is waited for in place, keeping the entry; at most
    ``max_holding`` jobs of this process wait so at once (then they are deferred instead), so
    held jobs never fill the worker's slots. ``read_ahead_s``: how far ahead a gated queue is
    read (keep it below ``hold_s``). ``settle_s``: how long what one worker was allowed to read
    is set aside from the others. ``max_wait_s``: the longest single deferral; a job whose turn
    is further away comes back and is deferred again for the rest (it keeps its turn).
    ``stale_s``: a recorded turn overdue by this much is forgotten (its job is not coming back).
    """

    def __init__(
        self,
        redis: Redis,
        registry: Registry,
        *,
        hold_s: float = 1.0,
        read_ahead_s: float = 0.5,
        settle_s: float = 0.2,
        max_holding: int = 64,
        max_wait_s: float = 3600.0,
        stale_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = RateLimiter(redis)
        self.specs: dict[str, RateLimitSpec] = {
            t.name: RateLimitSpec.parse(t.rate_limit.rates, t.rate_limit.burst)
            for t in registry
            if t.rate_limit is not None
        }
        #: The limits declared in code, restored when an override is reset.
        self._code_specs = dict(self.specs)
        self.hold_ms = max(0, int(hold_s * 1000))
        self.read_ahead_ms = max(1, int(read_ahead_s * 1000))
        self.settle_ms = max(1, int(settle_s * 1000))
        self.max_holding = max_holding
        self.max_wait_ms = max(1, int(max_wait_s * 1000))
        self.stale_ms = max(0, int(stale_s * 1000))
        self.clock = clock
        self.counts: dict[str, AdmissionCounts] = {}
        self.holding = 0
        self._lines: dict[str, _Lines] = {}
        self._batches: dict[tuple[str, int, bool, bool], _Batch] = {}
        self._sending: set[asyncio.Task[None]] = set()
        #: Buckets this process throttled: monotonic time the pause ends.
        self._paused: dict[str, float] = {}
        self._gated: dict[str, _Gated] = {}
        by_queue: dict[str, list[Task]] = {}
        for t in registry:
            by_queue.setdefault(t.queue, []).append(t)
        for queue, tasks in by_queue.items():
            only = tasks[0]
            limit = only.rate_limit
            if len(tasks) == 1 and limit is not None and limit.key is None and limit.cost is None:
                spec = self.specs[only.name]
                self._gated[queue] = _Gated(only, spec, bucket_name(only, None))

    def apply_overrides(self, overrides: Mapping[str, str]) -> None:
        """Use the rates operators set at run time (``qrunner limits set``: task -> "10/s,..")
        instead of the code's, and the code's again for tasks no longer overridden. A rate
        that does not parse is logged and ignored (the last good one stays)."""
        for name, code in self._code_specs.items():
            rates = overrides.get(name)
            spec = code
            if rates:
                try:
                    spec = RateLimitSpec.parse(tuple(rates.split(",")), code.burst)
                except ConfigError as exc:
                    log.warning("rate limit override for %s ignored: %s", name, exc)
                    continue
            if spec != self.specs.get(name):
                log.info("rate limit of %s is now %s", name, rates or "the code's")
            self.specs[name] = spec
            for gated in self._gated.values():
                if gated.task.name == name:
                    gated.spec = spec

    # -- admission -------------------------------------------------------------------------

    async def admit(self, task: Task, payload: Any, job_id: str | None = None) -> Verdict:
        """Seconds until this job may run (0.0: run now), the bucket judged and when the job's
        token became its own (on the Redis clock).

        Returns 0.0 after waiting in place when the job's turn is within ``hold_s``. Give
        ``job_id`` so a deferred job finds its own turn when it comes back; without it, a
        returning job takes the earliest turn that is due, whoever it was recorded for.
        """
        spec = self.specs.get(task.name)
        if spec is None or task.rate_limit is None:
            return Verdict(0.0, None)
        cost = task.rate_limit.cost(payload) if task.rate_limit.cost else 1
        bucket = bucket_name(task, payload)
        gate = self._gated.get(task.queue)
        gated = gate is not None and gate.planned
        # A place among the jobs waiting in place is taken before asking, so that concurrent
        # admissions cannot all be told to wait in place past max_holding.
        may_hold = self.holding < self.max_holding
        if may_hold:
            self.holding += 1
        try:
            admission = await self._reserve(
                bucket, spec, max(1, cost), job_id, self.hold_ms if may_hold else 0, not gated
            )
            self._note(task.name, bucket, admission)
            if admission.kind == "hold":
                await asyncio.sleep(admission.wait_ms / 1000)
                # A provider said "slow down" meanwhile (seen by this process): the turn waited
                # for was given before the pause, so ask again once the pause is over.
                paused = self._paused.get(bucket)
                if paused is not None:
                    left = paused - self.clock()
                    if left > 0:
                        return Verdict(left, bucket)
                    del self._paused[bucket]
        finally:
            if may_hold:
                self.holding -= 1
        if admission.runs_now or admission.kind == "hold":
            return Verdict(0.0, bucket, admission.turn_at_ms)
        return Verdict(admission.wait_ms / 1000, bucket)

    async def _reserve(
        self,
        bucket: str,
        spec: RateLimitSpec,
        cost: int,
        job_id: str | None,
        hold_ms: int,
        reserve: bool,
    ) -> Admission:
        """One admission, sent to Redis together with the others of the same bucket asked for
        in the same turn of the event loop (a batch of jobs read together becomes one call)."""
        loop = asyncio.get_running_loop()
        key = (bucket, cost, reserve, job_id is None)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(spec)
            loop.call_soon(self._send, key)
        answer: asyncio.Future[Admission] = loop.create_future()
        batch.items.append((job_id, hold_ms, answer))
        if len(batch.items) >= _MAX_BATCH:
            self._send(key)
        return await answer

    def _send(self, key: tuple[str, int, bool, bool]) -> None:
        batch = self._batches.pop(key, None)
        if batch is not None:
            sending = asyncio.get_running_loop().create_task(self._send_batch(key, batch))
            self._sending.add(sending)
            sending.add_done_callback(self._sending.discard)

    async def _send_batch(self, key: tuple[str, int, bool, bool], batch: _Batch) -> None:
        bucket, cost, reserve, anonymous = key
        try:
            answers = await self.limiter.reserve_many(
                bucket,
                batch.spec,
                [(job_id, hold_ms) for job_id, hold_ms, _ in batch.items],
                cost,
                reserve=reserve,
                max_wait_ms=0 if anonymous else self.max_wait_ms,
                stale_ms=self.stale_ms,
            )
        except asyncio.CancelledError:
            for _, _, waiter in batch.items:
                waiter.cancel()
            raise
        except Exception as exc:
            for _, _, waiter in batch.items:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for (_, _, waiter), answer in zip(batch.items, answers, strict=True):
            if not waiter.done():
                waiter.set_result(answer)

    async def throttle(self, task: Task, payload: Any, bucket: str | None, seconds: float) -> None:
        """Pause the bucket for ``seconds`` on every worker; the jobs in its line move back.

        Jobs of this process waiting in place for a turn ask again once the pause is over;
        those of other processes (at most ``hold_s`` of turns) run, and meet the provider's
        "slow down" themselves.
        """
        name = bucket or bucket_name(task, payload)
        await self.limiter.throttle(name, seconds, spec=self.specs.get(task.name))
        self._paused[name] = max(self._paused.get(name, 0.0), self.clock() + seconds)

    # -- reading -----------------------------------------------------------------------------

    def gated(self, queue: str) -> bool:
        """True when every job of ``queue`` needs a token from one bucket."""
        return queue in self._gated

    def queue_hold_ms(self, queue: str) -> int:
        """Milliseconds before ``queue`` is worth reading again (0: now), as last judged; no
        I/O. Only gated queues are ever held."""
        gate = self._gated.get(queue)
        if gate is None:
            return 0
        return max(0, int((gate.open_at - self.clock()) * 1000))

    async def plan_reads(self, queues: Sequence[str], free: int) -> ReadPlan:
        """The reads of one round of the worker's fetch loop, for ``free`` slots.

        Ungated queues are read as usual. A gated queue is read only as far as its bucket has
        turns within ``read_ahead_s``. When it has none, or its line is still longer than half
        the read-ahead, the queue is held until the line is down to half the read-ahead, so the
        next read fetches a batch, not a job at a time; when other workers were just allowed
        the turns, until their share lapses. After a read the queue is held for ``settle_s``,
        time for the jobs read to take their turns.
        """
        reads: list[tuple[str, int]] = []
        wait_queues: list[str] = []
        wait_count = free
        soonest: float | None = None
        for queue in queues:
            gate = self._gated.get(queue)
            if gate is None:
                reads.append((queue, free))
                wait_queues.append(queue)
                continue
            gate.planned = True
            now = self.clock()
            if gate.open_at > now:
                held = gate.open_at - now
                soonest = held if soonest is None else min(soonest, held)
                continue
            count, first_ms, busy_ms = await self.limiter.allowance(
                gate.bucket,
                gate.spec,
                self.read_ahead_ms,
                settle_ms=self.settle_ms,
                most=free,
                lead_ms=self.read_ahead_ms // 2,
            )
            now = self.clock()
            if count <= 0:
                hold_ms = busy_ms if busy_ms > 0 else first_ms - self.read_ahead_ms // 2
                # Workers waking at the same moment would all ask at once; spread them.
                jitter = random.uniform(0, self.settle_ms / 2000)
                hold = max(1, hold_ms) / 1000 + jitter
                gate.open_at = now + hold
                soonest = hold if soonest is None else min(soonest, hold)
                continue
            take = min(free, count)
            reads.append((queue, take))
            wait_queues.append(queue)
            wait_count = min(wait_count, take)
            gate.open_at = now + self.settle_ms / 1000
        max_wait_ms = None if soonest is None else int(soonest * 1000) + 1
        return ReadPlan(reads, wait_queues, max(1, wait_count), max_wait_ms)

    # -- what the gate knows, for logs and metrics -------------------------------------------

    def line_view(self, task: str) -> LineView | None:
        """Jobs of ``task`` deferred to a recorded turn and the time to the earliest turn, as
        last heard from Redis (summed over the task's buckets for a per-key limit)."""
        lines = self._lines.get(task)
        if lines is None:
            return None
        now = self.clock()
        waiting = 0
        next_turn: float | None = None
        for bucket, (count, next_ms, at) in list(lines.buckets.items()):
            if now - at > _LINE_FORGET_S:
                del lines.buckets[bucket]
                continue
            waiting += count
            if next_ms >= 0:
                turn = max(0.0, next_ms / 1000 - (now - at))
                next_turn = turn if next_turn is None else min(next_turn, turn)
        return LineView(waiting, next_turn)

    def _note(self, task: str, bucket: str, admission: Admission) -> None:
        counts = self.counts.get(task)
        if counts is None:
            counts = self.counts[task] = AdmissionCounts()
        wait_s = admission.wait_ms / 1000
        if admission.kind == "granted":
            counts.granted += 1
        elif admission.kind == "claimed":
            counts.claimed += 1
        elif admission.kind == "hold":
            counts.held += 1
            counts.held_s += wait_s
        elif admission.kind == "deferred":
            counts.deferred += 1
            counts.deferred_s += wait_s
        else:
            counts.refused += 1
            counts.deferred_s += wait_s
        if admission.waiting < 0:
            return  # not looked up: the line is as last heard
        lines = self._lines.get(task)
        if lines is None:
            lines = self._lines[task] = _Lines()
        buckets = lines.buckets
        buckets.pop(bucket, None)
        buckets[bucket] = (admission.waiting, admission.next_turn_ms, self.clock())
        if len(buckets) > _LINES_PER_TASK:
            del buckets[next(iter(buckets))]
