"""Tasks used by the runtime's tests, in a module of their own so worker subprocesses can load
them with ``--handlers tests.helpers.core_tasks``. Each records what happened in Redis."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel

from qrunner import Context, Permanent, Registry

registry = Registry()


class Sleep(BaseModel):
    seconds: float = 0.0
    tag: str = ""


@registry.task(queue="default", max_retries=0)
async def record(ctx: Context[Any], payload: dict[str, Any]) -> dict[str, Any]:
    """Appends its job id to the list ``log:<queue>`` and returns its payload."""
    await ctx.redis.rpush(f"log:{ctx.job.queue}", ctx.job.id)  # type: ignore[misc]
    return payload


@registry.task(queue="sms_critical", max_retries=0)
async def record_critical(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("log:order", f"critical:{ctx.job.id}")  # type: ignore[misc]


@registry.task(queue="default", max_retries=0)
async def record_default(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("log:order", f"default:{ctx.job.id}")  # type: ignore[misc]


@registry.task(queue="crash", payload=Sleep, max_retries=10, backoff_base_s=0.1, timeout_s=60)
async def slow(ctx: Context[Any], payload: Sleep) -> None:
    """Counts every run per job id (``runs`` hash), then sleeps."""
    await ctx.redis.hincrby("runs", ctx.job.id, 1)  # type: ignore[misc]
    await ctx.redis.rpush("started", ctx.job.id)  # type: ignore[misc]
    await asyncio.sleep(payload.seconds)
    await ctx.redis.rpush("finished", ctx.job.id)  # type: ignore[misc]


@registry.task(queue="default", max_retries=2, backoff_base_s=0.05, backoff_cap_s=0.1)
async def always_fails(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise ValueError(f"boom on attempt {ctx.attempt}")


@registry.task(queue="default")
async def permanent(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise Permanent("recipient does not exist")


class Greeting(BaseModel):
    name: str
    times: int = 1


@registry.task(queue="default", payload=Greeting)
async def greet(ctx: Context[Any], payload: Greeting) -> str:
    return f"hello {payload.name}" * payload.times
