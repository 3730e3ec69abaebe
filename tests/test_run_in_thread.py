"""Tasks declared with ``run_in_thread=True``: a plain ``def`` body run on a thread of its own,
against a real redis-server and a burst worker. The loop goes on with other jobs meanwhile;
validation, Retry / Permanent / RateLimited and timeouts behave as for async handlers.
Given / When / Then in each test's docstring."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from redis.asyncio import Redis

from qrunner import Client, ConfigError, Context, Permanent, RateLimited, Registry, Retry
from qrunner.deadletter import DeadLetters
from qrunner.job import Job
from qrunner.runner import HandlerThreads
from qrunner.task import Task
from qrunner.worker import Worker
from tests.helpers.waiting import wait_for
from tests.worker_fixtures import FAST

WAIT_S = 10.0


async def wait_in_thread(event: threading.Event) -> bool:
    """Await a threading.Event without blocking the loop."""
    return await asyncio.to_thread(event.wait, WAIT_S)


async def test_cpu_bound_thread_body_lets_an_async_job_finish_meanwhile(redis: Redis) -> None:
    """Given a CPU-bound body that spins (never sleeping, never yielding) until an async job
    has run, when one burst worker runs both, then the async job starts after the body did,
    does Redis I/O and finishes while the body still spins, and both succeed."""
    reg = Registry()
    events: list[str] = []
    crunch_started = threading.Event()
    quick_done = threading.Event()

    @reg.task(queue="default", run_in_thread=True, max_retries=0, timeout_s=60)
    def crunch(ctx: Context[Any], payload: dict[str, Any]) -> int:
        events.append("crunch started")
        crunch_started.set()
        deadline = time.monotonic() + WAIT_S
        rounds = 0
        while not quick_done.is_set():
            sum(range(10_000))
            rounds += 1
            if time.monotonic() > deadline:
                raise RuntimeError("the async job never ran while this body was running")
        events.append("crunch saw quick finish")
        return rounds

    @reg.task(queue="default", max_retries=0)
    async def quick(ctx: Context[Any], payload: dict[str, Any]) -> str:
        assert await wait_in_thread(crunch_started)
        events.append("quick running")
        pong = await ctx.redis.ping()  # real I/O on the loop while the thread crunches
        events.append("quick done")
        quick_done.set()
        return f"pong={pong}"

    client = Client(redis, reg)
    crunch_id = await client.enqueue("crunch", {})
    quick_id = await client.enqueue("quick", {})
    await Worker(redis, reg, burst=True, settings=FAST, concurrency=4).run()

    assert events == ["crunch started", "quick running", "quick done", "crunch saw quick finish"]
    crunched = await client.status(crunch_id)
    assert crunched.state == "succeeded" and crunched.result > 0
    assert (await client.status(quick_id)).state == "succeeded"


async def test_retry_raised_in_the_thread_retries(redis: Redis) -> None:
    """Given a thread body that raises Retry on its first attempt, then the job runs again
    (attempt 2, again off the loop thread), succeeds and keeps the body's return value; the
    payload reaches the body validated by the task's model."""
    reg = Registry()
    runs: list[tuple[int, bool, str]] = []

    class Numbers(BaseModel):
        values: list[int]

    @reg.task(queue="default", payload=Numbers, run_in_thread=True, max_retries=2)
    def total(ctx: Context[Any], payload: Numbers) -> int:
        on_loop_thread = threading.current_thread() is threading.main_thread()
        runs.append((ctx.attempt, on_loop_thread, ctx.job_id))
        if ctx.attempt == 1:
            raise Retry(0.05, "warming up")
        return sum(payload.values)

    client = Client(redis, reg)
    job_id = await client.enqueue("total", {"values": [1, 2, 3]})
    await Worker(redis, reg, burst=True, settings=FAST).run()

    assert runs == [(1, False, job_id), (2, False, job_id)]
    status = await client.status(job_id)
    assert status.state == "succeeded" and status.result == 6 and status.attempt == 2


async def test_permanent_and_rate_limited_raised_in_the_thread(redis: Redis) -> None:
    """Given one thread body raising Permanent and one raising RateLimited once, then the
    first is dead-lettered at once and the second runs again without spending an attempt;
    an invalid payload never reaches a thread."""
    reg = Registry()
    attempts: list[int] = []

    class Item(BaseModel):
        sku: str

    @reg.task(queue="default", run_in_thread=True, max_retries=3)
    def refuse(ctx: Context[Any], payload: dict[str, Any]) -> None:
        raise Permanent("no such recipient")

    @reg.task(queue="default", payload=Item, run_in_thread=True, max_retries=0)
    def polite(ctx: Context[Any], payload: Item) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) == 1:
            raise RateLimited(0.05, reason="provider says slow down")
        return payload.sku

    client = Client(redis, reg)
    refused = await client.enqueue("refuse", {})
    polite_id = await client.enqueue("polite", {"sku": "A-1"})
    invalid = await Client(redis).enqueue("polite", {"sku": None})
    await Worker(redis, reg, burst=True, settings=FAST).run()

    dead = await DeadLetters(redis).find(["default"], refused)
    assert dead is not None and dead.reason == "permanent: no such recipient"
    assert attempts == [1, 1]
    polite_status = await client.status(polite_id)
    assert polite_status.state == "succeeded" and polite_status.result == "A-1"
    dead_invalid = await DeadLetters(redis).find(["default"], invalid)
    assert dead_invalid is not None and "sku" in dead_invalid.reason


async def test_timeout_fails_the_job_and_ignores_the_threads_late_result(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Given a thread body that blocks past its 0.2 s timeout, then the job is failed as timed
    out (dead after max_retries=0) while its thread still runs, the burst worker finishes
    anyway, and what the thread returns later is logged as ignored, not recorded."""
    reg = Registry()
    release = threading.Event()
    returned = threading.Event()

    @reg.task(queue="default", run_in_thread=True, timeout_s=0.2, max_retries=0)
    def stuck(ctx: Context[Any], payload: dict[str, Any]) -> str:
        release.wait(WAIT_S)
        returned.set()
        return "too late"

    client = Client(redis, reg)
    job_id = await client.enqueue("stuck", {})
    worker = Worker(redis, reg, burst=True, settings=FAST)
    caplog.set_level(logging.WARNING, logger="qrunner.runner")
    try:
        await worker.run()
        status = await client.status(job_id)
        assert status.state == "dead"
        assert status.last_error is not None and "timed out after 0.2s" in status.last_error
        assert not returned.is_set() and worker.runner.threads.alive == 1
    finally:
        release.set()
    assert await wait_in_thread(returned)

    async def ignored() -> bool:
        return any("ignored" in r.getMessage() for r in caplog.records)

    await wait_for(ignored, what="the late result to be logged as ignored")
    [late] = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert f"task stuck job {job_id}" in late and "its result is ignored" in late
    assert worker.runner.threads.alive == 0
    final = await client.status(job_id)
    assert final.state == "dead" and final.result is None
    dead = await DeadLetters(redis).find(["default"], job_id)
    assert dead is not None and dead.job is not None
    assert [e.type for e in dead.job.errors] == ["TimeoutError"]


async def test_a_timed_out_thread_keeps_its_slot_until_it_really_ends() -> None:
    """Given a limit of one handler thread, when a job's await is cancelled (as a timeout
    does) while its body still runs, then the next body starts only after the first one has
    returned."""
    events: list[str] = []
    release = threading.Event()
    first_started = threading.Event()

    def first(ctx: Context[Any], payload: Any) -> None:
        events.append("first started")
        first_started.set()
        release.wait(WAIT_S)
        events.append("first returned")

    def second(ctx: Context[Any], payload: Any) -> str:
        events.append("second started")
        return "second"

    threads = HandlerThreads(limit=1)
    running = asyncio.create_task(threads.run(_task("first", first), _ctx("j1"), None))
    assert await wait_in_thread(first_started)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert threads.alive == 1
    waiting = asyncio.create_task(threads.run(_task("second", second), _ctx("j2"), None))
    await asyncio.sleep(0)  # let it reach the slot and queue for it
    assert not waiting.done()
    release.set()
    assert await asyncio.wait_for(waiting, WAIT_S) == "second"
    assert events == ["first started", "first returned", "second started"]
    assert threads.alive == 0


async def test_bodies_run_side_by_side_up_to_the_limit() -> None:
    """Given a limit of two, two bodies that each wait for the other both get to run."""
    both = threading.Barrier(2, timeout=WAIT_S)

    def meet(ctx: Context[Any], payload: Any) -> int:
        return both.wait()

    threads = HandlerThreads(limit=2)
    results = await asyncio.gather(
        threads.run(_task("meet", meet), _ctx("a"), None),
        threads.run(_task("meet", meet), _ctx("b"), None),
    )
    assert sorted(results) == [0, 1]


async def test_exit_in_a_thread_body_is_a_job_failure_not_a_worker_exit() -> None:
    """Given a body calling sys.exit() or returning a coroutine, then awaiting it raises an
    ordinary exception for the retry policy instead of SystemExit."""

    def leaves(ctx: Context[Any], payload: Any) -> None:
        raise SystemExit(3)

    async def sneaky() -> None:
        return None

    def returns_a_coroutine(ctx: Context[Any], payload: Any) -> Any:
        return sneaky()

    threads = HandlerThreads(limit=2)
    with pytest.raises(RuntimeError, match="SystemExit"):
        await threads.run(_task("leaves", leaves), _ctx("x"), None)
    with pytest.raises(TypeError, match="returned an awaitable"):
        await threads.run(_task("sneaky", returns_a_coroutine), _ctx("y"), None)


def test_registration_requires_the_matching_kind_of_function() -> None:
    """run_in_thread=True takes a plain def; without it a plain def is refused with a hint."""
    reg = Registry()

    async def async_body(ctx: Context[Any], payload: Any) -> None:
        return None

    async def async_gen(ctx: Context[Any], payload: Any) -> AsyncIterator[None]:
        yield None

    def sync_body(ctx: Context[Any], payload: Any) -> int:
        return 1

    with pytest.raises(ConfigError, match="run_in_thread=True takes a plain function"):
        reg.task(name="a", run_in_thread=True)(async_body)
    with pytest.raises(ConfigError, match="run_in_thread=True takes a plain function"):
        reg.task(name="g", run_in_thread=True)(async_gen)
    with pytest.raises(ConfigError, match=r"must be an async function.*run_in_thread=True"):
        reg.task(name="s")(sync_body)
    assert reg.task(name="s", run_in_thread=True)(sync_body) is sync_body
    assert reg.task(name="x")(async_body) is async_body
    assert reg.get("s").run_in_thread and not reg.get("x").run_in_thread
    assert reg.names == ["s", "x"]


def _task(name: str, fn: Any) -> Task:
    return Task(name=name, fn=fn, run_in_thread=True)


def _ctx(job_id: str) -> Context[Any]:
    job = Job(id=job_id, task="t", payload={}, queue="default")
    return Context(job=job, redis=None, client=None, state=None, settings=FAST)  # type: ignore[arg-type]
