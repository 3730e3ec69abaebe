"""Per-tenant fairness within a queue, against a real Redis: round-robin order, a bound on how
long one key's burst delays another key's job, and the usual guarantees (retries, burst
drain, idempotent enqueue) for parked jobs. Given / When / Then in each test."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner.fairness import parked
from qrunner.queue import JobSpec
from qrunner.worker import Worker
from tests.helpers.fair_tasks import QUEUE, registry
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST, running_worker

pytestmark = pytest.mark.both_topologies


async def served(redis: Redis) -> list[str]:
    return [x.decode() for x in await redis.lrange("served", 0, -1)]  # type: ignore[misc]


async def test_keys_are_served_round_robin(redis: Redis) -> None:
    client = Client(redis, registry)
    # Given A,A,A,B,B,C enqueued together
    order = ["A", "A", "A", "B", "B", "C"]
    await client.enqueue_many(
        [JobSpec("visit", {"tenant": t, "n": i}) for i, t in enumerate(order)]
    )
    # When a one-at-a-time worker runs them
    await Worker(redis, registry, burst=True, settings=FAST, concurrency=1).run()
    # Then they were served A,B,C,A,B,A, each key's jobs in their own order
    assert await served(redis) == ["A:0", "B:3", "C:5", "A:1", "B:4", "A:2"]
    assert await parked(redis, QUEUE) == 0


async def test_one_keys_burst_delays_another_keys_job_by_a_bounded_number_of_jobs(
    redis: Redis,
) -> None:
    client = Client(redis, registry)
    concurrency = 4
    # Given key A with 2000 queued jobs and a worker busy with them
    await client.enqueue_many(
        [JobSpec("visit", {"tenant": "A", "n": i, "seconds": 0.002}) for i in range(2000)]
    )
    async with running_worker(redis, registry, concurrency=concurrency, queues=[QUEUE]):

        async def started(n: int) -> bool:
            return len(await served(redis)) >= n

        await wait_for(lambda: started(50), timeout_s=60, what="50 of A's jobs to start")
        # When key B enqueues a single job
        before = len(await served(redis))
        await client.enqueue("visit", {"tenant": "B", "n": 0})

        async def b_started() -> bool:
            return "B:0" in await served(redis)

        await wait_for(b_started, timeout_s=60, what="B's job to start")
        log = await served(redis)
    # Then only a bounded number of A's jobs started in between: what the stream held and
    # what was in flight, never the rest of A's backlog
    a_in_between = log.index("B:0") - before
    assert a_in_between <= 2 * concurrency + 2, a_in_between
    assert await parked(redis, QUEUE) > 0  # A's backlog was still parked when B ran


async def test_parked_jobs_keep_retries_idempotent_enqueue_and_burst_drain(redis: Redis) -> None:
    client = Client(redis, registry)
    # Given a fair job that fails its first attempt, enqueued twice under one job id
    first = await client.enqueue("visit", {"tenant": "A", "fail_once": True}, job_id="fixed-1")
    again = await client.enqueue("visit", {"tenant": "A", "fail_once": True}, job_id="fixed-1")
    await client.enqueue_many([JobSpec("visit", {"tenant": "B", "n": i}) for i in range(3)])
    assert first == again == "fixed-1"
    assert (await client.status("fixed-1")).state == "queued"
    # When a burst worker runs until nothing is left
    await Worker(redis, registry, burst=True, settings=FAST, concurrency=2).run()
    # Then the job ran twice (one retry) and succeeded, every job ran, nothing is left parked
    assert (await client.status("fixed-1")).state == "succeeded"
    log = await served(redis)
    assert log.count("A:0") == 2
    assert sorted(x for x in log if x.startswith("B")) == ["B:0", "B:1", "B:2"]
    assert await parked(redis, QUEUE) == 0
    assert await redis.xlen(keys.stream(QUEUE)) == 0


async def test_delayed_fair_jobs_enter_the_stream_when_due(redis: Redis) -> None:
    client = Client(redis, registry)
    job = await client.enqueue("visit", {"tenant": "A"}, delay_s=0.05)
    assert await parked(redis, QUEUE) == 0
    assert (await client.status(job)).state == "scheduled"
    await Worker(redis, registry, burst=True, settings=FAST, concurrency=1).run()
    assert (await client.status(job)).state == "succeeded"
