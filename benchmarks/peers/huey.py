"""huey: ``RedisHuey`` (blocking BRPOP dequeue) with 8 worker threads.

huey keeps no record of a job between dequeue and result, so the adapter turns on
``store_none``: every finished job, even one returning None, writes its result to huey's
result hash, and the hash's size is the runtime's own count of jobs done. That costs one
HSET per job, the same write huey makes for any job that returns a value. No bulk enqueue.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from huey import RedisHuey

from peers import sync_bodies as bodies
from peers.adapter import Adapter

NAME = "bench"
WORKERS = 8

huey = RedisHuey(
    NAME,
    url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    results=True,
    store_none=True,
    blocking=True,
)

noop = huey.task(name="noop")(bodies.noop)
incr = huey.task(name="incr")(bodies.incr)
lat = huey.task(name="lat")(bodies.lat)

TASKS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "huey"
    dist = "huey"
    variants = {"default": f"RedisHuey blocking, -k thread -w {WORKERS}, store_none"}

    def send(self, task: str, data: dict[str, Any]) -> None:
        TASKS[task](data)

    def worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        return [
            str(Path(sys.executable).with_name("huey_consumer")),
            "peers.huey.huey",
            "-k",
            "thread",
            "-w",
            str(concurrency or WORKERS),
            "-n",
            "-q",
        ]

    def remaining(self) -> int:
        queued = int(self.r.llen(f"huey.redis.{NAME}"))
        if self.expected is None:
            return queued
        return self.expected - int(self.r.hlen(f"huey.results.{NAME}"))

    def completed(self) -> int:
        return int(self.r.hlen(f"huey.results.{NAME}"))
