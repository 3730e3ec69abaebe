"""Two tasks that exist only to show retries and dead letters in the README's demo."""

from __future__ import annotations

from typing import Any

from qrunner import Context, Registry

registry = Registry()


@registry.task(queue="default", max_retries=3, backoff_base_s=0.5, backoff_cap_s=2)
async def demo_flaky(ctx: Context[Any], payload: dict[str, Any]) -> str:
    """Fails on its first two attempts, then succeeds: shows backoff retries."""
    if ctx.attempt < 3:
        raise ConnectionError(f"upstream not ready (attempt {ctx.attempt})")
    return f"succeeded on attempt {ctx.attempt}"


@registry.task(queue="default", max_retries=2, backoff_base_s=0.5, backoff_cap_s=1)
async def demo_broken(ctx: Context[Any], payload: dict[str, Any]) -> None:
    """Always fails: shows a job reaching the dead-letter stream with its error history."""
    raise RuntimeError("this job always fails")
