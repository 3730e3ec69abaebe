"""Crash recovery with real processes: kill -9 mid-batch, graceful SIGTERM, Redis restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis

from qrunner import Client, keys
from tests.helpers import core_tasks
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent


def start_worker(redis_url: str, *args: str, lease_ms: int = 1000) -> subprocess.Popen[bytes]:
    """A ``qrunner worker`` process; its stderr goes to a temporary file read by ``stderr_of``."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")},
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LEASE_MS": str(lease_ms),
        "QRUNNER_RECLAIM_INTERVAL_MS": "200",
        "QRUNNER_PROMOTE_INTERVAL_MS": "20",
        "QRUNNER_BLOCK_MS": "100",
        "QRUNNER_LOG_LEVEL": "INFO",
    }
    fd, path = tempfile.mkstemp(prefix="qrunner-worker-", suffix=".log")
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qrunner.cli",
                "worker",
                "--handlers",
                "tests.helpers.core_tasks",
                "--no-cron",
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fd,
        )
    finally:
        os.close(fd)
    LOGS[proc.pid] = Path(path)
    return proc


LOGS: dict[int, Path] = {}


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    return LOGS[proc.pid].read_text(errors="replace")[-3000:]


async def llen(redis: Redis, key: str) -> int:
    return int(await redis.llen(key))  # type: ignore[misc]


async def test_kill_9_mid_batch_second_worker_finishes_everything(
    redis: Redis, redis_url: str
) -> None:
    """Given 60 slow jobs and a worker killed with SIGKILL while it holds a batch, when a second
    worker runs, then every job has run and succeeded, and the re-runs are no more than the
    entries the killed worker had in flight."""
    client = Client(redis, core_tasks.registry)
    ids = await client.enqueue_many([("slow", {"seconds": 0.3}) for _ in range(60)])
    first = start_worker(redis_url, "--queues", "crash", "--concurrency", "8")
    try:
        await wait_for(lambda: _at_least(redis, "started", 12), timeout_s=30, what="12 started")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    summary = await redis.xpending(keys.stream("crash"), keys.GROUP)
    in_flight = int(summary["pending"])
    # Pending at the kill: the running jobs (at most the concurrency, 8) plus finished ones whose
    # batched ack had not gone out yet (at most one more batch).
    assert 1 <= in_flight <= 2 * 8
    second = start_worker(redis_url, "--queues", "crash", "--concurrency", "8", "--burst")
    await asyncio.to_thread(second.wait, 60)
    assert second.returncode == 0, stderr_of(second)
    runs = {k.decode(): int(v) for k, v in (await redis.hgetall("runs")).items()}  # type: ignore[misc]
    assert set(runs) == set(ids)
    reruns = sum(runs.values()) - len(ids)
    assert reruns <= in_flight
    states = {(await client.status(i)).state for i in ids}
    assert states == {"succeeded"}
    assert await redis.xlen(keys.stream("crash")) == 0


async def _at_least(redis: Redis, key: str, n: int) -> bool:
    return await llen(redis, key) >= n


async def test_sigterm_finishes_in_flight_then_exits_0(redis: Redis, redis_url: str) -> None:
    client = Client(redis, core_tasks.registry)
    await client.enqueue_many([("slow", {"seconds": 0.5}) for _ in range(30)])
    proc = start_worker(redis_url, "--queues", "crash", "--concurrency", "4")
    try:
        await wait_for(lambda: _at_least(redis, "started", 4), timeout_s=30, what="4 started")
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr_of(proc)
    started = await redis.lrange("started", 0, -1)
    finished = await redis.lrange("finished", 0, -1)
    assert sorted(started) == sorted(finished)
    assert (await redis.xpending(keys.stream("crash"), keys.GROUP))["pending"] == 0
    assert await redis.xlen(keys.stream("crash")) == 30 - len(finished)


async def test_redis_restart_under_running_worker_loses_nothing(fresh_redis: RedisProcess) -> None:
    """Given a worker running 200 slow-ish jobs, when Redis shuts down (persisting its AOF) and
    comes back on the same port, the worker reconnects and every job succeeds exactly once
    or more (none lost)."""
    redis = Redis.from_url(fresh_redis.url)
    try:
        client = Client(redis, core_tasks.registry)
        ids = await client.enqueue_many([("slow", {"seconds": 0.05}) for _ in range(200)])
        proc = start_worker(fresh_redis.url, "--queues", "crash", "--concurrency", "10")
        try:
            await wait_for(lambda: _at_least(redis, "finished", 30), timeout_s=30, what="30 done")
            await redis.aclose()
            await asyncio.to_thread(fresh_redis.stop)
            await asyncio.to_thread(fresh_redis.start)
            redis = Redis.from_url(fresh_redis.url)
            client = Client(redis, core_tasks.registry)
            await wait_for(
                lambda: _all_done(client, ids),
                timeout_s=60,
                interval_s=0.2,
                what="every job succeeded after the restart",
            )
            assert proc.poll() is None, "worker must survive a Redis restart"
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 20)
        assert proc.returncode == 0, stderr_of(proc)
        runs = {k.decode(): int(v) for k, v in (await redis.hgetall("runs")).items()}  # type: ignore[misc]
        assert set(runs) == set(ids)
    finally:
        await redis.aclose()


async def _all_done(client: Client, ids: list[str]) -> bool:
    for i in ids:
        if (await client.status(i)).state != "succeeded":
            return False
    return True


async def test_second_signal_exits_at_once(redis: Redis, redis_url: str) -> None:
    """A second SIGTERM during the grace period exits immediately (130) instead of waiting for a
    30-second job; the job's entry stays pending for another worker."""
    client = Client(redis, core_tasks.registry)
    await client.enqueue("slow", {"seconds": 30})
    proc = start_worker(redis_url, "--queues", "crash")
    try:
        await wait_for(lambda: _at_least(redis, "started", 1), timeout_s=30, what="job started")
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: _logged(proc, "finishing in-flight jobs"), what="first signal seen")
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr_of(proc)
    assert (await redis.xpending(keys.stream("crash"), keys.GROUP))["pending"] == 1


async def _logged(proc: subprocess.Popen[bytes], text: str) -> bool:
    return text in LOGS[proc.pid].read_text(errors="replace")
