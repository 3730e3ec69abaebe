"""Operator control through the CLI and the runtime: workers and what they run, jobs by state,
a job's history, cancel (queued, delayed, running), pause / resume, purge, deleting one dead
entry, firing / pausing a schedule, rate limits changed at run time, and the audit of it all."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from qrunner import Client, Worker, connect_redis, keys
from qrunner.admission import TokenBucketGate
from qrunner.control import Control
from qrunner.metrics import Metrics
from tests.helpers import ops_tasks
from tests.worker_fixtures import FAST

pytestmark = pytest.mark.both_topologies

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.helpers.ops_tasks"


def cli(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"QRUNNER_REDIS_URL": redis_url, "QRUNNER_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "qrunner.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def json_of(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out.stderr
    return orjson.loads(out.stdout)


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 20) -> None:
    """Wait for a state the system reaches by its own loops (the control loop ticks once a
    second); polls, since there is no event to await across processes."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = await connect_redis(redis_url)
    ops_tasks.events.clear()
    ops_tasks.seen.clear()
    yield client
    await client.aclose()


@pytest.fixture
async def worker(redis: Redis) -> AsyncIterator[Worker]:
    w = Worker(redis, ops_tasks.registry, settings=FAST, concurrency=4)
    stop = asyncio.Event()
    running = asyncio.create_task(w.run(stop))
    yield w
    ops_tasks.events.setdefault("release", asyncio.Event()).set()
    stop.set()
    await asyncio.wait_for(running, 30)


async def test_workers_lists_each_worker_with_its_running_jobs(
    redis: Redis, redis_url: str, worker: Worker
) -> None:
    ops_tasks.events["started"] = asyncio.Event()
    job_id = await Client(redis, ops_tasks.registry).enqueue("hold", {})
    await asyncio.wait_for(ops_tasks.events["started"].wait(), 20)

    async def listed() -> bool:
        rows = await Control(redis).workers()
        return bool(rows) and bool(rows[0].running)

    await eventually(listed)
    [row] = json_of(cli("workers", "--json", redis_url=redis_url))
    assert row["name"] == worker.name and row["pid"] == os.getpid()
    assert row["queues"] == ["ops", "probe", "limited"] or set(row["queues"]) == set(worker.queues)
    assert row["concurrency"] == 4
    assert [(r["job_id"], r["task"], r["queue"]) for r in row["running"]] == [
        (job_id, "hold", "ops")
    ]
    human = cli("workers", redis_url=redis_url)
    assert worker.name in human.stdout and f"hold {job_id}" in human.stdout


async def test_jobs_by_state_with_paging(redis: Redis, redis_url: str) -> None:
    client = Client(redis, ops_tasks.registry)
    queued = [await client.enqueue("flaky", {"n": n}) for n in range(5)]
    delayed = [await client.enqueue("flaky", {"n": n}, delay_s=3600 + n) for n in range(3)]
    page = json_of(
        cli(
            "jobs", "--queue", "ops", "--limit", "2", "--offset", "1", "--json", redis_url=redis_url
        )
    )
    assert page["total"] == 5 and [r["id"] for r in page["rows"]] == queued[1:3]
    later = json_of(
        cli("jobs", "--queue", "ops", "--state", "delayed", "--json", redis_url=redis_url)
    )
    assert [r["id"] for r in later["rows"]] == delayed and later["total"] == 3
    assert all(r["at_ms"] > r["enqueued_ms"] for r in later["rows"])
    bad = cli("jobs", "--queue", "ops", "--state", "sleeping", redis_url=redis_url)
    assert bad.returncode == 2 and bad.stderr.startswith("qrunner: --state: invalid choice")


async def test_running_jobs_are_listed_with_their_worker(
    redis: Redis, redis_url: str, worker: Worker
) -> None:
    ops_tasks.events["started"] = asyncio.Event()
    job_id = await Client(redis, ops_tasks.registry).enqueue("hold", {})
    await asyncio.wait_for(ops_tasks.events["started"].wait(), 20)
    page = json_of(
        cli("jobs", "--queue", "ops", "--state", "running", "--json", redis_url=redis_url)
    )
    assert [(r["id"], r["worker"]) for r in page["rows"]] == [(job_id, worker.name)]


async def test_job_history_shows_every_attempt(redis: Redis, redis_url: str) -> None:
    ops_tasks.flaky_began_ms.clear()
    client = Client(redis, ops_tasks.registry)
    job_id = await client.enqueue("flaky", {})
    w = Worker(redis, ops_tasks.registry, settings=FAST, burst=True)
    await asyncio.wait_for(w.run(), 30)
    detail = json_of(cli("job", job_id, "--json", redis_url=redis_url))
    assert detail["state"] == "succeeded"
    attempts = [(a["attempt"], a["outcome"], a["worker"]) for a in detail["attempts"]]
    assert attempts == [(1, "retried", w.name), (2, "succeeded", w.name)]
    assert "first attempt fails" in detail["attempts"][0]["error"]
    assert all(a["started_ms"] <= a["ended_ms"] for a in detail["attempts"])
    # Each attempt's record starts when the worker took the job up, before its handler began
    # (not when the record was written): the first run took 20 ms before it failed.
    began = ops_tasks.flaky_began_ms
    assert len(began) == 2
    for a, handler_ms in zip(detail["attempts"], began, strict=True):
        assert handler_ms - 1000 <= a["started_ms"] <= handler_ms <= a["ended_ms"]
    human = cli("job", job_id, redis_url=redis_url)
    assert "retried" in human.stdout and "succeeded" in human.stdout


async def test_cancel_a_queued_and_a_delayed_job(redis: Redis, redis_url: str) -> None:
    client = Client(redis, ops_tasks.registry)
    queued = await client.enqueue("hold", {})
    delayed = await client.enqueue("hold", {}, delay_s=0.5)
    for job_id in (queued, delayed):
        out = cli("cancel", job_id, redis_url=redis_url)
        assert (out.returncode, out.stdout) == (0, f"{job_id}: cancelled\n"), out.stderr
        assert (await client.status(job_id)).state == "cancelled"
    w = Worker(redis, ops_tasks.registry, settings=FAST, burst=True)
    await w.presence.step()  # what a worker's control loop reads first
    await asyncio.wait_for(w.run(), 30)
    assert ops_tasks.seen == []  # neither ran
    for job_id in (queued, delayed):
        assert (await client.status(job_id)).state == "cancelled"
    assert await redis.hlen(keys.cancel_requests()) == 0
    again = cli("cancel", queued, redis_url=redis_url)
    assert (again.returncode, again.stdout) == (
        1,
        f"{queued}: already cancelled; nothing to cancel\n",
    )


async def test_cancel_a_running_job(redis: Redis, redis_url: str, worker: Worker) -> None:
    ops_tasks.events["started"] = asyncio.Event()
    client = Client(redis, ops_tasks.registry)
    job_id = await client.enqueue("hold", {})
    await asyncio.wait_for(ops_tasks.events["started"].wait(), 20)
    out = cli("cancel", job_id, redis_url=redis_url)
    assert out.stdout == f"{job_id}: cancelling\n"

    async def cancelled() -> bool:
        return (await client.status(job_id)).state == "cancelled"

    await eventually(cancelled)
    assert f"cancelled {job_id}" in ops_tasks.seen  # the handler saw CancelledError
    assert await redis.xlen(keys.stream("ops")) == 0  # acked and deleted, never redelivered
    history = json_of(cli("job", job_id, "--json", redis_url=redis_url))["attempts"]
    assert [a["outcome"] for a in history] == ["cancelled"]


async def test_pause_stops_reading_and_resume_restarts(
    redis: Redis, redis_url: str, worker: Worker
) -> None:
    client = Client(redis, ops_tasks.registry)
    assert cli("pause", "ops", redis_url=redis_url).stdout == "ops: paused\n"
    await eventually(lambda: _is(worker.paused == {"ops"}))
    # A read already waiting when the pause landed may still return one batch: a first probe
    # marks the end of that read; every read after it leaves the paused queue alone.
    for _ in range(2):
        ops_tasks.events["probe"] = asyncio.Event()
        await client.enqueue("probe", {})
        await asyncio.wait_for(ops_tasks.events["probe"].wait(), 20)
        if _ == 0:
            job_id = await client.enqueue("flaky", {})
    # The second probe ran: the worker reads, just not the paused queue.
    assert (await client.status(job_id)).state == "queued"
    assert cli("resume", "ops", redis_url=redis_url).stdout == "ops: resumed\n"

    async def done() -> bool:
        return (await client.status(job_id)).state == "succeeded"

    await eventually(done)


async def _is(value: bool) -> bool:
    return value


async def test_pause_survives_a_worker_restart(redis: Redis, redis_url: str) -> None:
    cli("pause", "ops", redis_url=redis_url)
    client = Client(redis, ops_tasks.registry)
    job_id = await client.enqueue("flaky", {})
    await client.enqueue("probe", {})
    w = Worker(redis, ops_tasks.registry, settings=FAST, burst=True)
    await w.presence.step()
    await asyncio.wait_for(w.run(), 30)  # a burst worker leaves a paused queue alone
    assert (await client.status(job_id)).state == "queued"
    assert await redis.xlen(keys.stream("probe")) == 0


async def test_purge_needs_yes_and_removes_waiting_jobs(redis: Redis, redis_url: str) -> None:
    client = Client(redis, ops_tasks.registry)
    for n in range(4):
        await client.enqueue("flaky", {"n": n})
    await client.enqueue("flaky", {}, delay_s=600)
    refused = cli("purge", "ops", redis_url=redis_url)
    assert refused.returncode == 2 and "add --yes" in refused.stderr
    assert cli("purge", "ops", "--yes", redis_url=redis_url).stdout == "purged 5 job(s) from ops\n"
    stats = {s.queue: s for s in await client.stats()}
    assert (stats["ops"].depth, stats["ops"].delayed) == (0, 0)
    assert await redis.hlen(keys.live("ops")) == 0  # the purged jobs left the live index too


async def test_dlq_delete_removes_one_entry(redis: Redis, redis_url: str) -> None:
    client = Client(redis, ops_tasks.registry)
    first = await client.enqueue("broken", {"n": 1})
    second = await client.enqueue("broken", {"n": 2})
    await asyncio.wait_for(Worker(redis, ops_tasks.registry, settings=FAST, burst=True).run(), 30)
    out = cli("dlq", "delete", first, redis_url=redis_url)
    assert out.returncode == 0 and out.stdout.startswith("deleted dead-lettered broken")
    listed = json_of(cli("dlq", "list", "--json", redis_url=redis_url))
    assert [r["job_id"] for r in listed] == [second]
    missing = cli("dlq", "delete", "no-such-job", redis_url=redis_url)
    assert missing.returncode == 1


async def test_schedule_fire_pause_resume(redis: Redis, redis_url: str) -> None:
    plugin = ("--app", "tests.helpers.plugin_app")
    job_id = cli("schedules", "fire", "tidy-hourly", *plugin, redis_url=redis_url).stdout.strip()
    status = await Client(redis).status(job_id)
    assert (status.task, status.state) == ("tidy", "queued")
    assert cli("schedules", "pause", "tidy-hourly", *plugin, redis_url=redis_url).returncode == 0
    rows = json_of(cli("schedules", "--json", *plugin, redis_url=redis_url))
    assert [(r["name"], r["paused"]) for r in rows] == [("tidy-hourly", True)]
    cli("schedules", "resume", "tidy-hourly", *plugin, redis_url=redis_url)
    rows = json_of(cli("schedules", "--json", *plugin, redis_url=redis_url))
    assert rows[0]["paused"] is False
    unknown = cli("schedules", "fire", "nope", *plugin, redis_url=redis_url)
    assert unknown.returncode == 2 and "no schedule 'nope'" in unknown.stderr


async def test_rate_limit_set_and_reset_at_run_time(redis: Redis, redis_url: str) -> None:
    app = ("--app", APP)
    rows = json_of(cli("limits", "--json", *app, redis_url=redis_url))
    assert rows == [{"task": "throttled", "code": "5/s", "override": None, "effective": "5/s"}]
    gate = TokenBucketGate(redis, ops_tasks.registry)
    w = Worker(redis, ops_tasks.registry, settings=FAST, gate=gate)
    assert cli("limits", "set", "throttled", "50/s", *app, redis_url=redis_url).returncode == 0
    await w.presence.step()
    assert gate.specs["throttled"].capacity == 50
    rows = json_of(cli("limits", "--json", *app, redis_url=redis_url))
    assert rows[0]["override"] == "50/s" and rows[0]["effective"] == "50/s"
    assert cli("limits", "reset", "throttled", *app, redis_url=redis_url).returncode == 0
    await w.presence.step()
    assert gate.specs["throttled"].capacity == 5
    bad = cli("limits", "set", "throttled", "fast", *app, redis_url=redis_url)
    assert bad.returncode == 2 and bad.stderr.startswith("qrunner: RATE: ")
    unlimited = cli("limits", "set", "flaky", "5/s", *app, redis_url=redis_url)
    assert unlimited.returncode == 2 and "has no rate limit in code" in unlimited.stderr


async def test_every_action_is_audited_and_counted(redis: Redis, redis_url: str) -> None:
    cli("pause", "ops", redis_url=redis_url)
    cli("resume", "ops", redis_url=redis_url)
    control = Control(redis)
    audit = await control.audit()
    assert [(a["action"], a["target"], a["actor"]) for a in audit] == [
        ("resume", "ops", "cli"),
        ("pause", "ops", "cli"),
    ]
    metrics = Metrics()
    await metrics.refresh(Client(redis))
    text = metrics.exposition().decode()
    assert 'qrunner_operator_actions_total{action="pause"} 1.0' in text
    assert 'qrunner_operator_actions_total{action="resume"} 1.0' in text


async def test_dead_letter_replay_and_purge_are_audited(redis: Redis, redis_url: str) -> None:
    client = Client(redis, ops_tasks.registry)
    first = await client.enqueue("broken", {"n": 1})
    await client.enqueue("broken", {"n": 2})
    await asyncio.wait_for(Worker(redis, ops_tasks.registry, settings=FAST, burst=True).run(), 30)
    assert cli("dlq", "replay", first, redis_url=redis_url).returncode == 0
    assert cli("dlq", "purge", "--yes", redis_url=redis_url).returncode == 0
    audit = await Control(redis).audit()
    assert [(a["action"], a["target"]) for a in audit[:2]] == [
        ("dlq-purge", "all"),
        ("dlq-replay", first),
    ]
