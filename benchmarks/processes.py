"""``qrunner worker --processes N`` against one process, in one run: the same backlog of jobs
that each await one Redis INCR, drained by a burst worker with 1 and with 2 processes.

qrunner's time runs from the supervisor's start to its exit, less the same command's time on
an empty queue (interpreter start, connecting, the burst check), so the rows compare job
throughput. Medians of ``--repeats``, process counts alternated; one private redis-server. CPU
per job: the worker processes' (supervisor included) from the children's rusage, less what
the same command used on an empty queue (each interpreter's start-up and imports, which a
second process pays again; for the raw loop, its start on an empty stream), and Redis' from
INFO cpu over the whole loaded run: with Redis on the same cores, N processes can at best
reach cores / (worker + Redis CPU per job).

``--raw`` adds the same rows for the suite's raw redis-py Streams loop (``peers/raw.py``: no
runtime, the same INCR body at the same concurrency) started as 1 or 2 processes. It has no
burst mode, so its rate is timed from the first 10 % of the backlog done to the last entry
acked, polled every 10 ms. Its rows are the limit for this job on this host: what the cores
allow a consumer that adds nothing to the body's own Redis round trip.

``--raw-autopipe`` adds rows for the same raw loop with the bodies' INCRs auto-pipelined
(``peers.raw.AutoPipeline``: the commands issued in one turn of the event loop go out as one
write). It asks what batching the bodies' commands would save Redis and the workers per job,
and whether that would leave a second process more to add. qrunner's worker auto-pipelines its
handlers' commands by default (``qrunner.autopipe``); ``--plain`` adds rows for it with
``QRUNNER_AUTOPIPELINE=0``, each command on a connection of its own.

    .venv/bin/python benchmarks/processes.py --jobs 40000 --repeats 3 --raw --out FILE.md
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
from peers.adapter import StreamBacklog  # noqa: E402
from peers.raw import GROUP as RAW_GROUP  # noqa: E402
from peers.raw import STREAM as RAW_STREAM  # noqa: E402
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


def run_worker(url: str, processes: int, side: str = "qrunner") -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"QRUNNER_REDIS_URL": url, "QRUNNER_LOG_LEVEL": "WARNING"}
    if side == "qrunner-plain":
        env["QRUNNER_AUTOPIPELINE"] = "0"
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


def fill_raw(url: str, n: int) -> StreamBacklog:
    """The raw loop's backlog: ``n`` INCR entries in its stream, its group at the start."""
    r = sync_redis.Redis.from_url(url)
    r.flushall()
    r.xgroup_create(RAW_STREAM, RAW_GROUP, id="0", mkstream=True)
    fields = {"t": "incr", "d": "{}"}
    for start in range(0, n, 1000):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(1000, n - start)):
            pipe.xadd(RAW_STREAM, fields)
        pipe.execute()
    backlog = StreamBacklog(r, RAW_STREAM, RAW_GROUP)
    backlog.snapshot()
    return backlog


#: The raw loop with its bodies' INCRs auto-pipelined (``peers.raw.AutoPipeline``).
AUTOPIPE = (
    "from peers.adapter import run_async; from peers.raw import _consume; "
    "run_async(_consume(100, autopipe=True))"
)


def raw_children(url: str, processes: int, side: str = "raw") -> list[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"BENCH_REDIS_URL": url}
    if side == "raw":
        cmd = [sys.executable, "-m", "peers", "raw", "worker", "--concurrency", "100"]
    else:
        cmd = [sys.executable, "-c", AUTOPIPE]
    return [
        subprocess.Popen(
            cmd,
            cwd=ROOT / "benchmarks",
            env=env,
        )
        for _ in range(processes)
    ]


def raw_startup_cpu_s(url: str, processes: int, side: str) -> float:
    """CPU the raw consumers use to start and sit on an empty stream for a second: taken off
    their loaded run's CPU, as qrunner's empty-queue run is."""
    fill_raw(url, 0)
    cpu0 = children_cpu_s()
    children = raw_children(url, processes, side)
    time.sleep(1.0)
    for c in children:
        c.terminate()
    for c in children:
        c.wait()
    return children_cpu_s() - cpu0


def run_raw(url: str, processes: int, backlog: StreamBacklog, n: int, side: str) -> float:
    """Start ``processes`` raw consumers; jobs/s from 10 % of the backlog done to all of it."""
    children = raw_children(url, processes, side)
    try:
        t0 = None
        start_at = int(n * 0.9)
        while (left := backlog.remaining()) > 0:
            if t0 is None and left <= start_at:
                t0, done0 = time.perf_counter(), n - left
            if any(c.poll() is not None for c in children):
                raise SystemExit("a raw consumer exited before the backlog was drained")
            time.sleep(0.01)
        t1 = time.perf_counter()
    finally:
        for c in children:
            c.terminate()
        for c in children:
            c.wait()
    if t0 is None:
        raise SystemExit("the backlog drained within one poll: raise --jobs")
    return (n - done0) / max(t1 - t0, 1e-3)


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
    parser.add_argument(
        "--raw", action="store_true", help="add rows for the raw redis-py loop as 1 and 2 processes"
    )
    parser.add_argument(
        "--raw-autopipe",
        action="store_true",
        help="add rows for the raw loop with its INCRs auto-pipelined (one write per loop turn)",
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="add rows for qrunner with QRUNNER_AUTOPIPELINE=0 (each handler command on its own)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sides = (
        "qrunner",
        *(["qrunner-plain"] if args.plain else []),
        *(["raw"] if args.raw else []),
        *(["raw-autopipe"] if args.raw_autopipe else []),
    )
    proc, url, _folder = start_redis()
    load_before = os.getloadavg()[0]
    rates: dict[tuple[str, int], list[float]] = {(s, p): [] for s in sides for p in (1, 2)}
    workers_us: dict[tuple[str, int], list[float]] = {k: [] for k in rates}
    redis_us: dict[tuple[str, int], list[float]] = {k: [] for k in rates}
    try:
        for r in range(args.repeats):
            for side in sides:
                for processes in (1, 2) if r % 2 == 0 else (2, 1):
                    key = (side, processes)
                    if side.startswith("qrunner"):
                        asyncio.run(fill(url, 0))
                        cpu0 = children_cpu_s()
                        empty = run_worker(url, processes, side)
                        empty_cpu = children_cpu_s() - cpu0
                        asyncio.run(fill(url, args.jobs))
                    else:
                        empty_cpu = raw_startup_cpu_s(url, processes, side)
                        backlog = fill_raw(url, args.jobs)
                    cpu0, redis0 = children_cpu_s(), redis_cpu_s(url)
                    if side.startswith("qrunner"):
                        rate = args.jobs / max(run_worker(url, processes, side) - empty, 1e-3)
                    else:
                        rate = run_raw(url, processes, backlog, args.jobs, side)
                    used = children_cpu_s() - cpu0 - empty_cpu
                    workers_us[key].append(used / args.jobs * 1e6)
                    redis_us[key].append((redis_cpu_s(url) - redis0) / args.jobs * 1e6)
                    rates[key].append(rate)
                    print(
                        f"repeat {r + 1}: {side}, {processes} process(es): {rate:,.0f} jobs/s",
                        flush=True,
                    )
    finally:
        proc.terminate()
        proc.wait()
    load_after = os.getloadavg()[0]
    text = "\n".join(
        [
            "# One worker process against `--processes 2`",
            "",
            f"`benchmarks/processes.py --jobs {args.jobs} --repeats {args.repeats}"
            f"{' --raw' if args.raw else ''}"
            f"{' --raw-autopipe' if args.raw_autopipe else ''}"
            f"{' --plain' if args.plain else ''}` on {os.cpu_count()} cores, Python "
            f"{sys.version.split()[0]}, one private redis-server (which shares the cores); job: "
            "one awaited INCR; concurrency 100 per process. "
            f"Load average before / after: {load_before:.2f} / {load_after:.2f}.",
            "",
            "| side | processes | median jobs/s | min | max | vs 1 process | workers' CPU µs/job "
            "| Redis CPU µs/job | bound: cores / CPU per job |",
            "|---|---|---|---|---|---|---|---|---|",
            *(
                f"| {s} | {p} | {statistics.median(rates[s, p]):,.0f} | {min(rates[s, p]):,.0f} | "
                f"{max(rates[s, p]):,.0f} | "
                f"{statistics.median(rates[s, p]) / statistics.median(rates[s, 1]):.2f}x | "
                f"{statistics.median(workers_us[s, p]):.1f} | "
                f"{statistics.median(redis_us[s, p]):.1f} | "
                f"{cpu_bound(p, workers_us[s, p], redis_us[s, p]):,.0f}/s |"
                for s in sides
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
