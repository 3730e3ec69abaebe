"""Rate limits across real worker processes (Redis token buckets), judged on the Redis clock."""

from __future__ import annotations

import asyncio
import signal

from redis.asyncio import Redis

from qrunner import Client
from tests.helpers import limited_tasks
from tests.helpers.waiting import wait_for
from tests.test_crash import start_worker, stderr_of


async def redis_ms(redis: Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


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
    worst = max(sum(1 for g in inside if s <= g < s + 1000) for s in inside)
    assert worst <= 40, worst
    steady = [g for g in inside if t0 + 1_000 <= g < t0 + 11_000]
    assert abs(len(steady) - 200) <= 10, len(steady)
    after_kill = [g for g in inside if t0 + 6_000 <= g < t0 + 11_000]
    assert abs(len(after_kill) - 100) <= 8, len(after_kill)
    attempts = {(await client.status(i)).attempt for i in ids}
    assert attempts == {1}


async def _past(redis: Redis, ms: int) -> bool:
    return await redis_ms(redis) >= ms
