"""Tasks for tests/test_ops.py: one that waits to be released (or cancelled), one that fails
once then succeeds, one that always fails, one rate-limited, and a probe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from qrunner import Context, Registry

registry = Registry(queue_order=["ops", "probe"])
#: Tests set these to watch handlers (same process only).
events: dict[str, asyncio.Event] = {}
seen: list[str] = []
#: When each run of ``flaky`` began (ms since epoch, this process' clock).
flaky_began_ms: list[int] = []


@registry.task(queue="ops")
async def hold(ctx: Context[Any], payload: dict[str, Any]) -> str:
    seen.append(ctx.job_id)
    if "started" in events:
        events["started"].set()
    try:
        await events.setdefault("release", asyncio.Event()).wait()
    except asyncio.CancelledError:
        seen.append(f"cancelled {ctx.job_id}")
        raise
    return "released"


@registry.task(queue="ops", max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.02, jitter=False)
async def flaky(ctx: Context[Any], payload: dict[str, Any]) -> str:
    flaky_began_ms.append(int(time.time() * 1000))
    if ctx.attempt == 1:
        await asyncio.sleep(0.02)  # the run takes time: its record must start before the end
        raise ConnectionError("first attempt fails")
    return "ok"


@registry.task(queue="ops", max_retries=0)
async def broken(ctx: Context[Any], payload: dict[str, Any]) -> None:
    raise RuntimeError("always")


@registry.task(queue="limited", rate_limit="5/s")
async def throttled(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


@registry.task(queue="probe")
async def probe(ctx: Context[Any], payload: dict[str, Any]) -> None:
    if "probe" in events:
        events["probe"].set()
