"""``qrunner worker --processes N`` against one process, in one run: the same backlog of jobs
that each await one Redis INCR, drained by a burst worker with 1 and with 2 processes.

Each side's time runs from the supervisor's start to its exit, less the same command's time
on an empty queue (interpreter start, connecting, the burst check), so the rows compare job
throughput. Medians of ``--repeats``, sides alternated; one private redis-server. CPU per job:
the worker processes' (supervisor included) from the children's rusage, Redis' from INFO cpu,
both over the whole loaded run: with Redis on the same cores, N processes can at best reach
cores / (worker + Redis CPU per job).

    .venv/bin/python benchmarks/processes.py --jobs 40000 --repeats 3 --out FILE.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis as sync_redis  # noqa: E402
from sync_enqueue import start_redis  # noqa: E402

from benchmarks.cluster.tasks import registry  # noqa: E402
from qrunner import Client, connect_redis  # noqa: E402

TASK = "incr_bench_a"


def redis_cpu_s(url: str) -> float:
    info = sync_redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_worker(url: str, processes: int) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"QRUNNER_REDIS_URL": url, "QRUNNER_LOG_LEVEL": "WARNING"}
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "qrunner.cli",
            "worker",
            "--app",
            "benchmarks.cluster.tasks",
            "--queues",
            "bench_a",
            "--burst",
            "--no-cron",
            "--processes",
            str(processes),
        ],
        cwd=ROOT,
        env=env,
        check=True,
    )
    return time.perf_counter() - t0


async def fill(url: str, n: int) -> None:
    redis = await connect_redis(url)
    try:
        await redis.flushall()
        await Client(redis, registry).enqueue_many([(TASK, {"i": i}) for i in range(n)])
    finally:
        await redis.aclose()


def cpu_bound(processes: int, workers: list[float], redis: list[float]) -> float:
    """Jobs/s if the CPU were the only limit: each process uses at most a core, and all of them
    with Redis at most the machine's cores."""
    w, r = statistics.median(workers), statistics.median(redis)
    cores = os.cpu_count() or 1
    return min(processes * 1e6 / w, cores * 1e6 / (w + r), 1e6 / r)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, url, _folder = start_redis()
    load_before = os.getloadavg()[0]
    rates: dict[int, list[float]] = {1: [], 2: []}
    workers_us: dict[int, list[float]] = {1: [], 2: []}
    redis_us: dict[int, list[float]] = {1: [], 2: []}
    try:
        for r in range(args.repeats):
            for processes in (1, 2) if r % 2 == 0 else (2, 1):
                asyncio.run(fill(url, 0))
                empty = run_worker(url, processes)
                asyncio.run(fill(url, args.jobs))
                cpu0, redis0 = children_cpu_s(), redis_cpu_s(url)
                took = run_worker(url, processes)
                workers_us[processes].append((children_cpu_s() - cpu0) / args.jobs * 1e6)
                redis_us[processes].append((redis_cpu_s(url) - redis0) / args.jobs * 1e6)
                rates[processes].append(args.jobs / max(took - empty, 1e-3))
                print(
                    f"repeat {r + 1}: {processes} process(es): {rates[processes][-1]:,.0f} jobs/s",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait()
    load_after = os.getloadavg()[0]
    one = statistics.median(rates[1])
    text = "\n".join(
        [
            "# One worker process against `--processes 2`",
            "",
            f"`benchmarks/processes.py --jobs {args.jobs} --repeats {args.repeats}` on "
            f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, one private redis-server "
            "(which shares the cores); job: one awaited INCR; concurrency 100 per process. "
            f"Load average before / after: {load_before:.2f} / {load_after:.2f}.",
            "",
            "| processes | median jobs/s | min | max | vs 1 process | workers' CPU µs/job "
            "| Redis CPU µs/job | bound: cores / CPU per job |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {p} | {statistics.median(rates[p]):,.0f} | {min(rates[p]):,.0f} | "
                f"{max(rates[p]):,.0f} | {statistics.median(rates[p]) / one:.2f}x | "
                f"{statistics.median(workers_us[p]):.1f} | {statistics.median(redis_us[p]):.1f} | "
                f"{cpu_bound(p, workers_us[p], redis_us[p]):,.0f}/s |"
                for p in (1, 2)
            ),
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
