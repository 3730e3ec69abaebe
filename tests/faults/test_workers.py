"""A worker process killed or frozen under load; the other one must take over its entries."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.harness import Harness

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


async def test_sigkill_one_of_two_workers_under_load(harness: Harness) -> None:
    """(i) Given 2 workers running 2,000 jobs of 50 ms, when one gets SIGKILL, then no job is
    lost, duplicates are at most the killed worker's concurrency, and the other worker is alive
    and consuming."""
    h = harness
    victim, survivor = await h.start_workers(2)
    producer = asyncio.create_task(h.produce(2000, rate=800, payload={"sleep_s": 0.05}))
    assert await h.wait_completed(400, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    h.kill(victim)
    await asyncio.to_thread(victim.proc.wait, 5)
    held = len(await h.held_by(victim))
    fault_end = time.time()
    await producer
    r = await h.finish(
        "i: SIGKILL of one of two workers",
        fault_start=fault_start,
        fault_end=fault_end,
        extra={"held_by_killed": held},
    )
    assert r.failed_enqueues == 0
    assert r.lost == 0, r.summary()
    assert r.duplicate_runs <= h.concurrency, r.summary()
    assert survivor.alive(), r.summary()
    assert r.workers_consuming, r.summary()


async def test_sigstop_of_a_worker_longer_than_its_lease(harness: Harness) -> None:
    """(j) Given 2 workers (lease 2 s) running 3,000 jobs of 50 ms, when one is frozen with
    SIGSTOP for 4 s and then resumed, then no job is lost, duplicates are at most the entries it
    held while frozen, and both workers are alive and consuming afterwards."""
    h = harness
    frozen, _other = await h.start_workers(2)
    producer = asyncio.create_task(h.produce(3000, rate=500, payload={"sleep_s": 0.05}))
    assert await h.wait_completed(400, timeout_s=15), "jobs did not start flowing"
    fault_start = time.time()
    h.pause(frozen)
    try:
        # What it holds grows while frozen: a read it had already sent (XREADGROUP BLOCK) is
        # still served by Redis, so entries are delivered to the frozen consumer.
        at_stop = await h.held_by(frozen)
        held = set(at_stop)
        resume_at = time.monotonic() + h.lease_ms / 1000 + 2
        while time.monotonic() < resume_at:
            held |= await h.held_by(frozen)
            await asyncio.sleep(0.1)
    finally:
        h.resume(frozen)
    fault_end = time.time()
    await producer
    r = await h.finish(
        "j: SIGSTOP of a worker for lease + 2 s",
        fault_start=fault_start,
        fault_end=fault_end,
        extra={"held_at_stop": len(at_stop), "held_while_frozen": len(held)},
    )
    assert held, "the frozen worker held nothing: the fault did not bite"
    assert r.failed_enqueues == 0
    assert r.lost == 0, r.summary()
    assert r.duplicate_runs <= len(held), r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()
