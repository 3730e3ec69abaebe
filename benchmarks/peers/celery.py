"""Celery with the Redis broker, no result backend, acks_late, prefork and solo pools.

Fast settings from Celery's optimisation guide: no result backend (``task_ignore_result``),
a high prefetch multiplier for many short tasks, and ``--without-gossip --without-mingle
--without-heartbeat``. ``acks_late`` makes the ack follow the job, as qrunner's does. The app
is built at import because Celery's worker command loads it by module path.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery

from peers import sync_bodies as bodies
from peers.adapter import Adapter

PREFETCH = 64
QUEUE = "celery"

app = Celery("bench", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    task_acks_late=True,
    worker_prefetch_multiplier=PREFETCH,
    task_serializer="json",
    accept_content=["json"],
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

noop = app.task(name="noop")(bodies.noop)
incr = app.task(name="incr")(bodies.incr)
lat = app.task(name="lat")(bodies.lat)

TASKS = {"noop": noop, "incr": incr, "lat": lat}


class Peer(Adapter):
    name = "celery"
    dist = "celery"
    bulk_label = "loop with one shared producer (no bulk API)"
    variants = {
        "prefork": f"prefork -c 2, prefetch x{PREFETCH}, acks_late, no result backend",
        "solo": f"solo pool, prefetch x{PREFETCH}, acks_late, no result backend",
    }

    def send(self, task: str, data: dict[str, Any]) -> None:
        TASKS[task].delay(data)

    def send_many(self, task: str, items: list[dict[str, Any]]) -> None:
        t = TASKS[task]
        with app.producer_or_acquire() as producer:
            for data in items:
                t.apply_async((data,), producer=producer)

    def worker_argv(self, variant: str, concurrency: int | None) -> list[str]:
        if variant == "solo":
            pool = ["-P", "solo"]
        else:
            pool = ["-P", "prefork", "-c", str(concurrency or 2)]
        return [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "peers.celery",
            "worker",
            *pool,
            "-Q",
            QUEUE,
            "--prefetch-multiplier",
            str(PREFETCH),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ]

    def remaining(self) -> int:
        # kombu keeps delivered-but-unacked messages in the "unacked" hash until the late ack.
        pipe = self.r.pipeline(transaction=False)
        pipe.llen(QUEUE)
        pipe.hlen("unacked")
        queued, unacked = pipe.execute()
        return int(queued) + int(unacked)
