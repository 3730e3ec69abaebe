"""Rate-limit churn: what a backlog above a rate limit costs while several workers drain it.

    .venv/bin/python benchmarks/ratelimit_churn.py --jobs 6000 --rate 20 --burst 20 --workers 3

Starts a private ``redis-server`` (no persistence) on a free port unless ``--redis-url`` is
given, enqueues ``--jobs`` jobs of a task limited to ``--rate`` per second (burst ``--burst``) on
a queue of its own, starts ``--workers`` worker processes (this file's ``worker`` subcommand: a
qrunner ``Worker`` with the ``TokenBucketGate``, default settings, logging at INFO as
``qrunner worker`` does) and waits until every job has run or ``--max-seconds`` have passed.
Each job records the Redis time it ran at. The code measured is whatever ``import qrunner``
finds, so ``PYTHONPATH=/path/to/other/checkout`` measures another version with the same script.

Reported per job run:

- deferrals: jobs the workers deferred (``Deferred`` outcomes, counted by an ``Observer``);
  jobs that waited in place for a turn less than ``hold_s`` away are counted apart (``held``);
- Redis commands: the ``INFO commandstats`` delta (every call, including those made inside
  scripts), less this script's own polling and the job body's two commands (``TIME``,
  ``RPUSH``); ``EVALSHA`` calls separately;
- Redis CPU: the ``used_cpu_sys + used_cpu_user`` delta of the server;
- worker CPU: ``time.process_time()`` of every worker process from start to stop, summed;
- INFO lines: log records at INFO or above, per worker per minute;
- accuracy on the Redis clock: the most jobs run in any 1-second window (the limit allows rate
  + burst) and the steady rate (jobs run after the first second, over the time they took).

With ``--shared-queue`` the queue also carries a second task, without a limit (no jobs of it
are enqueued): the gate then cannot leave the queue unread while the bucket is exhausted, and
each job that finds no token is deferred to its recorded turn instead.

``--append FILE`` adds the result as a row of a Markdown table (and the raw numbers as JSON in
an HTML comment) to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

QUEUE = "rlbench"
TASK = "rl_bench"
GRANTS = "bench:grants"
STATS = "bench:stats"
BODY_COMMANDS = 2  # TIME + RPUSH in the job body


# --- the worker process -------------------------------------------------------------------------


def build_registry(rate: int, burst: int, shared: bool = False) -> Any:
    from qrunner import Context, Registry

    registry = Registry()

    if shared:

        @registry.task("rl_bench_other", queue=QUEUE)
        async def other(ctx: Context[Any], payload: dict[str, Any]) -> None: ...

    @registry.task(TASK, queue=QUEUE, rate_limit=f"{rate}/s", rate_burst=burst, max_retries=0)
    async def rl_bench(ctx: Context[Any], payload: dict[str, Any]) -> None:
        sec, usec = await ctx.redis.time()
        await ctx.redis.rpush(GRANTS, int(sec) * 1000 + int(usec) // 1000)  # type: ignore[misc]

    return registry


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def run_worker(args: argparse.Namespace) -> None:
    from qrunner.admission import TokenBucketGate
    from qrunner.events import Observer
    from qrunner.runtime import connect_redis
    from qrunner.settings import Settings
    from qrunner.worker import Worker

    class Outcomes(Observer):
        def __init__(self) -> None:
            self.counts: dict[str, int] = {}

        def job_finished(self, task: str, queue: str, outcome: str, duration_s: float) -> None:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1

    counter = _CountingHandler()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger().addHandler(counter)
    cpu0 = time.process_time()
    redis = await connect_redis(args.redis_url)
    registry = build_registry(args.rate, args.burst, args.shared_queue)
    gate = TokenBucketGate(redis, registry)
    outcomes = Outcomes()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    worker = Worker(
        redis,
        registry,
        queues=[QUEUE],
        concurrency=args.concurrency,
        settings=Settings(),
        observer=outcomes,
        gate=gate,
    )
    try:
        await worker.run(stop)
    finally:
        counts = getattr(gate, "counts", {}).get(TASK)
        stats = {
            "pid": os.getpid(),
            "cpu_s": time.process_time() - cpu0,
            "info_lines": counter.count,
            "outcomes": outcomes.counts,
            "held": getattr(counts, "held", 0),
        }
        await redis.rpush(STATS, json.dumps(stats))  # type: ignore[misc]
        await redis.aclose()


# --- the measurement ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = os.environ.get("BENCH_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server on PATH (or set BENCH_REDIS_SERVER, or --redis-url)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


async def commandstats(redis: Redis) -> dict[str, int]:
    info = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


async def redis_cpu(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def most_in_window(times: list[int], span_ms: int) -> int:
    best, start = 0, 0
    for end in range(len(times)):
        while times[end] - times[start] >= span_ms:
            start += 1
        best = max(best, end - start + 1)
    return best


async def measure(args: argparse.Namespace, url: str, workdir: Path) -> dict[str, Any]:
    from qrunner.queue import Client

    redis = Redis.from_url(url)
    for _ in range(100):
        try:
            await redis.ping()
            break
        except Exception:
            await asyncio.sleep(0.05)
    await redis.flushall()
    client = Client(redis, build_registry(args.rate, args.burst, args.shared_queue))
    for start in range(0, args.jobs, 1000):
        count = min(1000, args.jobs - start)
        await client.enqueue_many([(TASK, {"i": start + i}) for i in range(count)])

    stats0, cpu0 = await commandstats(redis), await redis_cpu(redis)
    polls = 2  # the two INFO calls above
    procs = []
    logs = []
    for i in range(args.workers):
        log_path = workdir / f"worker-{i}.log"
        logs.append(log_path)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "worker",
                "--redis-url",
                url,
                "--rate",
                str(args.rate),
                "--burst",
                str(args.burst),
                "--concurrency",
                str(args.concurrency),
                *(["--shared-queue"] if args.shared_queue else []),
                stdout=subprocess.DEVNULL,
                stderr=log_fd,
            )
        )
        os.close(log_fd)
    started = time.monotonic()
    done = 0
    try:
        while time.monotonic() - started < args.max_seconds:
            await asyncio.sleep(1.0)
            done = int(await redis.llen(GRANTS))  # type: ignore[misc]
            polls += 1
            if done >= args.jobs:
                break
        elapsed = time.monotonic() - started
        stats1, cpu1 = await commandstats(redis), await redis_cpu(redis)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    workers = [json.loads(raw) for raw in await redis.lrange(STATS, 0, -1)]  # type: ignore[misc]
    grants = sorted(int(g) for g in await redis.lrange(GRANTS, 0, -1))  # type: ignore[misc]
    await redis.aclose()

    ran = len(grants)
    calls = sum(stats1.values()) - sum(stats0.values())
    calls -= polls + BODY_COMMANDS * ran
    evalsha = stats1.get("evalsha", 0) - stats0.get("evalsha", 0)
    deferred = sum(w["outcomes"].get("deferred", 0) for w in workers)
    held = sum(w.get("held", 0) for w in workers)
    worker_cpu = sum(w["cpu_s"] for w in workers)
    info_lines = sum(w["info_lines"] for w in workers)
    t0 = grants[0] if grants else 0
    steady = [g for g in grants if g >= t0 + 1_000]
    steady_rate = (len(steady) - 1) / ((steady[-1] - steady[0]) / 1000) if len(steady) > 1 else 0.0
    per_job = max(ran, 1)
    by_command = {
        name: round((stats1.get(name, 0) - stats0.get(name, 0)) / per_job, 2)
        for name in sorted(stats1, key=lambda n: stats0.get(n, 0) - stats1[n])
        if stats1.get(name, 0) > stats0.get(name, 0)
    }
    return {
        "label": args.label,
        "jobs": args.jobs,
        "rate": args.rate,
        "burst": args.burst,
        "workers": args.workers,
        "concurrency": args.concurrency,
        "shared_queue": args.shared_queue,
        "seconds": round(elapsed, 1),
        "ran": ran,
        "finished": ran >= args.jobs,
        "deferrals": deferred,
        "deferrals_per_job": round(deferred / per_job, 3),
        "held": held,
        "redis_commands_per_job": round(calls / per_job, 2),
        "evalsha_per_job": round(evalsha / per_job, 2),
        "redis_cpu_ms_per_job": round((cpu1 - cpu0) * 1000 / per_job, 3),
        "worker_cpu_ms_per_job": round(worker_cpu * 1000 / per_job, 3),
        "info_lines": info_lines,
        "info_lines_per_worker_minute": round(
            info_lines / max(len(workers), 1) / max(elapsed / 60, 1e-9), 1
        ),
        "max_in_1s": most_in_window(grants, 1_000),
        "steady_rate": round(steady_rate, 2),
        "steady_error_pct": round(100 * (steady_rate - args.rate) / args.rate, 2),
        "commands_per_job": by_command,
        "worker_exit_codes": [p.returncode for p in procs],
        "worker_logs": [str(p) for p in logs],
    }


COLUMNS = (
    ("label", "version"),
    ("ran", "jobs run"),
    ("seconds", "s"),
    ("deferrals_per_job", "deferrals / job"),
    ("held", "held in place"),
    ("redis_commands_per_job", "Redis commands / job"),
    ("evalsha_per_job", "EVALSHA / job"),
    ("redis_cpu_ms_per_job", "Redis CPU ms / job"),
    ("worker_cpu_ms_per_job", "worker CPU ms / job"),
    ("info_lines_per_worker_minute", "INFO lines / worker / min"),
    ("max_in_1s", "max in 1 s"),
    ("steady_rate", "steady rate /s"),
)


def table_header() -> str:
    return "| " + " | ".join(title for _, title in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"


def table_row(result: dict[str, Any]) -> str:
    return "| " + " | ".join(str(result[key]) for key, _ in COLUMNS) + " |\n"


def run_benchmark(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="rlbench-"))
    server = None
    url = args.redis_url
    if url is None:
        server, url = start_redis(workdir)
    try:
        result = asyncio.run(measure(args, url, workdir))
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print(table_header() + table_row(result), end="")
    print(json.dumps(result, indent=2))
    if args.append:
        path = Path(args.append)
        text = path.read_text() if path.exists() else ""
        with path.open("a") as out:
            if "| version |" not in text:
                out.write(table_header())
            out.write(table_row(result))
            out.write(f"<!-- {json.dumps(result)} -->\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="run one worker process (started by the benchmark)")
    worker.add_argument("--redis-url", required=True)
    for p in (parser, worker):
        p.add_argument("--rate", type=int, default=20, help="jobs per second allowed")
        p.add_argument("--burst", type=int, default=20)
        p.add_argument("--concurrency", type=int, default=100, help="per worker process")
        p.add_argument(
            "--shared-queue", action="store_true", help="the queue also carries another task"
        )
    parser.add_argument("--jobs", type=int, default=6000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=330.0)
    parser.add_argument("--redis-url", default=None, help="use this Redis (it is FLUSHALLed)")
    parser.add_argument("--label", default="current")
    parser.add_argument("--append", default=None, help="add the result to this Markdown file")
    args = parser.parse_args()
    if args.command == "worker":
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(run_worker(args))
        return 0
    return run_benchmark(args)


if __name__ == "__main__":
    raise SystemExit(main())
