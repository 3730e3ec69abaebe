"""The timed loops, identical for every peer: enqueue, process, latency, delayed, memory.

Each takes an :class:`~peers.adapter.Adapter` and returns the dict printed as the JSON line.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from typing import Any

import redis

from peers.adapter import (
    BULK_CHUNK,
    COUNTER_KEY,
    LATENCY_KEY,
    POLL_S,
    TASK_FOR_BODY,
    Adapter,
    payload,
    stop_workers,
    worker_problem,
)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


async def measure_enqueue(a: Adapter, n: int, bulk: bool) -> dict[str, Any]:
    await a.call(a.open())
    try:
        await a.enqueue_all("noop", 50, start=10**9)  # warm connections and scripts
        t0 = time.perf_counter()
        if bulk:
            await a.enqueue_all("noop", n)
        elif a.asynchronous:
            for i in range(n):
                await a.send("noop", payload(i))
        else:
            for i in range(n):
                a.send("noop", payload(i))
        elapsed = time.perf_counter() - t0
    finally:
        await a.call(a.close())
    queued = await a.call(a.remaining()) - 50
    out: dict[str, Any] = {"n": n, "seconds": elapsed, "jobs_per_s": n / elapsed, "queued": queued}
    if queued != n:
        out["error"] = f"{queued} jobs in Redis after enqueuing {n}"
    if bulk:
        out["bulk"] = a.bulk_label
    return out


async def measure_process(
    a: Adapter,
    n: int,
    body: str,
    variant: str,
    workers: int,
    concurrency: int | None,
    cap_s: float,
    window: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Drain a backlog of ``n`` jobs; the rate from the first finished job to the last or, with
    ``window`` (fractions of the backlog done, e.g. 0.3 and 0.9), between those two points:
    a steady-state rate that leaves out the start (the second of two worker processes may
    still be importing while the first drains) and the last stragglers."""
    task = TASK_FOR_BODY[body]
    await a.call(a.open())
    try:
        await a.enqueue_all(task, n)
    finally:
        await a.call(a.close())
    a.after_prefill(n)
    before = await a.call(a.remaining())
    if before != n:
        return {"n": n, "error": f"backlog holds {before} jobs, expected {n}"}
    procs = a.spawn_workers(variant, workers, concurrency, f"process-{body}")
    t_spawn = time.perf_counter()
    t_first = None
    done_first = 0
    deadline = t_spawn + cap_s
    out: dict[str, Any] = {"n": n, "body": body, "variant": variant, "workers": workers}
    marks: list[tuple[float, int]] = []  # (time, jobs done) on reaching each window edge
    edges = [n * (1 - f) for f in window] if window else []
    try:
        while True:
            left = await a.call(a.remaining())
            now = time.perf_counter()
            if t_first is None and left < n:
                t_first, done_first = now, n - left
            while edges and left <= edges[0]:
                edges.pop(0)
                marks.append((now, n - left))
            if left <= 0:
                break
            problem = worker_problem(procs)
            if problem or now > deadline:
                out["error"] = problem or "timeout"
                out["done"] = n - left
                if t_first is not None and now > t_first:
                    out["startup_s"] = t_first - t_spawn
                    out["partial_jobs_per_s"] = (n - left - done_first) / (now - t_first)
                return out
            await asyncio.sleep(POLL_S)
        t_done = time.perf_counter()
        assert t_first is not None
        out["startup_s"] = t_first - t_spawn
        out["wall_s"] = t_done - t_spawn
        if done_first == n:
            out["error"] = f"all {n} jobs done within one {POLL_S * 1000:.0f} ms poll; raise N"
        else:
            out["jobs_per_s"] = (n - done_first) / (t_done - t_first)
        if window and len(marks) == 2 and marks[1][0] > marks[0][0]:
            out["first_to_last_jobs_per_s"] = out.get("jobs_per_s")
            out["jobs_per_s"] = (marks[1][1] - marks[0][1]) / (marks[1][0] - marks[0][0])
            out["window"] = f"{window[0]:.0%} to {window[1]:.0%} done"
        elif window:
            out["error"] = "the steady-state window passed within one poll; raise N"
        out["verified"] = await _verify(a, n, body)
        return out
    finally:
        stop_workers(procs)


async def _verify(a: Adapter, n: int, body: str) -> str:
    """Exactly-once check: the INCR counter for the Redis body, else the runtime's own count."""
    await asyncio.sleep(0.3)  # let a duplicate delivery, if any, land
    failed = await a.call(a.failed())
    if failed:
        return f"failed: {failed} jobs"
    if body == "redis":
        got = int(a.r.get(COUNTER_KEY) or 0)
    else:
        maybe = await a.call(a.completed())
        if maybe is None:
            return a.noop_check
        got = maybe
    if got == n:
        return "exact"
    if got > n:
        return f"duplicates: {got - n} extra runs"
    return f"lost: {n - got} jobs"


async def measure_latency(
    a: Adapter, rate: float, seconds: float, variant: str, cap_s: float
) -> dict[str, Any]:
    procs = a.spawn_workers(variant, 1, None, "latency")
    try:
        await a.call(a.open())
        try:
            ready = await _wait_ready(a, procs, cap_s)
            if ready is not None:
                return {"error": ready}
            total = int(rate * seconds)
            t0 = time.perf_counter()
            for i in range(total):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await a.call(a.send("lat", {"t": time.time()}))
            sent_s = time.perf_counter() - t0
        finally:
            await a.call(a.close())
        deadline = time.perf_counter() + min(cap_s, 30.0)
        while a.r.llen(LATENCY_KEY) < total and time.perf_counter() < deadline:
            if worker_problem(procs):
                break
            await asyncio.sleep(0.02)
        values = sorted(float(v) * 1000 for v in a.r.lrange(LATENCY_KEY, 0, -1))
        out: dict[str, Any] = {
            "sent": total,
            "received": len(values),
            "rate_achieved": total / sent_s,
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "max_ms": values[-1] if values else float("nan"),
            "mean_ms": statistics.fmean(values) if values else float("nan"),
        }
        if len(values) < total:
            out["error"] = f"lost: {total - len(values)} of {total} latency jobs"
        elif len(values) > total:
            out["error"] = f"duplicates: {len(values) - total} extra runs"
        return out
    finally:
        stop_workers(procs)


async def _wait_ready(a: Adapter, procs: list[subprocess.Popen[bytes]], cap_s: float) -> str | None:
    """Probe the idle worker until it runs a job, then clear the probes' records."""
    deadline = time.perf_counter() + cap_s
    while a.r.llen(LATENCY_KEY) == 0:
        problem = worker_problem(procs)
        if problem or time.perf_counter() > deadline:
            return problem or "timeout waiting for the worker to start"
        await a.call(a.send("lat", {"t": time.time()}))
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # probes queued behind the first one finish, the worker goes idle
    a.r.delete(LATENCY_KEY)
    return None


async def measure_delayed(a: Adapter, n: int, variant: str, cap_s: float) -> dict[str, Any]:
    """n due jobs in the delayed set, then one worker: rates of promotion and of completion."""
    delay_s = 1.0
    await a.call(a.open())
    try:
        for first in range(0, n, BULK_CHUNK):
            items = [payload(i) for i in range(first, min(n, first + BULK_CHUNK))]
            await a.call(a.send_many_delayed("noop", items, delay_s))
    finally:
        await a.call(a.close())
    await asyncio.sleep(delay_s)
    waiting = await a.call(a.delayed_count())
    if waiting != n:
        return {"n": n, "error": f"delayed set holds {waiting} jobs, expected {n}"}
    procs = a.spawn_workers(variant, 1, None, "delayed")
    t_spawn = time.perf_counter()
    t_first = t_promoted = None
    out: dict[str, Any] = {"n": n}
    try:
        while True:
            waiting = await a.call(a.delayed_count())
            left = await a.call(a.remaining())
            now = time.perf_counter()
            if t_first is None and waiting < n:
                t_first = now
            if t_promoted is None and waiting == 0:
                t_promoted = now
            if left <= 0 and t_promoted is not None:
                break
            problem = worker_problem(procs)
            if problem or now > t_spawn + cap_s:
                out.update(error=problem or "timeout", done=n - left, still_delayed=waiting)
                return out
            await asyncio.sleep(POLL_S)
        assert t_first is not None
        out["startup_s"] = t_first - t_spawn
        out["promote_jobs_per_s"] = n / max(t_promoted - t_first, 1e-9)
        out["jobs_per_s"] = n / max(now - t_first, 1e-9)
        out["verified"] = await _verify(a, n, "noop")
        return out
    finally:
        stop_workers(procs)


async def measure_memory(a: Adapter, n: int) -> dict[str, Any]:
    """used_memory delta per job, net of client buffers (a gather opens up to 100 connections)."""
    await a.call(a.open())
    try:
        await a.enqueue_all("noop", 100, start=10**9)  # queue structures exist before "before"
    finally:
        await a.call(a.close())
    before = _dataset_memory(a.r)
    await a.call(a.open())
    try:
        await a.enqueue_all("noop", n)
    finally:
        await a.call(a.close())
    after = _dataset_memory(a.r)
    return {"n": n, "bytes_per_job": (after - before) / n, "used_memory_delta": after - before}


def _dataset_memory(r: redis.Redis) -> int:
    """used_memory minus what connected clients' buffers hold, once closed clients are freed."""
    time.sleep(0.2)
    info = r.info("memory")
    return int(info["used_memory"]) - int(info.get("mem_clients_normal", 0))
