"""Tasks for the progress, workflow and testing-helper tests, in a module of their own so worker
subprocesses can load them with ``--handlers tests.helpers.workflow_tasks``. Each records what
happened in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from pydantic import BaseModel

from qrunner import Context, Permanent, RateLimited, Registry, Retry
from qrunner.queue import JobSpec

registry = Registry()

QUEUE = "flows"


class Member(BaseModel):
    n: int
    fail_times: int = 0
    permanent: bool = False
    seconds: float = 0.0


@registry.task(queue=QUEUE, max_retries=0)
async def report(ctx: Context[Any], payload: dict[str, Any]) -> dict[str, Any]:
    await ctx.redis.rpush("ran", f"report:{ctx.job_id}")  # type: ignore[misc]
    return {"rows": payload.get("rows", 0)}


@registry.task(queue=QUEUE, max_retries=0)
async def email(ctx: Context[Any], payload: dict[str, Any]) -> str:
    """Records what it was told about the job that triggered it."""
    await ctx.redis.rpush("emails", orjson.dumps({"to": payload.get("to"), "up": ctx.upstream}))  # type: ignore[misc]
    return "sent"


@registry.task(
    queue=QUEUE,
    payload=Member,
    max_retries=3,
    backoff_base_s=0.01,
    backoff_cap_s=0.02,
    jitter=False,
)
async def member(ctx: Context[Any], payload: Member) -> int:
    """Fails its first ``fail_times`` attempts, or always with ``permanent``; sleeps, then
    returns n squared. Counts its runs in the hash ``member_runs``."""
    await ctx.redis.hincrby("member_runs", ctx.job_id, 1)  # type: ignore[misc]
    await ctx.redis.rpush("member_started", ctx.job_id)  # type: ignore[misc]
    if payload.permanent:
        raise Permanent(f"member {payload.n} cannot succeed")
    if ctx.attempt <= payload.fail_times:
        raise ValueError(f"member {payload.n} failed attempt {ctx.attempt}")
    await asyncio.sleep(payload.seconds)
    return payload.n * payload.n


@registry.task(queue=QUEUE, max_retries=0)
async def collect(ctx: Context[Any], payload: dict[str, Any]) -> int:
    """A group callback: records its members' outcomes and counts its own runs."""
    await ctx.redis.hincrby("callback_runs", payload.get("tag", ""), 1)  # type: ignore[misc]
    await ctx.redis.rpush("callbacks", orjson.dumps(ctx.group_results))  # type: ignore[misc]
    return len(ctx.group_results or [])


@registry.task(queue=QUEUE, max_retries=0)
async def fan_out(ctx: Context[Any], payload: dict[str, Any]) -> int:
    """Enqueues ``ok`` children that succeed and ``bad`` ones that are dead-lettered."""
    specs = [JobSpec("child", {"ok": True}) for _ in range(payload["ok"])]
    specs += [JobSpec("child", {"ok": False}) for _ in range(payload["bad"])]
    await ctx.client.enqueue_many(specs, parent=ctx.job_id)
    return len(specs)


@registry.task(queue="kids", max_retries=0)
async def child(ctx: Context[Any], payload: dict[str, Any]) -> None:
    if not payload["ok"]:
        raise Permanent("child told to fail")


@registry.task(queue=QUEUE, max_retries=0, timeout_s=60)
async def progressing(ctx: Context[Any], payload: dict[str, Any]) -> str:
    """Reports 0.4, waits for an item on the list ``go``, then reports in a tight loop up to
    1.0."""
    await ctx.progress(0.4, meta={"stage": "download"})
    await ctx.redis.blpop(["go"], timeout=50)  # type: ignore[misc]
    for i in range(1, 101):
        await ctx.progress(i / 100, meta={"stage": "upload", "i": i})
    return "done"


# -- tasks for eager runs -----------------------------------------------------------------------


class Greeting(BaseModel):
    name: str


@registry.task(queue=QUEUE, payload=Greeting)
async def greet(ctx: Context[Any], payload: Greeting) -> str:
    await ctx.progress(0.5)
    return f"hello {payload.name}"


@registry.task(queue=QUEUE, max_retries=2, backoff_base_s=1.0, jitter=False)
async def flaky(ctx: Context[Any], payload: dict[str, Any]) -> int:
    if ctx.attempt <= payload.get("fail_times", 0):
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return ctx.attempt


@registry.task(queue=QUEUE)
async def retry_later(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise Retry(after_s=30)


@registry.task(queue=QUEUE)
async def quiet_hours(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise RateLimited(retry_after_s=120, reason="quiet hours")


@registry.task(queue=QUEUE)
async def refuse(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise Permanent("no such recipient")


@registry.task(queue=QUEUE, run_in_thread=True)
def in_thread(ctx: Context[Any], payload: dict[str, Any]) -> int:
    return int(payload["x"]) * 2


@registry.task(queue=QUEUE, max_retries=0)
async def scheduled(ctx: Context[Any], payload: dict[str, Any]) -> str:
    await ctx.redis.rpush("ran", f"scheduled:{ctx.job_id}")  # type: ignore[misc]
    return "on time"
