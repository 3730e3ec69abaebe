"""A rate-limited task for the multi-process rate-limit test: each run records the Redis time."""

from __future__ import annotations

from typing import Any

from qrunner import Context, Registry

registry = Registry()


@registry.task(queue="limited", rate_limit="20/s", rate_burst=20, max_retries=0)
async def limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
    sec, usec = await ctx.redis.time()
    await ctx.redis.rpush("grants", int(sec) * 1000 + int(usec) // 1000)  # type: ignore[misc]
