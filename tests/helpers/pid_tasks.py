"""A task that records which process ran it, for tests/test_processes.py."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from qrunner import Context, Registry

registry = Registry()


@registry.task(queue="pids")
async def whoami(ctx: Context[Any], payload: dict[str, Any]) -> None:
    await ctx.redis.sadd("test:pids", os.getpid())
    await asyncio.sleep(0.05)
