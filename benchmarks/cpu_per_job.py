"""CPU per job, the worker's and Redis', with the sides of a comparison alternated.

A throughput on this host moves by a quarter within minutes; the CPU a job costs moves much
less. Each round drains a backlog with one worker process of each side in turn (the suite's
own worker, ``python -m peers qrunner worker``: concurrency 100, uvloop) and reads, between
30 % and 90 % of the backlog done, the rate, the worker process' CPU (``/proc/PID/stat``) and
the server's (``INFO cpu``), each over the jobs done in that window. Sides: qrunner as checked
out here (``new``), as checked out in each ``--base DIR`` (``git worktree add DIR REV``), and
with ``--raw`` the suite's raw redis-py Streams loop. One private redis-server, persistence
off, flushed before every step.

    benchmarks/.venvs/qrunner/bin/python benchmarks/cpu_per_job.py --body redis \\
        --base ../before --raw --rounds 5 --out FILE.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import redis  # noqa: E402
from suite.report import emit, median_range  # noqa: E402
from suite.server import RedisServer  # noqa: E402
from suite.steps import peers_env  # noqa: E402

WINDOW = (0.3, 0.9)
POLL_S = 0.005

#: Runs in a subprocess per side, so each side imports its own qrunner.
_FILL = """
import asyncio, sys
from peers.measure import TASK_FOR_BODY
import peers.{peer} as m
a = m.Peer()
async def main():
    await a.call(a.open())
    await a.enqueue_all(TASK_FOR_BODY[sys.argv[1]], int(sys.argv[2]))
    await a.call(a.close())
asyncio.run(main())
"""

_REMAINING = """
import asyncio, sys
import peers.{peer} as m
a = m.Peer()
a.after_prefill(int(sys.argv[1]))
async def main():
    print(await a.call(a.remaining()), flush=True)
    while sys.stdin.readline():
        print(await a.call(a.remaining()), flush=True)
asyncio.run(main())
"""


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain(url: str, peer: str, root: Path, n: int, body: str) -> dict[str, float]:
    """One step: fill ``n`` jobs, start one worker, time the window; rate and CPU per job."""
    r = redis.Redis.from_url(url)
    r.flushall()
    env = peers_env(url, root)
    subprocess.run(
        [sys.executable, "-c", _FILL.format(peer=peer), body, str(n)],
        cwd=BENCH,
        env=env,
        check=True,
    )
    poll = subprocess.Popen(
        [sys.executable, "-c", _REMAINING.format(peer=peer), str(n)],
        cwd=BENCH,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert poll.stdin is not None and poll.stdout is not None
    if int(poll.stdout.readline()) != n:  # read once the backlog is noted, before any worker
        poll.kill()
        raise SystemExit(f"{peer}: the backlog does not hold {n} jobs")
    worker = subprocess.Popen(
        [sys.executable, "-m", "peers", peer, "worker"],
        cwd=BENCH,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def redis_cpu() -> float:
        info: dict[str, Any] = r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    marks: list[tuple[float, int, float, float]] = []
    edges = [n * (1 - f) for f in WINDOW]
    try:
        while True:
            poll.stdin.write("\n")
            poll.stdin.flush()
            left = int(poll.stdout.readline())
            while edges and left <= edges[0]:
                edges.pop(0)
                marks.append((time.perf_counter(), n - left, _cpu_s(worker.pid), redis_cpu()))
            if not edges:
                break
            if worker.poll() is not None:
                raise SystemExit(f"{peer} worker exited with {worker.returncode}")
            time.sleep(POLL_S)
    finally:
        worker.kill()
        poll.kill()
        worker.wait()
        poll.wait()
        r.close()
    (t0, d0, w0, r0), (t1, d1, w1, r1) = marks
    jobs = d1 - d0
    if jobs <= 0 or t1 <= t0:
        raise SystemExit("the window passed within one poll; raise --n")
    return {
        "rate": jobs / (t1 - t0),
        "worker_us": 1e6 * (w1 - w0) / jobs,
        "redis_us": 1e6 * (r1 - r0) / jobs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--body", choices=("noop", "redis"), default="redis")
    parser.add_argument("--n", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", type=Path, action="append", default=[])
    parser.add_argument("--raw", action="store_true", help="the raw loop as a side as well")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sides: list[tuple[str, str, Path]] = [("new", "qrunner", ROOT)]
    sides += [(f"base {b.name}", "qrunner", b.resolve()) for b in args.base]
    if args.raw:
        sides.append(("raw", "raw", ROOT))
    load = os.getloadavg()[0]
    got: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in sides}
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        url = srv.url
        with redis.Redis.from_url(url) as r:
            version = r.info("server")["redis_version"]
        for k in range(args.rounds):
            order = sides if k % 2 == 0 else sides[::-1]
            for label, peer, root in order:
                m = drain(url, peer, root, args.n, args.body)
                got[label].append(m)
                print(
                    f"round {k + 1}: {label:>12}: {m['rate']:,.0f} jobs/s, worker "
                    f"{m['worker_us']:.1f} µs/job, Redis {m['redis_us']:.1f} µs/job",
                    flush=True,
                )
    lines = [
        f"# CPU per job, {args.body} body, sides alternated",
        "",
        f"`benchmarks/cpu_per_job.py --body {args.body} --n {args.n} --rounds {args.rounds}"
        + "".join(" --base DIR" for _ in args.base)
        + (" --raw" if args.raw else "")
        + f"` on {os.cpu_count()} cores, Python {platform.python_version()}, Redis {version} "
        "(private, persistence off). "
        f"Load average before / after: {load:.2f} / {os.getloadavg()[0]:.2f}. One worker "
        "process, concurrency 100, timed between 30 % and 90 % of the backlog done.",
        "",
        "| side | median jobs/s (min to max) | worker µs/job, median (min to max) | "
        "Redis µs/job, median (min to max) |",
        "|---|---|---|---|",
    ]
    for label, runs in got.items():
        lines.append(
            f"| {label} | {median_range([m['rate'] for m in runs], '{:,.0f}')} | "
            f"{median_range([m['worker_us'] for m in runs], '{:.1f}')} | "
            f"{median_range([m['redis_us'] for m in runs], '{:.1f}')} |"
        )
    lines += ["", "Each round:", ""]
    for k in range(args.rounds):
        each = "; ".join(
            f"{label} {runs[k]['rate']:,.0f} jobs/s, {runs[k]['worker_us']:.1f} µs"
            for label, runs in got.items()
        )
        lines.append(f"- {k + 1}: {each}")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
