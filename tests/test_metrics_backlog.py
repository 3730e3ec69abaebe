"""The operator metrics: the age of each queue's oldest waiting job, jobs enqueued, jobs in
flight, process metrics, and no ``_created`` series."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from qrunner import Client, Context, Registry, Worker, connect_redis
from qrunner.metrics import Metrics
from tests.worker_fixtures import FAST

pytestmark = pytest.mark.both_topologies


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_oldest_waiting_age_and_enqueued_count(redis_url: str) -> None:
    registry = Registry()

    @registry.task(queue="ages")
    async def slow(ctx: Context[None], payload: dict[str, Any]) -> None:
        return None

    redis: Redis = await connect_redis(redis_url)
    try:
        client = Client(redis, registry)
        metrics = Metrics(tasks=registry.names)
        await metrics.refresh(client)
        assert ("qrunner_queue_oldest_job_age_seconds", (("queue", "ages"),)) not in samples(
            metrics
        )
        for n in range(3):
            await client.enqueue("slow", {"n": n})
        first_ms = await _first_entry_ms(redis)
        now_s, now_us = await redis.time()
        await metrics.refresh(client)
        got = samples(metrics)
        age = got[("qrunner_queue_oldest_job_age_seconds", (("queue", "ages"),))]
        expected = (int(now_s) * 1000 + int(now_us) // 1000 - first_ms) / 1000
        assert expected <= age < expected + 5
        info = await redis.xinfo_stream("qr:{ages}:stream")
        if "entries-added" in info or b"entries-added" in info:  # Redis 7, Valkey
            assert got[("qrunner_jobs_enqueued_total", (("queue", "ages"),))] == 3
        else:  # Redis 6.2 does not count: no guess is exported
            assert ("qrunner_jobs_enqueued_total", (("queue", "ages"),)) not in got
        # Once a worker has taken every job, nothing is waiting.
        await Worker(redis, registry, burst=True, settings=FAST).run()
        await metrics.refresh(client)
        assert samples(metrics)[("qrunner_queue_oldest_job_age_seconds", (("queue", "ages"),))] == 0
    finally:
        await redis.aclose()


async def _first_entry_ms(redis: Redis) -> int:
    [(entry_id, _)] = await redis.xrange("qr:{ages}:stream", count=1)
    return int(entry_id.split(b"-")[0])


async def test_in_flight_process_metrics_and_no_created_series(redis_url: str) -> None:
    registry = Registry()
    started = asyncio.Event()
    release = asyncio.Event()

    @registry.task(queue="busy")
    async def hold(ctx: Context[None], payload: dict[str, Any]) -> None:
        started.set()
        await release.wait()

    redis: Redis = await connect_redis(redis_url)
    try:
        client = Client(redis, registry)
        metrics = Metrics(tasks=registry.names)
        worker = Worker(redis, registry, burst=True, settings=FAST, observer=metrics)
        metrics.watch_worker(worker)
        await client.enqueue("hold", {})
        run = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 30)
        got = samples(metrics)
        assert got[("qrunner_jobs_in_flight", (("queue", "busy"),))] == 1
        release.set()
        await asyncio.wait_for(run, 30)
        got = samples(metrics)
        assert got[("qrunner_jobs_in_flight", (("queue", "busy"),))] == 0
        assert (
            got[
                (
                    "qrunner_jobs_total",
                    (("outcome", "succeeded"), ("queue", "busy"), ("task", "hold")),
                )
            ]
            == 1
        )
        names = {name for name, _ in got}
        assert "process_cpu_seconds_total" in names and "python_info" in names
        assert not [n for n in names if n.endswith("_created")]
    finally:
        await redis.aclose()
