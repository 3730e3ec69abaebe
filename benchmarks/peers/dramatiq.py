"""dramatiq with its Redis broker: one worker process with 8 threads (its default threads).

dramatiq keeps one global broker that actors bind to at import, so the broker is built here
at import from ``BENCH_REDIS_URL``. There is no bulk enqueue (``group`` sends one by one).
An idle consumer polls with an exponential backoff capped at the worker timeout (1 s by
default), which shows in its latency.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from peers import sync_bodies as bodies
from peers.adapter import Adapter

QUEUE = "default"
THREADS = 8

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)

noop = dramatiq.actor(bodies.noop, actor_name="noop", queue_name=QUEUE, max_retries=0)
incr = dramatiq.actor(bodies.incr, actor_name="incr", queue_name=QUEUE, max_retries=0)
lat = dramatiq.actor(bodies.lat, actor_name="lat", queue_name=QUEUE, max_retries=0)

ACTORS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "dramatiq"
    dist = "dramatiq"
    variants = {"default": f"--processes 1 --threads {THREADS}, default middleware"}

    def send(self, task: str, data: dict[str, Any]) -> None:
        ACTORS[task].send(data)

    def worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dramatiq",
            "peers.dramatiq",
            "--processes",
            "1",
            "--threads",
            str(concurrency or THREADS),
            "--queues",
            QUEUE,
        ]

    def remaining(self) -> int:
        # Message bodies live in the ".msgs" hash from enqueue until the ack deletes them.
        return int(self.r.hlen(f"dramatiq:{QUEUE}.msgs"))

    def failed(self) -> int:
        # Messages that failed for good are moved to the dead-letter queue's hash.
        return int(self.r.hlen(f"dramatiq:{QUEUE}.DQ.msgs"))
