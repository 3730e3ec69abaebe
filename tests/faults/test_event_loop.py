"""Handlers that starve the worker's event loop: blocking code, and code that never yields."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.faults.harness import Harness

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


async def test_handler_blocking_the_loop_longer_than_the_lease(harness: Harness) -> None:
    """(k) Given 2 workers with a 1 s lease running quick jobs, when one job blocks its worker's
    event loop for 3 s, then that job runs exactly once, or its extra runs are reported (a log
    line naming the job and the event loop); no quick job is lost and both workers stay alive
    and consuming."""
    h = harness
    h.lease_ms = 1000
    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(1000, rate=400, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(100, timeout_s=15), "jobs did not start flowing"
    (blocker,) = await h.produce(1, batch=1, task="block", payload={"seconds": 3})
    assert await h.wait_started(blocker, timeout_s=10), "the blocking job never started"
    fault_start = min(e.at for e in h.ledger.events if e.job_id == blocker)
    await producer
    r = await h.finish(
        "k: handler blocks the event loop 3 s (lease 1 s)",
        fault_start=fault_start,
        fault_end=fault_start + 3,
    )
    runs = h.ledger.refresh().starts[blocker]
    reports = [
        line
        for w in h.workers
        for line in w.log().splitlines()
        if blocker in line and "event loop" in line.lower()
    ]
    dead = [d for d in await h.dead_letters() if blocker in d.get("j", "")]
    print(f"blocking job ran {runs} time(s); reports: {reports[:3]}; dead letters: {dead}")
    assert runs >= 1
    assert runs == 1 or reports, f"the blocking job ran {runs} times and nothing reported it"
    assert r.lost == 0, r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()


async def test_handler_that_never_yields_is_dead_lettered(harness: Harness) -> None:
    """(l) Given workers with QRUNNER_LOOP_STALL_LIMIT_S=2 (restarted when they exit) and a
    ``while True: pass`` job with max_deliveries=2, then each worker that runs it exits by itself
    with a non-zero code, the job ends in the dead-letter stream with a reason naming the event
    loop, a worker log names the task and the job id, and the other jobs all run."""
    h = harness
    h.lease_ms = 1000
    env = {"QRUNNER_LOOP_STALL_LIMIT_S": "2"}
    await h.start_workers(2, env=env)
    h.start_restarter(max_restarts=4, env=env)
    quick = await h.produce(200, rate=1000, batch=10)
    (spinner,) = await h.produce(1, batch=1, task="spin")
    assert await h.wait_started(spinner, timeout_s=10), "the spinning job never started"
    fault_start = time.time()

    async def dead_lettered() -> list[dict[str, str]]:
        return [d for d in await h.dead_letters() if spinner in d.get("j", "")]

    dead = await h.wait_until(dead_lettered, timeout_s=15)
    runners = set(h.ledger.refresh().pids_of(spinner))

    async def runners_gone() -> bool:
        return not any(w.alive() for w in h.workers if w.pid in runners)

    # The last runner may still be spinning when another worker dead-letters the entry.
    await h.wait_until(runners_gone, timeout_s=5)
    fault_end = time.time()
    exits = {w.pid: w.proc.returncode for w in h.workers if not w.alive()}
    await h.stop_restarter()
    r = await h.finish(
        "l: handler never yields (stall limit 2 s, max_deliveries 2)",
        fault_start=fault_start,
        fault_end=fault_end,
        expected=quick,
        wait_s=5,
        probe_s=4,
        extra={"runs": len(runners), "dead_letter": dead[:1]},
    )
    print(f"spinning job ran in pids {runners}; exits {exits}; dead letters {dead}")
    stuck = [p for p in runners if p not in exits]
    assert not stuck, f"worker(s) {stuck} ran the spinning job and never exited by themselves"
    assert all(exits[p] != 0 for p in runners), f"a worker exited 0 after a stall: {exits}"
    assert dead, "the spinning job never reached the dead-letter stream"
    assert "event loop" in dead[0].get("reason", "").lower(), dead[0]
    named = [
        line
        for w in h.workers
        for line in w.log().splitlines()
        if spinner in line and "spin" in line.replace(spinner, "")
    ]
    assert named, "no worker log line names the task and the job id"
    assert r.lost == 0, r.summary()
