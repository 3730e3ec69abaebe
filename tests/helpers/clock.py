"""The Redis clock, as the scripts read it (``TIME``), for tests that compare against it."""

from __future__ import annotations

from redis.asyncio import Redis


async def redis_ms(redis: Redis) -> int:
    """The Redis server's time in ms."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
