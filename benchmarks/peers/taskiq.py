"""taskiq with taskiq-redis's ``RedisStreamBroker`` (a stream and consumer group, like qrunner).

One worker process (``--workers 1``; taskiq's default is 2) with ``--max-async-tasks 100``,
acknowledging after the result is saved (taskiq's default ``--ack-type when_saved``), no
result backend. No bulk enqueue: the bulk number gathers 100 ``kiq`` calls at a time.
The client must run ``broker.startup()`` before enqueuing: it creates the consumer group at
``$``, so jobs sent earlier would never be read.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from taskiq_redis import RedisStreamBroker

from peers.adapter import COUNTER_KEY, LATENCY_KEY, Adapter, StreamBacklog

STREAM = "taskiq"
GROUP = "taskiq"
MAX_ASYNC = 100

broker = RedisStreamBroker(
    url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    queue_name=STREAM,
    consumer_group_name=GROUP,
)

_client: Redis | None = None


def _redis() -> Redis:
    global _client
    if _client is None:
        _client = Redis.from_url(os.environ["BENCH_REDIS_URL"], max_connections=MAX_ASYNC * 2)
    return _client


@broker.task(task_name="noop")
async def noop(data: dict[str, Any]) -> None:
    return None


@broker.task(task_name="incr")
async def incr(data: dict[str, Any]) -> None:
    await _redis().incr(COUNTER_KEY)


@broker.task(task_name="lat")
async def lat(data: dict[str, Any]) -> None:
    started = time.time()
    await _redis().rpush(LATENCY_KEY, started - data["t"])


TASKS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "taskiq"
    dist = "taskiq-redis"
    asynchronous = True
    bulk_label = "asyncio.gather of 100 kiq (no bulk API)"
    variants = {"default": f"RedisStreamBroker, --workers 1 --max-async-tasks {MAX_ASYNC}"}

    def __init__(self) -> None:
        super().__init__()
        self.backlog = StreamBacklog(self.r, STREAM, GROUP)

    def version(self) -> str:
        return f"{super().version()} (taskiq {_dist_version('taskiq')})"

    async def open(self) -> None:
        await broker.startup()

    async def send(self, task: str, data: dict[str, Any]) -> None:
        await TASKS[task].kiq(data)

    async def close(self) -> None:
        await broker.shutdown()

    def after_prefill(self, n: int) -> None:
        self.backlog.snapshot()

    def remaining(self) -> int:
        return self.backlog.remaining()

    def worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        return [
            str(Path(sys.executable).with_name("taskiq")),
            "worker",
            "peers.taskiq:broker",
            "--workers",
            "1",
            "--max-async-tasks",
            str(concurrency or MAX_ASYNC),
            "--log-level",
            "WARNING",
        ]


def _dist_version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)
