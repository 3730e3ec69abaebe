"""Helpers for testing your own handlers.

- :func:`run_eager` runs one job in-process, without Redis, through the same steps as a worker:
  the enqueue side's checks (known task, payload model, JSON, size), the envelope round trip,
  :class:`~qrunner.runner.Runner` (validation, timeout, thread handlers) and
  :func:`qrunner.outcome.classify` (``Retry`` / ``Permanent`` / ``RateLimited`` and backoff).
  Progress reports are kept in memory. Rate-limit admission is not judged (it needs Redis).
- :func:`drain` runs an in-process worker against a real Redis until nothing is left: queued
  jobs, delayed jobs that are due (or due within ``until_s``), retries (at once, by default),
  follow-ups and group callbacks; it returns what ran.
- :mod:`qrunner.pytest_plugin` starts an isolated redis-server for integration tests.

Example::

    async def test_greeting() -> None:
        done = await run_eager(registry, "greet", {"name": "ada"})
        assert done.state == "succeeded" and done.result == "hello ada"
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import orjson
from redis.asyncio import Redis

from . import keys
from .consumer import Entry
from .context import Context
from .faults import translated
from .job import Job
from .outcome import DeadLettered, Deferred, Outcome, RetryLater, Succeeded
from .progress import RecordedProgress
from .queue import Client, JobSpec
from .runner import Runner
from .scripts import Script
from .settings import Settings
from .task import Registry
from .worker import Worker

#: A worker that notices work quickly; :func:`drain` runs with these unless given settings.
DRAIN_SETTINGS = Settings(
    lease_ms=5000, reclaim_interval_ms=500, promote_interval_ms=20, block_ms=50, grace_s=5
)


def _state_of(outcome: Outcome) -> str:
    if isinstance(outcome, Succeeded):
        return "succeeded"
    if isinstance(outcome, RetryLater):
        return "retrying"
    if isinstance(outcome, Deferred):
        return "deferred"
    return "dead"


def _result_of(outcome: Outcome) -> Any:
    if isinstance(outcome, Succeeded) and outcome.result:
        return orjson.loads(outcome.result)
    return None


def _error_of(outcome: Outcome) -> str | None:
    if isinstance(outcome, RetryLater):
        return outcome.error
    if isinstance(outcome, Deferred):
        return outcome.reason
    if isinstance(outcome, DeadLettered):
        return outcome.reason
    return None


@dataclass(frozen=True, slots=True)
class EagerResult:
    """What one eager run came to. ``outcome`` is the worker's own outcome object."""

    job: Job
    outcome: Outcome
    #: Outcomes of every run, first attempt first (more than one with ``follow_retries``).
    runs: tuple[Outcome, ...]
    progress: list[tuple[float, dict[str, Any] | None]] = field(default_factory=list)

    @property
    def state(self) -> str:
        """ "succeeded", "retrying", "deferred" (no attempt spent) or "dead"."""
        return _state_of(self.outcome)

    @property
    def result(self) -> Any:
        """The handler's return value as the status record would hold it (JSON round trip)."""
        return _result_of(self.outcome)

    @property
    def error(self) -> str | None:
        """The retry's error, the deferral's reason or the dead letter's reason."""
        return _error_of(self.outcome)

    @property
    def delay_s(self) -> float | None:
        """Seconds until the next run, for a retry or a deferral."""
        if isinstance(self.outcome, RetryLater | Deferred):
            return self.outcome.delay_ms / 1000
        return None

    @property
    def attempts(self) -> int:
        return len(self.runs)


async def run_eager(
    registry: Registry,
    task: str,
    payload: Mapping[str, Any] | None = None,
    *,
    state: Any = None,
    settings: Settings | None = None,
    attempt: int = 1,
    deliveries: int = 1,
    job_id: str | None = None,
    follow_retries: bool = False,
    redis: Redis | None = None,
    client: Client | None = None,
    flow: Mapping[str, Any] | None = None,
) -> EagerResult:
    """Run ``task`` once on ``payload`` in this process, without a worker or Redis.

    Raises what :meth:`Client.enqueue` would (``UnknownTask``, ``InvalidPayload``,
    ``PayloadTooLarge``) for a job the client refuses. With ``follow_retries`` a retried job is
    run again at once, attempt after attempt, until it succeeds, is dead-lettered or deferred.
    ``redis`` / ``client`` are handed to the handler's context when it needs them; ``flow``
    sets ``ctx.upstream`` / ``ctx.group_results`` (e.g. ``{"upstream": {...}}``).
    """
    settings = settings or Settings()
    checker = Client(cast(Redis, redis), registry, max_payload_bytes=settings.max_payload_bytes)
    spec = JobSpec(task, payload, job_id=job_id, flow=flow)
    queue, _, args = checker._prepare(spec)
    job = Job.decode(args[1], queue=queue)  # the handler gets what a worker would decode
    if attempt > 1:
        job = replace(job, attempt=attempt)
    reporter = RecordedProgress()

    def make_context(job: Job, deliveries: int) -> Context[Any]:
        return Context(
            job=job,
            redis=cast(Redis, redis),
            client=cast(Client, client),
            state=state,
            settings=settings,
            deliveries=deliveries,
            reporter=reporter,
        )

    runner = Runner(registry, make_context, max_payload_bytes=settings.max_payload_bytes)
    runs: list[Outcome] = []
    while True:
        entry = Entry(queue, "0-0", job.encode(), deliveries)
        decoded = runner.decode(entry)
        outcome = decoded if isinstance(decoded, DeadLettered) else await runner.run(entry, job)
        runs.append(outcome)
        if not (follow_retries and isinstance(outcome, RetryLater)):
            break
        job = outcome.job
    return EagerResult(job, outcome, tuple(runs), reporter.reports)


# -- drain -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ran:
    """One run of a job during :func:`drain`."""

    id: str
    task: str
    queue: str
    attempt: int
    state: str  # succeeded, retrying, deferred or dead
    result: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class DrainResult:
    """Every run :func:`drain` saw, in the order they ended."""

    runs: list[Ran]

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def succeeded(self) -> list[Ran]:
        return [r for r in self.runs if r.state == "succeeded"]

    @property
    def dead(self) -> list[Ran]:
        return [r for r in self.runs if r.state == "dead"]

    @property
    def retried(self) -> list[Ran]:
        return [r for r in self.runs if r.state == "retrying"]

    def of_task(self, task: str) -> list[Ran]:
        return [r for r in self.runs if r.task == task]


class _RecordingWorker(Worker):
    """A worker that notes every job's outcome (after its follow-ups were recorded).

    Outcomes are listed in the order jobs reached this step, not the order it returned: a
    follow-up enqueued here may run to its end (an eager task on Python 3.12+) before the job
    that enqueued it gets its turn back."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._noted: list[tuple[int, Ran]] = []
        self._turns = itertools.count()

    @property
    def ran(self) -> list[Ran]:
        return [r for _, r in sorted(self._noted, key=lambda noted: noted[0])]

    async def _after_run(self, job: Job, outcome: Outcome | None) -> Outcome | None:
        turn = next(self._turns)
        final = await super()._after_run(job, outcome)
        if final is not None:
            self._noted.append(
                (
                    turn,
                    Ran(
                        job.id,
                        job.task,
                        job.queue,
                        job.attempt,
                        _state_of(final),
                        _result_of(final),
                        _error_of(final),
                    ),
                )
            )
        return final


_promote = Script("promote")


async def _bring_forward(redis: Redis, queue: str, horizon_ms: int, retries_now: bool) -> int:
    """Move delayed jobs due by ``horizon_ms`` (and retries, if asked) into the stream."""
    async with translated(queue):
        if retries_now:
            waiting: list[Any] = await redis.zrange(keys.delayed(queue), 0, -1)
            for env in waiting:
                if Job.decode(env, queue=queue).attempt > 1:
                    # Due at once (score 0, below any horizon). XX: only if still waiting
                    # (the worker's own promote may have moved it meanwhile).
                    await redis.zadd(keys.delayed(queue), {env: 0}, xx=True)
        moved, _ = await _promote(
            redis, [keys.delayed(queue), keys.stream(queue)], [horizon_ms, 1000]
        )
    return int(moved)


async def _left(redis: Redis, queues: Sequence[str], horizon_ms: int, retries_now: bool) -> int:
    """Jobs still to run on ``queues``: in the stream (waiting or running), parked for
    fairness, or delayed but due by ``horizon_ms`` (or retries, with ``retries_now``).

    Each queue is read in one MULTI (its keys share a hash tag): a job moving between its
    stream and its delayed set (a retry written, a delayed job promoted) is atomic in Redis, so
    a snapshot always sees it on one side or the other."""
    total = 0
    async with translated():
        for q in queues:
            pipe = redis.pipeline(transaction=True)
            pipe.xlen(keys.stream(q))
            pipe.llen(keys.fair_ring(q))
            pipe.zcount(keys.delayed(q), "-inf", horizon_ms)
            pipe.zrangebyscore(keys.delayed(q), f"({horizon_ms}", "+inf")
            queued, parked, due, later = await pipe.execute()
            total += int(queued) + int(parked) + int(due)
            if retries_now:
                total += sum(1 for env in later if Job.decode(env, queue=q).attempt > 1)
    return total


async def drain(
    redis: Redis,
    registry: Registry,
    *,
    queues: Sequence[str] | None = None,
    state: Any = None,
    settings: Settings | None = None,
    concurrency: int = 10,
    retries_now: bool = True,
    until_s: float = 0.0,
    timeout_s: float = 60.0,
) -> DrainResult:
    """Run jobs with an in-process worker until none is left to run, and return the runs.

    Runs what is queued, delayed jobs already due (or due within ``until_s`` seconds), retries
    at once (``retries_now``; else when their backoff is over), and whatever those jobs enqueue
    (follow-ups, children, group callbacks) on ``queues`` (default: the registry's). Jobs
    scheduled later than that are left where they are. Raises ``TimeoutError`` after
    ``timeout_s``.
    """
    worker = _RecordingWorker(
        redis,
        registry,
        queues=queues,
        concurrency=concurrency,
        settings=settings or DRAIN_SETTINGS,
        state=state,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + timeout_s
    try:
        while not running.done():
            now = await redis.time()
            horizon_ms = int(now[0]) * 1000 + int(now[1]) // 1000 + int(until_s * 1000)
            for q in worker.queues:
                await _bring_forward(redis, q, horizon_ms, retries_now)
            # Done when a consistent snapshot of every queue holds nothing to run and the
            # worker holds nothing: a job always is in one of those places until it is acked,
            # and whatever it enqueues (follow-ups, children) is written before its ack.
            idle = not worker._held and not worker.finisher.backlog
            left = await _left(redis, worker.queues, horizon_ms, retries_now)
            if idle and not left and not worker._held and not worker.finisher.backlog:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"drain: jobs still left after {timeout_s:g}s")
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await running
    return DrainResult(list(worker.ran))
