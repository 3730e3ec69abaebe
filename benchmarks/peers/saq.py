"""saq: asyncio jobs on Redis lists moved with BLMOVE, ``concurrency`` jobs at a time.

``concurrency`` is raised from 10 to 100 to match the other asyncio runtimes. Job defaults
(timeout 10 s, retries 1, results kept 600 s) are saq's own. saq has no bulk enqueue
(``Queue.map`` waits for results), so the bulk number gathers 100 ``enqueue`` calls at a time.
"""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio import Redis
from saq import Queue, Worker

from peers.adapter import COUNTER_KEY, LATENCY_KEY, Adapter, redis_url, run_async

QUEUE = "default"
CONCURRENCY = 100

_client: Redis | None = None


def _redis() -> Redis:
    global _client
    if _client is None:
        _client = Redis.from_url(redis_url(), max_connections=CONCURRENCY * 2)
    return _client


async def noop(ctx: dict[str, Any], *, data: dict[str, Any]) -> None:
    return None


async def incr(ctx: dict[str, Any], *, data: dict[str, Any]) -> None:
    await _redis().incr(COUNTER_KEY)


async def lat(ctx: dict[str, Any], *, data: dict[str, Any]) -> None:
    started = time.time()
    await _redis().rpush(LATENCY_KEY, started - data["t"])


class Peer(Adapter):
    name = "saq"
    dist = "saq"
    asynchronous = True
    bulk_label = "asyncio.gather of 100 enqueue (no bulk API)"
    variants = {"default": f"concurrency={CONCURRENCY}"}

    async def open(self) -> None:
        self.queue = Queue.from_url(redis_url(), name=QUEUE)
        await self.queue.connect()

    async def send(self, task: str, data: dict[str, Any]) -> None:
        await self.queue.enqueue(task, data=data)

    async def close(self) -> None:
        await self.queue.disconnect()

    def remaining(self) -> int:
        # Every job sits in the "incomplete" sorted set from enqueue until it finishes.
        return int(self.r.zcard(f"saq:{QUEUE}:incomplete"))

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        async def main() -> None:
            queue = Queue.from_url(redis_url(), name=QUEUE)
            worker = Worker(
                queue, functions=[noop, incr, lat], concurrency=concurrency or CONCURRENCY
            )
            await worker.start()

        run_async(main())
