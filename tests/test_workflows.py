"""Workflows against a real Redis: follow-up chains, groups with a callback that runs once
(retries, dead letters, a worker killed with SIGKILL during the last member).
Given / When / Then in each test."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from qrunner import Client, keys
from qrunner.job import Job
from qrunner.outcome import Succeeded
from qrunner.queue import JobSpec
from qrunner.testing import drain
from qrunner.workflow import FollowUps, callback_job_id
from tests.helpers.waiting import wait_for
from tests.helpers.workflow_tasks import QUEUE, registry

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent


async def callbacks(redis: Redis) -> list[Any]:
    return [orjson.loads(x) for x in await redis.lrange("callbacks", 0, -1)]  # type: ignore[misc]


async def test_chain_report_then_email_gets_the_report_result(redis: Redis) -> None:
    client = Client(redis, registry)
    # Given a report whose success is followed by an email, and whose failure by another
    report = await client.enqueue(
        "report",
        {"rows": 12},
        on_success=JobSpec("email", {"to": "ops"}),
        on_failure=JobSpec("email", {"to": "oncall"}),
    )
    # When everything runs
    ran = await drain(redis, registry)
    # Then the success email ran once, after the report, with the report's result
    assert [r.task for r in ran.runs] == ["report", "email"]
    emails = [orjson.loads(x) for x in await redis.lrange("emails", 0, -1)]  # type: ignore[misc]
    assert emails == [
        {
            "to": "ops",
            "up": {
                "id": report,
                "task": "report",
                "state": "succeeded",
                "result": {"rows": 12},
                "error": None,
            },
        }
    ]
    assert (await client.status(f"{report}-ok")).state == "succeeded"


async def test_on_failure_runs_when_the_job_is_dead_lettered(redis: Redis) -> None:
    client = Client(redis, registry)
    # Given a member that can never succeed, with an on_failure follow-up
    job = await client.enqueue(
        "member", {"n": 1, "permanent": True}, on_failure=JobSpec("email", {"to": "oncall"})
    )
    ran = await drain(redis, registry)
    # Then the follow-up ran once with the dead letter's reason
    assert [(r.task, r.state) for r in ran.runs] == [("member", "dead"), ("email", "succeeded")]
    (sent,) = [orjson.loads(x) for x in await redis.lrange("emails", 0, -1)]  # type: ignore[misc]
    assert sent["to"] == "oncall"
    assert sent["up"]["id"] == job and sent["up"]["state"] == "dead"
    assert "cannot succeed" in sent["up"]["error"]


async def test_group_callback_runs_once_with_results_after_retries_and_dead_letters(
    redis: Redis,
) -> None:
    client = Client(redis, registry)
    # Given a group of three members: one plain, one that fails twice then succeeds, one that is
    # dead-lettered
    group = await client.enqueue_group(
        [
            JobSpec("member", {"n": 2}),
            JobSpec("member", {"n": 3, "fail_times": 2}),
            JobSpec("member", {"n": 4, "permanent": True}),
        ],
        callback=JobSpec("collect", {"tag": "g1"}),
    )
    # When everything runs
    ran = await drain(redis, registry)
    # Then the retried member ran three times, and the callback ran exactly once, last, with
    # every member's outcome in the order given
    assert len([r for r in ran.runs if r.id == group.job_ids[1]]) == 3
    assert [r.task for r in ran.runs].count("collect") == 1
    assert await redis.hget("callback_runs", "g1") == b"1"  # type: ignore[misc]
    (results,) = await callbacks(redis)
    assert [(r["id"], r["state"], r["result"]) for r in results] == [
        (group.job_ids[0], "succeeded", 4),
        (group.job_ids[1], "succeeded", 9),
        (group.job_ids[2], "dead", None),
    ]
    counts = await client.group_status(group.id)
    assert (counts.total, counts.succeeded, counts.failed, counts.remaining) == (3, 2, 1, 0)
    assert group.callback_job_id == callback_job_id(group.id)
    assert (await client.status(callback_job_id(group.id))).result == 3


async def test_counting_a_member_again_never_enqueues_a_second_callback(redis: Redis) -> None:
    """A worker that recorded the last member (and enqueued the callback) but died before its
    ack re-runs the member; its second completion must change nothing."""
    client = Client(redis, registry)
    group = await client.enqueue_group(
        [JobSpec("member", {"n": 5})], callback=JobSpec("collect", {"tag": "again"})
    )
    member = Job(group.job_ids[0], "member", {"n": 5}, QUEUE, flow={"group": group.id})
    follow = FollowUps(Client(redis), 60_000)
    # When the member's completion is recorded twice
    await follow.finished(member, Succeeded(b"25"))
    await follow.finished(member, Succeeded(b"25"))
    # Then the callback is queued once and the group counts one member
    assert await redis.xlen(keys.stream(QUEUE)) == 2  # the member itself and one callback
    assert (await client.group_status(group.id)).succeeded == 1


async def test_empty_group_runs_its_callback_at_once(redis: Redis) -> None:
    client = Client(redis, registry)
    group = await client.enqueue_group([], callback=JobSpec("collect", {"tag": "empty"}))
    await drain(redis, registry)
    assert group.job_ids == []
    assert await callbacks(redis) == [[]]


def start_worker(redis_url: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")},
        "QRUNNER_REDIS_URL": redis_url,
        "QRUNNER_LEASE_MS": "1000",
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
                "tests.helpers.workflow_tasks",
                "--no-cron",
                "--queues",
                QUEUE,
                *args,
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=fd,
        )
    finally:
        os.close(fd)
    return proc, Path(path)


@pytest.mark.slow
async def test_worker_killed_during_the_last_member_callback_runs_once(
    redis: Redis, redis_url: str
) -> None:
    client = Client(redis, registry)
    # Given a group whose last member is slow, on a worker that runs one job at a time
    group = await client.enqueue_group(
        [
            JobSpec("member", {"n": 1}),
            JobSpec("member", {"n": 2}),
            JobSpec("member", {"n": 3, "seconds": 3.0}),
        ],
        callback=JobSpec("collect", {"tag": "killed"}),
    )
    last = group.job_ids[2]
    first, first_log = start_worker(redis_url, "--concurrency", "1")
    try:

        async def last_started() -> bool:
            started = await redis.lrange("member_started", 0, -1)  # type: ignore[misc]
            return last.encode() in started

        await wait_for(last_started, timeout_s=60, what="the last member to start")
        # When the worker is killed with SIGKILL while the last member runs
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 10)
    finally:
        if first.poll() is None:
            first.kill()
    assert await redis.hget("callback_runs", "killed") is None  # type: ignore[misc]
    # And another worker takes over until everything is done
    second, second_log = start_worker(redis_url, "--concurrency", "2", "--burst")
    await asyncio.to_thread(second.wait, 90)
    assert second.returncode == 0, second_log.read_text(errors="replace")[-3000:]
    # Then the last member ran twice, and the callback exactly once with all three results
    assert await redis.hget("member_runs", last) == b"2"  # type: ignore[misc]
    assert await redis.hget("callback_runs", "killed") == b"1"  # type: ignore[misc]
    (results,) = await callbacks(redis)
    assert [r["result"] for r in results] == [1, 4, 9]
    assert (await client.status(callback_job_id(group.id))).state == "succeeded"
    for log_path in (first_log, second_log):
        log_path.unlink(missing_ok=True)
