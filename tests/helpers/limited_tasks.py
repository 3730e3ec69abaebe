"""Rate-limited tasks for the multi-process rate-limit tests: each run records the Redis time.

``limited`` has a queue of its own (every job there waits for the same bucket); ``mixed_limited``
shares the ``mixed`` queue with ``mixed_free``, which has no limit and records how long it
waited, from the Redis time its enqueuer put in the payload to the Redis time it started.
"""

from __future__ import annotations

from typing import Any

from qrunner import Context, Registry

registry = Registry()


async def redis_ms(ctx: Context[Any]) -> int:
    sec, usec = await ctx.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


@registry.task(queue="limited", rate_limit="20/s", rate_burst=20, max_retries=0)
async def limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("grants", await redis_ms(ctx))  # type: ignore[misc]


@registry.task(queue="mixed", rate_limit="20/s", rate_burst=20, max_retries=0)
async def mixed_limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("mixed:grants", await redis_ms(ctx))  # type: ignore[misc]


@registry.task(queue="mixed", max_retries=0)
async def mixed_free(ctx: Context[Any], payload: dict[str, Any]) -> None:
    waited = await redis_ms(ctx) - int(payload["at_ms"])
    await ctx.redis.rpush("mixed:free_waits", waited)  # type: ignore[misc]
