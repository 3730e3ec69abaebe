"""rq: sync jobs on a Redis list; the normal ``Worker`` forks a child for every job.

``Worker`` (the default) pays a fork per job, which is rq's isolation model and dominates its
throughput on short jobs; ``SimpleWorker`` runs jobs in the worker process and shows what the
fork costs. Bulk enqueue is rq's own ``Queue.enqueue_many`` in one pipeline. Results are kept
with rq's default TTL, so the finished-job registry counts the jobs done.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker, Worker
from rq.intermediate_queue import IntermediateQueue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, StartedJobRegistry

from peers.adapter import COUNTER_KEY, LATENCY_KEY, Adapter, redis_url

QUEUE = "default"

_sync_redis: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _sync_redis
    if _sync_redis is None:
        _sync_redis = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    return _sync_redis


def noop(data: dict[str, Any]) -> None:
    return None


def incr(data: dict[str, Any]) -> None:
    _redis().incr(COUNTER_KEY)


def lat(data: dict[str, Any]) -> None:
    started = time.time()
    _redis().rpush(LATENCY_KEY, started - data["t"])


FUNCS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "rq"
    dist = "rq"
    bulk_label = "Queue.enqueue_many in one pipeline per 1000"
    variants = {
        "fork": "Worker (fork per job), job module preloaded",
        "simple": "SimpleWorker (no fork)",
    }

    def open(self) -> None:
        self.queue = Queue(QUEUE, connection=redis.Redis.from_url(redis_url()))

    def send(self, task: str, data: dict[str, Any]) -> None:
        self.queue.enqueue(FUNCS[task], data)

    def send_many(self, task: str, items: list[dict[str, Any]]) -> None:
        func = FUNCS[task]
        with self.queue.connection.pipeline() as pipe:
            self.queue.enqueue_many([Queue.prepare_data(func, (d,)) for d in items], pipeline=pipe)
            pipe.execute()

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        # A worker script rather than ``rq worker``: this module, holding the job functions, is
        # imported before the worker starts, as rq's performance notes advise, so a forked
        # work horse does not import it again for every job.
        connection = redis.Redis.from_url(redis_url())
        cls = SimpleWorker if variant == "simple" else Worker
        worker = cls(
            [Queue(QUEUE, connection=connection)],
            connection=connection,
            disable_default_exception_handler=False,
        )
        logging.basicConfig(level=logging.WARNING)
        worker.work(logging_level="WARNING")

    def remaining(self) -> int:
        queue_key = f"rq:queue:{QUEUE}"
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(queue_key)
        pipe.llen(IntermediateQueue.get_intermediate_queue_key(queue_key))
        pipe.zcard(StartedJobRegistry(QUEUE, connection=self.r).key)
        return sum(int(x) for x in pipe.execute())

    def completed(self) -> int:
        return FinishedJobRegistry(QUEUE, connection=self.r).count

    def failed(self) -> int:
        return FailedJobRegistry(QUEUE, connection=self.r).count
