"""huey: ``RedisHuey`` (blocking BRPOP dequeue) with 8 worker threads, as huey's docs set it up.

huey's defaults are kept: ``store_none=False``, so a job returning None writes nothing after
it runs. huey then keeps no record of a job between dequeue and finish, and no count of jobs
done, so ``remaining`` is the length of huey's queue list. That ends a drain when the last job
is taken, up to one job per worker thread before it finishes (8 no-op or one-INCR jobs, well
under a millisecond at the end of a run of seconds; the steady-state windows of the scaling
rows are not affected). The INCR body's counter still checks every run for lost or duplicate
jobs; the no-op body is checked as drained. No bulk enqueue.
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
    blocking=True,
)

noop = huey.task(name="noop")(bodies.noop)
incr = huey.task(name="incr")(bodies.incr)
lat = huey.task(name="lat")(bodies.lat)

TASKS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "huey"
    dist = "huey"
    variants = {"default": f"RedisHuey blocking, -k thread -w {WORKERS}, huey's defaults"}

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
        return int(self.r.llen(f"huey.redis.{NAME}"))
