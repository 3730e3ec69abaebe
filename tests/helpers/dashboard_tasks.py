"""Tasks for the dashboard tests: one that waits to be released (or cancelled), one that fails
until told to succeed (to make a dead letter that a replay then runs), a rate-limited one, a
probe, and the task of a schedule."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from qrunner import Context, Registry

SCHEDULES = Path(__file__).with_name("dashboard_schedules.yaml")
registry = Registry(queue_order=["dash", "probe"], schedules=SCHEDULES)
#: Tests set these to watch handlers (same process only).
events: dict[str, asyncio.Event] = {}
state: dict[str, Any] = {"fail": True}
seen: list[str] = []


@registry.task(queue="dash")
async def hold(ctx: Context[Any], payload: dict[str, Any]) -> str:
    seen.append(f"started {ctx.job_id}")
    if "started" in events:
        events["started"].set()
    try:
        await events.setdefault("release", asyncio.Event()).wait()
    except asyncio.CancelledError:
        seen.append(f"cancelled {ctx.job_id}")
        raise
    return "released"


@registry.task(queue="dash", max_retries=0)
async def fragile(ctx: Context[Any], payload: dict[str, Any]) -> str:
    if state["fail"]:
        raise RuntimeError("upstream said no")
    seen.append(f"succeeded {ctx.job_id}")
    return "ok"


@registry.task(queue="dash")
async def notify(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


@registry.task(queue="limited", rate_limit="5/s")
async def throttled(ctx: Context[Any], payload: dict[str, Any]) -> None:
    return None


@registry.task(queue="probe")
async def probe(ctx: Context[Any], payload: dict[str, Any]) -> None:
    if "probe" in events:
        events["probe"].set()


@registry.task(queue="dash")
async def tidy(ctx: Context[Any], payload: dict[str, Any]) -> None:
    seen.append(f"tidy {ctx.job_id}")
