"""Fairness benchmark: does one tenant's burst delay another tenant's job, and what does
fairness cost in throughput?

Scenario, run once with a fair task (``fair_key``) and once with a plain task on a queue of its
own: key A has ``--jobs`` (50,000) jobs queued before one worker process starts; while the
worker works through them, key B enqueues one job per second. Measured: B's wait (enqueue to
start, p50 / p99 / max) and the throughput over A's jobs (first to last finished).

    python -m benchmarks.fairness --jobs 50000 --repeats 2 --out benchmarks/results/...md

The module is also the worker's handler module (``--handlers benchmarks.fairness``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from qrunner import Client, Context, Registry
from qrunner.queue import JobSpec

ROOT = Path(__file__).resolve().parent.parent
FAIR_QUEUE = "fairbench"
PLAIN_QUEUE = "plainbench"

registry = Registry()


def _tenant(payload: dict[str, Any]) -> str:
    return str(payload["tenant"])


async def _work(ctx: Context[Any], payload: dict[str, Any]) -> None:
    if payload["tenant"] == "B":
        waited = int(time.time() * 1000) - ctx.job.enqueued_ms
        await ctx.redis.rpush("bench:bwait", waited)  # type: ignore[misc]
    else:
        await ctx.redis.incr("bench:done")


registry.task("fair_work", queue=FAIR_QUEUE, fair_key=_tenant, max_retries=0)(_work)
registry.task("plain_work", queue=PLAIN_QUEUE, max_retries=0)(_work)


@dataclass
class Row:
    mode: str
    jobs_per_s: float
    b_samples: list[int]

    def pct(self, p: float) -> int:
        ordered = sorted(self.b_samples)
        return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def _worker(url: str, queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")},
        "QRUNNER_REDIS_URL": url,
        "QRUNNER_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--handlers",
            "benchmarks.fairness",
            "--queues",
            queue,
            "--concurrency",
            str(concurrency),
            "--no-cron",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _run_once(url: str, mode: str, jobs: int, concurrency: int) -> Row:
    redis = Redis.from_url(url)
    try:
        await redis.flushall()
        client = Client(redis, registry)
        task = "fair_work" if mode == "fair" else "plain_work"
        queue = FAIR_QUEUE if mode == "fair" else PLAIN_QUEUE
        for start in range(0, jobs, 5000):
            count = min(5000, jobs - start)
            await client.enqueue_many([JobSpec(task, {"tenant": "A"}) for _ in range(count)])
        proc = _worker(url, queue, concurrency)
        try:
            first: float | None = None
            last_b = 0.0
            sent_b = 0
            while True:
                now = time.monotonic()
                done = int(await redis.get("bench:done") or 0)
                if done and first is None:
                    first = now
                if done >= jobs:
                    finished = now
                    break
                if first is not None and now - last_b >= 1.0:
                    await client.enqueue(task, {"tenant": "B"})
                    sent_b += 1
                    last_b = now
                await asyncio.sleep(0.01)
            waits = []
            for _ in range(sent_b):  # the last B jobs may still be running
                got = await redis.blpop(["bench:bwait"], timeout=60)  # type: ignore[misc]
                waits.append(int(got[1]))
        finally:
            proc.terminate()
            proc.wait(30)
        assert first is not None
        return Row(mode, jobs / max(finished - first, 1e-9), waits)
    finally:
        await redis.aclose()


def _table(rows: list[Row], jobs: int, concurrency: int, binary: str, repeats: int) -> str:
    by_mode: dict[str, list[Row]] = {}
    for r in rows:
        by_mode.setdefault(r.mode, []).append(r)
    plain_tp = statistics.median(r.jobs_per_s for r in by_mode["plain"])
    out = [
        f"# Fairness: one key's {jobs:,}-job burst vs another key's job per second (2026-11-30)",
        "",
        f"`python -m benchmarks.fairness --jobs {jobs} --repeats {repeats}` on "
        f"{os.cpu_count()} cores ({platform.python_implementation()} "
        f"{platform.python_version()}); server `{binary}`; one worker process, concurrency "
        f"{concurrency}; status records on. Job: one awaited Redis command. Throughput is over "
        "A's jobs (first to last finished), median of the repeats; B's waits (enqueue to start, "
        "one job per second while A's backlog drains) pooled over the repeats.",
        "",
        "| mode | jobs/s (A) | vs plain | B jobs | B p50 wait | B p99 wait | B max wait |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in ("plain", "fair"):
        rs = by_mode[mode]
        tp = statistics.median(r.jobs_per_s for r in rs)
        pooled = Row(mode, tp, [w for r in rs for w in r.b_samples])
        out.append(
            f"| {mode} | {tp:,.0f} | {tp / plain_tp:.2f}x | {len(pooled.b_samples)} | "
            f"{pooled.pct(0.5):,} ms | {pooled.pct(0.99):,} ms | {max(pooled.b_samples):,} ms |"
        )
    return "\n".join(out) + "\n"


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    from qrunner.pytest_plugin import TestRedis

    with tempfile.TemporaryDirectory(prefix="qrunner-fairbench-") as folder:
        server = TestRedis(Path(folder))
        server.start()
        try:
            rows = []
            for _ in range(args.repeats):
                for mode in ("plain", "fair"):
                    row = await _run_once(server.url, mode, args.jobs, args.concurrency)
                    print(
                        f"{mode}: {row.jobs_per_s:,.0f} jobs/s, B p99 {row.pct(0.99)} ms "
                        f"({len(row.b_samples)} samples)",
                        flush=True,
                    )
                    rows.append(row)
        finally:
            server.stop()
    table = _table(rows, args.jobs, args.concurrency, server.binary, args.repeats)
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    asyncio.run(main())
