"""The job of the cluster benchmark: one awaited INCR on a counter of the job's own queue (the
counter shares the queue's hash tag, so on a cluster it lives on the queue's node)."""

from __future__ import annotations

from typing import Any

from qrunner import Context, Registry

QUEUES = ("bench_a", "bench_b", "bench_c")

registry = Registry()


def counter(queue: str) -> str:
    return f"bench:{{{queue}}}:done"


for _queue in QUEUES:

    def _make(queue: str) -> None:
        @registry.task(name=f"incr_{queue}", queue=queue, max_retries=0)
        async def incr(ctx: Context[Any], payload: dict[str, Any]) -> None:
            await ctx.redis.incr(counter(queue))

    _make(_queue)
