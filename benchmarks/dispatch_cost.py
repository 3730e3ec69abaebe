"""What the worker's own Python costs per no-op job, with no Redis in the way.

A throughput, and even the CPU a job costs, moved by a factor of two between minutes on this
host: the same code read 16.6 and 30.2 µs of worker CPU per no-op job in two rounds of
``cpu_per_job.py``. A change of a microsecond per job cannot be seen through that. This
measures only the part of the worker that runs per job between a read and an ack:
``Worker._dispatch`` on a batch of entries already read (decode each envelope, start each job
in its task, run the no-op handler, record the completion for the batched ack). The worker is
built on a client that never connects; nothing here touches a socket. Each batch is timed on
its own, and a side's figure is its fastest batch: slowness from outside (another process, a
stolen time slice) only ever adds, so the minimum over many short batches is what the code
costs. Sides (this checkout, and each ``--base DIR``: ``git worktree add DIR REV``) run in
turns, each in a fresh interpreter, so each imports its own qrunner.

    benchmarks/.venvs/qrunner/bin/python benchmarks/dispatch_cost.py --base ../before \\
        --rounds 5 --out FILE.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

from suite.report import emit, median_range  # noqa: E402

#: Runs in a subprocess per side (qrunner imported from argv[1]); prints µs per job.
_MEASURE = """
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from qrunner import Registry, Worker
from qrunner.consumer import Entry
from qrunner.job import encode_envelope, new_job_id
from qrunner.runtime import connect_redis

registry = Registry()

@registry.task("noop", queue="default", max_retries=0)
async def noop(ctx, payload):
    return None

async def main(batch, batches):
    redis = await connect_redis("redis://127.0.0.1:1/0", check=False)  # never connects
    worker = Worker(redis, registry, queues=["default"], concurrency=batch)
    read = [
        (f"{1_700_000_000_000 + i}-0", encode_envelope(new_job_id(), "noop", {"i": i}, None, 0))
        for i in range(batch)
    ]
    best = float("inf")
    for _ in range(batches):
        entries = [Entry("default", entry_id, body) for entry_id, body in read]
        t0 = time.perf_counter()
        await worker._dispatch(entries)
        elapsed = time.perf_counter() - t0
        if worker.finisher.backlog != batch:
            raise SystemExit(f"{worker.finisher.backlog} of {batch} jobs completed")
        worker.finisher._done.clear()
        worker._held.clear()  # what the ack would release
        best = min(best, elapsed)
    print(f"{1e6 * best / batch:.4f}")

try:
    import uvloop
    uvloop.run(main(int(sys.argv[2]), int(sys.argv[3])))
except ImportError:
    asyncio.run(main(int(sys.argv[2]), int(sys.argv[3])))
"""


def measure(root: Path, batch: int, batches: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(root), str(batch), str(batches)],
        cwd=BENCH,
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1000, help="jobs per timed batch")
    parser.add_argument("--batches", type=int, default=300, help="timed batches per process")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sides = [("new", ROOT)] + [(f"base {b.name}", b.resolve()) for b in args.base]
    load = os.getloadavg()[0]
    got: dict[str, list[float]] = {label: [] for label, _ in sides}
    for k in range(args.rounds):
        for label, root in sides if k % 2 == 0 else sides[::-1]:
            got[label].append(measure(root, args.batch, args.batches))
            print(f"round {k + 1}: {label:>12}: {got[label][-1]:.3f} µs/job", flush=True)
    lines = [
        "# The worker's own cost per no-op job, no Redis",
        "",
        f"`benchmarks/dispatch_cost.py --batch {args.batch} --batches {args.batches} "
        f"--rounds {args.rounds}" + "".join(" --base DIR" for _ in args.base) + "` on "
        f"{os.cpu_count()} cores, Python {platform.python_version()}. Load average before / "
        f"after: {load:.2f} / {os.getloadavg()[0]:.2f}. Per round and side, one interpreter: "
        "the fastest of its batches, µs per job of `Worker._dispatch` (decode, start, run, "
        "record the completion).",
        "",
        "| side | µs per job, median of rounds (min to max) | against the first side |",
        "|---|---|---|",
    ]
    first = statistics.median(got[sides[0][0]])
    for label, values in got.items():
        ratio = statistics.median(values) / first
        lines.append(f"| {label} | {median_range(values, '{:.3f}')} | {ratio:.3f}x |")
    lines += ["", "Each round:", ""]
    for k in range(args.rounds):
        lines.append(f"- {k + 1}: " + "; ".join(f"{label} {v[k]:.3f}" for label, v in got.items()))
    emit(lines, args.out)


if __name__ == "__main__":
    main()
