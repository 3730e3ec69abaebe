"""Tasks for the fault-injection suite. Workers load them with
``--handlers tests.faults.ledger_tasks`` (run from the project root).

Every run is written to a ledger OUTSIDE Redis, so what the test counts survives FLUSHALL and
Redis restarts: the file named by ``FAULT_LEDGER``, one line per event,
``<event> <job id> <pid> <unix time>``, with ``event`` ``start`` when the handler begins and
``done`` when it returns. Lines are appended with single O_APPEND writes, so lines from
several worker processes never interleave.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from pydantic import BaseModel

from qrunner import Context, Registry

LEDGER_ENV = "FAULT_LEDGER"
QUEUE = "faults"

registry = Registry()
_fd: int | None = None


def record(event: str, job_id: str) -> None:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{event} {job_id} {os.getpid()} {time.time():.6f}\n".encode())


class Quick(BaseModel):
    sleep_s: float = 0.0


class Block(BaseModel):
    seconds: float = 3.0


@registry.task(queue=QUEUE, payload=Quick, max_retries=3, backoff_base_s=0.1, backoff_cap_s=0.5)
async def quick(ctx: Context[Any], payload: Quick) -> None:
    """A job that optionally awaits one Redis-free sleep."""
    record("start", ctx.job.id)
    if payload.sleep_s > 0:
        await asyncio.sleep(payload.sleep_s)
    record("done", ctx.job.id)


@registry.task(queue=QUEUE, payload=Block, max_retries=0, max_deliveries=3)
async def block(ctx: Context[Any], payload: Block) -> None:
    """Blocks the event loop: a synchronous sleep inside an async handler."""
    record("start", ctx.job.id)
    time.sleep(payload.seconds)  # noqa: ASYNC251 - the point of this task
    record("done", ctx.job.id)


@registry.task(queue=QUEUE, max_retries=0, max_deliveries=2)
async def spin(ctx: Context[Any], payload: dict[str, Any]) -> None:
    """Never yields to the event loop again."""
    record("start", ctx.job.id)
    while True:
        pass
