"""One job through a client and a burst worker at a URL: the check that a connection kind
(TLS, Sentinel, ...) works end to end."""

from __future__ import annotations

import asyncio

from qrunner import Client, keys
from qrunner.runtime import connect_redis
from qrunner.worker import Worker
from tests.helpers import core_tasks
from tests.worker_fixtures import FAST


async def round_trip(url: str) -> None:
    """Enqueue one job at ``url``, run a burst worker there, and check it succeeded."""
    redis = await connect_redis(url)
    try:
        client = Client(redis, core_tasks.registry)
        job_id = await client.enqueue("record", {})
        await asyncio.wait_for(
            Worker(redis, core_tasks.registry, burst=True, settings=FAST).run(), 30
        )
        assert (await client.status(job_id)).state == "succeeded"
        assert await redis.xlen(keys.stream("default")) == 0
    finally:
        await redis.aclose()
