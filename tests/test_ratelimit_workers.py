"""Rate limits across real worker processes (Redis token buckets), judged on the Redis clock.

A run's time is when the limiter made its token the run's own (``ctx.turn_ms``), not when the
handler got round to reading the clock: on two loaded cores a worker can be tens of milliseconds
late, and a late stamp on an early run can put 41 runs into a second the limiter gave 40.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
from typing import Any

import pytest
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner.admission import bucket_name
from qrunner.ratelimit import turns_key
from tests.helpers import limited_tasks
from tests.helpers.clock import redis_ms
from tests.helpers.waiting import wait_for
from tests.test_crash import start_worker, stderr_of

pytestmark = [pytest.mark.both_topologies, pytest.mark.cluster_once]


async def test_three_workers_share_a_20_per_second_limit(redis: Redis, redis_url: str) -> None:
    """Given 3 worker processes and a backlog of 600 jobs limited to 20/s (burst 20), then over
    11 s no 1-second window exceeds rate + burst, the steady-state count is within 5% of
    rate x duration, killing one worker mid-run (kill -9) does not stall the bucket, and no
    deferred job spent a retry attempt."""
    client = Client(redis, limited_tasks.registry)
    ids = await client.enqueue_many([("limited", {}) for _ in range(600)])
    procs = [
        start_worker(
            redis_url,
            "--handlers",
            "tests.helpers.limited_tasks",
            "--queues",
            "limited",
            "--concurrency",
            "10",
        )
        for _ in range(3)
    ]
    try:
        await wait_for(lambda: redis.llen("grants"), timeout_s=30, what="first grant")  # type: ignore[arg-type]
        t0 = int((await redis.lrange("grants", 0, 0))[0])
        await wait_for(lambda: _past(redis, t0 + 5_000), timeout_s=20, what="5 s of Redis time")
        procs[2].send_signal(signal.SIGKILL)
        await wait_for(lambda: _past(redis, t0 + 11_000), timeout_s=20, what="11 s of Redis time")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            await asyncio.to_thread(p.wait, 30)
    assert procs[0].returncode == 0, stderr_of(procs[0])
    grants = sorted(int(g) for g in await redis.lrange("grants", 0, -1))
    inside = [g for g in grants if t0 <= g < t0 + 11_000]
    seconds = [sum(1 for g in inside if (g - t0) // 1000 == k) for k in range(11)]  # for messages
    worst = max(sum(1 for g in inside if s <= g < s + 1000) for s in inside)
    assert worst <= 40, (worst, seconds)
    steady = [g for g in inside if t0 + 1_000 <= g < t0 + 11_000]
    assert abs(len(steady) - 200) <= 10, (len(steady), seconds)
    after_kill = [g for g in inside if t0 + 6_000 <= g < t0 + 11_000]
    assert abs(len(after_kill) - 100) <= 8, (len(after_kill), seconds)
    attempts = {(await client.status(i)).attempt for i in ids}
    assert attempts == {1}


async def _past(redis: Redis, ms: int) -> bool:
    return await redis_ms(redis) >= ms


def most_in_one_second(times: list[int]) -> int:
    return max(sum(1 for t in times if s <= t < s + 1000) for s in times)


async def stop_workers(procs: list[Any]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        await asyncio.to_thread(p.wait, 30)


async def _count_at_least(redis: Redis, key: str, n: int) -> bool:
    return int(await redis.llen(key)) >= n  # type: ignore[misc]


async def test_a_limited_backlog_does_not_hold_up_the_other_tasks_of_its_queue(
    redis: Redis, redis_url: str
) -> None:
    """Given a backlog of 5,000 jobs of a task limited to 20/s (burst 20) in a queue that also
    carries an unlimited task, worked by 2 worker processes: once each limited job has been taken
    out of the stream to its turn (once: the backlog's first pass, about 1-4 s here), the
    unlimited task, enqueued every 100 ms for 20 s, waits (enqueue to start, on the Redis clock)
    less than 200 ms at p99, while the limited task keeps to its limit.

    Jobs enqueued during the first pass queue behind the 5,000 entries still unread, as they
    would behind any 5,000 jobs; afterwards the stream holds only jobs whose turn has come."""
    client = Client(redis, limited_tasks.registry)
    await client.enqueue_many([("mixed_limited", {}) for _ in range(5000)])
    args = ("--handlers", "tests.helpers.limited_tasks", "--queues", "mixed")
    procs = [start_worker(redis_url, *args) for _ in range(2)]
    try:
        await wait_for(
            lambda: _backlog_placed(redis, 4_900), timeout_s=60, what="the backlog's first pass"
        )
        bucket = bucket_name(limited_tasks.registry.get("mixed_limited"), {})
        assert await redis.zcard(turns_key(bucket)) >= 4_800  # deferred once, to its turn
        for _ in range(200):
            await client.enqueue("mixed_free", {"at_ms": await redis_ms(redis)})
            await asyncio.sleep(0.1)
        await wait_for(
            lambda: _count_at_least(redis, "mixed:free_waits", 200), timeout_s=30, what="all runs"
        )
    finally:
        await stop_workers(procs)
    assert procs[0].returncode == 0, stderr_of(procs[0])
    waits = sorted(int(w) for w in await redis.lrange("mixed:free_waits", 0, -1))
    p99 = waits[math.ceil(0.99 * len(waits)) - 1]
    assert p99 < 200, waits[-10:]
    grants = sorted(int(g) for g in await redis.lrange("mixed:grants", 0, -1))
    assert most_in_one_second(grants) <= 40
    steady = [g for g in grants if g >= grants[0] + 1_000]
    rate = (len(steady) - 1) / ((steady[-1] - steady[0]) / 1000)
    # Never above the limit; below it only as far as two loaded cores make the workers late
    # for their turns: 18.97/s was seen once while another test run shared the machine, 17.8/s
    # with three more (bin/test runs two suites side by side). A pacing bug shows far lower.
    assert 16 <= rate <= 21, rate


async def _backlog_placed(redis: Redis, n: int) -> bool:
    """At least ``n`` limited jobs either ran or wait in the delayed set for their turn."""
    ran = int(await redis.llen("mixed:grants"))  # type: ignore[misc]
    return ran + int(await redis.zcard(keys.delayed("mixed"))) >= n


async def test_a_worker_killed_while_holding_turns_leaves_no_gap_longer_than_a_lease(
    redis: Redis, redis_url: str
) -> None:
    """Given 400 jobs limited to 20/s in a queue shared with another task (so jobs that find no
    token are given turns up to 20 s ahead, recorded in Redis) and two worker processes, one of
    which is SIGKILLed 4 s in: the jobs go on running at the limit, with no pause between two
    runs longer than one lease (1 s here), and every job runs."""
    client = Client(redis, limited_tasks.registry)
    await client.enqueue_many([("mixed_limited", {}) for _ in range(400)])
    args = ("--handlers", "tests.helpers.limited_tasks", "--queues", "mixed")
    procs = [start_worker(redis_url, *args) for _ in range(2)]
    try:
        await wait_for(lambda: redis.llen("mixed:grants"), timeout_s=30, what="first grant")  # type: ignore[arg-type]
        t0 = int((await redis.lrange("mixed:grants", 0, 0))[0])
        await wait_for(lambda: _past(redis, t0 + 4_000), timeout_s=20, what="4 s of Redis time")
        procs[1].send_signal(signal.SIGKILL)
        killed_ms = await redis_ms(redis)
        await wait_for(
            lambda: _count_at_least(redis, "mixed:grants", 400), timeout_s=60, what="every job"
        )
    finally:
        await stop_workers(procs)
    assert procs[0].returncode == 0, stderr_of(procs[0])
    assert procs[1].returncode == -signal.SIGKILL
    grants = sorted(int(g) for g in await redis.lrange("mixed:grants", 0, -1))
    after = [g for g in grants if g >= killed_ms - 1_000]
    longest_pause = max(b - a for a, b in itertools.pairwise(after))
    assert longest_pause <= 1_000, longest_pause
    assert most_in_one_second(grants) <= 40
    bucket = bucket_name(limited_tasks.registry.get("mixed_limited"), {})
    assert await redis.zcard(turns_key(bucket)) == 0
