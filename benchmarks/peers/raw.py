"""The ceiling: a bare redis-py asyncio loop on one stream and consumer group.

No runtime at all: enqueue is XADD (awaited, or pipelined 1000 per round trip), and the worker
reads with XREADGROUP COUNT 100 and acknowledges with one XACK per batch. No-op jobs are acked
straight from the read loop; jobs with a body run as tasks, at most 100 at once, and are acked
in batches as they finish. qrunner's numbers read as a fraction of these.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from peers.adapter import (
    COUNTER_KEY,
    LATENCY_KEY,
    Adapter,
    StreamBacklog,
    redis_url,
    run_async,
)

STREAM = "raw:stream"
GROUP = "raw"
READ_COUNT = 100


async def _ensure_group(r: Redis) -> None:
    try:
        await r.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class Peer(Adapter):
    name = "raw"
    dist = "redis"
    asynchronous = True
    bulk_label = "pipelined XADD, 1000 per round trip"
    variants = {
        "default": "XREADGROUP COUNT 100 + XACK per batch; bodies under 100 concurrent tasks",
    }

    def __init__(self) -> None:
        super().__init__()
        self.backlog = StreamBacklog(self.r, STREAM, GROUP)

    async def open(self) -> None:
        self.ar = Redis.from_url(redis_url())
        await _ensure_group(self.ar)

    async def send(self, task: str, data: dict[str, Any]) -> None:
        await self.ar.xadd(STREAM, {"t": task, "d": json.dumps(data)})

    async def send_many(self, task: str, items: list[dict[str, Any]]) -> None:
        pipe = self.ar.pipeline(transaction=False)
        for data in items:
            pipe.xadd(STREAM, {"t": task, "d": json.dumps(data)})
        await pipe.execute()

    async def close(self) -> None:
        await self.ar.aclose()

    def after_prefill(self, n: int) -> None:
        self.backlog.snapshot()

    def remaining(self) -> int:
        return self.backlog.remaining()

    def run_worker(self, variant: str, concurrency: int | None) -> None:
        run_async(_consume(concurrency or 100))


class AutoPipeline:
    """Commands issued in one turn of the event loop go out as one pipelined write, as ioredis's
    ``enableAutoPipelining`` does. Not a suite variant: ``benchmarks/processes.py
    --raw-autopipe`` uses it to measure what batching the bodies' commands saves Redis and the
    worker per job, before anyone builds it into a runtime."""

    def __init__(self, r: Redis) -> None:
        self.r = r
        self.pending: list[tuple[tuple[Any, ...], asyncio.Future[Any]]] = []
        self.sending: set[asyncio.Task[None]] = set()

    def execute(self, *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((args, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        task = asyncio.ensure_future(self._send(batch))
        self.sending.add(task)
        task.add_done_callback(self.sending.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        for args, _ in batch:
            pipe.execute_command(*args)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the whole write failed: every caller sees it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


async def _consume(concurrency: int, *, autopipe: bool = False) -> None:
    # One connection per in-flight body plus the reader and the acker (redis-py 8 caps pools).
    r = Redis.from_url(redis_url(), max_connections=concurrency + 8)
    pipeline = AutoPipeline(r) if autopipe else None
    await _ensure_group(r)
    free = concurrency
    done: list[bytes] = []
    wake_reader = asyncio.Event()
    wake_acker = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def run(entry_id: bytes, task: bytes, data: dict[str, Any]) -> None:
        nonlocal free
        try:
            if task == b"incr":
                if pipeline is not None:
                    await pipeline.execute("INCR", COUNTER_KEY)
                else:
                    await r.incr(COUNTER_KEY)
            elif task == b"lat":
                await r.rpush(LATENCY_KEY, time.time() - data["t"])
        finally:
            done.append(entry_id)
            free += 1
            wake_reader.set()
            wake_acker.set()

    async def acker() -> None:
        while True:
            await wake_acker.wait()
            wake_acker.clear()
            while done:
                batch = done[:]
                del done[: len(batch)]
                await r.xack(STREAM, GROUP, *batch)

    consumer = f"raw-{os.getpid()}"
    ack_task = asyncio.create_task(acker())  # runs for the life of the process
    tasks.add(ack_task)
    while True:
        if free == 0:
            wake_reader.clear()
            await wake_reader.wait()
            continue
        resp = await r.xreadgroup(
            GROUP, consumer, {STREAM: ">"}, count=min(READ_COUNT, free), block=1000
        )
        if not resp:
            continue
        inline: list[bytes] = []
        for entry_id, fields in resp[0][1]:
            task = fields[b"t"]
            if task == b"noop":
                inline.append(entry_id)
                continue
            free -= 1
            t = asyncio.create_task(run(entry_id, task, json.loads(fields[b"d"])))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if inline:
            await r.xack(STREAM, GROUP, *inline)
