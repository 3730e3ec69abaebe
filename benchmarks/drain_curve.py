"""A long no-op drain's rate, tenth by tenth: does a worker start slower than it runs?

The suite's no-op row times 12,000 jobs (30 % to 90 % of 20,000), a fifth of a second at
these rates; ``backlog.py`` times up to 600,000. When the two disagree, this says whether the
rate changes along one drain (a slow start) or only between drains (the host). It fills one
queue with N no-op jobs, drains it with one worker process (``backlog.drain``: concurrency
100, uvloop, burst) and samples the stream's length from this process every ``--interval``
seconds; each cell is the rate over one tenth of the backlog, the first from the last sample
before any job was done. One private redis-server with persistence off.

    benchmarks/.venvs/qrunner/bin/python benchmarks/drain_curve.py --jobs 300000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import backlog  # noqa: E402
import redis  # noqa: E402
import uvloop  # noqa: E402
from peers.qrunner import QUEUE  # noqa: E402
from suite.server import RedisServer  # noqa: E402

from qrunner import keys  # noqa: E402

DRAIN = f"""
import sys
sys.path.insert(0, {str(BENCH)!r})
import backlog, uvloop
uvloop.run(backlog.drain(sys.argv[1]))
"""


def tenths(samples: list[tuple[float, int]], n: int) -> list[float]:
    """Jobs per second over each tenth of ``n``, from (seconds, jobs done) samples; the first
    tenth is timed from the last sample with nothing done yet."""
    marks: dict[int, float] = {0: max((t for t, done in samples if done == 0), default=0.0)}
    for t, done in samples:
        for tenth in range(1, 11):
            if tenth not in marks and done >= n * tenth / 10:
                marks[tenth] = t
    passed = [k for k in range(1, 11) if k in marks and k - 1 in marks]
    return [n / 10 / (marks[k] - marks[k - 1]) for k in passed]


def one_drain(r: redis.Redis, url: str, n: int, interval: float, pin: bool) -> list[float]:
    r.flushall()
    uvloop.run(backlog.fill(url, n))
    stream = keys.stream(QUEUE)
    cmd = [sys.executable, "-c", DRAIN, url]
    # --pin: the worker on CPU 1 (Redis was put on CPU 0), so neither waits for the other's core
    proc = subprocess.Popen(["taskset", "-c", "1", *cmd] if pin else cmd)
    samples: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    while proc.poll() is None:
        samples.append((time.perf_counter() - t0, n - int(r.xlen(stream))))
        time.sleep(interval)
    if proc.returncode != 0:
        raise SystemExit(f"drain_curve: the worker exited with {proc.returncode}")
    samples.append((time.perf_counter() - t0, n - int(r.xlen(stream))))
    return tenths(samples, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument(
        "--pin", action="store_true", help="Redis on CPU 0 and each worker on CPU 1 (Linux)"
    )
    args = parser.parse_args()
    heads = " | ".join(f"{10 * k}-{10 * k + 10} %" for k in range(10))
    print(f"| drain | {heads} |")
    print(f"|---|{'---|' * 10}")
    with tempfile.TemporaryDirectory() as folder, RedisServer(Path(folder)) as srv:
        r = redis.Redis.from_url(srv.url)
        if args.pin:
            os.sched_setaffinity(int(r.info("server")["process_id"]), {0})
        for rep in range(1, args.repeats + 1):
            rates = one_drain(r, srv.url, args.jobs, args.interval, args.pin)
            print(f"| {rep} | {' | '.join(f'{x:,.0f}' for x in rates)} |", flush=True)


if __name__ == "__main__":
    main()
