"""``qrunner worker --processes N``: a supervisor runs N worker processes that share the
queues, stops them cleanly on SIGTERM, restarts one that crashes, and gives up on a bad
configuration."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from qrunner import Client, connect_redis
from qrunner.control import Control
from qrunner.processes import child_argv
from tests.helpers import pid_tasks

pytestmark = [pytest.mark.slow, pytest.mark.once]

ROOT = Path(__file__).resolve().parent.parent


def start(redis_url: str, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LOG_LEVEL": "WARNING",
        "QRUNNER_BLOCK_MS": "100",
        "QRUNNER_GRACE_S": "5",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--app",
            "tests.helpers.pid_tasks",
            "--no-cron",
            *args,
        ],
        cwd=ROOT,
        env=env,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 60) -> None:
    """Wait for what other processes do (no event crosses a process boundary: poll)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


def test_child_argv_drops_processes_and_spreads_metrics_ports() -> None:
    argv = ["--app", "m", "worker", "--processes", "3", "--metrics-port", "9100", "--burst"]
    assert child_argv(argv, 2, 9100)[3:] == [
        "--app",
        "m",
        "worker",
        "--metrics-port",
        "9102",
        "--burst",
    ]
    assert child_argv(["worker", "--processes=2", "--metrics-port=9000"], 1, 9000)[3:] == [
        "worker",
        "--metrics-port=9001",
    ]


async def test_two_processes_share_the_queue_and_burst_exits_0(redis_url: str) -> None:
    redis: Redis = await connect_redis(redis_url)
    try:
        await Client(redis, pid_tasks.registry).enqueue_many(
            [("whoami", {"n": n}) for n in range(400)]
        )
        proc = start(redis_url, "--processes", "2", "--burst", "--concurrency", "5")
        code = await asyncio.to_thread(proc.wait, 120)
        assert code == 0
        pids = {int(p) for p in await redis.smembers("test:pids")}
        assert len(pids) == 2 and os.getpid() not in pids and proc.pid not in pids
        stats = {s.queue: s for s in await Client(redis).stats()}
        assert (stats["pids"].depth, stats["pids"].pending) == (0, 0)
    finally:
        await redis.aclose()


async def test_sigterm_stops_all_and_a_killed_child_is_restarted(redis_url: str) -> None:
    redis: Redis = await connect_redis(redis_url)
    control = Control(redis)
    proc = start(redis_url, "--processes", "2")
    try:

        async def two_workers() -> bool:
            return len(await control.workers()) == 2

        await eventually(two_workers)
        first = {w.pid for w in await control.workers()}
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            pids = {w.pid for w in await control.workers()}
            return len(pids) == 2 and victim not in pids

        await eventually(replaced)  # the dead one's record expires; a new child announces
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        assert await control.workers() == []  # each child removed its record on the way out
        for pid in {w.pid for w in []} | (first - {victim}):
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        await redis.aclose()


async def test_a_bad_configuration_stops_the_supervisor_with_exit_2(redis_url: str) -> None:
    proc = start(redis_url, "--processes", "2", "--queues", "pids,nowhere", "--strict")
    assert await asyncio.to_thread(proc.wait, 60) == 2
