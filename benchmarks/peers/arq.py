"""arq: asyncio jobs in a Redis sorted set, polled by the worker.

``max_jobs`` is raised from 10 to 100 to match the other asyncio runtimes' concurrency. arq
has no bulk enqueue, so the bulk number gathers 100 ``enqueue_job`` calls at a time. The
worker polls the queue every ``poll_delay`` (0.5 s by default), which bounds its latency on an
idle queue; the ``poll10ms`` variant shows what a lower poll delay buys.
"""

from __future__ import annotations

import time
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker

from peers.adapter import COUNTER_KEY, LATENCY_KEY, Adapter, redis_url

QUEUE = "arq:queue"
MAX_JOBS = 100


async def noop(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    return None


async def incr(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    await ctx["redis"].incr(COUNTER_KEY)


async def lat(ctx: dict[str, Any], data: dict[str, Any]) -> None:
    started = time.time()
    await ctx["redis"].rpush(LATENCY_KEY, started - data["t"])


POLL_DELAY_S = {"default": 0.5, "poll10ms": 0.01}


class Peer(Adapter):
    name = "arq"
    dist = "arq"
    asynchronous = True
    bulk_label = "asyncio.gather of 100 enqueue_job (no bulk API)"
    variants = {
        "default": f"max_jobs={MAX_JOBS}, poll_delay=0.5 s (default)",
        "poll10ms": f"max_jobs={MAX_JOBS}, poll_delay=0.01 s",
    }

    async def open(self) -> None:
        self.pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url()))

    async def send(self, task: str, data: dict[str, Any]) -> None:
        await self.pool.enqueue_job(task, data)

    async def close(self) -> None:
        await self.pool.aclose()

    def remaining(self) -> int:
        # A job stays in the queue's sorted set until finish_job removes it.
        return int(self.r.zcard(QUEUE))

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        # Worker() binds the current event loop when built, so the policy is set first.
        import uvloop

        uvloop.install()
        worker = Worker(
            functions=[noop, incr, lat],
            redis_settings=RedisSettings.from_dsn(redis_url()),
            max_jobs=concurrency or MAX_JOBS,
            poll_delay=POLL_DELAY_S[variant],
            handle_signals=False,
        )
        worker.run()
