"""qrunner through its public API: ``Client`` to enqueue, ``Worker`` to run, ``stats`` to watch.

The worker runs with concurrency 100 on uvloop and the Redis client ``qrunner worker`` builds,
as the command line does by default; job bodies use ``ctx.redis``, that same client. The
enqueue side uses the client the README shows (``connect_redis``). Bulk
enqueue is ``Client.enqueue_many`` (pipelined script calls). Completion is read from
``Client.stats()``: nothing waiting, pending or delayed in the queue.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis

from peers.adapter import COUNTER_KEY, LATENCY_KEY, Adapter, redis_url, run_async
from qrunner import Client, Context, JobSpec, QueueStats, Registry, Worker
from qrunner.runtime import connect_redis

QUEUE = "default"
CONCURRENCY = 100

registry = Registry()


@registry.task("noop", queue=QUEUE, max_retries=0)
async def noop(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


@registry.task("incr", queue=QUEUE, max_retries=0)
async def incr(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.incr(COUNTER_KEY)


@registry.task("lat", queue=QUEUE, max_retries=0)
async def lat(ctx: Context[Any], payload: dict[str, Any]) -> None:
    started = time.time()
    await ctx.redis.rpush(LATENCY_KEY, started - payload["t"])


class Peer(Adapter):
    name = "qrunner"
    dist = "qrunner"
    asynchronous = True
    bulk_label = "Client.enqueue_many (pipelined)"
    variants = {"default": f"concurrency={CONCURRENCY}, uvloop, handlers' commands auto-pipelined"}

    def __init__(self) -> None:
        super().__init__()
        self._stats_client: Client | None = None

    async def open(self) -> None:
        # The client the README builds: ``connect_redis`` (qrunner's connection classes, which
        # pack commands with hiredis), as the worker below.
        self.client = Client(await connect_redis(redis_url()), registry)

    async def send(self, task: str, data: dict[str, Any]) -> None:
        await self.client.enqueue(task, data)

    async def send_many(self, task: str, items: list[dict[str, Any]]) -> None:
        await self.client.enqueue_many([(task, d) for d in items])

    async def send_many_delayed(
        self, task: str, items: list[dict[str, Any]], delay_s: float
    ) -> None:
        await self.client.enqueue_many([JobSpec(task, d, delay_s=delay_s) for d in items])

    async def delayed_count(self) -> int:
        return (await self._stats()).delayed

    async def close(self) -> None:
        await self.client.redis.aclose()

    async def _stats(self) -> QueueStats:
        if self._stats_client is None:
            self._stats_client = Client(Redis.from_url(redis_url()), registry)
        (s,) = await self._stats_client.stats([QUEUE])
        return s

    async def remaining(self) -> int:
        s = await self._stats()
        return s.depth + s.pending + s.delayed

    async def failed(self) -> int:
        return (await self._stats()).dead

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        async def main() -> None:
            # The client ``qrunner worker`` builds: a blocking pool of 200 connections.
            redis = await connect_redis(redis_url())
            worker = Worker(redis, registry, queues=[QUEUE], concurrency=concurrency or CONCURRENCY)
            await worker.run()

        run_async(main())
