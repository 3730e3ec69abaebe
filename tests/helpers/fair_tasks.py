"""Tasks with a fairness key for tests/test_fairness.py and benchmarks/fairness.py."""

from __future__ import annotations

import asyncio
from typing import Any

from qrunner import Context, Registry

registry = Registry()

QUEUE = "fair"


def tenant_of(payload: dict[str, Any]) -> str:
    return str(payload["tenant"])


@registry.task(queue=QUEUE, fair_key=tenant_of, max_retries=2, backoff_base_s=0.01, jitter=False)
async def visit(ctx: Context[Any], payload: dict[str, Any]) -> None:
    """Appends ``<tenant>:<n>`` to the list ``served`` when it starts; fails its first attempt
    when ``fail_once`` is set; sleeps ``seconds``."""
    await ctx.redis.rpush("served", f"{payload['tenant']}:{payload.get('n', 0)}")  # type: ignore[misc]
    if payload.get("fail_once") and ctx.attempt == 1:
        raise ConnectionError("first attempt fails")
    await asyncio.sleep(payload.get("seconds", 0.0))


@registry.task(queue="plain")
async def plain(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await asyncio.sleep(payload.get("seconds", 0.0))
