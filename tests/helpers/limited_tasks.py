"""Rate-limited tasks for the multi-process rate-limit tests.

Each limited run records when the limiter made its token the run's own (``ctx.turn_ms``, on
the Redis clock): what the limit is judged on. A time the handler reads itself would also count
how late its worker got to it, which two loaded cores can make tens of milliseconds.

``limited`` has a queue of its own (every job there waits for the same bucket); ``mixed_limited``
shares the ``mixed`` queue with ``mixed_free``, which has no limit and records how long it
waited, from the Redis time its enqueuer put in the payload to the Redis time it started.
"""

from __future__ import annotations

from typing import Any

from qrunner import Context, Registry

registry = Registry()


def _turn(ctx: Context[Any]) -> int:
    if ctx.turn_ms is None:
        raise AssertionError("a rate-limited run without the time of its turn")
    return ctx.turn_ms


async def redis_ms(ctx: Context[Any]) -> int:
    sec, usec = await ctx.redis.time()
    return int(sec) * 1000 + int(usec) // 1000


@registry.task(queue="limited", rate_limit="20/s", rate_burst=20, max_retries=0)
async def limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("grants", _turn(ctx))  # type: ignore[misc]


@registry.task(queue="mixed", rate_limit="20/s", rate_burst=20, max_retries=0)
async def mixed_limited(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.rpush("mixed:grants", _turn(ctx))  # type: ignore[misc]


@registry.task(queue="mixed", max_retries=0)
async def mixed_free(ctx: Context[Any], payload: dict[str, Any]) -> None:
    waited = await redis_ms(ctx) - int(payload["at_ms"])
    await ctx.redis.rpush("mixed:free_waits", waited)  # type: ignore[misc]
