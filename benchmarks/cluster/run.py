"""Throughput on a 3-master Redis Cluster beside a single Redis, with 1, 2 and 3 worker
processes, measured in one run (ratios are to the single node with one worker).

    .venv/bin/python -m benchmarks.cluster.run [--jobs 30000] [--repeats 3] [--binary PATH]

Each measurement: an emptied server, ``--jobs`` jobs enqueued in bulk over three queues (on a
cluster they hash to different masters), then N ``qrunner worker`` processes started at once;
jobs/s is the number of jobs over the time from the first job's start to the last one's end
(the counters the jobs increment, polled every 20 ms). Status records are on (the default).
Writes ``benchmarks/results/<date>-cluster.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qrunner_devservers.embedded import RedisProcess
from redis.asyncio import Redis

from benchmarks.cluster.tasks import QUEUES, counter, registry
from qrunner import Client
from qrunner.queue import JobSpec
from qrunner.runtime import connect_redis
from tests.cluster_support import LocalCluster

ROOT = Path(__file__).resolve().parents[2]


def _workers(url: str, n: int, plain: bool = False) -> list[subprocess.Popen[bytes]]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")},
        "QRUNNER_REDIS_URL": url,
        "QRUNNER_LOG_LEVEL": "WARNING",
    }
    if plain:  # each handler command on its own, not auto-pipelined
        env["QRUNNER_AUTOPIPELINE"] = "0"
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qrunner.cli",
                "worker",
                "--handlers",
                "benchmarks.cluster.tasks",
                "--no-cron",
                "--queues",
                ",".join(QUEUES),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(n)
    ]


async def _done(redis: Redis) -> int:
    total = 0
    for q in QUEUES:
        total += int(await redis.get(counter(q)) or 0)
    return total


async def measure(url: str, flush: object, n_workers: int, jobs: int, plain: bool = False) -> float:
    flush()  # type: ignore[operator]
    redis = await connect_redis(url)
    try:
        client = Client(redis, registry)
        specs = [JobSpec(f"incr_{QUEUES[i % 3]}", {}) for i in range(jobs)]
        await client.enqueue_many(specs)
        procs = _workers(url, n_workers, plain)
        try:
            first = None
            while True:
                done = await _done(redis)
                now = time.monotonic()
                if first is None and done > 0:
                    first = (now, done)
                if done >= jobs:
                    break
                await asyncio.sleep(0.02)
            assert first is not None
            return (jobs - first[1]) / max(now - first[0], 1e-6)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
    finally:
        await redis.aclose()


async def enqueue_rate(url: str, wait_replicas: int, n: int) -> float:
    redis = await connect_redis(url)
    client = Client(redis, registry, wait_replicas=wait_replicas, wait_timeout_ms=1000)
    try:
        await client.enqueue("incr_bench_a", {})  # warm up: script loaded, queue registered
        t0 = time.perf_counter()
        for _ in range(n):
            await client.enqueue("incr_bench_a", {})
        return n / (time.perf_counter() - t0)
    finally:
        await client.aclose_node_clients()
        await redis.aclose()


def durable_rows(folder: Path, binary: str | None, repeats: int) -> list[str]:
    """Awaited single enqueues on a 3-master cluster with one replica each: plain, and with
    ``wait_replicas=1`` (each enqueue waits for its replica's acknowledgement)."""
    cluster = LocalCluster(folder / "replicated", binary).start(masters=3, replicas_per_master=1)
    rates: dict[int, list[float]] = {0: [], 1: []}
    try:
        for _ in range(repeats):
            for wait in (0, 1):
                cluster.flushall()
                rates[wait].append(asyncio.run(enqueue_rate(cluster.cluster_url, wait, 2000)))
    finally:
        cluster.stop()
    base = statistics.median(rates[0])
    rows = ["", "| awaited enqueue, 3 masters + 3 replicas | jobs/s | ratio |", "|---|---|---|"]
    for wait, label in ((0, "plain"), (1, "wait_replicas=1")):
        med = statistics.median(rates[wait])
        spread = (max(rates[wait]) - min(rates[wait])) / 2
        rows.append(f"| {label} | {med:,.0f} ± {spread:,.0f} | {med / base:.2f}x |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--binary", default=os.environ.get("QRUNNER_TEST_REDIS_SERVER"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument(
        "--plain",
        action="store_true",
        help="add rows with QRUNNER_AUTOPIPELINE=0 (each handler command on its own)",
    )
    ap.add_argument("--no-durable", action="store_true", help="leave out the enqueue rows")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="qrunner-cluster-bench-"))
    single = RedisProcess(folder / "single", appendonly=False, binary=args.binary)
    single.start()
    cluster = LocalCluster(folder / "cluster", args.binary).start(masters=3)
    load_before = os.getloadavg()
    results: dict[tuple[str, int], list[float]] = {}
    try:
        sides = [
            (name, url, flush, plain)
            for plain in ((False, True) if args.plain else (False,))
            for name, url, flush in (
                ("single", single.url, lambda: single_flush(single.url)),
                ("cluster", cluster.cluster_url, cluster.flushall),
            )
        ]
        for rep in range(args.repeats):
            for n in args.workers:
                for name, url, flush, plain in sides if rep % 2 == 0 else sides[::-1]:
                    label = f"{name}, not auto-pipelined" if plain else name
                    rate = asyncio.run(measure(url, flush, n, args.jobs, plain))
                    results.setdefault((label, n), []).append(rate)
                    print(f"{label} workers={n}: {rate:,.0f} jobs/s", flush=True)
    finally:
        cluster.stop()
        single.stop()
    load_after = os.getloadavg()
    base = statistics.median(results[("single", 1)])
    lines = [
        f"# qrunner on a 3-master Redis Cluster ({dt.date.today().isoformat()})",
        "",
        f"`python -m benchmarks.cluster.run --jobs {args.jobs} --repeats {args.repeats} "
        f"--workers {' '.join(map(str, args.workers))}{' --plain' if args.plain else ''}` on "
        f"{os.cpu_count()} cores; server `{single.binary}` ({single.version}); load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after. Job: one awaited INCR; three "
        "queues (three masters on the cluster); status records on; the handlers' commands "
        "auto-pipelined unless the row says not (`QRUNNER_AUTOPIPELINE=0`). Median of the "
        "repeats, ± half the min-max range; ratio to one worker on the single node.",
        "",
        "| topology | workers | jobs/s | ratio |",
        "|---|---|---|---|",
    ]
    for (name, n), rates in sorted(results.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        med = statistics.median(rates)
        spread = (max(rates) - min(rates)) / 2
        lines.append(f"| {name} | {n} | {med:,.0f} ± {spread:,.0f} | {med / base:.2f}x |")
    if not args.no_durable:
        lines += durable_rows(folder, args.binary, args.repeats)
    out = args.out or ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-cluster.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def single_flush(url: str) -> None:
    from redis import Redis as SyncRedis

    client = SyncRedis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()


if __name__ == "__main__":
    main()
