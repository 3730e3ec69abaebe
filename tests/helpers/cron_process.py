"""One cron loop in its own OS process, for the multi-process tests of tests/test_scheduler.py.

It steps its own :class:`ManualClock` over ``--slots`` seconds of a per-second schedule, one
tick per second, enqueueing through the real :class:`qrunner.queue.Client`. Protocol on stdio,
so the test can coordinate processes without sleeping:

* prints ``ready`` once connected, then waits for a line on stdin (a start barrier, so several
  processes really run at the same time);
* with ``--hang-after N``, prints ``hang <slot_ms>`` right after its N-th enqueue returned and
  blocks there, before the scheduler records the slot in Redis: the test SIGKILLs it at that
  worst moment;
* otherwise prints ``{"fired": <jobs this process enqueued first>}`` and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from qrunner.clock import ManualClock
from qrunner.queue import Client
from qrunner.runtime import connect_redis
from qrunner.scheduler import Scheduler
from qrunner.schedules import Schedule


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class HangingEnqueuer:
    """Enqueues through the client, then freezes after the N-th enqueue as if the process died."""

    def __init__(self, client: Client, hang_after: int | None) -> None:
        self.client = client
        self.hang_after = hang_after
        self.calls = 0

    async def enqueue(
        self,
        task: str,
        payload: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay_s: float | None = None,
        at: datetime | None = None,
        key: str | None = None,
        key_ttl_s: float | None = None,
        job_id: str | None = None,
    ) -> str:
        job = await self.client.enqueue(
            task,
            payload,
            queue=queue,
            delay_s=delay_s,
            at=at,
            key=key,
            key_ttl_s=key_ttl_s,
            job_id=job_id,
        )
        self.calls += 1
        if self.calls == self.hang_after:
            say(f"hang {job_id}")
            await asyncio.Event().wait()  # until SIGKILL
        return job


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", default="every_second")
    parser.add_argument("--start-ms", type=int, required=True)
    parser.add_argument("--slots", type=int, default=200)
    parser.add_argument("--hang-after", type=int, default=None)
    args = parser.parse_args(argv)

    entry = Schedule(
        name=args.name,
        task="cron_probe",
        cron="* * * * * *",
        catchup="all",  # each process has its own clock; none may judge a slot as given up
        catchup_window_s=3600,
    )
    redis = await connect_redis(args.redis_url)
    try:
        await redis.ping()
        clock = ManualClock(args.start_ms)
        enqueuer = HangingEnqueuer(Client(redis), args.hang_after)
        # A short grace: a first tick with no history fires the current slot, not the minute
        # before the test's first slot.
        scheduler = Scheduler(redis, enqueuer, [entry], clock, grace_s=0.5)
        say("ready")
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        fired = 0
        for i in range(args.slots):
            clock.set_ms(args.start_ms + i * 1000)
            fired += await scheduler.tick()
        say(orjson.dumps({"fired": fired}).decode())
    finally:
        await redis.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
