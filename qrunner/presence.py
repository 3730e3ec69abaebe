"""A worker's side of operator control (:mod:`qrunner.control`), run as its ``control`` loop
once a second: it announces the worker (host, pid, queues, concurrency, the jobs it runs, each
with its start time) in a record that expires when the worker stops beating, and picks up what
operators asked for: queues to stop reading, jobs to cancel, rate limits changed at run time.
One pipeline per tick, on the control slot."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from . import keys
from .control import PRESENCE_TTL_MS
from .faults import translated

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

#: How often a worker refreshes its presence and reads operator requests.
CONTROL_INTERVAL_S = 1.0


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Presence:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._limits: dict[str, str] = {}

    def record(self) -> bytes:
        w = self.worker
        running = [
            {"queue": q, "job_id": job_id, "task": task, "started_ms": started_ms}
            for (q, _entry_id), (task, job_id, started_ms) in list(w.running.items())
        ]
        return orjson.dumps(
            {
                "host": self.host,
                "pid": self.pid,
                "started_ms": w.started_ms,
                "heartbeat_ms": int(time.time() * 1000),
                "queues": w.queues,
                "concurrency": w.concurrency,
                "running": running,
            }
        )

    async def step(self) -> None:
        w = self.worker
        async with translated():
            pipe = w.redis.pipeline(transaction=False)
            pipe.set(keys.worker_record(w.name), self.record(), px=PRESENCE_TTL_MS)
            pipe.sadd(keys.workers_set(), w.name)
            pipe.smembers(keys.paused_queues())
            pipe.hgetall(keys.cancel_requests())
            pipe.hgetall(keys.rate_overrides())
            _, _, paused, cancels, limits = await pipe.execute()
        now_paused = {_text(q) for q in paused} & set(w.queues)
        for q in sorted(now_paused - w.paused):
            log.info("queue %s paused by an operator: not reading it", q)
        for q in sorted(w.paused - now_paused):
            log.info("queue %s resumed", q)
        w.paused = now_paused
        mine = set(w.queues)
        w.cancel_ids = {
            _text(job_id)
            for job_id, where in cancels.items()
            if _text(where).split("\t", 1)[0] in mine
        }
        if w.cancel_ids:
            w.cancel_running(w.cancel_ids)
        overrides = {_text(k): _text(v) for k, v in limits.items()}
        if overrides != self._limits and w.gate is not None:
            apply = getattr(w.gate, "apply_overrides", None)
            if apply is not None:
                apply(overrides)
        self._limits = overrides

    async def leave(self) -> None:
        """Remove the record at a clean stop (a killed worker's expires)."""
        w = self.worker
        async with translated():
            pipe = w.redis.pipeline(transaction=False)
            pipe.delete(keys.worker_record(w.name))
            pipe.srem(keys.workers_set(), w.name)
            await pipe.execute()
