"""Where a ``qrunner worker --processes N`` drain spends its time, process by process: how
much of each second each worker process and the private redis-server run on a core, wait
for one (runnable, on a run queue), and sleep (waiting for a reply or for work), and how
much of the machine sits idle.

One private redis-server, a backlog of ``--jobs`` one-INCR jobs (as ``processes.py``), a
burst worker with ``--processes N``; every ``--interval`` the script reads each process's CPU
time (``/proc/PID/stat``) and run-queue wait (``/proc/PID/task/*/schedstat``, the second
field: time runnable but not running), the machine's idle time (``/proc/stat``) and the
stream's length (acked entries leave it), and keeps the samples taken between 10 % and 90 %
of the backlog done. Each row is the median of those samples over every repeat.

Variants, each a way of placing the processes on the cores:

- ``default``: as the kernel schedules them;
- ``pin-workers``: worker process i on core i mod cores (``sched_setaffinity``, every thread);
- ``pin-all``: the same, and redis-server on the last core;
- ``batch``: the worker started as ``SCHED_BATCH`` (its children inherit it), so a waking
  redis-server is not held behind a worker on wake-up preemption.

    benchmarks/.venvs/qrunner/bin/python benchmarks/process_timeline.py --processes 1 2 \\
        --variants default pin-workers pin-all batch --out FILE.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import redis as sync_redis  # noqa: E402
from processes import fill  # noqa: E402
from sync_enqueue import start_redis  # noqa: E402

from qrunner import keys  # noqa: E402

QUEUE = "bench_a"
HZ = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
VARIANTS = ("default", "pin-workers", "pin-all", "batch")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def runqueue_s(pid: int) -> float:
    """Seconds the process's threads spent runnable but waiting for a core."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended between the listing and the read
    return total / 1e9


def machine_idle() -> tuple[int, int]:
    """(all, idle + iowait) jiffies since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values), values[3] + values[4]


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def pin(pid: int, core: int) -> None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {core})
        except ProcessLookupError:
            continue


def batch_policy() -> None:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def worker_pids(supervisor: int, processes: int, within: float = 30.0) -> list[int]:
    """The worker processes: the supervisor's children, or the supervisor itself with one."""
    if processes == 1:
        return [supervisor]
    deadline = time.monotonic() + within
    while len(kids := children(supervisor)) < processes:
        if time.monotonic() > deadline:
            raise SystemExit(f"the supervisor started {len(kids)} of {processes} workers")
        time.sleep(0.01)
    return kids


def one_run(
    url: str, redis_pid: int, processes: int, variant: str, jobs: int, interval: float
) -> list[dict[str, float]]:
    """Samples of one drain, each a dict of per-second shares, from 10 % to 90 % done."""
    asyncio.run(fill(url, jobs))
    r = sync_redis.Redis.from_url(url)
    stream = keys.stream(QUEUE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QRUNNER_")}
    env |= {"QRUNNER_REDIS_URL": url, "QRUNNER_LOG_LEVEL": "WARNING"}
    preexec: Callable[[], None] | None = batch_policy if variant == "batch" else None
    cmd = [sys.executable, "-m", "qrunner.cli", "worker", "--app", "benchmarks.cluster.tasks"]
    cmd += ["--queues", QUEUE, "--burst", "--no-cron", "--processes", str(processes)]
    sup = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=preexec)
    samples: list[dict[str, float]] = []
    try:
        workers = worker_pids(sup.pid, processes)
        if variant in ("pin-workers", "pin-all"):
            for i, pid in enumerate(workers):
                pin(pid, i % CORES)
        if variant == "pin-all":
            pin(redis_pid, CORES - 1)
        pids = {"redis": redis_pid} | {f"worker {i + 1}": p for i, p in enumerate(workers)}

        def read() -> tuple[float, dict[str, float], dict[str, float], tuple[int, int], int]:
            return (
                time.perf_counter(),
                {n: cpu_s(p) for n, p in pids.items()},
                {n: runqueue_s(p) for n, p in pids.items()},
                machine_idle(),
                int(r.xlen(stream)),
            )

        before = read()
        while sup.poll() is None:
            time.sleep(interval)
            try:
                now = read()
            except (FileNotFoundError, ProcessLookupError):
                break  # a worker exited: the drain is over
            t = now[0] - before[0]
            left = now[4]
            if jobs * 0.1 <= left <= jobs * 0.9 and before[4] > left:
                sample = {"jobs/s": (before[4] - left) / t}
                for n in pids:
                    sample[f"{n} cpu"] = (now[1][n] - before[1][n]) / t
                    sample[f"{n} queued"] = (now[2][n] - before[2][n]) / t
                all_j, idle_j = now[3][0] - before[3][0], now[3][1] - before[3][1]
                sample["idle cores"] = CORES * idle_j / max(all_j, 1)
                samples.append(sample)
            before = now
    finally:
        sup.wait()
        r.close()
    if sup.returncode != 0:
        raise SystemExit(f"the worker exited with {sup.returncode}")
    return samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=400_000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=["default"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    proc, url, _folder = start_redis()
    load_before = os.getloadavg()[0]
    runs = [(v, p) for v in args.variants for p in args.processes]
    samples: dict[tuple[str, int], list[dict[str, float]]] = {k: [] for k in runs}
    try:
        for rep in range(args.repeats):
            for variant, processes in runs if rep % 2 == 0 else runs[::-1]:
                got = one_run(url, proc.pid, processes, variant, args.jobs, args.interval)
                samples[variant, processes] += got
                rate = statistics.median(s["jobs/s"] for s in got) if got else 0.0
                print(f"repeat {rep + 1}: {variant}, {processes}: {rate:,.0f} jobs/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    load_after = os.getloadavg()[0]
    lines = [
        "# Where a drain's time goes, process by process",
        "",
        f"`benchmarks/process_timeline.py --jobs {args.jobs} --repeats {args.repeats} "
        f"--processes {' '.join(map(str, args.processes))} --variants {' '.join(args.variants)}`"
        f" on {CORES} cores, Python {sys.version.split()[0]}, one private redis-server on the "
        f"same cores; job: one awaited INCR; concurrency 100 per process. Load average before /"
        f" after: {load_before:.2f} / {load_after:.2f}. Shares of a second, medians of the "
        f"{args.interval:g} s samples between 10 % and 90 % of the backlog done: *cpu* on a core,"
        " *queued* runnable but waiting for a core, *asleep* the rest (waiting for a reply or "
        "for work).",
        "",
        "| variant | processes | jobs/s | process | cpu | queued | asleep | idle cores |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, processes in runs:
        got = samples[variant, processes]
        if not got:
            lines.append(f"| {variant} | {processes} | (no samples: raise --jobs) | | | | | |")
            continue

        def med(key: str, got: list[dict[str, float]] = got) -> float:
            return statistics.median(s[key] for s in got)

        names = sorted({k.rsplit(" ", 1)[0] for k in got[0] if k.endswith(" cpu")})
        for i, name in enumerate(names):
            cpu, queued = med(f"{name} cpu"), med(f"{name} queued")
            head = f"| {variant} | {processes} | {med('jobs/s'):,.0f}" if i == 0 else "| | | "
            tail = f" {med('idle cores'):.2f} |" if i == 0 else " |"
            lines.append(
                f"{head} | {name} | {cpu:.2f} | {queued:.2f} | {max(0.0, 1 - cpu - queued):.2f} |"
                + tail
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
