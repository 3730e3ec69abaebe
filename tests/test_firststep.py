"""A handler's first step runs inline (qrunner.firststep, Runner.run): a handler that returns
without waiting ends there with no deadline set up, and one that waits runs on exactly as if
awaited from the start: the same task and context, cancellation and its timeout delivered at
its await, its timeout counted from its start, its result or exception kept."""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Generator
from typing import Any, cast

import pytest

from qrunner.consumer import Entry
from qrunner.firststep import resume
from qrunner.job import Job
from qrunner.outcome import DeadLettered, RetryLater, Succeeded
from qrunner.runner import Runner
from qrunner.task import Registry

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("mark", default="")


def _runner(registry: Registry) -> Runner:
    return Runner(registry, lambda job, deliveries: None)  # type: ignore[arg-type,return-value]


def _job(task: str) -> tuple[Entry, Job]:
    job = Job("j1", task, {}, "default", enqueued_ms=1)
    return Entry("default", "1-0", job.encode()), job


async def _run(runner: Runner, task: str) -> Any:
    entry, job = _job(task)
    return await asyncio.create_task(runner.run(entry, job))


async def test_a_handler_that_never_waits_ends_in_its_first_step_without_a_deadline() -> None:
    reg = Registry()
    seen: list[Any] = []

    @reg.task(queue="default", timeout_s=30)
    async def quick(ctx: Any, payload: dict[str, Any]) -> int:
        seen.append(asyncio.current_task())
        return 7

    runner = _runner(reg)
    entry, job = _job("quick")
    task = asyncio.create_task(runner.run(entry, job))
    outcome = await task
    assert outcome == Succeeded(b"7")
    assert seen == [task]  # the job's own task, not the caller's
    assert runner._deadlines.slots == 0  # no timer was ever set up for it


async def test_a_waiting_handler_keeps_its_task_context_and_result() -> None:
    reg = Registry()
    seen: list[Any] = []

    @reg.task(queue="default", timeout_s=30)
    async def waits(ctx: Any, payload: dict[str, Any]) -> str:
        me = asyncio.current_task()
        MARK.set("set in the first step")
        for _ in range(3):
            await asyncio.sleep(0)  # a bare yield, then futures
            await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        seen.append((me, asyncio.current_task(), MARK.get()))
        return "done"

    runner = _runner(reg)
    entry, job = _job("waits")
    task = asyncio.create_task(runner.run(entry, job))
    assert await task == Succeeded(b'"done"')
    assert seen == [(task, task, "set in the first step")]
    assert len(runner._deadlines) == 0  # watched while it waited, removed at its end


async def test_an_exception_after_the_first_wait_is_the_handlers_failure() -> None:
    reg = Registry()

    @reg.task(queue="default", max_retries=0)
    async def fails(ctx: Any, payload: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        raise LookupError("no such row")

    outcome = await _run(_runner(reg), "fails")
    assert isinstance(outcome, DeadLettered)
    assert outcome.job is not None and outcome.job.errors[-1].type == "LookupError"


async def test_a_cancel_reaches_the_handler_where_it_waits() -> None:
    reg = Registry()
    waiting = asyncio.Event()
    cleaned: list[str] = []

    @reg.task(queue="default")
    async def long(ctx: Any, payload: dict[str, Any]) -> None:
        waiting.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally ran")

    runner = _runner(reg)
    entry, job = _job("long")
    task = asyncio.create_task(runner.run(entry, job))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]


async def test_a_handler_may_answer_a_cancel_with_a_result() -> None:
    reg = Registry()
    waiting = asyncio.Event()

    @reg.task(queue="default")
    async def stubborn(ctx: Any, payload: dict[str, Any]) -> str:
        waiting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            current = asyncio.current_task()
            assert current is not None
            current.uncancel()
            return "stopped cleanly"
        return "never"

    runner = _runner(reg)
    entry, job = _job("stubborn")
    task = asyncio.create_task(runner.run(entry, job))
    await waiting.wait()
    task.cancel()
    assert await task == Succeeded(b'"stopped cleanly"')


async def test_the_timeout_counts_from_the_handlers_start_not_its_first_wait() -> None:
    """A handler that blocks past its timeout before its first wait times out at that wait:
    had the deadline started at the wait, its 50 loop turns after it would all have run."""
    reg = Registry()
    turns: list[int] = []

    @reg.task(queue="default", timeout_s=0.05, max_retries=1, backoff_base_s=0.01)
    async def blocks_then_waits(ctx: Any, payload: dict[str, Any]) -> str:
        time.sleep(0.1)  # noqa: ASYNC251 - the blocking start under test, past its timeout
        for i in range(50):
            await asyncio.sleep(0)
            turns.append(i)
        return "finished"

    outcome = await _run(_runner(reg), "blocks_then_waits")
    assert isinstance(outcome, RetryLater)
    assert outcome.job.errors[-1].type == "TimeoutError"
    assert len(turns) < 50


async def test_resume_carries_on_a_started_coroutine() -> None:
    async def body() -> str:
        await asyncio.sleep(0)
        value = await asyncio.get_running_loop().run_in_executor(None, lambda: "threaded")
        return value

    coro = body()
    yielded = coro.send(None)
    assert await resume(coro, yielded) == "threaded"


async def test_resume_closes_the_coroutine_when_it_is_closed() -> None:
    """A task destroyed while its handler waits closes the handler too (its finally runs)."""
    closed: list[str] = []

    async def body() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            closed.append("closed")

    coro = body()
    yielded = coro.send(None)
    gen = cast(Generator[Any, Any, Any], resume(coro, yielded))
    assert next(gen) is yielded  # what the handler waits on goes up to the task as it was
    gen.close()
    assert closed == ["closed"]
