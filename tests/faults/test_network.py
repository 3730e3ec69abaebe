"""Network faults between the workers and Redis, made by the proxy; the test's producer talks to
Redis directly, so every enqueue is acknowledged and must run."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.harness import Harness

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


async def test_connection_reset_under_load(harness: Harness) -> None:
    """(a) Given 2 workers (uvloop, the default) running 2,000 jobs, when the proxy resets every
    worker connection three times 0.3 s apart, then no job is lost, duplicates stay within one
    batch per worker, and both workers are alive and consuming."""
    h = harness
    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(2000, rate=1000, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(400, timeout_s=15), "jobs did not start flowing"
    resets = []
    fault_start = time.time()
    for _ in range(3):
        resets.append(h.proxy.reset_all())
        await asyncio.sleep(0.3)
    fault_end = time.time()
    await producer
    r = await h.finish(
        "a: proxy resets every worker connection (x3)",
        fault_start=fault_start,
        fault_end=fault_end,
        extra={"connections_reset": resets},
    )
    assert resets[0] > 0, "the workers' connections did not go through the proxy"
    assert r.failed_enqueues == 0
    assert r.lost == 0, r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()
    assert r.duplicate_runs <= 2 * h.concurrency, r.summary()


async def test_replies_delayed_then_dropped_for_3s(harness: Harness) -> None:
    """(b) Given 2 workers under load, when every reply from Redis is delayed by 200 ms for 2 s
    and then swallowed for 3 s, then once the network is healthy again every job runs and both
    workers are alive and consuming: a worker must not wait forever for a reply."""
    h = harness
    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(3000, rate=400, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(300, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    h.proxy.set_reply_delay(0.2)
    await asyncio.sleep(2)
    h.proxy.set_dropping(True)
    await asyncio.sleep(3)
    h.proxy.pass_through()
    fault_end = time.time()
    await producer
    r = await h.finish(
        "b: replies delayed 200 ms for 2 s, then dropped for 3 s",
        fault_start=fault_start,
        fault_end=fault_end,
        wait_s=15,
        probe_s=6,
        extra={"bytes_dropped": h.proxy.stats.bytes_dropped},
    )
    assert h.proxy.stats.bytes_dropped > 0, "no reply was dropped: the fault did not happen"
    assert r.failed_enqueues == 0
    assert r.lost == 0, r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()
