"""Redis alive but not answering (SIGSTOP, DEBUG SLEEP) or refusing writes (maxmemory)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from qrunner import QrunnerError
from tests.faults.harness import Harness, text

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]


async def test_redis_stopped_for_3s(harness: Harness) -> None:
    """(f) Given 2 workers under load, when redis-server gets SIGSTOP and, 3 s later, SIGCONT,
    then every acknowledged job runs, duplicates stay within one batch per worker, and both
    workers are alive and consuming."""
    h = harness
    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(2500, rate=500, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(400, timeout_s=15), "jobs did not start flowing"
    pid = h.server.pid
    assert pid is not None
    fault_start = time.time()
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(3)
    finally:
        os.kill(pid, signal.SIGCONT)
    fault_end = time.time()
    await producer
    r = await h.finish(
        "f: redis-server SIGSTOP for 3 s", fault_start=fault_start, fault_end=fault_end
    )
    assert r.lost == 0, r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()
    assert r.duplicate_runs <= 2 * h.concurrency, r.summary()


async def test_debug_sleep_3s(harness: Harness) -> None:
    """(g) Given 2 workers under load, when Redis runs DEBUG SLEEP 3 (busy for 3 s, connections
    open), then every acknowledged job runs and both workers are alive and consuming."""
    h = harness
    if h.server_kind == "valkey" or h.server_version >= (7,):
        # DEBUG is refused on Redis 7+ unless the server starts with this flag.
        await h.restart_server(extra_args=["--enable-debug-command", "yes"])
    await h.start_workers(2)
    producer = asyncio.create_task(h.produce(2500, rate=500, payload={"sleep_s": 0.01}))
    assert await h.wait_completed(400, timeout_s=15), "jobs did not start flowing"
    sleeper = Redis.from_url(h.server.url)
    try:
        fault_start = time.time()
        await sleeper.execute_command("DEBUG", "SLEEP", "3")  # type: ignore[no-untyped-call]
        fault_end = time.time()
    finally:
        await sleeper.aclose()
    assert fault_end - fault_start >= 2.9, "DEBUG SLEEP returned early: it did not run"
    await producer
    r = await h.finish("g: DEBUG SLEEP 3", fault_start=fault_start, fault_end=fault_end)
    assert r.lost == 0, r.summary()
    assert r.workers_alive, r.summary()
    assert r.workers_consuming, r.summary()
    assert r.duplicate_runs <= 2 * h.concurrency, r.summary()


async def test_maxmemory_refuses_enqueues_with_a_qrunner_error_then_recovers(
    harness: Harness,
) -> None:
    """(h) Given 2 workers with a backlog building up (status records off, so a drained queue
    frees most of its memory), when maxmemory is set just above the memory in use (noeviction), then
    enqueues fail with a qrunner error (not a raw redis-py one), the workers keep draining every
    acknowledged job, and once the backlog has drained enqueues work again."""
    h = harness
    h.use_status_ttl(0)
    await h.start_workers(2)
    # Warm up first, so that every connection the workers open under load is counted in the
    # memory in use (each client costs Redis some KB of buffers).
    warm = await h.produce(1000, rate=3000, batch=20, payload={"sleep_s": 0.2})
    assert await h.wait_completed(ids=warm, timeout_s=15)
    start = await h.redis.info("memory")
    used = int(start["used_memory"])
    limit = used + 256 * 1024
    await h.redis.config_set("maxmemory-policy", "noeviction")
    await h.redis.config_set("maxmemory", limit)
    fault_start = time.time()
    refused_from = len(h.enqueues.errors)
    # ~500 jobs/s drain (100 slots, 0.2 s each) against 3,000/s enqueued: the backlog grows.
    # Every job accepted keeps an id marker for 2 minutes (status records off, about 80 bytes),
    # and a drain frees only the jobs' stream entries. So the jobs carry a few hundred bytes,
    # as a notification's payload does (a bare job's entry is smaller than its marker, and the
    # drain would free less than the markers took), and production stops soon after the limit
    # refuses it (a producer going on at the limit turns the room each drained job frees into
    # markers).
    await h.produce(
        6000,
        rate=3000,
        batch=20,
        payload={"sleep_s": 0.2, "note": "x" * 200},
        stop_after_failures=10,
    )
    single_error: BaseException | None = None
    try:
        await h.client.enqueue("quick", {})
    except Exception as exc:
        single_error = exc
    refused = h.enqueues.errors[refused_from:]
    before = set(h.enqueues.acked)
    drained = await h.wait_completed(ids=before, timeout_s=20)
    fault_end = time.time()
    memory = await h.redis.info("memory")
    sizes = {text(k): await h.redis.memory_usage(k) or 0 for k in await h.redis.keys("*")}
    big = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    print(
        f"before: used_memory {used}, clients {start['mem_clients_normal']}; "
        f"after draining: used_memory {memory['used_memory']} of {limit}; "
        f"dataset {memory['used_memory_dataset']}, clients {memory['mem_clients_normal']}; "
        f"{len(sizes)} keys, {sum(sizes.values())} bytes, largest {big}"
    )
    # Not every byte comes back at once: with status records off, each enqueued id keeps a
    # marker for 2 minutes (idempotent enqueue), and in this test every acknowledged job's
    # marker is still alive, filling much of the headroom. So what must work again is a batch.
    after = await h.produce(50, rate=2000, batch=10)
    # Lift the limit, so that the probes below judge the workers and not the memory left.
    await h.redis.config_set("maxmemory", 0)
    r = await h.finish(
        "h: maxmemory just above used memory (noeviction)",
        fault_start=fault_start,
        fault_end=fault_end,
        wait_s=10,
        extra={
            "maxmemory": limit,
            "used_before": used,
            "used_after_drain": int(memory["used_memory"]),
            "refused_calls": len(refused),
            "acked_before_drain": len(before),
            "acked_after_drain": f"{len(after)}/50",
            "keys_after_drain": len(sizes),
        },
    )
    assert refused, "no enqueue was refused: the memory limit was never reached"
    wrong = [e for e in [*refused, single_error] if e is not None and not _qrunner_error(e)]
    assert not wrong, f"enqueue raised a non-qrunner error: {wrong[0]!r}"
    assert drained, f"workers did not drain the backlog under maxmemory: {r.summary()}"
    assert r.workers_alive, r.summary()
    assert after[:10], "enqueue still refused after the backlog drained"
    assert r.lost == 0, r.summary()
    assert r.workers_consuming, r.summary()


def _qrunner_error(exc: BaseException) -> bool:
    return isinstance(exc, QrunnerError) and not isinstance(exc, RedisError)
