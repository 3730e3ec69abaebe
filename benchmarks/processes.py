"""``qrunner worker --processes N`` against one process, in one run: the same backlog of jobs
that each await one Redis INCR, drained by a burst worker with 1 and with 2 processes.

Each side's time runs from the supervisor's start to its exit, less the same command's time
on an empty queue (interpreter start, connecting, the burst check), so the rows compare job
throughput. Medians of ``--repeats``, sides alternated; one private redis-server.

    .venv/bin/python benchmarks/processes.py --jobs 40000 --repeats 3 --out FILE.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sync_enqueue import start_redis  # noqa: E402

from benchmarks.cluster.tasks import registry  # noqa: E402
from qrunner import Client, connect_redis  # noqa: E402

TASK = "incr_bench_a"


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, url, _folder = start_redis()
    load_before = os.getloadavg()[0]
    rates: dict[int, list[float]] = {1: [], 2: []}
    try:
        for r in range(args.repeats):
            for processes in (1, 2) if r % 2 == 0 else (2, 1):
                asyncio.run(fill(url, 0))
                empty = run_worker(url, processes)
                asyncio.run(fill(url, args.jobs))
                took = run_worker(url, processes)
                rates[processes].append(args.jobs / max(took - empty, 1e-3))
                print(
                    f"repeat {r + 1}: {processes} process(es): {rates[processes][-1]:,.0f} jobs/s",
                    flush=True,
                )
    finally:
        proc.terminate()
        proc.wait()
    load_after = os.getloadavg()[0]
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    text = "\n".join(
        [
            "# One worker process against `--processes 2`",
            "",
            f"`benchmarks/processes.py --jobs {args.jobs} --repeats {args.repeats}` on "
            f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, one private redis-server "
            "(which shares the cores); job: one awaited INCR; concurrency 100 per process. "
            f"Load average before / after: {load_before:.2f} / {load_after:.2f}.",
            "",
            "| processes | median jobs/s | min | max | vs 1 process |",
            "|---|---|---|---|---|",
            f"| 1 | {one:,.0f} | {min(rates[1]):,.0f} | {max(rates[1]):,.0f} | 1.00x |",
            f"| 2 | {two:,.0f} | {min(rates[2]):,.0f} | {max(rates[2]):,.0f} | {two / one:.2f}x |",
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
