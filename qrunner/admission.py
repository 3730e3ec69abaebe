"""Admission of rate-limited tasks: maps a task and its payload to a token bucket.

A task's limit applies to one bucket per task, or one per key when the task derives a key from
the payload (per recipient, per sender, per tenant). Keys are hashed before they reach Redis so
phone numbers and addresses never appear in key names.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis.asyncio import Redis

from .ratelimit import RateLimiter, RateLimitSpec
from .task import Registry, Task


def bucket_name(task: Task, payload: Any) -> str:
    limit = task.rate_limit
    if limit is None or limit.key is None:
        return f"task:{task.name}"
    digest = hashlib.blake2b(str(limit.key(payload)).encode(), digest_size=8).hexdigest()
    return f"task:{task.name}:{digest}"


class TokenBucketGate:
    """The worker's :class:`~qrunner.runner.RateGate` over Redis token buckets."""

    def __init__(self, redis: Redis, registry: Registry) -> None:
        self.limiter = RateLimiter(redis)
        self.specs: dict[str, RateLimitSpec] = {
            t.name: RateLimitSpec.parse(t.rate_limit.rates, t.rate_limit.burst)
            for t in registry
            if t.rate_limit is not None
        }

    async def admit(self, task: Task, payload: Any) -> tuple[float, str | None]:
        spec = self.specs.get(task.name)
        if spec is None or task.rate_limit is None:
            return 0.0, None
        cost = task.rate_limit.cost(payload) if task.rate_limit.cost else 1
        bucket = bucket_name(task, payload)
        return await self.limiter.acquire(bucket, spec, max(1, cost)), bucket

    async def throttle(self, task: Task, payload: Any, bucket: str | None, seconds: float) -> None:
        await self.limiter.throttle(bucket or bucket_name(task, payload), seconds)
