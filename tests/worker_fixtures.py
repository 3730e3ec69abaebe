"""Starting and stopping an in-process worker for a test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis

from qrunner.events import Observer
from qrunner.settings import Settings
from qrunner.task import Registry
from qrunner.worker import Worker

FAST = Settings(
    lease_ms=1000, reclaim_interval_ms=200, promote_interval_ms=20, block_ms=100, grace_s=5
)


class Recorder(Observer):
    """Keeps every lifecycle event so tests can assert on them."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, str]] = []
        self.recreated: list[str] = []
        self.redelivered = 0
        self.refused = 0

    def job_finished(self, task: str, queue: str, outcome: str, duration_s: float) -> None:
        self.finished.append((task, outcome))

    def group_recreated(self, queue: str) -> None:
        self.recreated.append(queue)

    def job_redelivered(self, queue: str, count: int) -> None:
        self.redelivered += count

    def ack_refused(self, queue: str, count: int) -> None:
        self.refused += count


@asynccontextmanager
async def running_worker(redis: Redis, registry: Registry, **kwargs: Any) -> AsyncIterator[Worker]:
    """A worker running in the background of the test; stopped (gracefully) on exit."""
    kwargs.setdefault("settings", FAST)
    worker = Worker(redis, registry, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
