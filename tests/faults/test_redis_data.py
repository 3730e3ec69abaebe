"""Redis losing or keeping its data under running workers: FLUSHALL, restarts without and with
the AOF. Workers reach Redis through the (healthy) proxy; the producer talks to Redis directly."""

from __future__ import annotations

import asyncio
import time

import pytest

from qrunner import keys
from tests.faults.harness import QUEUE, Harness

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


def pids_that_ran(h: Harness, ids: set[str]) -> set[int]:
    return {e.pid for e in h.ledger.refresh().events if e.kind == "done" and e.job_id in ids}


async def test_flushall_while_jobs_flow_loses_only_what_it_deleted(harness: Harness) -> None:
    """(c) Given jobs flowing at ~2,000/s into 2 workers, when FLUSHALL runs, then the only jobs
    that never run are ones the flush deleted (counted exactly: the stream is read in the same
    MULTI as the FLUSHALL), and jobs enqueued after it run on the same worker processes.

    Each job sleeps 50 ms, so about 100 are in flight (delivered, not yet acknowledged) at any
    moment: batches of 20 every 10 ms overlap five deep and the flush always finds some. With
    10 ms jobs a batch could finish before the next arrived, and a flush in that gap found none."""
    h = harness
    workers = await h.start_workers(2)
    producer = asyncio.create_task(h.produce(3000, rate=2000, batch=20, payload={"sleep_s": 0.05}))
    assert await h.wait_completed(800, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    deleted = await h.flushall_counting()
    fault_end = time.time()
    await producer
    acked = set(h.enqueues.acked)
    after = h.enqueues.acked_since(fault_end)
    r = await h.finish(
        "c: FLUSHALL while jobs flow at ~2,000/s",
        fault_start=fault_start,
        fault_end=fault_end,
        expected=acked - deleted,
        extra={"deleted_by_flush": len(deleted), "acked_after_flush": len(after)},
    )
    print(f"deleted by the flush: {len(deleted)}, of which never ran: {r.lost_allowed}")
    assert deleted, "the flush deleted nothing: no backlog at the time"
    assert len(after) >= 500, "too few jobs enqueued after the flush to judge"
    assert r.lost == 0, r.summary()
    assert r.workers_alive and not r.exits, r.summary()
    assert pids_that_ran(h, after) <= {w.pid for w in workers}
    assert r.workers_consuming, r.summary()


async def test_flushall_raises_an_alarm(harness: Harness) -> None:
    """(m) After a FLUSHALL the worker logs an ALARM naming the queue and writes an entry to
    the ``qr:alarms`` stream; jobs enqueued afterwards run."""
    h = harness
    (worker,) = await h.start_workers(1)
    first = await h.produce(200, rate=2000, batch=20)
    assert await h.wait_completed(ids=first, timeout_s=15)
    await h.redis.flushall()
    flushed_at = time.time()
    later = await h.produce(50, rate=2000, batch=10)
    assert await h.wait_completed(ids=later, timeout_s=15), "jobs after the flush did not run"
    alarms = await h.wait_until(lambda: h.redis.xrange(keys.alarms()), timeout_s=5)
    r = await h.finish("m: FLUSHALL alarm", fault_start=flushed_at, fault_end=flushed_at)
    lines = [ln for ln in worker.log().splitlines() if "ALARM" in ln]
    assert any(QUEUE in ln for ln in lines), f"no ALARM line naming {QUEUE!r} in the log"
    fields = [{k.decode(): v.decode() for k, v in f.items()} for _, f in alarms]
    assert any(f.get("queue") == QUEUE for f in fields), fields
    assert r.workers_alive and r.workers_consuming, r.summary()


async def test_restart_without_data_then_new_jobs_run_on_the_same_workers(
    harness: Harness,
) -> None:
    """(d) Given Redis without persistence and 2 workers running jobs, when Redis restarts
    (empty) after 2 s down, then 3,000 jobs enqueued after the restart all run, on the same
    worker processes."""
    h = harness
    await h.restart_server(appendonly=False)
    workers = await h.start_workers(2)
    producer = asyncio.create_task(h.produce(1000, rate=1000, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(300, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    await h.restart_server(down_s=2)
    fault_end = time.time()
    await producer
    await h.produce(3000, rate=2000, batch=20)
    after = h.enqueues.acked_since(fault_end)
    r = await h.finish(
        "d: Redis restarted without data (2 s down)",
        fault_start=fault_start,
        fault_end=fault_end,
        expected=after,
        extra={"acked_after_restart": len(after)},
    )
    assert len(after) >= 3000
    assert r.lost == 0, r.summary()
    assert r.workers_alive and not r.exits, r.summary()
    assert pids_that_ran(h, after) <= {w.pid for w in workers}
    assert r.workers_consuming, r.summary()


async def test_restart_with_aof_loses_nothing(harness: Harness) -> None:
    """(e) Given Redis with the AOF and 2 workers under load, when Redis shuts down gracefully
    and starts again 2 s later, then every acknowledged job runs (lost = 0) on the same workers."""
    h = harness
    workers = await h.start_workers(2)
    producer = asyncio.create_task(h.produce(3000, rate=1000, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(600, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    await h.restart_server(down_s=2)
    fault_end = time.time()
    await producer
    r = await h.finish(
        "e: Redis restarted with AOF (graceful SHUTDOWN, 2 s down)",
        fault_start=fault_start,
        fault_end=fault_end,
    )
    assert r.lost == 0, r.summary()
    assert r.workers_alive and not r.exits, r.summary()
    assert pids_that_ran(h, set(h.enqueues.acked_since(fault_end))) <= {w.pid for w in workers}
    assert r.workers_consuming, r.summary()
